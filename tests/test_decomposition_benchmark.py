"""The decomposition benchmark (issue 19.3): LayerD-style layer metric, decomposers, CLI."""

from __future__ import annotations

import pytest
import torch

from layergen.benchmark import decomposition
from layergen.benchmark.decomposition import (
    ClassicalDecomposer,
    GroundTruthDecomposer,
    PipelineDecomposer,
    align_layers,
    box_adherence,
    box_iou,
    decomposition_benchmark,
    layer_stack,
    mask_box,
    merge_layers,
    rgb_l1,
    soft_iou,
    trivial_decomposer,
)
from layergen.data.shapes import ShapeScenes
from layergen.layers import LayeredImage

SIZE = 8


def rgba(color: tuple[float, float, float], region: tuple[slice, slice] | None, alpha: float = 1.0) -> torch.Tensor:
    """A ``(4, SIZE, SIZE)`` layer of one colour, opaque over ``region`` (None: everywhere)."""
    layer = torch.zeros(4, SIZE, SIZE)
    layer[:3] = torch.tensor(color)[:, None, None]
    if region is None:
        layer[3] = alpha
    else:
        layer[3][region] = alpha
    return layer


BG = rgba((0.2, 0.2, 0.2), None)
LEFT = rgba((1.0, 0.0, 0.0), (slice(0, 4), slice(0, 3)))
RIGHT = rgba((1.0, 0.0, 0.0), (slice(4, 8), slice(5, 8)))
BOTH = merge_layers(torch.stack([LEFT, RIGHT]))


@pytest.fixture(scope="module")
def scenes() -> list[LayeredImage]:
    data = ShapeScenes(size=32, min_foregrounds=1, max_foregrounds=2, seed=0, split="test", length=4)
    return [data[i] for i in range(len(data))]


def test_pair_metrics_and_empty_masks() -> None:
    assert rgb_l1(LEFT, LEFT) == 0.0 and soft_iou(LEFT[3], LEFT[3]) == 1.0
    assert soft_iou(LEFT[3], RIGHT[3]) == 0.0
    assert soft_iou(torch.full((2, 2), 0.5), torch.ones(2, 2)) == pytest.approx(0.5)
    empty = torch.zeros(4, SIZE, SIZE)
    assert soft_iou(empty[3], empty[3]) == 1.0  # identical empty layers (LayerD: 0)
    assert soft_iou(empty[3], LEFT[3]) == 0.0
    assert rgb_l1(LEFT, empty) == 0.0  # nothing of the target to compare
    assert rgb_l1(empty, LEFT) == pytest.approx(1.0 / 3.0)  # black vs red over the target
    assert mask_box(empty[3]) is None and box_iou(empty[3], None) == 1.0
    assert box_iou(LEFT[3], None) == 0.0
    assert mask_box(LEFT[3]) == (0, 0, 4, 3) and box_iou(LEFT[3], mask_box(LEFT[3])) == 1.0


def test_merge_composites_over() -> None:
    half_blue = rgba((0.0, 0.0, 1.0), None, alpha=0.5)
    merged = merge_layers(torch.stack([BG, half_blue]))
    assert torch.allclose(merged[:, 0, 0], torch.tensor([0.1, 0.1, 0.6, 1.0]))
    assert torch.allclose(BOTH[3], LEFT[3] + RIGHT[3])


def test_identical_layers_align_perfectly() -> None:
    stack = torch.stack([BG, LEFT, RIGHT])
    for max_merges in (0, 5):
        alignment = align_layers(stack, stack, max_merges=max_merges)
        assert alignment.pairs == (((0,), (0,)), ((1,), (1,)), ((2,), (2,)))
        assert alignment.mean_rgb_l1 == 0.0 and alignment.mean_alpha_iou == 1.0
        assert alignment.merges == 0


def test_split_layer_aligns_to_merged_layer_through_a_merge() -> None:
    split, whole = torch.stack([BG, LEFT, RIGHT]), torch.stack([BG, BOTH])
    plain = align_layers(split, whole)  # DTW: both halves pair with the whole
    assert plain.pairs == (((0,), (0,)), ((1,), (1,)), ((2,), (1,)))
    assert plain.mean_alpha_iou == pytest.approx((1 + 0.5 + 0.5) / 3)
    merged = align_layers(split, whole, max_merges=1)
    assert merged.pairs == (((0,), (0,)), ((1, 2), (1,)))
    assert merged.merges == 1 and merged.mean_alpha_iou == 1.0 and merged.mean_rgb_l1 == 0.0
    reverse = align_layers(whole, split, max_merges=1)  # the ground truth side is merged
    assert reverse.pairs == (((0,), (0,)), ((1,), (1, 2))) and reverse.mean_alpha_iou == 1.0
    assert align_layers(split, whole, max_merges=0).merges == 0  # the budget holds


def test_merges_never_leave_fewer_than_two_layers() -> None:
    one = torch.stack([merge_layers(torch.stack([BG, LEFT, RIGHT]))])  # the composite alone
    alignment = align_layers(one, torch.stack([BG, LEFT, RIGHT]), max_merges=5)
    assert alignment.merges == 1 and len(alignment.pairs) == 2
    assert alignment.mean_alpha_iou < 1.0


