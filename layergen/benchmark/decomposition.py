"""The decomposition benchmark: composite -> layers, scored against exact synthetic layers.

Held-out shape scenes (``ShapeScenes(split="test")``) are composited and handed to a
*decomposer*, any callable ``(composite (3, H, W) in [-1, 1], caption, num_layers | None)
-> LayeredImage``. Shipped decomposers: :class:`GroundTruthDecomposer` (returns the scene:
the ceiling), :class:`ClassicalDecomposer` (the weight-free LayerDiff chain of
:mod:`layergen.synthesis.decompose`), :func:`trivial_decomposer` (the composite as a single
background layer: the floor) and :class:`PipelineDecomposer` (a pipeline's ``decompose``).

**Layer metric** (after LayerD, Suzuki et al., ICCV 2025, its evaluation protocol). Both
decompositions are read as straight-alpha RGBA layers in [0, 1], back to front
(``LayeredImage.to_rgba_tensors``: the background opaque, a foreground's alpha
``m_i / (1 - sum_{j>i} m_j)``). For a predicted layer ``p`` and a ground-truth layer ``g``:

* ``rgb_l1(p, g)`` = mean over the pixels where ``alpha_g >= 0.5/255`` (non-zero in 8 bits)
  of the channel mean of ``|rgb_p - rgb_g|`` (0 when ``g`` is empty);
* ``alpha_iou(p, g)`` = ``sum min(alpha_p, alpha_g) / sum max(alpha_p, alpha_g)`` (soft IoU);
* the alignment cost is ``(rgb_l1 + 1 - alpha_iou) / 2`` in [0, 1].

The sequences are aligned by dynamic time warping on that cost (a monotone path from the
first pair to the last, every layer in at least one pair; one layer may pair with several
consecutive layers of the other side); ``rgb_l1`` and ``alpha_iou`` are the means over the
path's pairs. Two scores are reported per sample:

* ``rgb_l1`` / ``alpha_iou``: no merges (LayerD's curve at 0 edits);
* ``rgb_l1_merged`` / ``alpha_iou_merged`` / ``merges``: consecutive layers of either side
  may first be merged ("over" compositing), at most ``max_merges`` merges in all and never
  leaving a side with fewer than 2 layers; the grouping with the lowest mean path cost is
  kept (ties: fewer merges) and ``merges`` counts its merges (LayerD's edits).

Where this differs from LayerD: (1) the merges are searched exhaustively, not greedily one
at a time; (2) the order of the layers is compared up to swaps of foregrounds that do not
overlap (``max(alpha_i * alpha_j) <= 1/255``): such swaps leave the composite unchanged, so
no image can tell them apart, and layergen's scenes order such objects arbitrarily (LayerD
instead merges all mutually non-overlapping top layers into one before aligning, which
would pool the objects that layergen names one per layer); the background stays first;
(3) the soft IoU of two empty layers is 1, not 0 (identical layers); (4) one cost weight
(LayerD's default) and no 8-bit quantisation.

**Composite PSNR**: the decomposition's re-composite against the input composite (dB on
[0, 1], :func:`layergen.benchmark.synthetic.psnr`). **Box adherence** (``box_iou``): each
predicted foreground's mask (binarised at 0.5) against the bounding box of the ground-truth
mask it aligns to without merges (its lowest-cost pair), as IoU; this is the score to use
when the boxes are given to a layout-conditioned model. Everything is broken down by the
scene's layer count ``L = K + 1``.

    python -m layergen.benchmark.decomposition --num-samples 64 [--model DIR]
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import math
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from layergen.benchmark.synthetic import psnr
from layergen.data.latents import layer_boxes
from layergen.data.shapes import ShapeScenes
from layergen.data.transforms import resize
from layergen.layers import LayeredImage
from layergen.metrics.breakdown import Breakdown, markdown_table
from layergen.pipelines.decomposition import PipelineDecomposer

logger = logging.getLogger(__name__)

Decomposer = Callable[[Tensor, str, "int | None"], LayeredImage]
Group = tuple[int, ...]

ALPHA_EPS = 0.5 / 255  # alpha that rounds to a non-zero 8-bit value
OVERLAP_EPS = 1.0 / 255  # layers overlap where alpha_i * alpha_j exceeds this
MAX_MERGES = 5  # LayerD's default number of edits
MAX_ORDERS = 120  # layer orders tried per side (all of them up to 5 non-overlapping foregrounds)
COLUMNS = (
    "num_samples", "num_layers_pred", "rgb_l1", "alpha_iou", "rgb_l1_merged",
    "alpha_iou_merged", "merges", "psnr_composite", "box_iou", "failure_rate",
)


# ----------------------------------------------------------------------------------------
# Per-pair metrics
# ----------------------------------------------------------------------------------------


def layer_stack(image: LayeredImage) -> Tensor:
    """``(L, 4, H, W)`` straight-alpha RGBA in [0, 1], background first (opaque)."""
    return torch.stack(image.to_rgba_tensors()).float()


def rgb_l1(pred: Tensor, target: Tensor) -> float:
    """LayerD's RGB L1 of ``(4, H, W)`` RGBA layers: over the target's non-zero alpha."""
    region = (target[3] >= ALPHA_EPS).float()
    error = (pred[:3] - target[:3]).abs().mean(0)
    area = float(region.sum())
    return float((error * region).sum()) / area if area > 0 else 0.0


def soft_iou(a: Tensor, b: Tensor) -> float:
    """``sum min(a, b) / sum max(a, b)`` of two alpha maps in [0, 1]; 1 when both are empty."""
    union = float(torch.maximum(a, b).sum())
    return float(torch.minimum(a, b).sum()) / union if union > 0 else 1.0


def merge_layers(layers: Tensor) -> Tensor:
    """Composite ``(k, 4, H, W)`` straight-alpha layers, back to front, into one ``(4, H, W)``."""
    rgb, alpha = layers[0, :3] * layers[0, 3:], layers[0, 3:]  # premultiplied
    for layer in layers[1:]:
        top = layer[3:]
        rgb = layer[:3] * top + rgb * (1 - top)
        alpha = top + alpha * (1 - top)
    straight = torch.where(alpha > 0, rgb / alpha.clamp_min(1e-8), torch.zeros_like(rgb))
    return torch.cat([straight, alpha])


def mask_box(mask: Tensor) -> tuple[int, int, int, int] | None:
    """Bounding box ``(top, left, bottom, right)`` (exclusive) of ``mask > 0.5``, or None."""
    hard = mask.reshape(mask.shape[-2:]) > 0.5
    rows, cols = hard.any(1).nonzero(), hard.any(0).nonzero()
    if len(rows) == 0:
        return None
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


def box_iou(mask: Tensor, box: tuple[int, int, int, int] | None) -> float:
    """IoU of ``mask > 0.5`` (``(H, W)`` or ``(1, H, W)``) with a filled box; 1 when both are empty."""
    hard = mask.reshape(mask.shape[-2:]) > 0.5
    filled = torch.zeros_like(hard)
    if box is not None:
        top, left, bottom, right = box
        filled[top:bottom, left:right] = True
    union = int((hard | filled).sum())
    return int((hard & filled).sum()) / union if union else 1.0


# ----------------------------------------------------------------------------------------
# Alignment
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Alignment:
    """An alignment of predicted and ground-truth layers.

    Attributes:
        pairs: ``(pred group, gt group)`` per path step; a group is the tuple of original
            layer indices merged into one layer (back to front), a single index without merges.
        rgb_l1: per pair.
        alpha_iou: per pair.
        merges: merges on both sides (``sum(len(group) - 1)`` over the distinct groups).
    """

    pairs: tuple[tuple[Group, Group], ...]
    rgb_l1: tuple[float, ...]
    alpha_iou: tuple[float, ...]
    merges: int

    @property
    def mean_rgb_l1(self) -> float:
        return sum(self.rgb_l1) / len(self.rgb_l1)

    @property
    def mean_alpha_iou(self) -> float:
        return sum(self.alpha_iou) / len(self.alpha_iou)

    @property
    def mean_cost(self) -> float:
        return (self.mean_rgb_l1 + 1.0 - self.mean_alpha_iou) / 2.0


def _dtw_path(cost: list[list[float]]) -> list[tuple[int, int]]:
    """The minimum-sum monotone path from (0, 0) to (n-1, m-1) (ties: diagonal first)."""
    n, m = len(cost), len(cost[0])
    acc = [[math.inf] * m for _ in range(n)]
    for i in range(n):
        for j in range(m):
            if i == 0 and j == 0:
                acc[i][j] = cost[0][0]
                continue
            prev = min(acc[i - 1][j - 1] if i and j else math.inf,
                       acc[i - 1][j] if i else math.inf, acc[i][j - 1] if j else math.inf)
            acc[i][j] = cost[i][j] + prev
    i, j = n - 1, m - 1
    path = [(i, j)]
    while i or j:
        steps = [(i - 1, j - 1), (i - 1, j), (i, j - 1)]
        i, j = min((s for s in steps if s[0] >= 0 and s[1] >= 0), key=lambda s: acc[s[0]][s[1]])
        path.append((i, j))
    return path[::-1]


def _layer_orders(layers: Tensor) -> Iterator[Group]:
    """Orders of the layers that keep the background first and every overlapping pair of
    foregrounds in its given order (the given order first; at most ``MAX_ORDERS``)."""
    n = len(layers)
    alpha = layers[:, 3].flatten(1)
    overlaps = {(i, j) for i in range(1, n) for j in range(i + 1, n)
                if float((alpha[i] * alpha[j]).max()) > OVERLAP_EPS}

    def extend(order: list[int], left: list[int]) -> Iterator[Group]:
        if not left:
            yield tuple(order)
            return
        for k in left:
            if all((lower, k) not in overlaps for lower in left if lower < k):
                yield from extend(order + [k], [x for x in left if x != k])

    yield from itertools.islice(extend([0], list(range(1, n))), MAX_ORDERS)


def _groupings(order: Group, max_merges: int) -> Iterator[tuple[Group, ...]]:
    """Splits of ``order`` into consecutive groups with at most ``max_merges`` merges,
    leaving at least ``min(2, len(order))`` groups."""
    n = len(order)
    for cuts in itertools.product((True, False), repeat=n - 1):  # cut after position i?
        groups, start = [], 0
        for i, cut in enumerate(cuts):
            if cut:
                groups.append(order[start:i + 1])
                start = i + 1
        groups.append(order[start:])
        if n - len(groups) <= max_merges and len(groups) >= min(2, n):
            yield tuple(groups)


class _PairScores:
    """Cached merged layers and pair scores of two layer stacks."""

    def __init__(self, pred: Tensor, gt: Tensor) -> None:
        self.stacks = (pred, gt)
        self.merged: dict[tuple[int, Group], Tensor] = {}
        self.scores: dict[tuple[Group, Group], tuple[float, float, float]] = {}

    def layer(self, side: int, group: Group) -> Tensor:
        if (side, group) not in self.merged:
            self.merged[side, group] = merge_layers(self.stacks[side][list(group)])
        return self.merged[side, group]

    def __call__(self, p: Group, g: Group) -> tuple[float, float, float]:
        """``(cost, rgb_l1, alpha_iou)`` of the merged groups ``p`` and ``g``."""
        if (p, g) not in self.scores:
            a, b = self.layer(0, p), self.layer(1, g)
            l1, iou = rgb_l1(a, b), soft_iou(a[3], b[3])
            self.scores[p, g] = ((l1 + 1.0 - iou) / 2.0, l1, iou)
        return self.scores[p, g]


def align_layers(pred: Tensor, gt: Tensor, max_merges: int = 0) -> Alignment:
    """Align two layer sequences with merges (see the module docstring).

    Args:
        pred: ``(Lp, 4, H, W)`` predicted straight-alpha RGBA layers in [0, 1], back to front.
        gt: ``(Lg, 4, H, W)`` ground-truth layers, same convention.
        max_merges: merges of consecutive layers allowed on both sides together.

    Returns:
        The alignment of lowest mean path cost (ties: fewer merges, then the given order).
    """
    if len(pred) == 0 or len(gt) == 0:
        raise ValueError("align_layers: both sides need at least one layer")
    scores = _PairScores(pred, gt)
    best: tuple[float, int] | None = None
    result: Alignment | None = None
    for pred_order, gt_order in itertools.product(list(_layer_orders(pred)), list(_layer_orders(gt))):
        for pred_groups in _groupings(pred_order, max_merges):
            pred_merges = len(pred) - len(pred_groups)
            for gt_groups in _groupings(gt_order, max_merges - pred_merges):
                cost = [[scores(p, g)[0] for g in gt_groups] for p in pred_groups]
                path = _dtw_path(cost)
                mean = sum(cost[i][j] for i, j in path) / len(path)
                merges = pred_merges + len(gt) - len(gt_groups)
                key = (round(mean, 9), merges)
                if best is None or key < best:
                    pairs = tuple((pred_groups[i], gt_groups[j]) for i, j in path)
                    best, result = key, Alignment(
                        pairs=pairs,
                        rgb_l1=tuple(scores(p, g)[1] for p, g in pairs),
                        alpha_iou=tuple(scores(p, g)[2] for p, g in pairs),
                        merges=merges,
                    )
    assert result is not None
    return result


def box_adherence(pred: LayeredImage, gt: LayeredImage, alignment: Alignment) -> list[float]:
    """Box IoU of each predicted foreground with the box of its best-aligned GT layer.

    Args:
        alignment: a merge-free alignment of ``pred`` and ``gt`` (:func:`align_layers`).

    Returns:
        One IoU per predicted foreground (the background, index 0, is not scored).
    """
    if alignment.merges:
        raise ValueError("box_adherence: expects an alignment without merges")
    pred_masks, gt_masks = pred.layer_masks(), gt.layer_masks()
    scores = []
    for index in range(1, pred.num_layers):
        matches = [(1.0 - iou + l1, g) for ((p,), (g,)), l1, iou in
                   zip(alignment.pairs, alignment.rgb_l1, alignment.alpha_iou) if p == index]
        target = min(matches)[1]
        scores.append(box_iou(pred_masks[index], mask_box(gt_masks[target])))
    return scores


# ----------------------------------------------------------------------------------------
# Decomposers
# ----------------------------------------------------------------------------------------


def trivial_decomposer(image: Tensor, caption: str = "", num_layers: int | None = None) -> LayeredImage:
    """The floor: the whole composite as one background layer (K = 0)."""
    height, width = image.shape[-2:]
    return LayeredImage(background=image.float(), foregrounds=image.new_zeros(0, 3, height, width),
                        masks=image.new_zeros(0, 1, height, width), prompt=caption)


class GroundTruthDecomposer:
    """The ceiling: returns the scene whose composite and caption are given."""

    def __init__(self, scenes: Sequence[LayeredImage]) -> None:
        self.scenes = {self._key(s.composite(), s.prompt): s for s in scenes}

    @staticmethod
    def _key(image: Tensor, caption: str) -> tuple[bytes, str]:
        return image.detach().float().cpu().numpy().tobytes(), caption

    def __call__(self, image: Tensor, caption: str, num_layers: int | None = None) -> LayeredImage:
        return self.scenes[self._key(image, caption)]


class ClassicalDecomposer:
    """The classical LayerDiff chain of ``decompose.py`` (no weights; CPU).

    Given ``num_layers``, at most ``num_layers - 1`` foregrounds are kept (the chain finds
    what it finds, up to that count); otherwise at most ``max_foregrounds``.

    Raises:
        ValueError: when the chain finds no layers (the benchmark counts a failure).
    """

    def __init__(self, max_foregrounds: int = 4) -> None:
        self.max_foregrounds = max_foregrounds
        self.chains: dict[int, Any] = {}

    def __call__(self, image: Tensor, caption: str, num_layers: int | None = None) -> LayeredImage:
        from layergen.synthesis.decompose import build_decompose_chain, decompose_image

        k = self.max_foregrounds if num_layers is None else max(1, num_layers - 1)
        if k not in self.chains:
            self.chains[k] = build_decompose_chain(max_foregrounds=k)
        return decompose_image(self.chains[k], image, caption)


def scene_boxes(scene: LayeredImage) -> Tensor:
    """``(L, 4)`` layer boxes of a scene as training draws them
    (:func:`~layergen.data.latents.layer_boxes`): the background's the whole frame, each
    foreground's that of its visible mask, NaN (no box) for an empty mask."""
    valid = torch.ones(1, scene.num_layers, dtype=torch.bool)
    return layer_boxes(scene.layer_masks()[None], valid)[0]


