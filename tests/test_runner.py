"""The resumable Lightning predict runner of the synthesis job."""

from __future__ import annotations

import io
import json
import os

import lightning.pytorch as pl
import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from layergen.data.shards import read_shards
from layergen.synthesis.backends.inpainting import OpenCVInpainting
from layergen.synthesis.backends.quality import MaskAreaScorer
from layergen.synthesis.backends.saliency import ContrastSaliency
from layergen.synthesis.cli import format_summary, synthesize_main
from layergen.synthesis.runner import SynthesisDataModule, SynthesisModule, summarize
from layergen.synthesis.text2layer import Text2LayerChain

NUM_SHARDS, PER_SHARD, CORRUPT_KEY = 4, 3, "s1_1"


def _photo(rng: np.random.Generator, size: int) -> np.ndarray:
    """A background gradient with a bright disc at a random place."""
    yy, xx = np.mgrid[:size, :size] / size
    image = np.stack([xx * 120, yy * 120, np.full_like(xx, 60)], -1)
    cy, cx, radius = rng.uniform(0.35, 0.65, 2).tolist() + [rng.uniform(0.15, 0.3)]
    disc = (yy - cy) ** 2 + (xx - cx) ** 2 < radius**2
    image[disc] = rng.uniform(150, 255, 3)
    return image.astype(np.uint8)


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def input_shards(tmp_path):
    rng = np.random.default_rng(0)
    urls = []
    for shard in range(NUM_SHARDS):
        url = str(tmp_path / "in" / f"part-{shard:05d}.tar")
        os.makedirs(os.path.dirname(url), exist_ok=True)
        with wds.TarWriter(url) as writer:
            for index in range(PER_SHARD):
                key = f"s{shard}_{index}"
                image = b"this is not an image" if key == CORRUPT_KEY else _png(_photo(rng, 40))
                writer.write(
                    {
                        "__key__": key,
                        "png": image,
                        "txt": f"a disc {key}",
                        "json": json.dumps({"i": index}),
                    }
                )
        urls.append(url)
    return str(tmp_path / "in" / "part-{00000..00003}.tar")


def _chain() -> Text2LayerChain:
    return Text2LayerChain(
        saliency=ContrastSaliency(work_size=32, grabcut_iterations=1),
        inpainting=OpenCVInpainting(radius=2, work_size=32),
        dilation_kernel=3,
        mask_quality=MaskAreaScorer(min_area=0.05, max_area=0.9),
    )


class _Kill(pl.Callback):
    """Raises once ``after`` shards are finished, as if the job were killed."""

    def __init__(self, output_dir: str, after: int) -> None:
        self.output_dir, self.after = output_dir, after

    def on_predict_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        if len(os.listdir(os.path.join(self.output_dir, "manifest"))) >= self.after:
            raise RuntimeError("killed")


def _run(inputs: str, output_dir: str, callbacks=(), num_workers: int = 0) -> None:
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        callbacks=list(callbacks),
    )
    data = SynthesisDataModule(
        inputs, output_dir, batch_size=2, resolution=32, num_workers=num_workers
    )
    trainer.predict(
        SynthesisModule(_chain(), output_dir), datamodule=data, return_predictions=False
    )


def _output_keys(output_dir: str) -> list[str]:
    shards = sorted(
        os.path.join(output_dir, name) for name in os.listdir(output_dir) if name.endswith(".tar")
    )
    return [sample.metadata["key"] for sample in read_shards(shards)]


