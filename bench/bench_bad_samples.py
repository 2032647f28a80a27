"""Throughput and memory when half the input is bad: training's data loading and synthesis.

Builds two inputs with the same number of records, one all good and one where every other
record is bad (the corrupt kinds of ``tests/test_bad_input.py``: a corrupt or truncated PNG,
a missing mask, masks summing over one, a JSON cut short; for synthesis a corrupt or
truncated image), then alternates between them (good first in even rounds, bad first in odd
ones) until ``--minutes`` have passed:

* training: ``LayeredDataModule`` over layered shards with ``on_error="skip"`` and
  persistent data-loader workers, one epoch per turn;
* synthesis: the runner of ``synthesize.py`` (``SynthesisDataModule``, ``SynthesisModule``
  with a small Text2Layer chain of the classical CPU backends), one job per turn into a
  fresh output folder.

Prints, per input, the good samples delivered per second and the records read per second,
the ratios bad / good, and the RSS of this process and of its data-loader workers (psutil)
after the first round and at the end.

Usage::

    python bench/bench_bad_samples.py --minutes 10
    python bench/bench_bad_samples.py --minutes 0.5    # a quick check
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass

import lightning.pytorch as pl
import numpy as np
import psutil
import torch
import webdataset as wds
from PIL import Image

from layergen.data.codec import encode_sample
from layergen.data.datamodule import LayeredDataModule
from layergen.data.shapes import ShapeScenes
from layergen.synthesis.backends.inpainting import OpenCVInpainting
from layergen.synthesis.backends.quality import MaskAreaScorer
from layergen.synthesis.backends.saliency import ContrastSaliency
from layergen.synthesis.runner import SUMMARY_FILE, SynthesisDataModule, SynthesisModule
from layergen.synthesis.text2layer import Text2LayerChain


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _half(data: bytes) -> bytes:
    return data[: len(data) // 2]


# bad layered samples, as in tests/test_bad_input.py (reason counted in brackets)
LAYERED_FAULTS = {
    "corrupt_image": lambda m, size: m.update({"fg_0.png": b"\x89PNG\r\n\x1a\n not an image"}),
    "truncated_image": lambda m, size: m.update({"background.png": _half(m["background.png"])}),
    "missing_mask": lambda m, size: m.pop("mask_0.png"),
    "masks_sum_over_one": lambda m, size: m.update(
        {f"mask_{i}.png": _png(Image.new("L", (size, size), 200)) for i in (0, 1)}
    ),
    "invalid_json": lambda m, size: m.update({"json": _half(m["json"])}),
}
IMAGE_FAULTS = {
    "corrupt_image": lambda png: b"this is not an image",
    "truncated_image": _half,
}


def write_layered_shards(out_dir: str, shards: int, per_shard: int, size: int, bad: bool) -> str:
    """Layered shards of 2-foreground scenes; with ``bad``, every odd record is corrupt
    (cycling through ``LAYERED_FAULTS``). Returns their brace pattern."""
    os.makedirs(out_dir, exist_ok=True)
    scenes = ShapeScenes(size=size, min_foregrounds=2, max_foregrounds=2, length=per_shard)
    faults = list(LAYERED_FAULTS.values())
    for shard in range(shards):
        with wds.TarWriter(os.path.join(out_dir, f"shard-{shard:06d}.tar")) as sink:
            for i in range(per_shard):
                members = encode_sample(scenes[i], f"{shard:03d}{i:05d}")
                if bad and i % 2:
                    faults[(i // 2) % len(faults)](members, size)
                sink.write(members)
    return os.path.join(out_dir, f"shard-{{000000..{shards - 1:06d}}}.tar")


def _photo(rng: np.random.Generator, size: int) -> bytes:
    """A gradient with a bright disc (a salient foreground)."""
    yy, xx = np.mgrid[:size, :size] / size
    image = np.stack([xx * 120, yy * 120, np.full_like(xx, 60)], -1)
    cy, cx, radius = rng.uniform(0.35, 0.65, 2).tolist() + [rng.uniform(0.15, 0.3)]
    image[(yy - cy) ** 2 + (xx - cx) ** 2 < radius**2] = rng.uniform(150, 255, 3)
    return _png(Image.fromarray(image.astype(np.uint8)))


def write_image_shards(out_dir: str, shards: int, per_shard: int, size: int, bad: bool) -> str:
    """img2dataset-style shards of photographs with captions; with ``bad``, every odd
    record's image is corrupt (cycling through ``IMAGE_FAULTS``). Returns their pattern."""
    os.makedirs(out_dir, exist_ok=True)
    rng = np.random.default_rng(0)
    faults = list(IMAGE_FAULTS.values())
    for shard in range(shards):
        with wds.TarWriter(os.path.join(out_dir, f"part-{shard:05d}.tar")) as sink:
            for i in range(per_shard):
                image = _photo(rng, size)
                if bad and i % 2:
                    image = faults[(i // 2) % len(faults)](image)
                key = f"{shard:03d}{i:05d}"
                sink.write({"__key__": key, "png": image, "txt": f"a disc {key}", "json": "{}"})
    return os.path.join(out_dir, f"part-{{00000..{shards - 1:05d}}}.tar")


@dataclass
class Arm:
    """Totals of one input over the run."""

    seconds: float = 0.0
    good: int = 0  # samples delivered (training) or decoded and processed (synthesis)
    records: int = 0  # records read, good and bad

    def rates(self) -> tuple[float, float]:
        """(good samples/s, records/s)."""
        return self.good / self.seconds, self.records / self.seconds


class TrainingLoading:
    """The layered data loading of training over one input: one epoch per ``turn``."""

    def __init__(self, pattern: str, num_workers: int, size: int, batch_size: int) -> None:
        self.data = LayeredDataModule(
            train_shards=pattern, image_size=size, batch_size=batch_size,
            num_workers=num_workers, shuffle_buffer=100, on_error="skip",
        )
        self.loader = self.data.train_dataloader()  # persistent workers, as in training
        self.counter = self.data.skip_counters["train"]

    def turn(self, arm: Arm) -> None:
        skipped = self.counter.total()
        start = time.perf_counter()
        good = sum(len(batch) for batch in self.loader)
        arm.seconds += time.perf_counter() - start
        arm.good += good
        arm.records += good + self.counter.total() - skipped


def _chain() -> Text2LayerChain:
    return Text2LayerChain(
        saliency=ContrastSaliency(work_size=32, grabcut_iterations=1),
        inpainting=OpenCVInpainting(radius=2, work_size=32),
        dilation_kernel=3,
        mask_quality=MaskAreaScorer(min_area=0.02, max_area=0.95),
    )


class Synthesis:
    """``synthesize.py``'s runner over one input: one job into a fresh folder per ``turn``."""

    def __init__(self, pattern: str, work_dir: str, num_workers: int, size: int) -> None:
        self.pattern, self.work_dir = pattern, work_dir
        self.num_workers, self.size = num_workers, size

    def turn(self, arm: Arm) -> None:
        out = os.path.join(self.work_dir, "job")
        shutil.rmtree(out, ignore_errors=True)
        trainer = pl.Trainer(
            accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
            enable_model_summary=False, enable_checkpointing=False,
        )
        data = SynthesisDataModule(
            self.pattern, out, batch_size=8, resolution=self.size, num_workers=self.num_workers
        )
        start = time.perf_counter()
        trainer.predict(SynthesisModule(_chain(), out), datamodule=data, return_predictions=False)
        arm.seconds += time.perf_counter() - start
        with open(os.path.join(out, SUMMARY_FILE)) as handle:
            total = json.load(handle)["total"]
        arm.records += total["samples"]
        arm.good += total["samples"] - total["rejected"].get("decode_error", 0)


def rss_mb() -> tuple[float, float]:
    """RSS of this process and the sum over its child processes (workers), in MB."""
    me = psutil.Process()
    children = 0
    for child in me.children(recursive=True):
        try:
            children += child.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return me.memory_info().rss / 2**20, children / 2**20


def run(
    work_dir: str, minutes: float, num_workers: int = 2, shards: int = 4, per_shard: int = 128,
    size: int = 32, synthesis_shards: int = 2, synthesis_per_shard: int = 64,
) -> dict:
    """Build the inputs, alternate the arms until ``minutes`` have passed (at least one round).

    Returns:
        ``{"arms": {name: Arm}, "rounds", "rss_start", "rss_end"}``; arm names are
        ``train/good``, ``train/bad``, ``synthesis/good``, ``synthesis/bad``; RSS as
        ``rss_mb`` returns it, after the first round and at the end.
    """
    arms = {name: Arm() for name in ("train/good", "train/bad", "synthesis/good", "synthesis/bad")}
    runners = {}
    for kind in ("good", "bad"):
        pattern = write_layered_shards(
            os.path.join(work_dir, f"layered-{kind}"), shards, per_shard, size, kind == "bad"
        )
        runners[f"train/{kind}"] = TrainingLoading(pattern, num_workers, size, batch_size=16)
        pattern = write_image_shards(
            os.path.join(work_dir, f"images-{kind}"), synthesis_shards, synthesis_per_shard,
            size, kind == "bad",
        )
        runners[f"synthesis/{kind}"] = Synthesis(
            pattern, os.path.join(work_dir, f"synthesis-{kind}"), num_workers, size
        )
    end = time.monotonic() + 60 * minutes
    rounds, rss_start = 0, None
    while rounds == 0 or time.monotonic() < end:
        order = ("good", "bad") if rounds % 2 == 0 else ("bad", "good")
        for task in ("train", "synthesis"):
            for kind in order:
                runners[f"{task}/{kind}"].turn(arms[f"{task}/{kind}"])
        rounds += 1
        if rss_start is None:
            rss_start = rss_mb()
    return {"arms": arms, "rounds": rounds, "rss_start": rss_start, "rss_end": rss_mb()}


def main() -> None:
    """Parse arguments, run, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--shards", type=int, default=4, help="layered shards per input")
    parser.add_argument("--per-shard", type=int, default=128)
    parser.add_argument("--size", type=int, default=32, help="image side in pixels")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as work_dir:
        # the skips' warnings go to a file, as a training run's log does
        logging.basicConfig(filename=os.path.join(work_dir, "bench.log"), level=logging.WARNING)
        logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # one trainer a turn
        result = run(work_dir, args.minutes, args.num_workers, args.shards, args.per_shard,
                     args.size)
    arms = result["arms"]
    print(f"{result['rounds']} rounds, {args.num_workers} workers, {args.size}px")
    for task in ("train", "synthesis"):
        good, bad = arms[f"{task}/good"].rates(), arms[f"{task}/bad"].rates()
        print(
            f"{task}: all good {good[0]:.1f} samples/s; half bad {bad[0]:.1f} good samples/s "
            f"of {bad[1]:.1f} records/s; ratios half bad / all good: good samples "
            f"{bad[0] / good[0]:.2f}, records {bad[1] / good[1]:.2f}"
        )
    (main_start, workers_start), (main_end, workers_end) = result["rss_start"], result["rss_end"]
    print(
        f"RSS after round 1: main {main_start:.0f} MB, workers {workers_start:.0f} MB; at the "
        f"end: main {main_end:.0f} MB ({main_end - main_start:+.0f}), workers "
        f"{workers_end:.0f} MB ({workers_end - workers_start:+.0f})"
    )


if __name__ == "__main__":
    main()
