"""Layers in the formats people have (issue 17, item 4), with files built by psd-tools / PIL.

RGBA PNG layers (alpha = mask, as LayerDiffuse and Qwen-Image-Layered emit) in shards and
folders; PSDs like GIMP's and Krita's (offsets, groups, hidden layers, 16 bits, NUL-padded
names); ORAs like Krita's (nested stacks with offsets, visibility, opacity); clear errors for
what cannot be read. Each check compares the layered image's composite (LayerDiff eq. 1) with
"normal" alpha compositing of the layers as a painting program stacks them.
"""

import io
import json
import logging
import runpy
import tarfile
import zipfile
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import pytest
import torch
from PIL import Image
from pipeline_components import tiny_pipeline
from psd_tools import PSDImage
from psd_tools.api.layers import Group, PixelLayer
from psd_tools.constants import BlendMode, Tag

from layergen.data.codec import ShardError, decode_sample, encode_sample
from layergen.data.shards import read_shards
from layergen.export import load_layer_dir, load_layered, load_ora, load_psd, save_layered
from layergen.layers import LayeredImage, LayeredImageError, chw_to_hwc, to_unit

W, H = 24, 20


# ----------------------------------------------------------------------------------------
# Helpers: layers as a painting program sees them, and their "normal" stacking
# ----------------------------------------------------------------------------------------


def rgba_layer(w: int, h: int, colour, alpha, seed: int = 0) -> np.ndarray:
    """``(h, w, 4)`` float RGBA: a colour with a little noise and an alpha (scalar or map)."""
    rng = np.random.default_rng(seed)
    rgb = np.clip(np.array(colour, np.float64) / 255 + rng.uniform(-0.1, 0.1, (h, w, 3)), 0, 1)
    a = np.broadcast_to(np.asarray(alpha, np.float64), (h, w))[..., None]
    return np.concatenate([rgb, a], axis=-1)


def on_canvas(layer: np.ndarray, left: int, top: int) -> np.ndarray:
    """A layer placed at an offset on a transparent ``(H, W, 4)`` canvas (cut at the edges)."""
    canvas = np.zeros((H, W, 4))
    h, w = layer.shape[:2]
    for y in range(h):
        for x in range(w):
            if 0 <= top + y < H and 0 <= left + x < W:
                canvas[top + y, left + x] = layer[y, x]
    return canvas


def stack_normal(layers: list[np.ndarray]) -> np.ndarray:
    """Flatten canvas-sized float RGBA layers, bottom first, with "normal" blending."""
    out = layers[0][..., :3]
    for layer in layers[1:]:
        a = layer[..., 3:]
        out = a * layer[..., :3] + (1 - a) * out
    return out


def composite(image: LayeredImage) -> np.ndarray:
    """The layered image's composite as ``(H, W, 3)`` floats in [0, 1]."""
    return chw_to_hwc(to_unit(image.composite())).double().numpy()


def quantised(layer: np.ndarray, bits: int = 8) -> np.ndarray:
    scale = 2**bits - 1
    return np.rint(layer * scale) / scale


def u8(layer: np.ndarray) -> np.ndarray:
    return np.rint(layer * 255).astype(np.uint8)


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def max_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max())


# ----------------------------------------------------------------------------------------
# Shards: an RGBA fg_i.png without a mask_i.png
# ----------------------------------------------------------------------------------------


def rgba_members(alphas: list[np.ndarray], key: str = "s0") -> tuple[dict, list[np.ndarray]]:
    """Shard members with RGBA foregrounds and no mask files; returns the float layers too."""
    background = rgba_layer(W, H, (30, 60, 200), 1.0, seed=1)
    layers = [background]
    members = {
        "__key__": key,
        "background.png": png_bytes(u8(background[..., :3])),
    }
    for i, alpha in enumerate(alphas):
        layer = rgba_layer(W, H, (200, 40 * i, 30), alpha, seed=2 + i)
        layers.append(quantised(layer))
        members[f"fg_{i}.png"] = png_bytes(u8(layer))
    record = {
        "prompt": "a scene",
        "layer_prompts": ["the background"] + [f"thing {i}" for i in range(len(alphas))],
        "K": len(alphas),
    }
    members["json"] = json.dumps(record).encode()
    return members, [quantised(layers[0])] + layers[1:]


