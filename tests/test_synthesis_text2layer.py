"""Text2Layer-mode stages (Text2Layer sec. III-C/D) and their backends."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage import data as skimage_data

from layergen.layers import from_unit, hwc_to_chw, uint8_to_unit
from layergen.synthesis.backends.inpainting import (
    DiffusersInpainting,
    OpenCVInpainting,
    build_tiny_inpainting,
)
from layergen.synthesis.backends.quality import MaskAreaScorer
from layergen.synthesis.backends.saliency import (
    ContrastSaliency,
    TransformersSaliency,
    build_tiny_saliency,
)
from layergen.synthesis.base import SynthesisRecord
from layergen.synthesis.text2layer import Text2LayerChain, dilate_mask, extract_foreground


def test_foreground_equals_image_above_threshold_and_zero_elsewhere():
    images = torch.rand(2, 3, 8, 8) * 2 - 1
    masks = torch.rand(2, 1, 8, 8)
    masks[0, 0, 0, 0] = 0.1  # exactly the threshold: not foreground (strictly greater)
    foregrounds = extract_foreground(images, masks, threshold=0.1)
    inside = (masks > 0.1).expand_as(images)
    assert torch.equal(foregrounds[inside], images[inside])
    assert torch.equal(foregrounds[~inside], torch.zeros_like(images[~inside]))
    assert foregrounds[0, :, 0, 0].abs().sum() == 0
    outside = (masks <= 0.5).expand_as(images)
    assert not extract_foreground(images, masks, threshold=0.5)[outside].any()


def test_dilation_grows_the_mask():
    masks = torch.zeros(1, 1, 9, 9)
    masks[0, 0, 4, 4] = 0.6
    masks[0, 0, 0, 8] = 0.05  # below the threshold: ignored
    dilated = dilate_mask(masks, kernel_size=3, threshold=0.1)
    expected = torch.zeros(1, 1, 9, 9)
    expected[0, 0, 3:6, 3:6] = 1.0
    assert torch.equal(dilated, expected)
    assert bool((dilate_mask(masks, 5) >= dilate_mask(masks, 3)).all())
    assert dilate_mask(masks, 5).sum() == 25
    with pytest.raises(ValueError, match="odd"):
        dilate_mask(masks, 4)


def _photo(name: str, size: int = 96) -> torch.Tensor:
    from PIL import Image

    image = Image.fromarray(getattr(skimage_data, name)()).convert("RGB").resize((size, size))
    return from_unit(hwc_to_chw(uint8_to_unit(np.asarray(image))))


def _records(names=("astronaut", "coffee", "chelsea", "rocket")) -> list[SynthesisRecord]:
    return [
        SynthesisRecord(key=name, image=_photo(name), caption=f"a photo: {name}") for name in names
    ]


def test_classical_chain_on_real_photographs_reproduces_the_inputs_under_the_mask():
    chain = Text2LayerChain(
        ContrastSaliency(work_size=96),
        OpenCVInpainting(work_size=96),
        dilation_kernel=5,
        mask_quality=MaskAreaScorer(min_area=0.01, max_area=0.99),
    )
    records = chain(_records())
    assert all(record.kept for record in records), [record.rejection for record in records]
    for record in records:
        layered = record.to_layered_image().validate()
        assert torch.equal(layered.image, record.image)  # the source photograph, image.png
        m = layered.masks[0, 0]
        assert 0.01 < float(m.mean()) < 0.99
        full = (m == 1.0).expand(3, -1, -1)
        assert full.any()
        assert torch.allclose(layered.composite()[full], record.image[full], atol=1e-6)
        # the background equals the photograph outside the dilated mask
        outside = (record.inpaint_mask == 0).expand(3, -1, -1)
        assert torch.allclose(layered.background[outside], record.image[outside], atol=1e-6)
        assert set(layered.metadata["provenance"]) == {
            "saliency",
            "foreground",
            "mask_quality",
            "dilation",
            "inpainting",
        }
        assert layered.layer_prompts == ["the background", record.caption]
    assert chain.stats.kept == 4 and set(chain.stats.seconds) >= {"saliency", "inpainting"}


def test_quality_threshold_and_empty_masks_drop_records_with_reasons():
    chain = Text2LayerChain(
        ContrastSaliency(work_size=64),
        OpenCVInpainting(work_size=64),
        mask_quality=MaskAreaScorer(min_area=0.98, max_area=1.0),
    )
    flat = SynthesisRecord(key="flat", image=torch.zeros(3, 32, 32))  # nothing salient
    records = chain(_records(("coffee",)) + [flat])
    assert (
        records[0].rejection.startswith("mask_quality:")
        and records[0].scores["mask_quality"] == 0.0
    )
    assert records[0].background is None  # inpainting is not spent on a dropped sample
    assert records[1].rejection.startswith("empty_mask")
    assert dict(chain.stats.rejected) == {"mask_quality": 1, "empty_mask": 1}


def test_tiny_real_backends_run_the_chain(tmp_path):
    saliency = TransformersSaliency(str(build_tiny_saliency(tmp_path / "saliency")), image_size=32)
    inpainting = DiffusersInpainting(
        str(build_tiny_inpainting(tmp_path / "inpainting")), num_inference_steps=2, resolution=32
    )
    chain = Text2LayerChain(saliency, inpainting, mask_threshold=0.1, dilation_kernel=3)
    records = chain(
        [SynthesisRecord(key=f"k{i}", image=torch.rand(3, 24, 24) * 2 - 1) for i in range(2)]
    )
    for record in records:
        assert record.kept
        layered = record.to_layered_image().validate()
        assert layered.background.shape == (3, 24, 24)
        outside = (record.inpaint_mask == 0).expand(3, -1, -1)
        assert torch.allclose(layered.background[outside], record.image[outside])
        assert layered.metadata["provenance"]["inpainting"]["num_inference_steps"] == 2
