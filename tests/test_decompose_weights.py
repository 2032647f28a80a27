"""The shipped decomposition weights (weights/demo-decompose) decompose, take boxes and keep
the figures written next to them."""

import json
from pathlib import Path

import pytest
import torch

from layergen.benchmark.decomposition import decomposition_benchmark, scene_boxes
from layergen.data.shapes import ShapeScenes
from layergen.export import load_layered
from layergen.pipelines import load_pipeline
from layergen.pipelines.decomposition import PipelineDecomposer

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "weights" / "demo-decompose"
TOLERANCE = 0.07


@pytest.fixture(scope="module")
def pipe():
    pipe = load_pipeline(WEIGHTS)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_shipped_folder_records_how_it_was_made():
    files = [p for p in WEIGHTS.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 50 * 2**20
    record = json.loads((WEIGHTS / "reference.json").read_text())
    assert (ROOT / record["config"]).is_file() and record["steps"] > 6000
    decomposition = json.loads((WEIGHTS / "decomposition.json").read_text())
    assert {"classical", "weights/demo-decompose: text + boxes"} <= set(decomposition["results"])


def test_decompose_script_on_a_held_out_scene(tmp_path):
    from test_decompose import load_script

    scene = ShapeScenes(size=32, seed=0, split="test", length=1)[0]
    scene.composite_pil().save(tmp_path / "scene.png")
    out = tmp_path / "scene.psd"
    argv = [str(tmp_path / "scene.png"), "--out", str(out), "--model", str(WEIGHTS),
            "--num-layers", str(scene.num_layers), "--caption", scene.prompt, "--steps", "20"]
    assert load_script().main(argv) == 0
    layered = load_layered(out)
    assert layered.num_layers == scene.num_layers
    assert (layered.composite() - scene.composite()).abs().max() < 3 / 255  # the picture, re-composited


def test_boxes_place_the_layers(pipe):
    scene = ShapeScenes(size=32, seed=0, split="test", length=1)[0]
    boxes = scene_boxes(scene)
    out = pipe(scene.prompt, layer_prompts=list(scene.layer_prompts), layer_boxes=boxes,
               generator=torch.Generator().manual_seed(0)).images[0]
    x0, y0, x1, y1 = (boxes[1] * 32).round().int().tolist()
    mask = out.masks[0, 0]
    assert mask[y0:y1, x0:x1].sum() > 0.6 * mask.sum()  # most of the first object in its box


@pytest.mark.slow
def test_shipped_decomposition_reaches_its_figures(pipe):
    check = json.loads((WEIGHTS / "decomposition.json").read_text())["check"]
    scenes = ShapeScenes(size=32, min_foregrounds=1, max_foregrounds=2, seed=0, split="test",
                         length=check["num_samples"])
    row = decomposition_benchmark(PipelineDecomposer(pipe), [scenes[i] for i in range(len(scenes))])["all"]
    assert row["alpha_iou"] >= check["alpha_iou"] - TOLERANCE
    assert row["rgb_l1"] <= check["rgb_l1"] + TOLERANCE / 2
