"""Throughput of the Text2Layer synthesis job with the classical CPU backends.

Builds img2dataset-style input shards from scikit-image's sample photographs, runs
``synthesize.py`` with ``configs/synth/text2layer.yaml`` on 1 and 2 processes (DDP on CPU)
and prints samples/s, the scaling ratio and the share of time per stage. With
``--contact-sheet PATH`` it also writes a contact sheet of the layered outputs (rows:
image, mask, foreground over a checkerboard, background, composite) and checks that the
composite reproduces the input where ``m = 1``.

Usage::

    python bench/bench_synthesis.py --per-shard 8 --shards 4 --resolution 256 \
        --contact-sheet synthesis_sheet.png
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import webdataset as wds
from PIL import Image
from skimage import data as skimage_data

from layergen.data.shards import read_shards
from layergen.layers import chw_to_hwc, to_unit, unit_to_uint8

PHOTOS = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "immunohistochemistry",
    "hubble_deep_field",
    "retina",
    "colorwheel",
)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "synth", "text2layer.yaml")


def make_inputs(out_dir: str, shards: int, per_shard: int) -> str:
    """Write ``shards`` tar shards of ``per_shard`` photographs (cycling through ``PHOTOS``)."""
    os.makedirs(out_dir, exist_ok=True)
    for shard in range(shards):
        with wds.TarWriter(os.path.join(out_dir, f"{shard:05d}.tar")) as writer:
            for index in range(per_shard):
                name = PHOTOS[(shard * per_shard + index) % len(PHOTOS)]
                buffer = io.BytesIO()
                Image.fromarray(getattr(skimage_data, name)()).convert("RGB").save(
                    buffer, format="JPEG", quality=95
                )
                key = f"{shard:05d}{index:04d}"
                writer.write(
                    {
                        "__key__": key,
                        "jpg": buffer.getvalue(),
                        "txt": f"a photograph: {name}",
                        "json": json.dumps({"photo": name}).encode(),
                    }
                )
    return os.path.join(out_dir, f"{{00000..{shards - 1:05d}}}.tar")


def run(inputs: str, output_dir: str, devices: int, resolution: int) -> dict:
    """Run ``synthesize.py`` on ``devices`` CPU processes; return its ``summary.json``."""
    command = [
        sys.executable,
        os.path.join(ROOT, "synthesize.py"),
        "--config",
        CONFIG,
        f"--data.inputs={inputs}",
        f"--data.output_dir={output_dir}",
        f"--data.resolution={resolution}",
        "--data.num_workers=0",
        f"--trainer.devices={devices}",
        "--trainer.enable_progress_bar=false",
    ]
    if devices > 1:
        command.append("--trainer.strategy=ddp")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    subprocess.run(command, check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
    with open(os.path.join(output_dir, "summary.json")) as handle:
        return json.load(handle)


def contact_sheet(output_dir: str, inputs_dir: str, path: str, cell: int = 160) -> float:
    """Write the contact sheet; return the largest |composite - input| where m = 1 (in [0, 1])."""
    sources = {}
    for sample in wds.WebDataset(
        sorted(os.path.join(inputs_dir, n) for n in os.listdir(inputs_dir)), shardshuffle=False
    ):
        sources[sample["__key__"]] = sample["jpg"]
    rows, worst = [], 0.0
    shards = sorted(
        os.path.join(output_dir, n) for n in os.listdir(output_dir) if n.endswith(".tar")
    )
    seen = set()
    for layered in read_shards(shards):
        photo = json.loads(json.dumps(layered.metadata["source"]))["json"]["photo"]
        if photo in seen:
            continue
        seen.add(photo)
        size = layered.size
        source = np.asarray(Image.open(io.BytesIO(sources[layered.metadata["key"]])).convert("RGB"))
        source = _center_crop(source, size[0])
        m = layered.masks[0, 0].numpy()
        composite = unit_to_uint8(chw_to_hwc(to_unit(layered.composite())))
        full = m >= 1.0
        if full.any():
            worst = max(
                worst,
                float(np.abs(composite[full].astype(int) - source[full].astype(int)).max()) / 255,
            )
        checker = ((np.indices(size) // 16).sum(0) % 2)[..., None] * 80 + 140
        foreground = unit_to_uint8(chw_to_hwc(to_unit(layered.foregrounds[0]))).astype(float)
        panels = [
            source,
            np.repeat(unit_to_uint8(m)[..., None], 3, -1),
            (m[..., None] * foreground + (1 - m[..., None]) * checker).astype(np.uint8),
            unit_to_uint8(chw_to_hwc(to_unit(layered.background))),
            composite,
        ]
        rows.append(
            np.concatenate(
                [np.asarray(Image.fromarray(p).resize((cell, cell))) for p in panels], axis=1
            )
        )
    Image.fromarray(np.concatenate(rows, axis=0)).save(path)
    return worst


def _center_crop(image: np.ndarray, size: int) -> np.ndarray:
    """The same resize-and-centre-crop as the synthesis input."""
    from layergen.synthesis.inputs import _resize_center_crop

    return np.asarray(_resize_center_crop(Image.fromarray(image), size))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--per-shard", type=int, default=8)
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--devices", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--contact-sheet", default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        inputs = make_inputs(os.path.join(work, "inputs"), args.shards, args.per_shard)
        rates = {}
        for devices in args.devices:
            output_dir = os.path.join(work, f"out-{devices}")
            summary = run(inputs, output_dir, devices, args.resolution)
            run_stats, total = summary["run"], summary["total"]
            rates[devices] = run_stats["samples_per_second"]
            print(
                f"{devices} process(es): {run_stats['samples']} samples in {run_stats['seconds']:.1f} s = "
                f"{rates[devices]:.2f} samples/s at {args.resolution}px; kept {total['kept']}, "
                f"rejected {total['rejected']}"
            )
            for name, share in total["stage_share"].items():
                print(f"    {name:<14} {100 * share:5.1f}% of stage time")
            if args.contact_sheet and devices == args.devices[0]:
                worst = contact_sheet(output_dir, os.path.join(work, "inputs"), args.contact_sheet)
                print(
                    f"contact sheet: {args.contact_sheet}; max |composite - input| where m = 1: {worst:.4f}"
                )
        if len(rates) > 1:
            first, last = args.devices[0], args.devices[-1]
            print(f"scaling {first} -> {last} processes: x{rates[last] / rates[first]:.2f}")


if __name__ == "__main__":
    main()