def soft_disc(cx: float, cy: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[0:H, 0:W]
    return np.clip(r - np.hypot(xx - cx, yy - cy), 0, 1)


def test_shard_rgba_foreground_alpha_becomes_the_mask():
    alpha = soft_disc(10, 9, 6) * 0.8
    members, layers = rgba_members([alpha])
    image = decode_sample(members, shard="s.tar")
    assert image.num_foregrounds == 1
    assert torch.allclose(image.masks[0, 0].double(), torch.from_numpy(quantised(alpha)), atol=1e-6)
    assert max_err(composite(image), stack_normal(layers)) < 1e-5


def test_shard_overlapping_rgba_foregrounds_stack_like_normal_blending():
    a0, a1 = soft_disc(9, 9, 7), soft_disc(14, 10, 6) * 0.7
    members, layers = rgba_members([a0, a1])
    image = decode_sample(members, shard="s.tar")
    # the visible mask of the lower layer is what the upper one leaves uncovered
    expected = quantised(a0) * (1 - quantised(a1))
    assert torch.allclose(image.masks[0, 0].double(), torch.from_numpy(expected), atol=1e-6)
    assert float(image.masks.sum(0).max()) <= 1 + 1e-6
    assert max_err(composite(image), stack_normal(layers)) < 1e-5


def test_shard_mask_file_wins_over_an_rgba_alpha():
    members, _ = rgba_members([soft_disc(10, 9, 6)])
    mask = np.zeros((H, W), np.uint8)
    mask[5:10, 5:10] = 255
    members["mask_0.png"] = png_bytes(mask)
    image = decode_sample(members, shard="s.tar")
    assert torch.equal(image.masks[0, 0], torch.from_numpy(mask / 255.0).float())


def test_shard_mixes_mask_files_and_rgba_foregrounds():
    """fg_1 has a 16-bit mask file, fg_0 is RGBA without one: fg_1's mask cuts fg_0's alpha."""
    a0 = soft_disc(9, 9, 7)
    members, _ = rgba_members([a0, np.zeros((H, W))])
    record = json.loads(members["json"])
    record["mask_bits"] = 16
    members["json"] = json.dumps(record).encode()
    mask1 = np.zeros((H, W), np.uint16)
    mask1[:, :12] = 40000
    members["mask_1.png"] = png_bytes(mask1)
    image = decode_sample(members, shard="s.tar")
    assert torch.equal(image.masks[1, 0], torch.from_numpy(mask1 / 65535.0).float())
    expected0 = quantised(a0) * (1 - mask1 / 65535.0)
    assert torch.allclose(image.masks[0, 0].double(), torch.from_numpy(expected0), atol=1e-6)


def test_shard_rgb_foreground_without_mask_is_a_missing_member():
    members, _ = rgba_members([soft_disc(10, 9, 6)])
    members["fg_0.png"] = png_bytes(np.zeros((H, W, 3), np.uint8))
    with pytest.raises(ShardError, match="mask_0.png") as err:
        decode_sample(members, shard="s.tar")
    assert err.value.reason == "missing_member" and "s.tar" in str(err.value)


def test_shard_foreground_of_another_mode_is_a_bad_image():
    members, _ = rgba_members([soft_disc(10, 9, 6)])
    members["fg_0.png"] = png_bytes(np.zeros((H, W, 2), np.uint8))  # "LA"
    with pytest.raises(ShardError, match="fg_0.png: expected mode RGB or RGBA") as err:
        decode_sample(members, shard="s.tar")
    assert err.value.reason == "bad_image"


def test_shard_rgba_foreground_of_the_wrong_size_is_refused_before_decoding():
    members, _ = rgba_members([soft_disc(10, 9, 6)])
    members["fg_0.png"] = png_bytes(np.zeros((H + 1, W, 4), np.uint8))
    with pytest.raises(ShardError, match="differs from the background") as err:
        decode_sample(members, shard="s.tar")
    assert err.value.reason == "bad_image"


def test_rgba_shard_through_the_shard_reader(tmp_path):
    """A tar written by another tool (RGBA layers, no masks) reads like ours."""
    ours = encode_sample(
        LayeredImage.from_rgba(
            [u8(rgba_layer(W, H, (30, 60, 200), 1.0)), u8(rgba_layer(W, H, (200, 0, 0), 0.5))],
            prompt="ours",
            layer_prompts=["the background", "red"],
        ),
        "a0",
    )
    theirs, layers = rgba_members([soft_disc(10, 9, 6)], key="b0")
    path = tmp_path / "mixed-000000.tar"
    with tarfile.open(path, "w") as tar:
        for members in (ours, theirs):
            for name, data in members.items():
                if name == "__key__":
                    continue
                info = tarfile.TarInfo(f"{members['__key__']}.{name}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    images = list(read_shards(str(path)))
    assert [im.metadata["key"] for im in images] == ["a0", "b0"]
    assert max_err(composite(images[1]), stack_normal(layers)) < 1e-5


# ----------------------------------------------------------------------------------------
# PSD: offsets, groups, hidden layers, 16 bits, other programs' quirks, errors
# ----------------------------------------------------------------------------------------


def psd_scene(path: Path, depth: int = 8) -> list[np.ndarray]:
    """A PSD laid out as GIMP and Krita write them; returns the expected visible layers.

    bottom to top: "sky" (full canvas); "box" (6x5 at 3,4); group "things" (opacity 50%) of
    "edge" (8x6 at -3,12: part outside the canvas, alpha 0.8) and "corner" (5x5 at 20,-2,
    layer opacity 60%); a hidden "ghost"; a hidden group "old" holding a visible "inside".
    """
    psd = PSDImage.new("RGBA", (W, H), depth=depth)

    def add(parent, name, layer, left=0, top=0, opacity=255):
        pixel = PixelLayer.fromarray(layer.astype(np.float32), psd, name=name, left=left, top=top)
        pixel.opacity = opacity
        parent.append(pixel)
        return pixel

    sky = rgba_layer(W, H, (40, 80, 200), 1.0, seed=1)
    box = rgba_layer(6, 5, (220, 30, 30), soft_disc(2.5, 2, 3)[:5, :6], seed=2)
    edge = rgba_layer(8, 6, (30, 200, 90), 0.8, seed=3)
    corner = rgba_layer(5, 5, (250, 220, 40), 1.0, seed=4)
    add(psd, "sky", sky)
    add(psd, "box", box, left=3, top=4)
    things = Group.new(psd, name="things")
    things.opacity = 128
    add(things, "edge", edge, left=-3, top=12)
    add(things, "corner", corner, left=20, top=-2, opacity=153)
    add(psd, "ghost", rgba_layer(4, 4, (255, 0, 255), 1.0), left=8, top=8).visible = False
    old = Group.new(psd, name="old")
    add(old, "inside", rgba_layer(4, 4, (0, 255, 255), 1.0), left=1, top=1)
    old.visible = False
    psd.save(str(path))

    def visible(layer, left, top, opacity):
        placed = on_canvas(quantised(layer, depth), left, top)
        placed[..., 3] *= opacity
        return placed

    return [
        visible(sky, 0, 0, 1.0),
        visible(box, 3, 4, 1.0),
        visible(edge, -3, 12, 128 / 255),
        visible(corner, 20, -2, 153 / 255 * 128 / 255),
    ]


@pytest.mark.parametrize("depth", [8, 16])
def test_psd_offsets_groups_hidden_and_depth(tmp_path, depth, caplog):
    path = tmp_path / f"scene{depth}.psd"
    expected = psd_scene(path, depth)
    with caplog.at_level(logging.INFO, logger="layergen.export.reading"):
        image = load_layered(path)
    assert image.layer_prompts == ["sky", "box", "edge", "corner"]
    assert max_err(composite(image), stack_normal(expected)) < 1.5 / 255
    assert "skipped 2 layer(s): 2 hidden ('ghost', 'group old')" in caplog.text


def test_psd_layer_mask_inside_a_group_matches_psd_tools_render(tmp_path):
    """An RGB PSD stores transparency as layer masks (Photoshop's way); one in a 50% group."""
    psd = PSDImage.new("RGB", (W, H))
    psd.append(PixelLayer.frompil(Image.new("RGB", (W, H), (20, 40, 200)), psd, name="bg"))
    group = Group.new(psd, name="g")
    group.opacity = 128
    masked = Image.new("RGBA", (8, 6), (250, 200, 0, 255))
    masked.putalpha(Image.linear_gradient("L").resize((8, 6)))
    group.append(PixelLayer.frompil(masked, psd, name="masked", left=-3, top=2))
    psd.save(str(tmp_path / "m.psd"))
    reopened = PSDImage.open(str(tmp_path / "m.psd"))
    assert [la.has_mask() for la in reopened.descendants()] == [False, False, True]
    rendered = np.asarray(reopened.composite(force=True).convert("RGB")) / 255.0
    assert max_err(composite(load_psd(tmp_path / "m.psd")), rendered) <= 1.5 / 255


def test_psd_16_bit_keeps_16_bit_alphas(tmp_path):
    psd = PSDImage.new("RGBA", (W, H), depth=16)
    psd.append(PixelLayer.fromarray(np.full((H, W, 4), 1.0, np.float32), psd, name="bg"))
    fg = np.zeros((H, W, 4), np.uint16)
    fg[..., 0] = 65535
    fg[..., 3] = 1000  # 3.9 / 255: not an 8-bit level
    psd.append(PixelLayer.fromarray(fg, psd, name="haze"))
    psd.save(str(tmp_path / "deep.psd"))
    image = load_psd(tmp_path / "deep.psd")
    assert abs(float(image.masks.mean()) - 1000 / 65535) < 1e-6


def test_psd_greyscale_layers_become_rgb(tmp_path):
    psd = PSDImage.new("LA", (8, 6))
    psd.append(PixelLayer.fromarray(np.full((6, 8, 2), [0.2, 1.0], np.float32), psd, name="bg"))
    psd.append(PixelLayer.fromarray(np.full((3, 3, 2), [0.9, 0.5], np.float32), psd, name="fg"))
    psd.save(str(tmp_path / "grey.psd"))
    image = load_psd(tmp_path / "grey.psd")
    rgb = composite(image)
    assert np.allclose(rgb[0, 0], 0.2 * 0.5 + quantised(np.array(0.9)) * 0.5, atol=1 / 255)
    assert np.allclose(rgb[5, 7], quantised(np.array(0.2)), atol=1e-6)
    assert np.allclose(rgb[..., 0], rgb[..., 2])


def test_psd_krita_names_adjustment_layers_and_blend_modes(tmp_path, caplog):
    """Krita pads PSD layer names with NUL; adjustment layers are skipped, other blend modes
    read as normal, each with a warning naming the file and the layers."""
    psd = PSDImage.new("RGBA", (8, 8))
    psd.append(PixelLayer.frompil(Image.new("RGBA", (8, 8), (10, 20, 30, 255)), psd, name="bg\x00"))
    invert = PixelLayer.frompil(Image.new("RGBA", (8, 8)), psd, name="Invert 1")
    invert._record.tagged_blocks.set_data(Tag.INVERT)  # an adjustment layer
    psd.append(invert)
    fg = PixelLayer.frompil(Image.new("RGBA", (4, 4), (200, 0, 0, 255)), psd, name="fg\x00 ")
    fg.blend_mode = BlendMode.MULTIPLY
    psd.append(fg)
    psd.save(str(tmp_path / "k.psd"))
    with caplog.at_level(logging.WARNING, logger="layergen.export.reading"):
        image = load_psd(tmp_path / "k.psd")
    assert image.layer_prompts == ["bg", "fg"]
    assert "k.psd: skipped 1 layer(s): 1 adjustment or fill layer(s) ('Invert 1')" in caplog.text
    assert "1 multiply layer(s) read as normal ('fg')" in caplog.text


def test_psd_with_only_hidden_foregrounds_names_what_was_skipped(tmp_path):
    psd = PSDImage.new("RGBA", (8, 8))
    psd.append(PixelLayer.frompil(Image.new("RGBA", (8, 8), (10, 20, 30, 255)), psd, name="bg"))
    psd.append(PixelLayer.frompil(Image.new("RGBA", (4, 4), (9, 9, 9, 255)), psd, name="off"))
    psd[1].visible = False
    psd.save(str(tmp_path / "h.psd"))
    with pytest.raises(
        LayeredImageError, match=r"h.psd: .*found 1 \(skipped: 1 hidden \('off'\)\)"
    ):
        load_psd(tmp_path / "h.psd")


def test_psd_cmyk_is_refused_naming_the_file(tmp_path):
    psd = PSDImage.new("CMYK", (8, 6))
    psd.append(PixelLayer.fromarray(np.full((6, 8, 5), 0.5, np.float32), psd, name="bg"))
    psd.append(PixelLayer.fromarray(np.full((3, 3, 5), 0.9, np.float32), psd, name="fg"))
    psd.save(str(tmp_path / "print.psd"))
    with pytest.raises(LayeredImageError, match=r"print.psd: colour mode CMYK is not supported"):
        load_layered(tmp_path / "print.psd")


def test_our_psd_still_round_trips(tmp_path):
    image = LayeredImage.from_rgba(
        [u8(rgba_layer(W, H, (30, 60, 200), 1.0)), u8(rgba_layer(W, H, (200, 0, 0), 0.4))],
        prompt="p",
        layer_prompts=["the background", "red"],
    )
    loaded = load_psd(save_layered(image, tmp_path / "ours.psd"))
    assert loaded.layer_prompts == image.layer_prompts and loaded.prompt == "p"
    assert (loaded.masks - image.masks).abs().max() <= 1.5 / 255


# ----------------------------------------------------------------------------------------
# OpenRaster as Krita writes it
# ----------------------------------------------------------------------------------------


def write_ora(path: Path, stack: str, pngs: dict[str, np.ndarray], size=(W, H)) -> Path:
    """An ORA with Krita's layout: ``stack`` is the XML inside the root ``<stack>``."""
    xml = (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<image version="0.0.1" w="{size[0]}" '
        f'h="{size[1]}" xres="300" yres="300"><stack name="root" x="0" y="0" opacity="1" '
        f'visibility="visible" composite-op="svg:src-over" isolation="isolate">{stack}'
        "</stack></image>"
    )
    ElementTree.fromstring(xml)  # the test's own XML is well formed
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(zipfile.ZipInfo("mimetype"), "image/openraster")
        archive.writestr("stack.xml", xml)
        for name, array in pngs.items():
            archive.writestr(name, png_bytes(array))
    return path


def krita_layer(src, name, x=0, y=0, opacity=1.0, visibility="visible", op="svg:src-over"):
    return (
        f'<layer name="{name}" src="{src}" x="{x}" y="{y}" opacity="{opacity}" '
        f'visibility="{visibility}" composite-op="{op}"/>'
    )


def test_ora_nested_stacks_offsets_visibility_opacity(tmp_path, caplog):
    sky = rgba_layer(W, H, (40, 80, 200), 1.0, seed=1)
    box = rgba_layer(6, 5, (220, 30, 30), 0.9, seed=2)
    edge = rgba_layer(8, 6, (30, 200, 90), 0.8, seed=3)
    stack = (
        krita_layer("data/layer4.png", "ghost", 8, 8, visibility="hidden")
        + '<stack name="things" x="2" y="1" opacity="0.5" visibility="visible">'
        + krita_layer("data/layer3.png", "edge", -5, 11, opacity="0.6")
        + '<stack name="old" x="0" y="0" opacity="1" visibility="hidden">'
        + krita_layer("data/missing.png", "inside")
        + "</stack></stack>"
        + krita_layer("data/layer1.png", "box", 3, 4)
        + krita_layer("data/layer0.png", "sky")
    )
    path = write_ora(
        tmp_path / "k.ora",
        stack,
        {
            "data/layer0.png": u8(sky),
            "data/layer1.png": u8(box),
            "data/layer3.png": u8(edge),
            "data/layer4.png": np.zeros((4, 4, 4), np.uint8),
        },
    )
    with caplog.at_level(logging.INFO, logger="layergen.export.reading"):
        image = load_ora(path)
    assert image.layer_prompts == ["sky", "box", "edge"]
    placed_edge = on_canvas(quantised(edge), -3, 12)
    placed_edge[..., 3] *= 0.3
    expected = [quantised(sky), on_canvas(quantised(box), 3, 4), placed_edge]
    assert max_err(composite(image), stack_normal(expected)) < 1.5 / 255
    assert "skipped 2 layer(s): 2 hidden ('ghost', 'group old')" in caplog.text


def test_ora_16_bit_grey_layer_other_elements_and_ops(tmp_path, caplog):
    grey = np.full((H, W), 30000, np.uint16)  # a 16-bit greyscale background
    fg = u8(rgba_layer(4, 4, (200, 0, 0), 1.0))
    stack = (
        '<text name="caption" x="0" y="0"/>'
        + krita_layer("data/fg.png", "fg", 2, 2, op="svg:multiply")
        + krita_layer("data/bg.png", "bg")
    )
    path = write_ora(tmp_path / "g.ora", stack, {"data/bg.png": grey, "data/fg.png": fg})
    with caplog.at_level(logging.WARNING, logger="layergen.export.reading"):
        image = load_ora(path)
    assert torch.allclose(
        image.background, torch.full_like(image.background, 30000 / 65535 * 2 - 1)
    )
    assert "1 <text> element(s) (not pixels) ('caption')" in caplog.text
    assert "1 svg:multiply layer(s) read as normal ('fg')" in caplog.text


def test_ora_errors_name_the_file_and_the_layer(tmp_path):
    stack = krita_layer("data/fg.png", "broken fg") + krita_layer("data/bg.png", "bg")
    path = write_ora(tmp_path / "b.ora", stack, {"data/bg.png": u8(rgba_layer(W, H, (1, 2, 3), 1))})
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr("data/fg.png", b"\x89PNG not really")
    with pytest.raises(
        LayeredImageError,
        match=r"b.ora: layer 'data/fg.png': cannot decode .* \(layer 'broken fg'\)",
    ):
        load_ora(path)
    deep = "".join('<stack name="g">' for _ in range(70)) + "</stack>" * 70
    path = write_ora(tmp_path / "deep.ora", deep, {})
    with pytest.raises(LayeredImageError, match="deep.ora: stack.xml: stack 'g': stacks nested"):
        load_ora(path)


# ----------------------------------------------------------------------------------------
# Folders of RGBA PNGs (Qwen-Image-Layered, LayerDiffuse) and single images
# ----------------------------------------------------------------------------------------


def write_folder(folder: Path, names: list[str], layers: list[np.ndarray]) -> Path:
    folder.mkdir()
    for name, layer in zip(names, layers):
        Image.fromarray(u8(layer)).save(folder / name)
    return folder


def qwen_layers(count: int) -> list[np.ndarray]:
    layers = [rgba_layer(W, H, (40, 80, 200), 1.0, seed=1)]
    for i in range(1, count):
        layers.append(rgba_layer(W, H, (20 * i, 200, 255 - 20 * i), soft_disc(2 * i, 9, 5), i))
    return layers


def test_qwen_image_layered_folder_numbered_from_0(tmp_path):
    """The diffusers example saves ``0.png`` (bottom) ... ``N.png``; 11 layers test that
    ``10.png`` comes after ``9.png``; a composite.png beside them is not a layer."""
    layers = qwen_layers(11)
    folder = write_folder(tmp_path / "qwen", [f"{i}.png" for i in range(11)], layers)
    Image.new("RGB", (W, H)).save(folder / "composite.png")
    image = load_layered(folder)
    assert image.num_layers == 11
    assert max_err(composite(image), stack_normal([quantised(x) for x in layers])) < 1e-5


def test_qwen_app_zip_layout_layer_1_to_n(tmp_path):
    layers = qwen_layers(12)
    names = [f"layer_{i + 1}.png" for i in range(12)]
    image = load_layer_dir(write_folder(tmp_path / "zip", names, layers))
    assert max_err(composite(image), stack_normal([quantised(x) for x in layers])) < 1e-5


def test_layerdiffuse_pair_and_a_transparent_bottom(tmp_path):
    """A background with transparent parts is laid over white, as GIMP and Krita flatten."""
    bottom = rgba_layer(W, H, (40, 80, 200), 1.0)
    bottom[:5, :, 3] = 0.0
    fg = rgba_layer(W, H, (220, 30, 30), soft_disc(12, 10, 6))
    image = load_layered(
        write_folder(tmp_path / "ld", ["00001-bg.png", "00002-fg.png"], [bottom, fg])
    )
    white = np.concatenate([np.ones((H, W, 3)), np.ones((H, W, 1))], -1)
    expected = stack_normal([white, quantised(bottom), quantised(fg)])
    assert max_err(composite(image), expected) < 1e-5


def test_folder_errors(tmp_path):
    folder = write_folder(
        tmp_path / "sizes",
        ["0.png", "1.png"],
        [rgba_layer(W, H, (0, 0, 0), 1), rgba_layer(8, 8, (0, 0, 0), 1)],
    )
    with pytest.raises(
        LayeredImageError, match=r"sizes: 1.png: size 8x8 differs from 0.png's 24x20"
    ):
        load_layered(folder)
    one = write_folder(tmp_path / "one", ["0.png"], [rgba_layer(W, H, (0, 0, 0), 1)])
    with pytest.raises(LayeredImageError, match="expected at least two layer PNGs"):
        load_layered(one)
    with pytest.raises(LayeredImageError, match="0.png: one image is not a layered image"):
        load_layered(one / "0.png")


# ----------------------------------------------------------------------------------------
# generate.py --edit on a folder of RGBA PNGs
# ----------------------------------------------------------------------------------------


def test_generate_edit_reads_a_qwen_style_folder(tmp_path, monkeypatch):
    """``generate.py --edit`` keeps the background of a numbered RGBA PNG folder exactly."""
    root = Path(__file__).resolve().parents[1]
    pipe = tiny_pipeline(tmp_path)
    pipe.save_pretrained(tmp_path / "pipe")
    source = pipe("a red star on a blue background", num_inference_steps=2).layers[0]
    folder = tmp_path / "qwen"
    folder.mkdir()
    for i, layer in enumerate(source.to_pil_layers()):  # 0.png = background, no manifest
        layer.save(folder / f"{i}.png")
    args = ["--edit", folder, "--keep", "0", "--model", tmp_path / "pipe", "--steps", "2"]
    args += ["--out", tmp_path / "edited.ora"]
    monkeypatch.setattr("sys.argv", ["generate.py", *map(str, args)])
    runpy.run_path(str(root / "generate.py"), run_name="__main__")
    edited = load_layered(tmp_path / "edited.ora")
    assert edited.num_layers == source.num_layers
    assert torch.equal(edited.background, load_layered(folder).background)
