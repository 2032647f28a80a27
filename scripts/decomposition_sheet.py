"""Make the contact sheet of docs/decomposition.md: held-out scenes and their decompositions.

    python scripts/decomposition_sheet.py --model weights/demo-decompose --out docs/decomposition.png

For each of the first ``--num`` held-out scenes of the decomposition benchmark, one row each:
the ground truth, the learned model's decomposition of its composite (with the caption), the
same without the caption, and the classical chain's.
"""

from __future__ import annotations

import layergen.openmp  # noqa: F401  (first: OpenMP waiting set before torch loads)

# isort: split
import argparse

from layergen.benchmark.decomposition import ClassicalDecomposer
from layergen.data.shapes import ShapeScenes
from layergen.export.contact_sheet import save_contact_sheet
from layergen.pipelines import load_pipeline
from layergen.pipelines.decomposition import PipelineDecomposer


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a composite-conditioned pipeline directory")
    parser.add_argument("--out", default="docs/decomposition.png")
    parser.add_argument("--num", type=int, default=4, help="scenes (rows of four)")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default: the recipe's)")
    args = parser.parse_args(argv)
    steps = {} if args.steps is None else {"num_inference_steps": args.steps}
    pipe = load_pipeline(args.model)
    decomposers = {
        "learned": PipelineDecomposer(pipe, **steps),
        "learned, no caption": PipelineDecomposer(pipe, use_caption=False, **steps),
        "classical": ClassicalDecomposer(),
    }
    scenes = ShapeScenes(size=32, min_foregrounds=1, max_foregrounds=2, seed=0, split="test",
                         length=args.num)
    rows, titles = [], []
    for i in range(args.num):
        scene = scenes[i]
        rows.append(scene)
        titles.append(f"ground truth: {scene.prompt}")
        for name, decompose in decomposers.items():
            out = decompose(scene.composite(), scene.prompt, scene.num_layers)
            rows.append(out)
            titles.append(name)
    print(f"wrote {save_contact_sheet(rows, args.out, tile=96, titles=titles)}")


if __name__ == "__main__":
    main()
