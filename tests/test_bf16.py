"""bf16-mixed on the CPU accelerator: every LightningModule trains a few steps without dtype
errors, and its loss under bf16 autocast is close to the fp32 loss of the same batch.

The full-size configs train in ``precision: bf16-mixed`` on GPUs; Lightning's CPU
accelerator runs the same precision plugin (``torch.autocast("cpu", torch.bfloat16)``,
float32 master weights), so dtype mismatches show here without a GPU.
"""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.plugins.precision import MixedPrecision
from pipeline_components import save_training_assets
from test_lit_autoencoder import TINY_AE
from test_lit_diffusion import UNET_CONFIG

from layergen.data import LayeredDataModule
from layergen.data.labels import QualityLabelsDataModule, append_label
from layergen.data.shapes import ShapeScenes
from layergen.data.shards import write_shards
from layergen.layers import LayeredBatch
from layergen.lit.autoencoder import LayeredAutoencoderModule
from layergen.lit.callbacks import SavePretrained
from layergen.lit.classifier import QualityClassifierModule
from layergen.lit.diffusion import LayeredDiffusionModule
from layergen.losses.image_loss import kl_loss
from layergen.models import JointAutoencoder, LayeredUNet
from layergen.models.autoencoder_outputs import LayeredDiagonalGaussian

# bf16 keeps 8 bits of mantissa (relative step 2^-8 = 0.4 %); a loss summed over a few
# thousand bf16 activations through a tiny network lands within a few per cent of fp32
LOSS_RTOL = 0.05


def bf16_context():
    """The forward context Lightning's ``precision="bf16-mixed"`` uses on the CPU accelerator."""
    return MixedPrecision("bf16-mixed", "cpu").forward_context()


def bf16_trainer(tmp_path, **kwargs) -> pl.Trainer:
    options = dict(
        accelerator="cpu", devices=1, precision="bf16-mixed", max_steps=3,
        limit_val_batches=1, val_check_interval=3, check_val_every_n_epoch=None,
        log_every_n_steps=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path),
    )
    return pl.Trainer(**{**options, **kwargs})


def scene_batch(n: int = 2, max_foregrounds: int = 2) -> LayeredBatch:
    scenes = ShapeScenes(size=32, min_foregrounds=1, max_foregrounds=max_foregrounds, length=n)
    return LayeredBatch.collate([scenes[i] for i in range(n)], num_layers=max_foregrounds + 1)


def record_output_dtypes(module: torch.nn.Module) -> set[torch.dtype]:
    """The dtypes of ``module``'s outputs in every forward call from now on."""
    dtypes: set[torch.dtype] = set()
    module.register_forward_hook(lambda mod, args, out: dtypes.add(out.dtype))
    return dtypes


def assert_close_losses(bf16: torch.Tensor, fp32: torch.Tensor) -> None:
    assert bf16.dtype == torch.float32, "losses are reduced in float32"
    assert torch.isfinite(bf16) and fp32 > 0
    assert bf16.item() == pytest.approx(fp32.item(), rel=LOSS_RTOL)


def test_kl_near_the_prior_is_computed_in_float32():
    # bf16 moments close to N(0, I): var - 1 - logvar cancels at bf16's 8-bit mantissa
    logvar = torch.full((2, 1, 4, 8, 8), -0.01)
    moments = torch.cat([torch.zeros_like(logvar), logvar], dim=2).bfloat16()
    expected = 0.5 * (torch.exp(torch.tensor(-0.01)) - 1 + 0.01) * 4 * 8 * 8 / (3 * 32 * 32)
    kl = kl_loss(LayeredDiagonalGaussian(moments), (32, 32))
    assert kl.dtype == torch.float32
    assert kl.item() == pytest.approx(expected.item(), rel=0.02)


# -- autoencoder with LPIPS and the PatchGAN on --------------------------------------------


def gan_autoencoder_module() -> LayeredAutoencoderModule:
    torch.manual_seed(0)
    return LayeredAutoencoderModule(
        JointAutoencoder(**TINY_AE, num_foregrounds=2), learning_rate=1e-3,
        lpips_weight=1.0, lpips_net="alex", lpips_backbone="random",
        discriminator_weight=0.5, discriminator_start=0, discriminator_channels=8,
        discriminator_layers=2,
    )


def test_autoencoder_with_gan_loss_under_bf16_matches_fp32():
    module = gan_autoencoder_module().eval()
    batch = scene_batch()

    def losses():
        recon, posterior = module(batch)
        terms = module._losses(batch, recon, posterior)
        fake, real = module._fake_and_real(batch, recon)
        terms["g_loss"] = -module.discriminator(fake).float().mean()
        terms["d_real"] = module.discriminator(real).float().mean()
        return terms

    with torch.no_grad():
        fp32 = losses()
        with bf16_context():
            bf16 = losses()
    assert_close_losses(bf16["nll"], fp32["nll"])
    for name in ("rec", "mask", "kl", "l1/composite", "lpips/composite"):
        assert_close_losses(bf16[name], fp32[name])
    # the PatchGAN's logits are near 0 at initialisation: compare them absolutely
    for name in ("g_loss", "d_real"):
        assert bf16[name].item() == pytest.approx(fp32[name].item(), abs=0.02)


