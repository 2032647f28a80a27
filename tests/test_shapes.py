"""Tests of the synthetic layered scenes (layergen/data/shapes.py)."""

import numpy as np
import pytest
import torch

from layergen.data.shapes import (
    BACKGROUND_FAMILIES,
    COLORS,
    POSITION_PHRASES,
    POSITIONS,
    SHAPES,
    SIZES,
    ShapeScenes,
    describe_background,
    render_background,
    shape_alpha,
    vocabulary,
)


def test_vocabulary_sizes_meet_the_spec():
    assert len(BACKGROUND_FAMILIES) >= 6 and len(SHAPES) >= 6 and len(COLORS) >= 8
    assert set(SIZES) == {"small", "large"} and len(POSITIONS) >= 5


def test_scenes_are_deterministic_and_order_independent():
    a = ShapeScenes(size=32, max_foregrounds=3, seed=3, length=10)
    b = ShapeScenes(size=32, max_foregrounds=3, seed=3, length=10)
    first = [a[i] for i in (7, 2)]
    second = [b[i] for i in (2, 7)][::-1]
    for x, y in zip(first, second):
        assert torch.equal(x.background, y.background) and torch.equal(x.masks, y.masks)
        assert torch.equal(x.foregrounds, y.foregrounds)
        assert x.prompt == y.prompt and x.layer_prompts == y.layer_prompts
        assert x.metadata == y.metadata
    torch.manual_seed(123)
    np.random.seed(123)  # global RNG state must not matter
    assert torch.equal(a[7].masks, first[0].masks)


def test_splits_seeds_and_indices_give_different_scenes():
    prompts = {
        (split, seed): [
            ShapeScenes(size=32, seed=seed, split=split, length=20)[i].prompt for i in range(20)
        ]
        for split in ("train", "val", "test")
        for seed in (0, 1)
    }
    for k1, p1 in prompts.items():
        for k2, p2 in prompts.items():
            if k1 != k2:
                assert sum(x == y for x, y in zip(p1, p2)) <= 2, (k1, k2)
    assert len(set(prompts[("train", 0)])) >= 18


@pytest.mark.parametrize("size", [32, 48, 512])
def test_any_resolution_from_32_to_512(size):
    scene = ShapeScenes(size=size, length=1)[0].validate()
    assert scene.size == (size, size)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"size": 31},
        {"size": 513},
        {"split": "dev"},
        {"min_foregrounds": 0},
        {"min_foregrounds": 3, "max_foregrounds": 2},
        {"max_foregrounds": 99},
        {"length": -1},
    ],
)
def test_bad_arguments_name_the_argument(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs)).split("_")[0]):
        ShapeScenes(**kwargs)
    with pytest.raises(IndexError):
        ShapeScenes(length=2)[2]


def test_composite_equals_the_scene_as_rendered_and_masks_are_visible_regions():
    scenes = ShapeScenes(size=32, min_foregrounds=2, max_foregrounds=3, length=30)
    soft = 0
    for i in range(len(scenes)):
        scene = scenes.scene(i)
        image = scene.to_layered().validate()
        rendered = torch.from_numpy(scene.render()).permute(2, 0, 1) * 2 - 1
        assert torch.allclose(image.composite(), rendered, atol=1e-5)
        assert image.masks.min() >= 0 and image.masks.sum(0).max() <= 1 + 1e-6
        # later shapes are in front: m_i = a_i * prod_{j > i} (1 - a_j)
        alphas = torch.from_numpy(scene.alphas)
        top = image.num_foregrounds - 1
        assert torch.allclose(image.masks[top, 0], alphas[top])
        expected = alphas[0] * torch.prod(1 - alphas[1:], dim=0)
        assert torch.allclose(image.masks[0, 0], expected, atol=1e-6)
        soft += int(((image.masks > 0.05) & (image.masks < 0.95)).sum())
    assert soft > 0  # anti-aliased edges: masks are not only 0/1


def test_metadata_layer_prompts_and_caption_agree():
    scenes = ShapeScenes(size=32, min_foregrounds=1, max_foregrounds=3, length=60)
    ks, words = set(), set(vocabulary())
    for i in range(len(scenes)):
        image = scenes[i]
        meta, k = image.metadata, image.num_foregrounds
        ks.add(k)
        assert len(meta["foregrounds"]) == k and meta["split"] == "train" and meta["index"] == i
        assert image.layer_prompts[0] == meta["background"]["description"]
        bg = meta["background"]
        assert bg["family"] in BACKGROUND_FAMILIES
        assert bg["description"] == describe_background(bg["family"], bg["colors"])
        assert image.prompt.endswith(f"on {bg['description']}")
        for j, fg in enumerate(meta["foregrounds"]):
            layer_prompt = f"a {fg['size']} {fg['color']} {fg['shape']}"
            assert image.layer_prompts[j + 1] == layer_prompt
            assert f"{layer_prompt} {POSITION_PHRASES[fg['position']]}" in image.prompt
            assert fg["color"] not in bg["colors"]  # foregrounds stand out from the background
            colour = torch.tensor(COLORS[fg["color"]], dtype=torch.float32) / 255 * 2 - 1
            assert torch.allclose(image.foregrounds[j], colour.view(3, 1, 1).expand(3, 32, 32))
        positions = [fg["position"] for fg in meta["foregrounds"]]
        assert len(set(positions)) == k
        assert set(image.prompt.replace(",", "").split()) <= words
    assert ks == {1, 2, 3}


def test_every_shape_is_centred_with_the_expected_extent():
    size, radius = 64, 12.0
    for shape in SHAPES:
        alpha = shape_alpha(shape, size, (32.0, 30.0), radius)
        assert alpha.max() == 1.0 and alpha.min() == 0.0, shape
        ys, xs = np.nonzero(alpha)
        assert xs.min() >= 32 - radius - 1 and xs.max() <= 32 + radius, shape
        assert abs(np.average(np.arange(size), weights=alpha.sum(0)) - 31.5) < 0.5, shape
        area = alpha.sum() / (np.pi * radius**2)
        assert 0.25 < area < 1.05, (shape, area)
    circle = shape_alpha("circle", size, (32.0, 32.0), radius)
    assert abs(circle.sum() - np.pi * radius**2) < 2.0  # soft edge preserves the area
    with pytest.raises(ValueError, match="shape"):
        shape_alpha("blob", size, (32.0, 32.0), radius)


@pytest.mark.parametrize("family", list(BACKGROUND_FAMILIES))
def test_every_background_family_renders_a_full_frame_texture(family):
    colors = ["red", "blue"][: BACKGROUND_FAMILIES[family][0]]
    image, params = render_background(family, colors, 32, np.random.default_rng(0))
    assert image.shape == (32, 32, 3) and image.dtype == np.float32
    assert image.min() >= 0 and image.max() <= 1
    if family != "solid":
        assert image.std(axis=(0, 1)).max() > 0.01  # a texture, not a flat colour


def test_vocabulary_is_sorted_and_covers_the_grammar():
    words = vocabulary()
    assert words == sorted(set(words))
    assert {"left", "star", "striped", "background", "the"} <= set(words)
