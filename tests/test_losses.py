"""Losses of the layered autoencoder against values computed by hand (Text2Layer eqs. 4, 7, 8)."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision

from layergen.losses.adversarial import (
    adaptive_weight,
    adversarial_factor,
    generator_adversarial_loss,
    hinge_discriminator_loss,
)
from layergen.losses.image_loss import image_loss, kl_loss
from layergen.losses.lpips import load_lpips
from layergen.losses.mask_loss import (
    composition_loss,
    laplacian_loss,
    mask_l1_loss,
    mask_loss,
)
from layergen.models.autoencoder_outputs import LayeredDiagonalGaussian


def _masks(values, size=4):
    """(B, K, 1, size, size) constant masks from a nested list of values."""
    return torch.tensor(values, dtype=torch.float32)[..., None, None, None].expand(
        -1, -1, 1, size, size
    )


def test_mask_l1_by_hand():
    pred = torch.tensor([[0.5, 1.0], [0.0, 0.0]]).view(1, 1, 1, 2, 2)
    target = torch.tensor([[1.0, 1.0], [0.0, 1.0]]).view(1, 1, 1, 2, 2)
    assert mask_l1_loss(pred, target).item() == pytest.approx((0.5 + 0 + 0 + 1) / 4)


def test_mask_l1_ignores_padded_layers():
    pred, target = _masks([[0.5, 0.9]]), _masks([[0.0, 0.0]])
    valid = torch.tensor([[True, False]])
    assert mask_l1_loss(pred, target, valid).item() == pytest.approx(0.5)


def test_composition_loss_two_layers_by_hand():
    # one pixel: F = 1, B = -1 (all channels); m = 1, m_hat = 0.25
    images = torch.stack([-torch.ones(3, 1, 1), torch.ones(3, 1, 1)])[None]  # (1, 2, 3, 1, 1)
    m, m_hat = torch.ones(1, 1, 1, 1, 1), torch.full((1, 1, 1, 1, 1), 0.25)
    # C = 1, C_hat = 0.25 * 1 + 0.75 * (-1) = -0.5: sqrt(1.5^2 + eps^2) = 1.5
    assert composition_loss(m_hat, m, images).item() == pytest.approx(1.5)
    # identical masks leave only eps
    assert composition_loss(m, m, images).item() == pytest.approx(1e-6, rel=1e-3)


def test_composition_loss_k2_uses_eq1():
    # B = 0, F_1 = 1, F_2 = -1; m = (0.5, 0.5) -> C = 0; m_hat = (1, 0) -> C_hat = 1
    images = torch.stack([torch.zeros(3, 2, 2), torch.ones(3, 2, 2), -torch.ones(3, 2, 2)])[None]
    m = torch.full((1, 2, 1, 2, 2), 0.5)
    m_hat = torch.stack([torch.ones(1, 2, 2), torch.zeros(1, 2, 2)])[None]
    assert composition_loss(m_hat, m, images).item() == pytest.approx(1.0)


def _checkerboard(size: int) -> torch.Tensor:
    """``(1, 1, 1, size, size)`` 0/1 checkerboard."""
    parity = (torch.arange(size)[:, None] + torch.arange(size)[None]) % 2
    return parity.float().view(1, 1, 1, size, size)


def test_laplacian_loss_constant_masks():
    # constant masks have zero band-pass levels; only the residual (level 3, weight 2^2, 2x2
    # pixels of |0.5|) differs, its sum divided by the finest level's 8x8 pixels
    pred, target = _masks([[0.75]], size=8), _masks([[0.25]], size=8)
    assert laplacian_loss(pred, target).item() == pytest.approx(4 * (4 * 0.5) / 64, rel=1e-5)
    assert laplacian_loss(target, target).item() == pytest.approx(0.0, abs=1e-7)


def test_laplacian_loss_ignores_padded_layers():
    pred, target = _masks([[0.75, 1.0]], size=8), _masks([[0.25, 0.0]], size=8)
    valid = torch.tensor([[True, False]])
    assert laplacian_loss(pred, target, valid).item() == pytest.approx(0.125, rel=1e-5)


def test_laplacian_loss_two_levels_sums_each_level_over_the_finest_pixel_count():
    # eq. 8 with two levels on a 4x4 checkerboard vs 0: the 5-tap Gaussian (1 4 6 4 1)/16
    # removes it exactly, so level 1 is the checkerboard minus 0.5 (16 pixels of |0.5|,
    # weight 1) and the residual is 0.5 on 2x2 pixels (weight 2); both sums over 16 pixels
    level_1 = 16 * 0.5 / 16
    level_2 = 4 * 0.5 / 16
    assert laplacian_loss(_checkerboard(4), torch.zeros(1, 1, 1, 4, 4), levels=2).item() == (
        pytest.approx(1 * level_1 + 2 * level_2, rel=1e-5)
    )


def test_laplacian_loss_checkerboard_by_hand():
    # three levels at 16x16: level 1 |.| = 0.5 everywhere, level 2 is 0, the residual is 0.5
    # on 4x4 pixels (weight 4, divided by the finest level's 256 pixels)
    target = torch.zeros(1, 1, 1, 16, 16)
    assert laplacian_loss(_checkerboard(16), target).item() == pytest.approx(
        1 * 0.5 + 2 * 0.0 + 4 * (16 * 0.5) / 256, rel=1e-5
    )


def test_mask_loss_weights_1_2_3():
    images = torch.stack([-torch.ones(3, 8, 8), torch.ones(3, 8, 8)])[None]
    pred, target = _masks([[0.75]], size=8), _masks([[0.25]], size=8)
    terms = mask_loss(pred, target, images)
    assert terms["mask_l1"].item() == pytest.approx(0.5)
    assert terms["mask_comp"].item() == pytest.approx(1.0)  # |C - C_hat| = 0.5 * 2
    assert terms["mask_lap"].item() == pytest.approx(0.125, rel=1e-5)
    assert terms["mask"].item() == pytest.approx(0.5 + 2 * 1.0 + 3 * 0.125, rel=1e-5)


def test_image_loss_components_equal_weights():
    images = torch.zeros(1, 3, 3, 2, 2)
    pred = images.clone()
    pred[:, 0] += 0.2  # background off by 0.2
    pred[:, 1] += 0.4  # foreground 1 off by 0.4
    pred[:, 2] += 9.0  # padded layer: ignored
    valid = torch.tensor([[True, True, False]])
    composite = torch.zeros(1, 3, 2, 2)
    terms = image_loss(pred, images, valid, composite + 0.1, composite)
    assert terms["l1/background"].item() == pytest.approx(0.2)
    assert terms["l1/foreground"].item() == pytest.approx(0.4)
    assert terms["l1/composite"].item() == pytest.approx(0.1)
    assert terms["rec"].item() == pytest.approx(0.2 + 0.4 + 0.1)
    no_composite = image_loss(pred, images, valid, None, composite)
    assert no_composite["rec"].item() == pytest.approx(0.6)
    assert "l1/composite" not in no_composite


def test_image_loss_adds_weighted_lpips():
    class Constant(torch.nn.Module):
        def forward(self, x, y):
            return torch.full((x.shape[0],), 0.5)

    images = torch.zeros(2, 2, 3, 2, 2)
    valid = torch.ones(2, 2, dtype=torch.bool)
    terms = image_loss(images, images, valid, None, images[:, 0], Constant(), lpips_weight=2.0)
    assert terms["lpips/background"].item() == pytest.approx(0.5)
    assert terms["rec"].item() == pytest.approx(2 * 2.0 * 0.5)  # two components


def test_kl_by_hand():
    mean = torch.ones(2, 1, 4, 2, 2)
    logvar = torch.zeros_like(mean)
    posterior = LayeredDiagonalGaussian(torch.cat([mean, logvar], dim=2))
    # 0.5 * (mu^2 + var - 1 - logvar) = 0.5 per element, 16 elements
    assert torch.allclose(posterior.kl(), torch.full((2,), 8.0))
    assert kl_loss(posterior, (4, 4)).item() == pytest.approx(8.0 / (3 * 16))
    per_layer = LayeredDiagonalGaussian(torch.cat([mean, logvar], 2).expand(2, 3, 8, 2, 2))
    valid = torch.tensor([[True, True, False], [True, False, False]])
    assert per_layer.kl(valid).tolist() == [16.0, 8.0]
    assert LayeredDiagonalGaussian(torch.zeros(1, 1, 8, 2, 2)).kl().item() == 0.0


def test_hinge_and_generator_losses_by_hand():
    real, fake = torch.tensor([2.0, 0.0]), torch.tensor([-2.0, 0.5])
    # real: relu(1 - 2), relu(1 - 0) -> 0.5; fake: relu(1 - 2), relu(1 + 0.5) -> 0.75
    assert hinge_discriminator_loss(real, fake).item() == pytest.approx(0.5 * (0.5 + 0.75))
    assert generator_adversarial_loss(fake).item() == pytest.approx(0.75)


def test_adaptive_weight_is_gradient_norm_ratio():
    w = torch.nn.Parameter(torch.ones(4))
    rec, adv = (2 * w).sum(), (4 * w).sum()
    expected = (2 * math.sqrt(4)) / (4 * math.sqrt(4) + 1e-4)
    assert adaptive_weight(rec, adv, w).item() == pytest.approx(expected, rel=1e-6)
    assert adversarial_factor(9, 10) == 0.0 and adversarial_factor(10, 10) == 1.0


def test_lpips_missing_weights_error_names_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="vgg16-397923af.pth"):
        load_lpips("vgg", backbone_path=str(tmp_path / "missing.pth"))
    with pytest.raises(ValueError, match="backbone"):
        load_lpips("alex", backbone="imagenet")


def test_lpips_loads_local_backbone_and_stays_frozen(tmp_path):
    features = torchvision.models.alexnet().features
    path = tmp_path / "alexnet.pth"
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, path)
    model = load_lpips("alex", backbone_path=str(path))
    assert torch.equal(model.model.net.slice1[0].weight, features[0].weight)
    assert not any(p.requires_grad for p in model.parameters())
    model.train()
    assert not model.model.training
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    distance = model(x, x.flip(0))
    assert distance.shape == (2,) and torch.all(distance > 0)
    assert torch.allclose(model(x, x), torch.zeros(2), atol=1e-6)
