r"""Generate or edit a layered image from text and save it as PSD, OpenRaster or PNGs.

    M=outputs/demo/ldm/pretrained   # the pipeline the README demo trains
    python generate.py --model $M "a large red star on the left on a blue plain background" \
        --layers auto --seed 0 --steps 50 --guidance 1 --out star.psd
    python generate.py --model $M --edit star.psd --keep 0 \
        --layer-prompts "the background" "a small green heart" --out heart.ora
    python generate.py --model $M --edit star.psd --restyle 0 --strength 0.6 \
        --layer-prompts "the background" --out restyled
"""

from __future__ import annotations

import argparse
import logging

from layergen.pipelines.generation import edit_to_file, generate_to_file, load_pipeline


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
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
    parser.add_argument("--device", default="cpu")
    edit = parser.add_argument_group("edit mode")
    edit.add_argument("--edit", metavar="INPUT", help="layered input: .psd, .ora or a PNG folder")
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
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    pipe = load_pipeline(args.model, args.autoencoder, args.text_encoder, args.device)
    common = dict(
        negative_prompt=args.negative_prompt,
        seed=args.seed,
        steps=args.steps,
        guidance=args.guidance,
        model_name=args.model,
    )
    if args.edit:
        _, path = edit_to_file(
            pipe,
            args.edit,
            args.out,
            keep=args.keep,
            layer_prompts=args.layer_prompts,
            prompt=args.prompt,
            restyle=args.restyle,
            strength=args.strength,
            **common,
        )
    else:
        _, path = generate_to_file(
            pipe,
            args.prompt,
            args.out,
            layer_prompts=args.layer_prompts or args.layers,
            num_layers=args.num_layers,
            height=args.height,
            width=args.width,
            **common,
        )
    logging.info("wrote %s", path)


if __name__ == "__main__":
    main()
