"""Throughput of the LayerDiff-mode synthesis chain, per stage.

Two configurations on CPU:

* ``tiny``: tiny random OWLv2, SAM, DPT and BLIP models built from configs (the real
  code paths of the transformers backends; the numbers measure their overhead, not the
  real models' cost), classical saliency and inpainting;
* ``classical``: the weight-free backends of ``decompose.py`` (contrast saliency, salient
  components, GrabCut, vertical depth, OpenCV inpainting).

Inputs are synthetic scenes (``--size``) and, for ``classical``, scikit-image's sample
photographs resized to ``--photo-size``. Prints samples/s overall and per stage, the keep
rate, and (``--contact-sheet PATH``) writes a contact sheet of the photographs' layers.

Usage::

    python bench/bench_layerdiff_synth.py --num 16 --size 64 --photo-size 256
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch
from PIL import Image
from skimage import data

from layergen.data.shapes import ShapeScenes
from layergen.layers import from_unit, hwc_to_chw, uint8_to_unit
from layergen.synthesis.backends.captioning import TransformersCaptioning, build_tiny_captioner
from layergen.synthesis.backends.depth import TransformersDepth, build_tiny_depth
from layergen.synthesis.backends.detection import TransformersDetection, build_tiny_detector
from layergen.synthesis.backends.inpainting import OpenCVInpainting
from layergen.synthesis.backends.saliency import ContrastSaliency
from layergen.synthesis.backends.segmentation import SamSegmentation, build_tiny_sam
from layergen.synthesis.base import SynthesisChain, SynthesisRecord
from layergen.synthesis.layerdiff import LayerDiffChain

PHOTOS = {
    "astronaut": "a woman in a spacesuit in front of an american flag",
    "coffee": "a cup of coffee with a spoon on a saucer",
    "chelsea": "a cat lying on a blanket",
    "rocket": "a rocket on a launch pad under a blue sky",
}


def scene_records(num: int, size: int) -> list[SynthesisRecord]:
    scenes = ShapeScenes(size=size, min_foregrounds=1, max_foregrounds=3, length=num, seed=1)
    return [SynthesisRecord(key=f"scene{i}", image=scenes[i].composite(), caption=scenes[i].prompt)
            for i in range(num)]


def photo_records(size: int) -> list[SynthesisRecord]:
    records = []
    for name, caption in PHOTOS.items():
        pixels = np.asarray(Image.fromarray(getattr(data, name)()).convert("RGB").resize((size, size), Image.LANCZOS))
        records.append(SynthesisRecord(key=name, image=from_unit(hwc_to_chw(uint8_to_unit(pixels))), caption=caption))
    return records


def tiny_chain(root: str, size: int) -> LayerDiffChain:
    return LayerDiffChain(
        saliency=ContrastSaliency(work_size=size),
        detection=TransformersDetection(str(build_tiny_detector(f"{root}/owlv2")), box_threshold=0.0),
        segmentation=SamSegmentation(str(build_tiny_sam(f"{root}/sam"))),
        depth=TransformersDepth(str(build_tiny_depth(f"{root}/dpt"))),
        inpainting=OpenCVInpainting(),
        captioning=TransformersCaptioning(str(build_tiny_captioner(f"{root}/blip")), prompt=None, max_new_tokens=8),
        require_phrases=False,
        overlap_threshold=0.0,
        max_inpaint_saliency=1.0,
    )


def run(name: str, chain: SynthesisChain, records: list[SynthesisRecord], batch_size: int) -> list[SynthesisRecord]:
    start = time.perf_counter()
    out: list[SynthesisRecord] = []
    for i in range(0, len(records), batch_size):
        out += chain(records[i : i + batch_size])
    seconds = time.perf_counter() - start
    stats = chain.stats
    print(f"{name}: {len(records)} samples in {seconds:.2f} s = {len(records) / seconds:.2f} samples/s, "
          f"kept {stats.kept}, rejected {dict(stats.rejected)}")
    for stage, value in stats.seconds.items():
        print(f"  {stage:<16} {len(records) / max(value, 1e-9):10.1f} samples/s  {100 * value / seconds:5.1f}%")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num", type=int, default=16, help="synthetic scenes per configuration")
    parser.add_argument("--size", type=int, default=64, help="synthetic scene size")
    parser.add_argument("--photo-size", type=int, default=256, help="photograph size (classical path)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--contact-sheet", default=None, help="write the photographs' layers to this PNG")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as root:
        run(f"tiny models, {args.size}px scenes", tiny_chain(root, args.size),
            scene_records(args.num, args.size), args.batch_size)
    run(f"classical, {args.size}px scenes", LayerDiffChain.classical(), scene_records(args.num, args.size),
        args.batch_size)
    photos = run(
        f"classical, {args.photo_size}px photographs",
        LayerDiffChain.classical(max_inpaint_saliency=1.0),
        photo_records(args.photo_size),
        args.batch_size,
    )
    for record in photos:
        print(f"  {record.key}: {record.layer_prompts if record.kept else record.rejection}")
    if args.contact_sheet:
        from layergen.export import save_contact_sheet

        save_contact_sheet([r.to_layered_image() for r in photos if r.kept], args.contact_sheet)
        print(f"contact sheet: {args.contact_sheet}")


if __name__ == "__main__":
    main()
