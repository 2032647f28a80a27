"""Train any layergen model: ``python train.py fit --config configs/demo/ae.yaml``."""

from layergen.cli import cli_main

if __name__ == "__main__":
    cli_main()
