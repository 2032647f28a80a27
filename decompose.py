"""Image to layers: ``python decompose.py photo.jpg --out photo.psd`` (or a folder of images).

Runs the LayerDiff dataset-construction pipeline on existing images and writes layered
PSD / ORA files or folders of layer PNGs named by the layer prompts. Classical backends
(no weights) by default; real models with ``--detection-model``, ``--sam-model``, ... or
``--config configs/synth/layerdiff.yaml``.
"""

import argparse
import logging

from layergen.synthesis.decompose import build_decompose_chain, decompose_files, plan_outputs


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("input", help="an image file or a folder of images")
    parser.add_argument("--out", default=None, help="output .psd/.ora file or folder (folder mode: a folder)")
    parser.add_argument("--format", default="psd", choices=["psd", "ora", "png"], help="folder mode output format")
    parser.add_argument("--caption", default=None, help="global prompt (one image); else a sidecar .txt")
    parser.add_argument("--max-foregrounds", type=int, default=4, help="K, the most foreground layers")
    parser.add_argument("--max-size", type=int, default=1024, help="longest side the image is analysed at")
    parser.add_argument("--config", default=None, help="synthesis YAML whose model.chain is used")
    parser.add_argument("--caption-model", default=None, help="image-to-text model (hub id or path)")
    parser.add_argument("--detection-model", default=None, help="OWLv2 / Grounding DINO (hub id or path)")
    parser.add_argument("--sam-model", default=None, help="SAM (hub id or path)")
    parser.add_argument("--depth-model", default=None, help="MiDaS / DPT depth model (hub id or path)")
    parser.add_argument("--inpainting-model", default=None, help="diffusers inpainting pipeline (hub id or path)")
    parser.add_argument("--max-inpaint-saliency", type=float, default=1.0, help="saliency check; 1 keeps all")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, int]:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    inputs, outputs = plan_outputs(args.input, args.out, args.format)
    chain = build_decompose_chain(
        config=args.config,
        max_foregrounds=args.max_foregrounds,
        caption_model=args.caption_model,
        detection_model=args.detection_model,
        sam_model=args.sam_model,
        depth_model=args.depth_model,
        inpainting_model=args.inpainting_model,
        max_inpaint_saliency=args.max_inpaint_saliency,
    )
    captions = [args.caption] * len(inputs) if args.caption is not None else None
    return decompose_files(chain, inputs, outputs, captions=captions, max_size=args.max_size)


if __name__ == "__main__":
    counts = main()
    print(f"written {counts['written']}, skipped {counts['skipped']}")
