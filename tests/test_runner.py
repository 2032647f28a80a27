"""The resumable Lightning predict runner of the synthesis job."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from layergen.data.shards import read_shards
from layergen.synthesis.backends.inpainting import OpenCVInpainting
from layergen.synthesis.backends.quality import MaskAreaScorer
from layergen.synthesis.backends.saliency import ContrastSaliency
from layergen.synthesis.cli import format_summary, synthesize_main
from layergen.synthesis.inputs import decode_record, iter_raw_samples, list_input_shards
from layergen.synthesis.runner import (
    SynthesisDataModule,
    SynthesisModule,
    pending_shards,
    summarize,
)
from layergen.synthesis.text2layer import Text2LayerChain

NUM_SHARDS, PER_SHARD, CORRUPT_KEY = 4, 3, "s1_1"
ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "synth" / "text2layer.yaml")


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


def _write_input_shard(url: str, shard: int, rng: np.random.Generator) -> None:
    """An img2dataset-style shard of ``PER_SHARD`` discs, keys ``s{shard}_{index}``."""
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


@pytest.fixture
def input_shards(tmp_path):
    rng = np.random.default_rng(0)
    for shard in range(NUM_SHARDS):
        _write_input_shard(str(tmp_path / "in" / f"part-{shard:05d}.tar"), shard, rng)
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


def _run(inputs: str, output_dir: str, callbacks=(), num_workers: int = 0, **trainer_args) -> None:
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        callbacks=list(callbacks),
        **trainer_args,
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


def _temporaries(output_dir: str) -> list[str]:
    return sorted(path.name for path in Path(output_dir).rglob("*") if ".tmp" in path.name)


def _cli_args(inputs: str, output_dir: str) -> list[str]:
    """``synthesize.py`` arguments: the shipped config at 32 px, batches of 2, no workers."""
    return [
        "--config",
        CONFIG,
        f"--data.inputs={inputs}",
        f"--data.output_dir={output_dir}",
        "--data.resolution=32",
        "--data.batch_size=2",
        "--data.num_workers=0",
        "--trainer.enable_progress_bar=false",
    ]


def _synthesize(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """Run ``synthesize.py`` in a new process (one thread, ``cwd`` on the import path)."""
    path = os.pathsep.join(filter(None, [str(cwd), os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=path)
    return subprocess.run(
        [sys.executable, str(ROOT / "synthesize.py"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


KILL_MID_SHARD = """
import os
import signal

import lightning.pytorch as pl


class KillMidShard(pl.Callback):
    # SIGKILL once the first batch of shard 1 is written, before its last batch
    def on_predict_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        if batch.shard.index == 1 and batch.last:
            os.kill(os.getpid(), signal.SIGKILL)
