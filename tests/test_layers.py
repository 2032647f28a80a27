"""Tests of the layered-image data model (layergen/layers.py)."""

import numpy as np
import pytest
import torch
from PIL import Image

from layergen.layers import (
    BACKGROUND_PROMPT,
    LayeredBatch,
    LayeredImage,
    LayeredImageError,
    background_mask,
    blend_alphas,
    composite_layers,
    from_unit,
    normalize_masks,
    to_unit,
    uint8_to_unit,
    unit_to_uint8,
    visible_masks,
)


def _image(k: int = 2, size: int = 4, seed: int = 0) -> LayeredImage:
    g = torch.Generator().manual_seed(seed)
    alphas = torch.rand(k, 1, size, size, generator=g)
    return LayeredImage(
        background=torch.rand(3, size, size, generator=g) * 2 - 1,
        foregrounds=torch.rand(k, 3, size, size, generator=g) * 2 - 1,
        masks=visible_masks(alphas),
        prompt="a scene",
        layer_prompts=[BACKGROUND_PROMPT] + [f"thing {i}" for i in range(k)],
    )


def test_composite_matches_hand_computed_example():
    # One pixel: B = 0.2, F1 = -1 (m1 = 0.3), F2 = 1 (m2 = 0.5):
    # I = (1 - 0.8) * 0.2 + 0.3 * (-1) + 0.5 * 1 = 0.04 - 0.3 + 0.5 = 0.24.
    image = LayeredImage(
        background=torch.full((3, 1, 1), 0.2),
        foregrounds=torch.tensor([-1.0, 1.0]).view(2, 1, 1, 1).expand(2, 3, 1, 1),
        masks=torch.tensor([0.3, 0.5]).view(2, 1, 1, 1),
    )
    assert torch.allclose(image.composite(), torch.full((3, 1, 1), 0.24), atol=1e-6)
    # composite_layers ignores a given background mask: its weight is 1 - sum of fg masks.
    masks = torch.cat([torch.full((1, 1, 1, 1), 0.9), image.masks])
    assert torch.allclose(composite_layers(image.layer_images(), masks), image.composite())
    assert torch.allclose(image.layer_masks()[0], torch.full((1, 1, 1), 0.2))


def test_composite_layers_rejects_wrong_mask_count():
    with pytest.raises(LayeredImageError, match="masks"):
        composite_layers(torch.zeros(3, 3, 2, 2), torch.zeros(5, 1, 2, 2))


def test_mask_helpers():
    masks = torch.tensor([0.8, 0.6]).view(2, 1, 1, 1)
    normalized = normalize_masks(masks)
    assert torch.allclose(normalized.sum(0), torch.ones(1, 1, 1))
    assert torch.allclose(normalized[0] / normalized[1], masks[0] / masks[1])
    small = torch.tensor([0.2, 0.3]).view(2, 1, 1, 1)
    assert torch.equal(normalize_masks(small), small)
    assert torch.allclose(background_mask(small), torch.full((1, 1, 1), 0.5))
    alphas = torch.rand(3, 1, 5, 5)
    assert torch.allclose(blend_alphas(visible_masks(alphas)), alphas, atol=1e-5)


def test_value_range_helpers_round_trip():
    x = torch.linspace(-1, 1, 11)
    assert torch.allclose(from_unit(to_unit(x)), x, atol=1e-6)
    levels = np.arange(256, dtype=np.uint8)
    assert np.array_equal(unit_to_uint8(uint8_to_unit(levels)), levels)
    assert unit_to_uint8(torch.tensor([-0.5, 1.5])).tolist() == [0, 255]
    assert uint8_to_unit(np.array([65535], dtype=np.uint16)).item() == 1.0


def test_rgba_round_trip_and_normal_blending():
    image = _image(k=3, size=8)
    layers = image.to_rgba()
    assert len(layers) == 4 and all(a.shape == (8, 8, 4) and a.dtype == np.uint8 for a in layers)
    assert (layers[0][..., 3] == 255).all()
    back = LayeredImage.from_rgba(layers, image.prompt, image.layer_prompts)
    assert torch.allclose(back.masks, image.masks, atol=2.5 / 255)
    assert torch.allclose(back.foregrounds, image.foregrounds, atol=1.0 / 255)
    assert back.layer_prompts == image.layer_prompts
    back.validate()
    # Stacking the RGBA layers with "normal" blending reproduces the composite.
    stacked = Image.fromarray(layers[0], "RGBA")
    for layer in layers[1:]:
        stacked = Image.alpha_composite(stacked, Image.fromarray(layer, "RGBA"))
    expected = np.asarray(image.composite_pil()).astype(int)
    assert np.abs(np.asarray(stacked.convert("RGB")).astype(int) - expected).max() <= 3


