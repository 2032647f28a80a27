"""Generate and edit layered images in a browser: ``python app.py`` serves a local page.

Type a global prompt (and layer prompts, or let them come from the prompt), choose seed,
steps and guidance, and generate; each layer is shown with its mask beside the composite.
Show, hide and reorder layers, regenerate one layer under a new prompt (layer inpainting),
restyle it, or generate a new background behind the shown layers; open a PSD, ORA or ZIP of
PNG layers, and download the result as PSD, OpenRaster or a ZIP of PNG layers.
"""

from __future__ import annotations

import layergen.openmp  # noqa: F401  (first: OpenMP waiting set before torch loads)

# isort: split
import argparse
import sys
from pathlib import Path

from layergen.app import AppSession, make_app_server
from layergen.console import configure_console
from layergen.devices import DTYPES, add_device_arguments, resolve_device
from layergen.pipelines import load_pipeline

DEFAULT_MODEL = Path(__file__).resolve().parent / "weights" / "demo-reference"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model",
        default=str(DEFAULT_MODEL),
        help="pipeline directory / hub id, or a diffusion .ckpt (default: the shipped "
        "reference weights, weights/demo-reference)",
    )
    parser.add_argument(
        "--autoencoder", help="autoencoder directory or .ckpt (with a .ckpt --model)"
    )
    parser.add_argument("--text-encoder", help="text encoder path (with a .ckpt --model)")
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default: 127.0.0.1, this machine only; another address "
        "lets anyone who reaches it use the app)",
    )
    parser.add_argument(
        "--port", type=int, default=7860, help="port (default: 7860; 0: a free one)"
    )
    add_device_arguments(parser)
    args = parser.parse_args(argv)
    if not Path(args.model).exists() and args.model.count("/") != 1:
        parser.error(
            f"--model {args.model}: no such pipeline directory or checkpoint (nor a hub id)"
        )
    return args


def main(argv: list[str] | None = None) -> int:
    """Load the pipeline and serve the page until Ctrl-C; returns the exit status."""
    args = parse_args(argv)
    configure_console()
    try:
        pipe = load_pipeline(
            args.model, args.autoencoder, args.text_encoder, resolve_device(args.device)
        )
        if args.dtype is not None:
            pipe.to(dtype=DTYPES[args.dtype])
        pipe.set_progress_bar_config(disable=True)
        session = AppSession(pipe, model_name=Path(args.model).name or args.model)
        server = make_app_server(session, args.host, args.port)
    except (OSError, ValueError) as error:  # a missing model, a port in use: no traceback
        print("error: " + " ".join(str(error).split()), file=sys.stderr)
        return 1
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"layergen app at http://{host}:{server.server_port}/ (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        session.close()
    return 0


if __name__ == "__main__":
    status = main()
    if status:
        sys.exit(status)
