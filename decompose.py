"""Image to layers: ``python decompose.py photo.jpg --out photo.psd`` (or a folder of images).

Writes layered PSD / ORA files or folders of layer PNGs named by the layer prompts. With
``--model DIR`` a composite-conditioned layered diffusion pipeline (docs/decomposition.md)
generates the layers; without it the LayerDiff dataset-construction pipeline runs, with
classical backends (no weights) by default, real models with ``--detection-model``,
``--sam-model``, ... or ``--config configs/synth/layerdiff.yaml``.
"""

import layergen.openmp  # noqa: F401  (first: OpenMP waiting set before torch loads)

# isort: split
import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import Tensor

from layergen.console import configure_console
from layergen.devices import DTYPES, add_device_arguments, resolve_device
from layergen.layers import LayeredImage
from layergen.synthesis.decompose import build_decompose_chain, decompose_files, plan_outputs

EPILOG = """examples:
  python decompose.py photo.jpg --out photo.psd --caption "a cat on a sofa"
  python decompose.py photo.jpg --out photo.psd --model demo_runs/decompose/pretrained --num-layers 3
  python decompose.py photos/ --out layers/ --format ora     # captions from photos/NAME.txt
  python decompose.py photo.jpg --detection-model google/owlv2-base-patch16-ensemble \\
      --sam-model facebook/sam-vit-base --device cuda --dtype float16

Each file written is named on stdout, one line each; messages go to stderr.
exit status: 0 every image written, 1 failed or some images skipped (the reasons on stderr),
2 bad command line.
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
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
    learned = parser.add_argument_group("learned decomposition (--model)")
    learned.add_argument("--model", help="composite-conditioned pipeline directory or hub id")
    learned.add_argument("--num-layers", type=int, default=3, help="layers, background included")
    learned.add_argument("--layer-prompts", nargs="+", help="layer prompts, background first")
    learned.add_argument("--steps", type=int, help="denoising steps (default: the model's recipe)")
    learned.add_argument("--seed", type=int, default=0)
    learned.add_argument("--candidates", type=int, default=4,
                         help="decompositions drawn; the one closest to the picture is kept")
    add_device_arguments(parser)
    args = parser.parse_args(argv)
    classical = ("config", "caption_model", "detection_model", "sam_model", "depth_model", "inpainting_model")
    if args.model and any(getattr(args, name) for name in classical):
        parser.error("--model decomposes with the learned pipeline: it takes none of "
                     + ", ".join("--" + name.replace("_", "-") for name in classical))
    return args


def learned_decomposer(args: argparse.Namespace) -> Callable[[Tensor, str], LayeredImage]:
    """``--model``'s pipeline as ``(image, caption) -> LayeredImage``.

    Raises:
        ValueError: the pipeline's UNet is not composite-conditioned.
    """
    from layergen.pipelines import load_pipeline
    from layergen.pipelines.decomposition import PipelineDecomposer

    pipe = load_pipeline(args.model, device=resolve_device(args.device))
    if args.dtype is not None:
        pipe.to(dtype=DTYPES[args.dtype])
    if not pipe.unet.config.get("composite_condition", False):
        raise ValueError(f"--model {args.model}: its UNet is not composite-conditioned, so it cannot "
                         "decompose images (train one with configs/demo/decompose.yaml)")
    steps = {} if args.steps is None else {"num_inference_steps": args.steps}
    decomposer = PipelineDecomposer(pipe, layer_prompts=args.layer_prompts, seed=args.seed,
                                    num_candidates=args.candidates, **steps)
    num_layers = None if args.layer_prompts else args.num_layers
    return lambda image, caption: decomposer(image, caption, num_layers)


def run(args: argparse.Namespace) -> dict[str, int]:
    """Decompose every input, naming each file written on stdout; returns the counts."""
    inputs, outputs = plan_outputs(args.input, args.out, args.format)
    if args.model:
        return decompose_all(learned_decomposer(args), inputs, outputs, args)
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
    chain.to(resolve_device(args.device))
    if args.dtype is not None:  # the backends' models are nn.Modules or diffusers pipelines,
        chain.to(DTYPES[args.dtype])  # whose .to takes a dtype too
    return decompose_all(chain, inputs, outputs, args)


def decompose_all(
    decomposer: Any, inputs: list[Path], outputs: list[Path], args: argparse.Namespace
) -> dict[str, int]:
    """Decompose the files one at a time, naming each written on stdout; returns the counts."""
    counts = {"written": 0, "skipped": 0}
    for source, target in zip(inputs, outputs):
        captions = None if args.caption is None else [args.caption]
        one = decompose_files(decomposer, [source], [target], captions=captions, max_size=args.max_size)
        if one["written"]:
            print(f"wrote {target}", flush=True)
        counts = {key: counts[key] + one[key] for key in counts}
    return counts


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (argparse exits with 2 itself)."""
    args = parse_args(argv)
    configure_console()
    # decompose_files logs each file written; stdout names them already
    logging.getLogger("layergen.synthesis.decompose").setLevel(logging.WARNING)
    try:
        counts = run(args)
    except (OSError, ValueError) as error:  # a missing input, a bad value: no traceback
        print("error: " + " ".join(str(error).split()), file=sys.stderr)
        return 1
    if counts["skipped"]:
        print(f"error: skipped {counts['skipped']} of {sum(counts.values())} images",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    status = main()
    if status:  # 0 ends normally (and lets runpy callers go on)
        sys.exit(status)