def test_rgba_round_trip_is_exact_on_uint8_layers():
    rng = np.random.default_rng(0)
    layers = [rng.integers(0, 256, (6, 6, 4), dtype=np.uint8) for _ in range(3)]
    layers[0][..., 3] = 255
    again = LayeredImage.from_rgba(layers).to_rgba()
    for a, b in zip(layers, again):
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1


def test_from_rgba_errors_name_the_layer():
    with pytest.raises(LayeredImageError, match="layers"):
        LayeredImage.from_rgba([np.zeros((4, 4, 4), np.uint8)])
    with pytest.raises(LayeredImageError, match=r"layers\[1\]"):
        LayeredImage.from_rgba([np.zeros((4, 4, 4), np.uint8), np.zeros((4, 5, 4), np.uint8)])


def test_collate_mixed_k_pads_and_marks_valid_layers():
    samples = [_image(k=1, size=4, seed=1), _image(k=3, size=4, seed=2)]
    batch = LayeredBatch.collate(samples, num_layers=5)
    assert batch.images.shape == (2, 5, 3, 4, 4) and batch.masks.shape == (2, 5, 1, 4, 4)
    assert batch.layer_valid.tolist() == [
        [True, True, False, False, False],
        [True, True, True, True, False],
    ]
    assert batch.num_foregrounds.tolist() == [1, 3]
    assert (batch.images[0, 2:] == 0).all() and (batch.masks[0, 2:] == 0).all()
    assert torch.allclose(batch.masks[:, 0], 1 - batch.masks[:, 1:].sum(1))
    assert batch.layer_prompts[0] == [BACKGROUND_PROMPT, "thing 0", "", "", ""]
    for composite, sample in zip(batch.composite(), samples):
        assert torch.allclose(composite, sample.composite(), atol=1e-6)
    for back, sample in zip(batch.unbatch(), samples):
        assert back.num_foregrounds == sample.num_foregrounds
        assert torch.equal(back.masks, sample.masks)
        assert back.layer_prompts == sample.layer_prompts
    assert LayeredBatch.collate(samples).num_layers == 4
    assert batch.to(torch.float64).layer_valid.dtype == torch.bool
    with pytest.raises(LayeredImageError, match="num_layers"):
        LayeredBatch.collate(samples, num_layers=3)
    with pytest.raises(LayeredImageError, match="size"):
        LayeredBatch.collate([_image(size=4), _image(size=6)])


def test_source_image_batches_with_the_composite_as_fallback():
    photo, scene = _image(k=1, seed=1), _image(k=2, seed=2)
    photo.image = torch.full((3, 4, 4), 0.25)
    assert torch.equal(photo.image_or_composite(), photo.image)
    assert torch.equal(scene.image_or_composite(), scene.composite())
    batch = LayeredBatch.collate([photo, scene])
    assert torch.equal(batch.image_or_composite(), torch.stack([photo.image, scene.composite()]))
    assert torch.equal(batch.unbatch()[0].image, photo.image)
    assert batch.to(torch.float64).image.dtype == torch.float64
    plain = LayeredBatch.collate([scene])  # no source image anywhere: derived, as before
    assert plain.image is None and torch.equal(plain.image_or_composite(), plain.composite())
    assert photo.to(torch.float64).image.dtype == torch.float64


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda s: setattr(s, "masks", torch.zeros(2, 1, 4, 5)), "masks"),
        (lambda s: setattr(s, "foregrounds", torch.zeros(2, 3, 5, 4)), "foregrounds"),
        (lambda s: setattr(s, "background", torch.zeros(4, 4, 4)), "background"),
        (lambda s: s.masks.__setitem__((0, 0, 0, 0), 1.5), "masks"),
        (lambda s: s.masks.__setitem__((0, 0, 0, 0), -0.1), "masks"),
        (lambda s: s.background.__setitem__((0, 0, 0), 2.0), "background"),
        (lambda s: setattr(s, "masks", torch.full((2, 1, 4, 4), 0.6)), "sum"),
        (lambda s: setattr(s, "layer_prompts", ["the background", "one"]), "layer_prompts"),
        (lambda s: s.background.__setitem__((0, 0, 0), float("nan")), "background: contains NaN"),
        (lambda s: s.foregrounds.__setitem__((0, 0, 0, 0), float("inf")), "foregrounds"),
        (lambda s: setattr(s, "image", torch.zeros(3, 4, 5)), "image"),
        (lambda s: setattr(s, "image", torch.full((3, 4, 4), 1.5)), "image"),
    ],
)
def test_validate_names_the_field(change, field):
    image = _image(k=2, size=4)
    image.validate()
    change(image)
    with pytest.raises(LayeredImageError, match=field):
        image.validate()
