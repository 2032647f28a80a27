"""Train any layergen model: ``python train.py fit --config configs/demo/ae.yaml``."""

import layergen.openmp  # noqa: F401  (first: OpenMP waiting set before torch loads)

# isort: split
from layergen.cli import cli_main
from layergen.console import configure_console

if __name__ == "__main__":
    configure_console()
    cli_main()