class TextToLayersDecomposer:
    """Text to layers scored as a decomposition: the pipeline generates from the scene's
    caption and layer prompts alone (not its pixels), optionally given the scene's layer
    boxes; with boxes, ``box_iou`` is the box adherence of generated masks."""

    def __init__(self, pipe: Any, scenes: Sequence[LayeredImage], boxes: bool = False,
                 seed: int = 0, **call_kwargs: Any) -> None:
        self.pipe, self.boxes, self.seed, self.call_kwargs = pipe, boxes, seed, call_kwargs
        self.truth = GroundTruthDecomposer(scenes)

    def __call__(self, image: Tensor, caption: str, num_layers: int | None = None) -> LayeredImage:
        scene = self.truth(image, caption)
        extra = {"layer_boxes": scene_boxes(scene)} if self.boxes else {}
        out = self.pipe(caption, layer_prompts=list(scene.layer_prompts),
                        generator=torch.Generator().manual_seed(self.seed),
                        **self.call_kwargs, **extra).images[0]
        return resize(out, scene.size)  # the model's size -> the scene's


class BoxedDecomposer:
    """A pipeline decomposer given each scene's layer boxes (:func:`scene_boxes`, as in
    training)."""

    def __init__(self, decomposer: PipelineDecomposer, scenes: Sequence[LayeredImage]) -> None:
        self.decomposer = decomposer
        self.truth = GroundTruthDecomposer(scenes)

    def __call__(self, image: Tensor, caption: str, num_layers: int | None = None) -> LayeredImage:
        scene = self.truth(image, caption)
        return self.decomposer(image, caption, num_layers, layer_boxes=scene_boxes(scene))


