"""Train any layergen model: ``python train.py fit --config configs/demo/ae.yaml``."""

from layergen.cli import cli_main
from layergen.console import configure_console

if __name__ == "__main__":
    configure_console()
    cli_main()