def test_order_matters_for_overlapping_layers_only() -> None:
    blue = rgba((0.0, 0.0, 1.0), (slice(0, 4), slice(0, 3)), alpha=0.5)
    red = rgba((1.0, 0.0, 0.0), (slice(0, 4), slice(0, 3)), alpha=0.5)
    truth = torch.stack([BG, blue, red])
    swapped = align_layers(torch.stack([BG, red, blue]), truth)
    assert swapped.mean_rgb_l1 > 0.1  # overlapping layers: the order is part of the answer
    # a background on top is never reordered below the foregrounds
    assert align_layers(torch.stack([LEFT, BG]), torch.stack([BG, LEFT])).mean_alpha_iou < 1.0
    # non-overlapping layers commute (the composite cannot tell their order)
    commuted = align_layers(torch.stack([BG, RIGHT, LEFT]), torch.stack([BG, LEFT, RIGHT]))
    assert commuted.mean_alpha_iou == 1.0
    assert set(commuted.pairs) == {((0,), (0,)), ((2,), (1,)), ((1,), (2,))}  # path order: reordered


def test_ground_truth_scores_perfectly(scenes: list[LayeredImage]) -> None:
    summary = decomposition_benchmark(GroundTruthDecomposer(scenes), scenes)
    row = summary["all"]
    assert row["num_samples"] == 4 and row["failure_rate"] == 0.0
    assert row["rgb_l1"] == 0.0 and row["alpha_iou"] == 1.0 and row["merges"] == 0.0
    assert row["rgb_l1_merged"] == 0.0 and row["alpha_iou_merged"] == 1.0
    assert row["psnr_composite"] == 100.0
    assert 0.5 < row["box_iou"] <= 1.0  # shapes do not fill their boxes
    assert set(summary) - {"all"} <= {"2", "3"}


def test_trivial_scores_worse_than_ground_truth(scenes: list[LayeredImage]) -> None:
    truth = decomposition_benchmark(GroundTruthDecomposer(scenes), scenes)["all"]
    trivial = decomposition_benchmark(trivial_decomposer, scenes)["all"]
    assert trivial["num_layers_pred"] == 1.0
    assert trivial["alpha_iou"] < truth["alpha_iou"] - 0.2
    assert trivial["alpha_iou_merged"] < truth["alpha_iou_merged"]
    assert trivial["rgb_l1"] > truth["rgb_l1"]
    assert "box_iou" not in trivial  # no foreground to score
    assert trivial["psnr_composite"] == 100.0  # the composite is the input


def test_box_adherence_uses_the_aligned_ground_truth(scenes: list[LayeredImage]) -> None:
    scene = next(s for s in scenes if s.num_foregrounds == 2)
    stack = layer_stack(scene)
    alignment = align_layers(stack, stack)
    expected = [box_iou(scene.masks[k], mask_box(scene.masks[k])) for k in range(2)]
    assert box_adherence(scene, scene, alignment) == pytest.approx(expected)
    with pytest.raises(ValueError, match="without merges"):
        split = align_layers(torch.stack([BG, LEFT, RIGHT]), torch.stack([BG, BOTH]), max_merges=1)
        image = LayeredImage(BG[:3] * 2 - 1, torch.stack([LEFT, RIGHT])[:, :3] * 2 - 1,
                             torch.stack([LEFT, RIGHT])[:, 3:])
        box_adherence(image, image, split)


def test_classical_decomposer_runs(scenes: list[LayeredImage]) -> None:
    summary = decomposition_benchmark(ClassicalDecomposer(), scenes[:3])
    row = summary["all"]
    assert row["num_samples"] == 3
    assert 0.0 <= row["rgb_l1"] <= 1.0 and 0.0 <= row["alpha_iou"] <= 1.0
    assert row["alpha_iou_merged"] >= row["alpha_iou"] - 1e-6 or row["merges"] > 0
    assert row["psnr_composite"] > 30.0
    assert 1.0 <= row["num_layers_pred"] <= 3.0


def test_a_failing_decomposer_is_counted(scenes: list[LayeredImage]) -> None:
    def nothing(image: torch.Tensor, caption: str, num_layers: int | None) -> LayeredImage:
        raise ValueError("no layers")

    row = decomposition_benchmark(nothing, scenes[:2])["all"]
    assert row["failure_rate"] == 1.0 and row["num_layers_pred"] == 1.0


class FakePipeline:
    def __init__(self, scenes: list[LayeredImage]) -> None:
        self.truth = GroundTruthDecomposer(scenes)
        self.calls: list[tuple[int | None, str]] = []

    def decompose(self, image: torch.Tensor, num_layers: int | None = None, prompt: str = "") -> list[LayeredImage]:
        self.calls.append((num_layers, prompt))
        return [self.truth(image, prompt)]


def test_pipeline_decomposer(scenes: list[LayeredImage]) -> None:
    pipe = FakePipeline(scenes)
    row = decomposition_benchmark(PipelineDecomposer(pipe), scenes[:2])["all"]
    assert row["alpha_iou"] == 1.0
    assert pipe.calls == [(s.num_layers, s.prompt) for s in scenes[:2]]
    with pytest.raises(TypeError, match="no decompose method"):
        PipelineDecomposer(object())


def test_cli(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    out = tmp_path / "result.json"
    assert decomposition.main(["--num-samples", "4", "--size", "32", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    for row in ("| ground truth | 4 |", "| classical | 4 |", "| trivial | 4 |", "alpha_iou_merged"):
        assert row in text
    assert out.is_file()

    import layergen.pipelines

    monkeypatch.setattr(layergen.pipelines, "load_pipeline", lambda model: object())
    with pytest.raises(SystemExit, match="has no decompose method"):
        decomposition.main(["--num-samples", "4", "--size", "32", "--model", "some/dir"])
    data = ShapeScenes(size=32, min_foregrounds=1, max_foregrounds=2, seed=0, split="test", length=4)
    fake = FakePipeline([data[i] for i in range(4)])
    monkeypatch.setattr(layergen.pipelines, "load_pipeline", lambda model: fake)
    assert decomposition.main(["--num-samples", "4", "--size", "32", "--model", "some/dir"]) == 0
    assert "| some/dir | 4 | " in capsys.readouterr().out