# ----------------------------------------------------------------------------------------
# Benchmark
# ----------------------------------------------------------------------------------------


def decomposition_benchmark(
    decomposer: Decomposer,
    scenes: Sequence[LayeredImage],
    max_merges: int = MAX_MERGES,
    give_num_layers: bool = True,
) -> dict[str, dict[str, float]]:
    """Score a decomposer on ground-truth scenes (metrics in the module docstring).

    A decomposer that raises ``ValueError`` on a scene (nothing found) is scored as the
    trivial decomposition there and counted in ``failure_rate``.

    Args:
        decomposer: ``(composite (3, H, W) in [-1, 1], caption, num_layers | None) -> LayeredImage``.
        scenes: ground-truth layered images.
        max_merges: merges allowed for the ``*_merged`` scores.
        give_num_layers: pass the scene's layer count to the decomposer (else None).

    Returns:
        ``{group: {metric: mean}}`` with groups ``"all"`` and the layer counts (``"2"``, ...).
    """
    breakdown = Breakdown()
    for index, scene in enumerate(scenes):
        n = scene.num_layers
        composite = scene.composite()
        failed = 0.0
        try:
            pred = decomposer(composite, scene.prompt, n if give_num_layers else None)
        except ValueError as error:
            logger.warning("scene %d: the decomposer failed (%s); scored as one layer", index, error)
            pred, failed = trivial_decomposer(composite, scene.prompt), 1.0
        if pred.size != scene.size:
            raise ValueError(f"scene {index}: decomposition of size {pred.size}, expected {scene.size}")
        pred_stack, gt_stack = layer_stack(pred), layer_stack(scene)
        plain = align_layers(pred_stack, gt_stack, max_merges=0)
        merged = align_layers(pred_stack, gt_stack, max_merges=max_merges)
        breakdown.count(n)
        breakdown.add("num_layers_pred", float(pred.num_layers), n)
        breakdown.add("rgb_l1", plain.mean_rgb_l1, n)
        breakdown.add("alpha_iou", plain.mean_alpha_iou, n)
        breakdown.add("rgb_l1_merged", merged.mean_rgb_l1, n)
        breakdown.add("alpha_iou_merged", merged.mean_alpha_iou, n)
        breakdown.add("merges", float(merged.merges), n)
        breakdown.add("psnr_composite", psnr(pred.composite()[None], composite[None]), n)
        breakdown.add("box_iou", box_adherence(pred, scene, plain), n)
        breakdown.add("failure_rate", failed, n)
    return breakdown.summary()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m layergen.benchmark.decomposition",
                                     description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="pipeline directory with a decompose method (adds its row)")
    parser.add_argument("--num-samples", type=int, default=64)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--min-foregrounds", type=int, default=1)
    parser.add_argument("--max-foregrounds", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-merges", type=int, default=MAX_MERGES)
    parser.add_argument("--free-count", action="store_true",
                        help="do not tell the decomposers the number of layers")
    parser.add_argument("--no-caption", action="store_true",
                        help="--model decomposes from pixels alone (no caption as its prompt)")
    parser.add_argument("--steps", type=int, help="--model's denoising steps (default its recipe's)")
    parser.add_argument("--candidates", type=int, default=1,
                        help="--model draws this many decompositions and keeps the closest (decompose's "
                        "num_candidates)")
    parser.add_argument("--boxes", action="store_true",
                        help="--model is given the ground-truth layer boxes (box-conditioned models)")
    parser.add_argument("--text-to-layers", action="store_true",
                        help="also score --model generating from the captions alone, without and "
                        "with the layer boxes (box adherence)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    return parser


def run(args: argparse.Namespace) -> dict[str, dict[str, dict[str, float]]]:
    """``{decomposer name: summary}`` for the rows of the table."""
    scenes = ShapeScenes(size=args.size, min_foregrounds=args.min_foregrounds,
                         max_foregrounds=args.max_foregrounds, seed=args.seed, split="test",
                         length=args.num_samples)
    references = [scenes[i] for i in range(len(scenes))]
    decomposers: dict[str, Decomposer] = {
        "ground truth": GroundTruthDecomposer(references),
        "classical": ClassicalDecomposer(),
        "trivial": trivial_decomposer,
    }
    if args.model:
        from layergen.pipelines import load_pipeline

        pipe = load_pipeline(args.model)
        if not callable(getattr(pipe, "decompose", None)):
            raise SystemExit(f"--model {args.model}: its pipeline ({type(pipe).__name__}) has no "
                             "decompose method, so it cannot be benchmarked on decomposition")
        steps = {} if args.steps is None else {"num_inference_steps": args.steps}
        name = args.model + (" (no caption)" if args.no_caption else "") + (" (boxes)" if args.boxes else "")
        if args.candidates > 1:
            name += f" (best of {args.candidates})"
            steps["num_candidates"] = args.candidates
        decomposer = PipelineDecomposer(pipe, use_caption=not args.no_caption, **steps)
        decomposers[name] = BoxedDecomposer(decomposer, references) if args.boxes else decomposer
        if args.text_to_layers:
            decomposers[f"{args.model}: text"] = TextToLayersDecomposer(pipe, references, **steps)
            if pipe.unet.config.get("box_condition", False):
                decomposers[f"{args.model}: text + boxes"] = TextToLayersDecomposer(
                    pipe, references, boxes=True, **steps)
    return {name: decomposition_benchmark(d, references, args.max_merges, not args.free_count)
            for name, d in decomposers.items()}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(1)
    results = run(args)
    print(f"decomposition benchmark: {args.num_samples} test scenes of {args.size} px, "
          f"{args.min_foregrounds}-{args.max_foregrounds} foregrounds, seed {args.seed}")
    print(markdown_table({name: s["all"] for name, s in results.items()}, COLUMNS, row_label="decomposer"))
    print()
    by_layers = {f"{name}, {group} layers": row for name, s in results.items()
                 for group, row in s.items() if group != "all"}
    print(markdown_table(by_layers, COLUMNS, row_label="decomposer"))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
