"""Generate or edit layered images from text and save them as PSD, OpenRaster or PNGs."""

from __future__ import annotations

import layergen.openmp  # noqa: F401  (first: OpenMP waiting set before torch loads)

# isort: split
import argparse
import sys
from pathlib import Path

from layergen.apps.generation import edit_to_file, generate_to_file
from layergen.console import configure_console
from layergen.devices import DTYPES, add_device_arguments, resolve_device
from layergen.pipelines import load_pipeline

EPILOG = r"""examples:
  M=outputs/demo/ldm/pretrained   # the pipeline the README demo trains
  python generate.py --model $M "a large red star on the left on a blue plain background" \
      --layers auto --seed 0 --out star.psd
  python generate.py --model $M "a small green heart on a pink plain background" \
      --layers auto --num-images 4 --out hearts.ora      # hearts_0.ora ... hearts_3.ora
  python generate.py --model $M "a red star and a green heart" --layers auto \
      --boxes none 0,0,0.5,0.5 0.5,0.5,1,1 --out boxed.psd   # box-conditioned models
  python generate.py --model $M --edit star.psd --keep 0 \
      --layer-prompts "the background" "a small green heart" --out heart.ora
  python generate.py --model $M --edit star.psd --restyle 0 --strength 0.6 \
      --layer-prompts "the background" --out restyled

Each file written is named on stdout, one line each; messages go to stderr.
exit status: 0 done, 1 failed (the reason on stderr), 2 bad command line.
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("prompt", nargs="?", help="global prompt (edit mode: default the input's)")
    parser.add_argument(
        "--model", required=True, help="pipeline directory / hub id, or a diffusion .ckpt"
    )
    parser.add_argument(
        "--autoencoder", help="autoencoder directory or .ckpt (with a .ckpt --model)"
    )
    parser.add_argument("--text-encoder", help="text encoder path (with a .ckpt --model)")
    parser.add_argument(
        "--out", required=True, help="output: FILE.psd, FILE.ora or a folder of PNGs"
    )
    parser.add_argument("--layer-prompts", nargs="+", help="layer prompts, background first")
    parser.add_argument(
        "--layers", choices=["auto"], help="'auto': derive layer prompts from the prompt"
    )
    parser.add_argument(
        "--num-layers",
        type=int,
        help="number of layers including the background, L = K + 1 (checked against "
        "--layer-prompts; without layer prompts the foreground prompts are empty)",
    )
    parser.add_argument(
        "--num-images",
        type=int,
        default=1,
        metavar="N",
        help="images per prompt, seeds --seed, --seed + 1, ...; outputs numbered "
        "NAME_0.psd, NAME_1.psd, ... (default: 1, written to --out itself)",
    )
    parser.add_argument(
        "--boxes",
        nargs="+",
        type=parse_box,
        metavar="BOX",
        help="where each layer goes, background first: x0,y0,x1,y1 in [0, 1] of the width and "
        "height, or 'none' for a free layer (box-conditioned models, docs/decomposition.md)",
    )
    parser.add_argument("--negative-prompt", help="global negative prompt (needs --guidance > 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--steps", type=int, default=None, help="sampling steps (default: the pipeline's recipe)"
    )
    parser.add_argument(
        "--guidance",
        type=float,
        default=None,
        help="classifier-free guidance scale (default: the pipeline's recipe)",
    )
    parser.add_argument("--height", type=int)
    parser.add_argument("--width", type=int)
    add_device_arguments(parser)
    edit = parser.add_argument_group("edit mode")
    edit.add_argument(
        "--edit",
        metavar="INPUT",
        help="layered input: .psd or .ora (ours, GIMP's, Krita's) or a folder of RGBA PNG "
        "layers (0.png = background, 1.png, ... bottom to top, as Qwen-Image-Layered saves)",
    )
    edit.add_argument("--keep", type=int, nargs="+", help="indices of layers kept (0 = background)")
    edit.add_argument("--restyle", type=int, metavar="I", help="restyle layer I")
    edit.add_argument(
        "--strength",
        type=float,
        default=None,
        help="restyle noise strength in (0, 1] (default: the pipeline's recipe)",
    )
    args = parser.parse_args(argv)
    if args.edit is None and not args.prompt:
        parser.error("a prompt is required (or --edit INPUT)")
    if args.edit is None and (args.keep is not None or args.restyle is not None):
        parser.error("--keep and --restyle need --edit INPUT")
    if args.layers and args.layer_prompts:
        parser.error("give --layer-prompts or --layers auto, not both")
    if args.num_images < 1:
        parser.error("--num-images must be at least 1")
    return args


def parse_box(text: str) -> tuple[float, float, float, float] | None:
    """``"x0,y0,x1,y1"`` -> a box; ``"none"`` -> None (argparse type)."""
    if text.lower() == "none":
        return None
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 4:
        raise argparse.ArgumentTypeError(f"{text!r}: expected x0,y0,x1,y1 (four numbers) or none")
    return values


def numbered_outputs(out: str | Path, count: int) -> list[Path]:
    """``out`` itself for one image; ``NAME_0.psd``, ``NAME_1.psd``, ... for several."""
    out = Path(out)
    if count == 1:
        return [out]
    width = len(str(count - 1))
    return [out.with_name(f"{out.stem}_{i:0{width}d}{out.suffix}") for i in range(count)]


def check_model(model: str) -> None:
    """Refuse a ``--model`` that is neither an existing path nor shaped like a hub id.

    Raises:
        FileNotFoundError: saying so in one line (diffusers' hub error is long).
    """
    if not Path(model).exists() and model.count("/") != 1:
        raise FileNotFoundError(
            f"--model {model}: no such pipeline directory or checkpoint (nor a hub id owner/name)"
        )


def run(args: argparse.Namespace) -> None:
    """Load the pipeline and write ``--num-images`` files, naming each on stdout."""
    check_model(args.model)
    pipe = load_pipeline(args.model, args.autoencoder, args.text_encoder, resolve_device(args.device))
    if args.dtype is not None:
        pipe.to(dtype=DTYPES[args.dtype])
    pipe.set_progress_bar_config(disable=None)  # tqdm: a bar on a terminal, none in a file
    common = dict(
        negative_prompt=args.negative_prompt,
        steps=args.steps,
        guidance=args.guidance,
        model_name=args.model,
    )
    for index, out in enumerate(numbered_outputs(args.out, args.num_images)):
        seed = args.seed + index
        if args.edit:
            _, path = edit_to_file(
                pipe,
                args.edit,
                out,
                keep=args.keep,
                layer_prompts=args.layer_prompts,
                prompt=args.prompt,
                restyle=args.restyle,
                strength=args.strength,
                layer_boxes=args.boxes,
                seed=seed,
                **common,
            )
        else:
            _, path = generate_to_file(
                pipe,
                args.prompt,
                out,
                layer_prompts=args.layer_prompts or args.layers,
                num_layers=args.num_layers,
                height=args.height,
                width=args.width,
                layer_boxes=args.boxes,
                seed=seed,
                **common,
            )
        print(f"wrote {path}", flush=True)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (argparse exits with 2 itself)."""
    args = parse_args(argv)
    configure_console()
    try:
        run(args)
    except (OSError, ValueError) as error:  # a missing model or input, a bad value: no traceback
        print("error: " + " ".join(str(error).split()), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    status = main()
    if status:  # 0 ends normally (and lets runpy callers go on)
        sys.exit(status)