def test_kill_and_resume_neither_loses_nor_duplicates(input_shards, tmp_path):
    reference = str(tmp_path / "reference")
    _run(input_shards, reference)
    expected = _output_keys(reference)
    assert len(expected) == len(set(expected)) > 0

    output = str(tmp_path / "resumed")
    with pytest.raises(RuntimeError, match="killed"):
        _run(input_shards, output, [_Kill(output, after=2)])
    assert len(os.listdir(os.path.join(output, "manifest"))) == 2
    assert not os.path.exists(os.path.join(output, "shard-000003.tar"))
    _run(input_shards, output)

    keys = _output_keys(output)
    assert sorted(keys) == sorted(expected)
    assert len(keys) == len(set(keys))
    total = summarize(output)
    assert total["samples"] == NUM_SHARDS * PER_SHARD
    assert total["kept"] == len(expected)
    assert total["kept"] + sum(total["rejected"].values()) == NUM_SHARDS * PER_SHARD


def test_corrupt_image_recorded_with_key_and_reason(input_shards, tmp_path):
    output = str(tmp_path / "out")
    _run(input_shards, output)
    with open(os.path.join(output, "manifest", "shard-000001.json")) as handle:
        entry = json.load(handle)
    assert entry["rejected"][CORRUPT_KEY].startswith("decode_error")
    assert CORRUPT_KEY not in entry["kept_keys"]
    rejects = list(
        wds.WebDataset(os.path.join(output, "rejects", "shard-000001.tar"), shardshuffle=False)
    )
    reject = next(sample for sample in rejects if sample["__key__"] == CORRUPT_KEY)
    assert json.loads(reject["json"])["rejection"].startswith("decode_error")
    assert summarize(output)["rejected"]["decode_error"] == 1


def test_outputs_carry_scores_and_provenance_with_loader_workers(input_shards, tmp_path):
    output = str(tmp_path / "out")
    _run(input_shards, output, num_workers=2)  # shards divided between two workers
    keys = _output_keys(output)
    assert len(keys) == len(set(keys)) == summarize(output)["kept"]
    assert summarize(output)["samples"] == NUM_SHARDS * PER_SHARD
    sample = next(iter(read_shards(sorted(str(p) for p in (tmp_path / "out").glob("*.tar")))))
    assert set(sample.metadata["scores"]) == {"mask_quality"}
    provenance = sample.metadata["provenance"]
    assert provenance["foreground"]["threshold"] == 0.1
    assert provenance["saliency"]["backend"] == "ContrastSaliency"
    assert sample.metadata["source"]["key"] == sample.metadata["key"]


def test_synthesize_cli_with_the_shipped_config(input_shards, tmp_path):
    output = str(tmp_path / "cli")
    config = os.path.join(os.path.dirname(__file__), "..", "configs", "synth", "text2layer.yaml")
    summary = synthesize_main(
        [
            "--config",
            config,
            f"--data.inputs={input_shards}",
            f"--data.output_dir={output}",
            "--data.resolution=32",
            "--data.num_workers=0",
            "--trainer.enable_progress_bar=false",
            "--model.chain.init_args.mask_quality=null",
        ]
    )
    assert summary["total"]["samples"] == NUM_SHARDS * PER_SHARD
    assert set(summary["run"]["stage_seconds"]) >= {"saliency", "inpainting"}
    assert "samples/s" in format_summary(summary)
    assert "mask_quality" not in summary["total"]["stage_seconds"]


def test_folder_of_captioned_images(tmp_path):
    from layergen.synthesis.inputs import decode_record, iter_raw_samples, list_input_shards

    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for name in ("a", "b", "c.v2"):
        Image.fromarray(_photo(rng, 40)).save(folder / f"{name}.png")
        (folder / f"{name}.txt").write_text(f"caption of {name}\n")
    shards = list_input_shards(str(folder), shard_size=2)
    assert [len(shard.files) for shard in shards] == [2, 1]
    assert [shard.name for shard in shards] == ["shard-000000", "shard-000001"]
    key, files = next(iter_raw_samples(shards[1]))
    assert key == "c_v2"  # no dots in shard keys
    record = decode_record(key, files, 32, shards[1])
    assert record.caption == "caption of c.v2" and record.image.shape == (3, 32, 32)
    with pytest.raises(FileNotFoundError, match="no-such"):
        list_input_shards(str(tmp_path / "no-such-*.tar"))
