"""LatentLayout: latent layer counts, layer index, pad/unpad and the UNet's two other views."""

import pytest
import torch

from layergen.latent_layout import COMPONENTS, JOINT, PER_LAYER, LatentLayout


def test_latent_layers_and_back():
    assert [x.latent_layers(3) for x in (PER_LAYER, JOINT, COMPONENTS)] == [3, 1, 5]
    assert PER_LAYER.num_layers(3) == 3 and JOINT.num_layers(1) is None
    assert COMPONENTS.num_layers(5) == 3
    with pytest.raises(ValueError, match="2L - 1"):
        COMPONENTS.num_layers(4)
    with pytest.raises(ValueError, match="packing"):
        LatentLayout("stacked")


def test_infer_and_layer_index():
    assert LatentLayout.infer(3, 3) == PER_LAYER and LatentLayout.infer(3, 1) == JOINT
    assert LatentLayout.infer(3, 5) == COMPONENTS
    assert LatentLayout.infer(1, 1) == PER_LAYER  # L = 1: every packing gives one latent
    assert PER_LAYER.layer_index(3).tolist() == [0, 1, 2]
    assert JOINT.layer_index(3).tolist() == [0]
    assert COMPONENTS.layer_index(3).tolist() == [0, 1, 2, 1, 2]
    with pytest.raises(ValueError, match="cannot map 4 latent layers"):
        LatentLayout.infer(3, 4)


@pytest.mark.parametrize("layout", [PER_LAYER, JOINT, COMPONENTS])
def test_pad_then_unpad_is_identity(layout):
    z = torch.randn(layout.latent_layers(2), 4, 3, 3)
    padded = layout.pad(z, 2, 4)
    assert padded.shape[0] == layout.latent_layers(4)
    torch.testing.assert_close(layout.unpad(padded, 2, 4), z)
    if layout == COMPONENTS:  # images 0, 1, pad, pad; masks 1, pad, pad
        assert padded[[2, 3, 5, 6]].abs().sum() == 0
        torch.testing.assert_close(padded[4], z[2])
        # every padded latent layer belongs to a padded layer
        assert (layout.layer_index(4)[padded.flatten(1).abs().sum(1) == 0] >= 2).all()


def test_image_mask_pairs_round_trip():
    z = torch.randn(2, 5, 4, 3, 3)  # L = 3
    pairs = COMPONENTS.to_image_mask_pairs(z)
    assert pairs.shape == (2, 3, 8, 3, 3)
    assert pairs[:, 0, 4:].abs().sum() == 0  # the background's mask latent
    torch.testing.assert_close(pairs[:, 2, 4:], z[:, 4])  # layer 2's mask
    torch.testing.assert_close(COMPONENTS.from_image_mask_pairs(pairs), z)
    with pytest.raises(ValueError, match="components"):
        PER_LAYER.to_image_mask_pairs(z)


def test_fold_round_trip():
    z = torch.randn(2, 5, 4, 3, 3)
    folded = LatentLayout.fold(z)
    assert folded.shape == (2, 20, 3, 3)
    torch.testing.assert_close(folded[:, 4:8], z[:, 1])
    torch.testing.assert_close(LatentLayout.unfold(folded, 5), z)
