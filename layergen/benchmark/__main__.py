"""Entry point of ``python -m layergen.benchmark``."""

import sys

from layergen.benchmark.cli import main

sys.exit(main())