def test_autoencoder_with_gan_trains_under_bf16_mixed(tmp_path):
    module = gan_autoencoder_module()
    discriminator_dtypes = record_output_dtypes(module.discriminator)
    trainer = bf16_trainer(tmp_path)
    trainer.fit(module, datamodule=LayeredDataModule(image_size=32, num_train=6, num_val=2,
                                                     batch_size=2))
    metrics = trainer.callback_metrics
    assert trainer.global_step == 3 and discriminator_dtypes == {torch.bfloat16}
    for name in ("train/loss", "train/g_loss", "train/d_loss", "train/d_weight", "val/nll"):
        assert torch.isfinite(metrics[name]), name
    # mixed precision keeps float32 master weights (and the autoencoder exports them)
    assert {p.dtype for p in module.parameters()} == {torch.float32}
    opt_d = trainer.optimizers[1]
    assert all(int(state["step"]) == 3 for state in opt_d.state.values())


# -- diffusion -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("bf16")
    save_training_assets(root)
    return root


def diffusion_module(assets) -> LayeredDiffusionModule:
    torch.manual_seed(0)
    return LayeredDiffusionModule(
        autoencoder=str(assets / "ae"), text_encoder=str(assets / "te"), unet_config=UNET_CONFIG,
        prompt_enhancer_heads=2, ema_decay=0.9, warmup_steps=1, lr=1e-3, clean_layers_prob=0.5,
    )


def test_diffusion_loss_under_bf16_matches_fp32(assets):
    module = diffusion_module(assets).eval()
    batch = scene_batch()

    def loss():  # fixed noise and timesteps: the validation loss
        generator = torch.Generator().manual_seed(0)
        return module.diffusion_loss(module.unet, batch, generator=generator, train=False)

    with torch.no_grad():
        fp32 = loss()
        with bf16_context():
            bf16 = loss()
    assert_close_losses(bf16, fp32)


def test_diffusion_trains_and_exports_under_bf16_mixed(assets, tmp_path):
    module = diffusion_module(assets)
    conv_dtypes = record_output_dtypes(module.unet.unet.conv_in)
    trainer = bf16_trainer(tmp_path, callbacks=[SavePretrained(str(tmp_path / "pipeline"))])
    trainer.fit(module, datamodule=LayeredDataModule(image_size=32, num_train=6, num_val=2,
                                                     batch_size=2))
    assert trainer.global_step == 3 and conv_dtypes == {torch.bfloat16}
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    assert torch.isfinite(trainer.callback_metrics["val/loss"])
    unet = LayeredUNet.from_pretrained(tmp_path / "pipeline" / "unet")
    assert {p.dtype for p in unet.parameters()} == {torch.float32}
    name = "unet.conv_in.weight"
    torch.testing.assert_close(unet.state_dict()[name], module.ema_unet.module.state_dict()[name])


# -- quality classifier --------------------------------------------------------------------


def classifier_batch() -> dict:
    generator = torch.Generator().manual_seed(0)
    return {
        "images": torch.rand(4, 3, 32, 32, generator=generator) * 2 - 1,
        "masks": (torch.rand(4, 1, 32, 32, generator=generator) > 0.5).float(),
        "labels": torch.tensor([1.0, 0.0, 1.0, 0.0]),
    }


@pytest.mark.parametrize("kind", ["mask", "inpaint"])
def test_classifier_loss_under_bf16_matches_fp32(kind):
    torch.manual_seed(0)
    module = QualityClassifierModule(kind=kind, image_size=32, weights=None).eval()
    batch = classifier_batch()

    def loss():
        logits = module._logits(batch)
        return F.binary_cross_entropy_with_logits(logits.float(), batch["labels"])

    with torch.no_grad():
        fp32 = loss()
        with bf16_context():
            bf16 = loss()
    assert_close_losses(bf16, fp32)


def test_classifier_trains_under_bf16_mixed(tmp_path):
    shards = write_shards(ShapeScenes(size=32, length=8, seed=0), tmp_path / "shards",
                          shard_size=8)
    labels = tmp_path / "labels.jsonl"
    for index in range(8):
        append_label(labels, f"{index:09d}", "mask", index % 2, "val" if index >= 4 else "train")
    torch.manual_seed(0)
    module = QualityClassifierModule(kind="mask", image_size=32, weights=None,
                                     target_precision=0.5)
    head_dtypes = record_output_dtypes(module.model.head)
    data = QualityLabelsDataModule(shards, str(labels), kind="mask", image_size=32, batch_size=2)
    trainer = bf16_trainer(tmp_path, max_steps=2, val_check_interval=2)
    trainer.fit(module, datamodule=data)
    assert trainer.global_step == 2 and head_dtypes == {torch.bfloat16}
    metrics = trainer.callback_metrics
    assert torch.isfinite(metrics["train/loss"]) and torch.isfinite(metrics["val/loss"])
    assert 0.0 <= float(metrics["val/threshold"]) <= 1.0
