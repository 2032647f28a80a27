"""Layered autoencoders: shapes of every variant, save/load round trips, SD-VAE initialisation."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import AutoencoderKL

from layergen.layers import LayeredImageError, composite_layers
from layergen.models import (
    CompositeAutoencoder,
    JointAutoencoder,
    PerLayerAutoencoder,
    StackedSDAutoencoder,
    load_autoencoder,
)
from layergen.models.discriminator import PatchDiscriminator

TINY = dict(block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4, latent_channels=4)


def _batch(batch=2, num_layers=3, size=16):
    images = torch.rand(batch, num_layers, 3, size, size) * 2 - 1
    fg = torch.rand(batch, num_layers - 1, 1, size, size) / (num_layers - 1)
    masks = torch.cat([1 - fg.sum(1, keepdim=True), fg], dim=1)
    return images, masks


def _tiny_vae(path):
    torch.manual_seed(0)
    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        **TINY,
    )
    vae.save_pretrained(path)
    return vae


def _check_decoded(out, batch, num_layers, size):
    assert out.images.shape == (batch, num_layers, 3, size, size)
    assert out.masks.shape == (batch, num_layers, 1, size, size)
    assert out.masks.min() >= 0 and out.masks.max() <= 1
    fg_sum = out.masks[:, 1:].sum(1)
    assert fg_sum.max() <= 1 + 1e-5
    assert torch.allclose(out.masks[:, 0], (1 - fg_sum).clamp(0, 1), atol=1e-6)


@pytest.mark.parametrize("composite_head", [True, False])
def test_joint_autoencoder_shapes(composite_head):
    model = JointAutoencoder(num_foregrounds=2, composite_head=composite_head, **TINY)
    images, masks = _batch()
    assert model.body.encoder.conv_in.in_channels == 3 * 3 + 2  # 3(K + 1) + K
    posterior = model.encode(images, masks).latent_dist
    z = posterior.sample()
    assert z.shape == (2, 1, 4, 8, 8) and posterior.mode().shape == z.shape
    assert posterior.kl().shape == (2,)
    out = model.decode(z)
    _check_decoded(out, 2, 3, 16)
    assert (out.composite is not None) == composite_head
    if composite_head:
        assert out.composite.shape == (2, 3, 16, 16)
    assert model.downsample_factor == 2 and not model.per_layer
    assert model.latent_num_layers(3) == 1


def test_joint_autoencoder_pads_fewer_layers_and_rejects_more():
    model = JointAutoencoder(num_foregrounds=2, **TINY)
    images, masks = _batch(num_layers=2)
    x = model.stack_inputs(images, masks)
    assert x.shape == (2, 11, 16, 16)
    assert torch.equal(x[:, 3:6], torch.zeros(2, 3, 16, 16))  # missing F_2
    assert torch.equal(x[:, 6:9], images[:, 0])  # the background after the foregrounds
    assert model.decode(model.encode(images, masks).latent_dist.mode(), 2).images.shape[1] == 2
    with pytest.raises(LayeredImageError, match="num_foregrounds"):
        model.encode(*_batch(num_layers=4))


def test_per_layer_autoencoder_shapes_and_padding():
    model = PerLayerAutoencoder(**TINY)
    images, masks = _batch()
    z = model.encode(images, masks).latent_dist.sample()
    assert z.shape == (2, 3, 4, 8, 8)
    out = model.decode(z)
    _check_decoded(out, 2, 3, 16)
    assert torch.allclose(out.composite, composite_layers(out.images, out.masks))
    valid = torch.tensor([[True, True, True], [True, True, False]])
    padded = model.decode(z, layer_valid=valid)
    assert torch.equal(padded.images[1, 2], torch.zeros(3, 16, 16))
    assert torch.equal(padded.masks[1, 2], torch.zeros(1, 16, 16))
    assert model.per_layer and model.latent_num_layers(3) == 3
    with pytest.raises(ValueError, match="num_layers"):
        model.decode(z, num_layers=2)


def test_per_layer_layers_are_independent():
    model = PerLayerAutoencoder(**TINY).eval()
    images, masks = _batch()
    z = model.encode(images, masks).latent_dist.mode()
    z_one = model.encode(images[:, 1:2], masks[:, 1:2]).latent_dist.mode()
    assert torch.allclose(z[:, 1:2], z_one, atol=1e-5)



def test_per_layer_padded_layers_are_skipped_and_change_nothing():
    model = PerLayerAutoencoder(**TINY).eval()
    images, masks = _batch()
    valid = torch.tensor([[True, True, True], [True, True, False]])
    full = model.encode(images, masks).latent_dist
    skipped = model.encode(images, masks, valid).latent_dist
    # valid layers: the same posterior; padded layers: N(0, I), so no KL
    assert torch.allclose(skipped.mean[valid], full.mean[valid], atol=1e-6)
    assert torch.equal(skipped.parameters[1, 2], torch.zeros_like(skipped.parameters[1, 2]))
    assert torch.allclose(skipped.kl(), full.kl(valid), rtol=1e-5)
    # garbage in a padded layer cannot reach a valid layer, in either direction
    noisy = images.clone()
    noisy[1, 2] = 100.0
    recon, _ = model(noisy, masks, layer_valid=valid, sample_posterior=False)
    clean, _ = model(images, masks, layer_valid=valid, sample_posterior=False)
    assert torch.equal(recon.images, clean.images) and torch.equal(recon.masks, clean.masks)

@pytest.mark.parametrize("cls", [JointAutoencoder, PerLayerAutoencoder])
def test_save_and_load_round_trip(tmp_path, cls):
    model = cls(**TINY, scaling_factor=0.5).eval()
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["_class_name"] == cls.__name__
    assert (tmp_path / "diffusion_pytorch_model.safetensors").is_file()
    loaded = load_autoencoder(tmp_path).eval()
    assert type(loaded) is cls and loaded.config.scaling_factor == 0.5
    z = torch.randn(1, model.latent_num_layers(2), 4, 8, 8)
    assert torch.allclose(model.decode(z, 2).images, loaded.decode(z, 2).images, atol=1e-6)


def test_load_autoencoder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_autoencoder(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel"}))
    with pytest.raises(ValueError, match="UNet2DModel"):
        load_autoencoder(tmp_path)


def test_stacked_sd_autoencoder(tmp_path):
    vae = _tiny_vae(tmp_path / "vae").eval()
    model = StackedSDAutoencoder.from_vae(str(tmp_path / "vae"))
    assert not any(p.requires_grad for p in model.parameters())
    images, masks = _batch()
    posterior = model.encode(images, masks).latent_dist
    z = posterior.mode()
    assert z.shape == (2, 5, 4, 8, 8) and model.latent_num_layers(3) == 5
    # the background's latent is the VAE's latent of the background
    expected = vae.encode(images[:, 0]).latent_dist.mode()
    assert torch.allclose(z[:, 0], expected, atol=1e-5)
    out = model.decode(z)
    _check_decoded(out, 2, 3, 16)
    assert model.config.scaling_factor == vae.config.scaling_factor
    model.save_pretrained(tmp_path / "stacked")
    loaded = load_autoencoder(tmp_path / "stacked")
    assert isinstance(loaded, StackedSDAutoencoder) and loaded.config.latent_channels == 4
    assert torch.allclose(loaded.decode(z).images, out.images, atol=1e-5)


def test_composite_autoencoder_encodes_the_composite_only(tmp_path):
    vae = _tiny_vae(tmp_path / "vae").eval()
    model = CompositeAutoencoder.from_vae(str(tmp_path / "vae"))
    assert model.composite_only and not any(p.requires_grad for p in model.parameters())
    images, masks = _batch()
    z = model.encode(images, masks).latent_dist.mode()
    assert z.shape == (2, 1, 4, 8, 8) and model.latent_num_layers(3) == 1
    expected = vae.encode(composite_layers(images, masks)).latent_dist.mode()
    assert torch.allclose(z[:, 0], expected, atol=1e-5)
    out = model.decode(z, num_layers=3)
    _check_decoded(out, 2, 3, 16)
    # all background: every layer is the decoded composite, the foreground masks are empty
    assert torch.allclose(out.composite, vae.decode(z[:, 0]).sample, atol=1e-5)
    assert torch.equal(out.images, out.composite[:, None].expand_as(out.images))
    assert out.masks[:, 0].eq(1).all() and out.masks[:, 1:].eq(0).all()
    assert torch.equal(composite_layers(out.images, out.masks), out.composite)
    assert model.decode(z).images.shape[1] == 2
    with pytest.raises(ValueError, match="num_layers"):
        model.decode(z, num_layers=1)
    with pytest.raises(LayeredImageError, match="masks"):
        model.encode(images, masks[:, :2])
    model.save_pretrained(tmp_path / "composite")
    loaded = load_autoencoder(tmp_path / "composite")
    assert isinstance(loaded, CompositeAutoencoder) and loaded.config.latent_channels == 4
    assert torch.allclose(loaded.decode(z).composite, out.composite, atol=1e-5)


def test_init_from_sd_vae_copies_body_and_expands_input(tmp_path):
    vae = _tiny_vae(tmp_path / "vae")
    model = JointAutoencoder.from_sd_vae(str(tmp_path / "vae"), num_foregrounds=1)
    assert tuple(model.config.block_out_channels) == (8, 16)
    assert model.config.scaling_factor == vae.config.scaling_factor
    assert torch.equal(model.body.quant_conv.weight, vae.quant_conv.weight)
    assert torch.equal(
        model.body.decoder.up_blocks[0].resnets[0].conv1.weight,
        vae.decoder.up_blocks[0].resnets[0].conv1.weight,
    )
    conv_in = model.body.encoder.conv_in.weight  # (8, 7, 3, 3) from (8, 3, 3, 3)
    assert conv_in.shape[1] == 7
    assert torch.allclose(conv_in[:, 4], vae.encoder.conv_in.weight[:, 1] * 3 / 7)
    per_layer = PerLayerAutoencoder.from_sd_vae(str(tmp_path / "vae"))
    assert per_layer.body.encoder.conv_in.weight.shape[1] == 4


def test_init_from_sd_vae_rejects_mismatched_body(tmp_path):
    _tiny_vae(tmp_path / "vae")
    with pytest.raises(ValueError, match="does not match"):
        JointAutoencoder.from_sd_vae(str(tmp_path / "vae"), layers_per_block=2)


def test_logvar_init_starts_near_deterministic():
    model = PerLayerAutoencoder(**TINY, logvar_init=-8.0)
    posterior = model.encode(*_batch()).latent_dist
    assert torch.allclose(posterior.logvar, torch.full_like(posterior.logvar, -8.0))


def test_patch_discriminator_shape():
    logits = PatchDiscriminator(3, 8, 2)(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 1, 6, 6)
