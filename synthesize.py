"""Build a layered dataset from photographs: ``python synthesize.py --config configs/synth/text2layer.yaml``."""

import layergen.openmp  # noqa: F401  (first: OpenMP waiting set before torch loads)

# isort: split
from layergen.synthesis.cli import format_summary, synthesize_main

if __name__ == "__main__":
    print(format_summary(synthesize_main()))