"""


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
    # image.png holds the source photograph at the synthesis resolution
    key, url = sample.metadata["key"], sample.metadata["source"]["shard"]
    shard = next(s for s in list_input_shards(input_shards) if s.url == url)
    source = decode_record(key, dict(iter_raw_samples(shard))[key], 32, shard)
    assert torch.allclose(sample.image, source.image, atol=1e-6)


def test_synthesize_cli_with_the_shipped_config(input_shards, tmp_path):
    output = str(tmp_path / "cli")
    summary = synthesize_main(
        _cli_args(input_shards, output) + ["--model.chain.init_args.mask_quality=null"]
    )
    assert summary["total"]["samples"] == NUM_SHARDS * PER_SHARD
    assert set(summary["run"]["stage_seconds"]) >= {"saliency", "inpainting"}
    assert "samples/s" in format_summary(summary)
    assert "mask_quality" not in summary["total"]["stage_seconds"]


def test_folder_of_captioned_images(tmp_path):
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


def test_killed_in_the_middle_of_a_shard_resumes_exactly(input_shards, tmp_path):
    reference = str(tmp_path / "reference")
    synthesize_main(_cli_args(input_shards, reference))
    expected = _output_keys(reference)

    output = str(tmp_path / "killed")
    (tmp_path / "killer.py").write_text(KILL_MID_SHARD)
    callbacks = '--trainer.callbacks=[{"class_path": "killer.KillMidShard"}]'
    result = _synthesize(_cli_args(input_shards, output) + [callbacks], tmp_path)
    assert result.returncode == -9, result.stderr[-3000:]
    assert os.listdir(os.path.join(output, "manifest")) == ["shard-000000.json"]
    stale = _temporaries(output)
    assert any(name.startswith("shard-000001.tar.tmp") for name in stale)
    assert len(stale) == 2  # the shard and its rejects, half written

    summary = synthesize_main(_cli_args(input_shards, output))
    keys = _output_keys(output)
    assert sorted(keys) == sorted(expected) and len(keys) == len(set(keys))
    assert summary["run"]["samples"] == (NUM_SHARDS - 1) * PER_SHARD  # shard 0 not redone
    assert summary["total"]["samples"] == NUM_SHARDS * PER_SHARD
    assert _temporaries(output) == []


def test_resume_refuses_inputs_that_moved(input_shards, tmp_path):
    folder, output = tmp_path / "in", str(tmp_path / "out")
    inputs = str(folder / "*.tar")
    with pytest.raises(RuntimeError, match="killed"):
        _run(inputs, output, [_Kill(output, after=2)])

    # a file sorted between part-00000 and part-00001 shifts every later shard by one
    _write_input_shard(str(folder / "part-00000a.tar"), 7, np.random.default_rng(7))
    with pytest.raises(ValueError, match=rf"cannot resume {output}.*shard-000001 was made from"):
        _run(inputs, output)
    os.remove(folder / "part-00000a.tar")
    shards = list_input_shards(inputs)
    assert [shard.index for shard in pending_shards(shards, output)] == [2, 3]
    with pytest.raises(ValueError, match="shard-000000 was made from"):  # a file removed
        pending_shards(list_input_shards(str(folder / "part-0000[123].tar")), output)
    with open(folder / "part-00001.tar", "ab") as handle:  # a file changed
        handle.write(b"\0" * 512)
    with pytest.raises(ValueError, match="shard-000001 was made from"):
        pending_shards(shards, output)
    os.truncate(folder / "part-00001.tar", os.path.getsize(folder / "part-00001.tar") - 512)

    # files added after the last one are new shards: resumed correctly
    _write_input_shard(str(folder / "part-00004.tar"), 4, np.random.default_rng(4))
    _run(inputs, output)
    keys = _output_keys(output)
    total = summarize(output)
    assert total["shards"] == NUM_SHARDS + 1 and total["samples"] == (NUM_SHARDS + 1) * PER_SHARD
    assert len(keys) == len(set(keys)) == total["kept"]
    assert {key.split("_")[0] for key in keys} >= {"s0", "s2", "s3", "s4"}


def test_truncated_input_tar_is_a_recorded_shard_failure(input_shards, tmp_path):
    broken = tmp_path / "in" / "part-00002.tar"
    with tarfile.open(broken) as tar:
        member = tar.getmember("s2_1.png")
    os.truncate(broken, member.offset_data + member.size // 2)  # in the middle of s2_1.png
    output = str(tmp_path / "out")
    _run(input_shards, output)  # does not raise: the other shards are done

    with open(os.path.join(output, "manifest", "shard-000002.json")) as handle:
        entry = json.load(handle)
    assert entry["failure"].startswith("truncated_tar")
    assert entry["rejected"]["s2_1"].startswith("truncated_tar")  # the sample being read
    assert "s2_0" in entry["kept_keys"] or "s2_0" in entry["rejected"]  # read before: processed
    rejects = wds.WebDataset(
        os.path.join(output, "rejects", "shard-000002.tar"), shardshuffle=False
    )
    assert "s2_1" in {sample["__key__"] for sample in rejects}
    total = summarize(output)
    assert list(total["failed_shards"]) == ["shard-000002"]
    assert total["rejected"]["truncated_tar"] == 1
    assert total["samples"] == NUM_SHARDS * PER_SHARD - 1  # s2_2 lies beyond the break
    assert total["shards"] == NUM_SHARDS
    with open(os.path.join(output, "summary.json")) as handle:
        summary = json.load(handle)
    assert summary["total"]["failed_shards"] == total["failed_shards"]
    assert "failed shard shard-000002: " in format_summary(summary)


def test_no_temporary_files_after_a_run_or_a_resume(input_shards, tmp_path):
    output = tmp_path / "out"
    _run(input_shards, str(output), limit_predict_batches=3)  # ends inside shard 1
    assert os.listdir(output / "manifest") == ["shard-000000.json"]
    assert _temporaries(str(output)) == []  # shard 1 and its rejects discarded

    stale = ["shard-000002.tar.tmp4242", "rejects/shard-000002.tar.tmp4242"]
    for name in stale + ["manifest/shard-000002.json.tmp4242", "notes.tmp.txt"]:
        (output / name).write_bytes(b"left by a killed run")
    _run(input_shards, str(output))
    assert _temporaries(str(output)) == ["notes.tmp.txt"]  # not one of ours: kept
    keys = _output_keys(str(output))
    assert len(keys) == len(set(keys)) == summarize(str(output))["kept"]
    assert summarize(str(output))["samples"] == NUM_SHARDS * PER_SHARD


@pytest.mark.slow
def test_ddp_two_processes_on_cpu_neither_loses_nor_duplicates(input_shards, tmp_path):
    reference = str(tmp_path / "reference")
    synthesize_main(_cli_args(input_shards, reference))
    output = str(tmp_path / "ddp")
    args = _cli_args(input_shards, output) + ["--trainer.devices=2", "--trainer.strategy=ddp"]
    result = _synthesize(args, tmp_path)  # gloo on CPU; the launcher re-runs it per rank
    assert result.returncode == 0, result.stderr[-3000:]
    with open(os.path.join(output, "summary.json")) as handle:
        summary = json.load(handle)
    assert summary["run"]["world_size"] == 2
    assert summary["run"]["samples"] == NUM_SHARDS * PER_SHARD  # no shard done by both ranks
    keys = _output_keys(output)
    assert sorted(keys) == sorted(_output_keys(reference)) and len(keys) == len(set(keys))
