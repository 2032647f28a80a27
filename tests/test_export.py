"""PSD / OpenRaster / PNG-folder export round trips, manifests and the contact sheet."""

import json
import zipfile
from xml.etree import ElementTree

import numpy as np
import pytest
import torch
from PIL import Image

from layergen.export import (
    load_layer_dir,
    load_layered,
    load_ora,
    load_psd,
    make_contact_sheet,
    ora_merged_image,
    psd_composite,
    save_contact_sheet,
    save_layered,
)
from layergen.layers import LayeredImage, LayeredImageError, chw_to_hwc, to_unit, unit_to_uint8


def make_image(k: int = 2, size: int = 16, seed: int = 0) -> LayeredImage:
    """A random layered image with soft, overlapping masks (sum <= 1)."""
    g = torch.Generator().manual_seed(seed)
    background = torch.rand(3, size, size, generator=g) * 2 - 1
    foregrounds = torch.rand(k, 3, size, size, generator=g) * 2 - 1
    raw = torch.rand(k, 1, size, size, generator=g)
    raw[:, :, : size // 4] = 0.0  # fully visible background somewhere
    raw[0, :, size // 2 :, : size // 2] = 1.0  # an opaque foreground region
    masks = raw / raw.sum(0, keepdim=True).clamp_min(1.0) * 0.9
    prompts = ["the background"] + [f"a red circle {i}" for i in range(1, k + 1)]
    return LayeredImage(background, foregrounds, masks, "a scene", prompts).validate()


def composite_uint8(image: LayeredImage) -> np.ndarray:
    return unit_to_uint8(chw_to_hwc(to_unit(image.composite())))


def max_diff(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a.astype(int) - b.astype(int)).max())


@pytest.mark.parametrize("k", [1, 3])
def test_psd_round_trip(tmp_path, k):
    image = make_image(k)
    path = save_layered(image, tmp_path / "x.psd", manifest={"seed": 7, "steps": 2})
    assert path.exists() and (tmp_path / "x.json").exists()
    # psd-tools' own rendering matches our composite within 1/255
    assert max_diff(psd_composite(path), composite_uint8(image)) <= 1
    loaded = load_psd(path)
    assert loaded.num_layers == k + 1
    assert loaded.layer_prompts == image.layer_prompts
    assert loaded.prompt == "a scene" and loaded.metadata["seed"] == 7
    assert max_diff(composite_uint8(loaded), composite_uint8(image)) <= 1
    assert (loaded.masks - image.masks).abs().max() <= 1.5 / 255


def test_psd_layer_names_and_order(tmp_path):
    from psd_tools import PSDImage

    image = make_image(2)
    psd = PSDImage.open(save_layered(image, tmp_path / "x.psd"))
    assert [layer.name for layer in psd] == image.layer_prompts  # bottom to top
    alpha = np.asarray(psd[0].topil().convert("RGBA"))[..., 3]
    assert (alpha == 255).all()  # opaque background


def test_ora_structure_and_round_trip(tmp_path):
    image = make_image(2)
    path = save_layered(image, tmp_path / "x.ora", manifest={"model": "tiny"})
    with zipfile.ZipFile(path) as archive:
        first = archive.infolist()[0]
        assert first.filename == "mimetype" and first.compress_type == zipfile.ZIP_STORED
        assert archive.read("mimetype") == b"image/openraster"
        root = ElementTree.fromstring(archive.read("stack.xml"))
        names = [e.get("name") for e in root.iter("layer")]
        assert names == image.layer_prompts[::-1]  # top layer first
        for entry in root.iter("layer"):
            assert entry.get("src") in archive.namelist()
        assert "Thumbnails/thumbnail.png" in archive.namelist()
    # the merged image and a re-composite of the layers in the file both match
    assert max_diff(ora_merged_image(path), composite_uint8(image)) == 0
    loaded = load_ora(path)
    assert loaded.layer_prompts == image.layer_prompts and loaded.metadata["model"] == "tiny"
    assert max_diff(composite_uint8(loaded), composite_uint8(image)) <= 1


def test_ora_reencodes_exactly_after_one_round_trip(tmp_path):
    """Loaded layers are exactly representable, so a second round trip is lossless."""
    once = load_layered(save_layered(make_image(2), tmp_path / "a.ora"))
    twice = load_layered(save_layered(once, tmp_path / "b.ora"))
    assert [np.array_equal(a, b) for a, b in zip(once.to_rgba(), twice.to_rgba())] == [True] * 3


def test_png_folder_round_trip(tmp_path):
    image = make_image(2)
    out = save_layered(image, tmp_path / "layers", manifest={"guidance": 1.5})
    assert sorted(p.name for p in out.iterdir()) == [
        "composite.png",
        "layer_00.png",
        "layer_01.png",
        "layer_02.png",
        "manifest.json",
    ]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["layer_prompts"] == image.layer_prompts and manifest["guidance"] == 1.5
    with Image.open(out / "layer_01.png") as layer:
        assert layer.mode == "RGBA"
    loaded = load_layer_dir(out)
    assert loaded.prompt == image.prompt and loaded.layer_prompts == image.layer_prompts
    assert max_diff(composite_uint8(loaded), composite_uint8(image)) <= 1


def test_bad_inputs_name_the_file(tmp_path):
    with pytest.raises(ValueError, match="unknown layered format"):
        save_layered(make_image(1), tmp_path / "x.tiff")
    bad = tmp_path / "bad.ora"
    bad.write_bytes(b"not a zip")
    with pytest.raises(LayeredImageError, match="bad.ora"):
        load_layered(bad)
    with pytest.raises(LayeredImageError, match="no such file"):
        load_layered(tmp_path / "missing.psd")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LayeredImageError, match="at least two layer"):
        load_layer_dir(tmp_path / "empty")


def test_contact_sheet(tmp_path):
    images = [make_image(1, size=16), make_image(2, size=16, seed=1)]
    sheet = make_contact_sheet(images, tile=64)
    # 2 rows; the widest row has 3 layers + 3 masks + composite = 7 tiles of 64 px
    assert sheet.width >= 7 * 64 and sheet.height >= 2 * 64
    path = save_contact_sheet(images, tmp_path / "sheet.png", tile=64)
    with Image.open(path) as png:
        assert png.size == sheet.size
    # the composite tile is the nearest-neighbour enlargement of the composite
    arr = np.asarray(sheet)
    assert arr.std() > 0
    with pytest.raises(ValueError, match="at least one"):
        make_contact_sheet([])


def test_load_psd_with_layer_masks(tmp_path):
    """An RGB PSD (no transparency band) keeps the alphas in layer masks; they are read too."""
    from psd_tools import PSDImage
    from psd_tools.api.layers import PixelLayer

    image = make_image(2)
    psd = PSDImage.new("RGB", (16, 16), depth=8)
    for i, rgba in enumerate(image.to_rgba()):
        psd.append(PixelLayer.frompil(Image.fromarray(rgba, mode="RGBA"), psd, name=f"l{i}"))
    psd.save(str(tmp_path / "foreign.psd"))
    loaded = load_psd(tmp_path / "foreign.psd")
    assert loaded.layer_prompts == ["l0", "l1", "l2"] and loaded.prompt == ""
    assert max_diff(composite_uint8(loaded), composite_uint8(image)) <= 1
