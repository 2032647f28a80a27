"""Image to layers: ``decompose.py`` on real photographs shipped with scikit-image."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from psd_tools import PSDImage
from skimage import data

from layergen.export import load_ora, psd_composite
from layergen.layers import BACKGROUND_PROMPT
from layergen.synthesis.decompose import (
    build_decompose_chain,
    decompose_image,
    load_image,
    plan_outputs,
)
from layergen.synthesis.layerdiff import LayerDiffChain

ROOT = Path(__file__).resolve().parents[1]


def load_script():
    spec = importlib.util.spec_from_file_location("decompose_script", ROOT / "decompose.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    Image.fromarray(data.astronaut()).resize((160, 160), Image.LANCZOS).save(folder / "astronaut.png")
    Image.fromarray(data.coffee()).resize((200, 150), Image.LANCZOS).save(folder / "coffee.png")
    (folder / "coffee.txt").write_text("a cup of coffee with a spoon on a saucer on a red table")
    return folder


def test_decompose_photo_to_psd_with_named_layers(photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "astronaut.psd"
    caption = "a woman in a spacesuit in front of an american flag and a space shuttle, white background"
    assert load_script().main([str(photos / "astronaut.png"), "--out", str(out), "--caption", caption]) == 0

    psd = PSDImage.open(out)
    names = [layer.name for layer in psd]
    assert names[0] == BACKGROUND_PROMPT and len(names) >= 2  # background + one layer per object
    assert len(set(names)) == len(names)
    assert set(names[1:]) <= {"a woman", "a spacesuit", "an american flag", "a space shuttle"}
    assert (psd.width, psd.height) == (160, 160)
    composite = psd_composite(out).astype(np.float64)[..., :3]
    photo = np.asarray(Image.open(photos / "astronaut.png").convert("RGB"), dtype=np.float64)
    assert np.abs(composite - photo).mean() < 1.0  # the layers re-composite to the photograph


def test_decompose_folder_to_ora_skips_bad_files(photos: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("coffee.png", "coffee.txt"):
        (folder / name).write_bytes((photos / name).read_bytes())
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "layers"
    status = load_script().main([str(folder), "--out", str(out), "--format", "ora", "--max-foregrounds", "2"])
    assert status == 1 and "skipped 1 of 2 images" in capsys.readouterr().err
    layered = load_ora(out / "coffee.ora")
    assert 1 <= layered.num_foregrounds <= 2
    assert layered.layer_prompts[0] == BACKGROUND_PROMPT
    assert set(layered.layer_prompts[1:]) <= {"a cup", "coffee", "a spoon", "a saucer"}


def test_unnamed_objects_are_named_by_colour(photos: Path) -> None:
    chain = build_decompose_chain(max_foregrounds=2)
    assert isinstance(chain, LayerDiffChain)
    layered = decompose_image(chain, load_image(photos / "coffee.png"), caption="", key="coffee")
    assert all(p.startswith("the ") and p.endswith(" object") for p in layered.layer_prompts[1:])
    assert layered.metadata["key"] == "coffee"


def test_plan_outputs_and_errors(photos: Path, tmp_path: Path) -> None:
    inputs, outputs = plan_outputs(photos / "coffee.png", None, "psd")
    assert inputs == [photos / "coffee.png"] and outputs == [photos / "coffee_layers.psd"]
    inputs, outputs = plan_outputs(photos, tmp_path / "o", "png")
    assert [p.name for p in inputs] == ["astronaut.png", "coffee.png"]
    assert outputs == [tmp_path / "o" / "astronaut", tmp_path / "o" / "coffee"]
    with pytest.raises(ValueError, match="no such image"):
        plan_outputs(tmp_path / "missing.jpg", None)
    with pytest.raises(ValueError, match="no image files"):
        plan_outputs(tmp_path, None)
    with pytest.raises(ValueError, match="format"):
        plan_outputs(photos, None, "gif")
    with pytest.raises(ValueError, match="broken.jpg: cannot read"):
        bad = tmp_path / "broken.jpg"
        bad.write_bytes(b"xx")
        load_image(bad)


def test_flags_swap_in_real_model_backends(photos: Path, tmp_path: Path) -> None:
    from layergen.synthesis.backends.depth import TransformersDepth, build_tiny_depth
    from layergen.synthesis.backends.detection import TransformersDetection, build_tiny_detector
    from layergen.synthesis.backends.segmentation import SamSegmentation, build_tiny_sam

    chain = build_decompose_chain(
        max_foregrounds=3,
        detection_model=str(build_tiny_detector(tmp_path / "owlv2")),
        sam_model=str(build_tiny_sam(tmp_path / "sam")),
        depth_model=str(build_tiny_depth(tmp_path / "dpt")),
    )
    backends = {stage.name: getattr(stage, "backend", None) for stage in chain.stages}
    assert isinstance(backends["detection"], TransformersDetection)
    assert isinstance(backends["segmentation"], SamSegmentation)
    assert isinstance(backends["depth"], TransformersDepth)
    image = load_image(photos / "coffee.png", max_size=64)
    try:
        layered = decompose_image(chain, image, caption="a cup and a spoon", key="coffee")
    except ValueError as error:  # random tiny models may find no salient object
        assert str(error).startswith("coffee: no layers (")
    else:
        assert set(layered.layer_prompts[1:]) <= {"a cup", "a spoon"}
