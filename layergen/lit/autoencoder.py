"""Training of the layered autoencoders (Text2Layer IV-C, eq. 3; appendix III).

``L = L_img(F, B, I) + lambda L_mask + w_kl KL (+ w_adv L_adv once the discriminator starts)``

``I`` is the auxiliary head's target: the source photograph where the sample has one
(Text2Layer IV-B), else the composite of the layers (synthetic scenes).

Manual optimisation as in Lightning's GAN example: one autoencoder step, then one PatchGAN
step, each with ``toggled_optimizer``. Lightning's ``global_step`` counts the steps of
manual optimisation's ``LightningOptimizer``s; the PatchGAN is stepped through the strategy
directly, so ``global_step`` (``max_steps``, the lr schedule, ``discriminator_start``,
checkpoint intervals) counts autoencoder updates, one per batch.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from diffusers import AutoencoderKL
from torch import Tensor
from torchmetrics import MeanMetric
from torchmetrics.image import PeakSignalNoiseRatio

from layergen.layers import LayeredBatch, composite_layers, to_unit
from layergen.losses.adversarial import (
    adaptive_weight,
    generator_adversarial_loss,
    hinge_discriminator_loss,
)
from layergen.losses.image_loss import image_loss, kl_loss
from layergen.losses.lpips import load_lpips
from layergen.losses.mask_loss import mask_loss
from layergen.metrics.mask_iou import mask_iou
from layergen.models.autoencoder_body import KLLayeredAutoencoder
from layergen.models.autoencoder_outputs import LayeredDecoderOutput
from layergen.models.discriminator import PatchDiscriminator

logger = logging.getLogger(__name__)

LR_SCHEDULES = ("constant", "cosine")


class LayeredAutoencoderModule(pl.LightningModule):
    """LightningModule training a layered autoencoder (joint or per-layer) with its losses.

    Args:
        autoencoder: ``JointAutoencoder`` or ``PerLayerAutoencoder`` (``class_path`` in YAML).
        learning_rate: Adam learning rate of the autoencoder (latent diffusion: 4.5e-6 x batch).
        betas: Adam betas (latent diffusion: (0.5, 0.9)).
        lr_warmup_steps: linear warm-up steps.
        lr_schedule: ``"constant"`` or ``"cosine"`` (to ``lr_final_ratio`` of the rate at
            ``trainer.max_steps``).
        lr_final_ratio: the cosine schedule's final fraction of ``learning_rate``, in [0, 1].
        mask_weight: lambda of eq. 3 (1 in the paper).
        kl_weight: weight of the KL term (latent diffusion: 1e-6).
        lpips_weight: weight of LPIPS inside each image component (0 disables LPIPS).
        lpips_net: LPIPS backbone, ``"vgg"`` or ``"alex"``.
        lpips_backbone: ``"pretrained"`` or ``"random"`` (tests and the CPU demo only).
        lpips_backbone_path: torchvision weights file of the LPIPS backbone.
        discriminator_weight: weight of the adversarial term (times the adaptive weight);
            0 disables the discriminator.
        discriminator_start: autoencoder step (``global_step``) at which the adversarial term
            starts.
        discriminator_channels: PatchGAN base width.
        discriminator_layers: PatchGAN strided layers.
        sample_posterior: train on posterior samples (False: on the posterior mean).
        estimate_scaling_factor: at export, set ``scaling_factor = 1 / std`` of the validation
            latents (latent diffusion's rescaling).
        gradient_clip_val: clip the autoencoder's gradient norm (0: no clipping; manual
            optimisation ignores the Trainer's option).
        init_from_vae: hub id or local path of an SD ``AutoencoderKL`` whose body initialises
            the autoencoder's (Text2Layer's optional SD initialisation; the body configuration
            must match the VAE's). A checkpoint given by ``ckpt_path`` overrides it.
        init_from_vae_subfolder: e.g. ``"vae"`` for a Stable Diffusion pipeline directory.
    """

    def __init__(
        self,
        autoencoder: KLLayeredAutoencoder,
        learning_rate: float = 4.5e-6,
        betas: tuple[float, float] = (0.5, 0.9),
        lr_warmup_steps: int = 0,
        lr_schedule: str = "constant",
        lr_final_ratio: float = 0.1,
        mask_weight: float = 1.0,
        kl_weight: float = 1e-6,
        lpips_weight: float = 1.0,
        lpips_net: str = "vgg",
        lpips_backbone: str = "pretrained",
        lpips_backbone_path: str | None = None,
        discriminator_weight: float = 0.5,
        discriminator_start: int = 50001,
        discriminator_channels: int = 64,
        discriminator_layers: int = 3,
        sample_posterior: bool = True,
        estimate_scaling_factor: bool = True,
        gradient_clip_val: float = 0.0,
        init_from_vae: str | None = None,
        init_from_vae_subfolder: str | None = None,
    ) -> None:
        super().__init__()
        if lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule: expected one of {LR_SCHEDULES}, got {lr_schedule!r}")
        if not 0.0 <= lr_final_ratio <= 1.0:
            raise ValueError(f"lr_final_ratio: expected a value in [0, 1], got {lr_final_ratio}")
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.autoencoder = autoencoder
        if init_from_vae is not None:
            vae = AutoencoderKL.from_pretrained(
                init_from_vae, subfolder=init_from_vae_subfolder, use_safetensors=True
            )
            autoencoder.body.load_sd_vae(vae)
            autoencoder.register_to_config(scaling_factor=float(vae.config.scaling_factor))
        self.lpips = (
            load_lpips(lpips_net, lpips_backbone, lpips_backbone_path) if lpips_weight > 0 else None
        )
        self.discriminator = (
            PatchDiscriminator(3, discriminator_channels, discriminator_layers)
            if discriminator_weight > 0
            else None
        )
        self.eval_psnr = PeakSignalNoiseRatio(data_range=1.0, dim=(1, 2, 3))
        self.eval_mask_iou = MeanMetric()
        self.eval_mask_mae = MeanMetric()
        self.latent_mean = MeanMetric()
        self.latent_sq = MeanMetric()
        self.register_buffer("latent_std", torch.zeros(()))

    # -- forward -------------------------------------------------------------------------

    def forward(
        self, batch: LayeredBatch, sample_posterior: bool = False
    ) -> tuple[LayeredDecoderOutput, Any]:
        """Reconstruct a batch; returns (decoded layers, posterior)."""
        return self.autoencoder(
            batch.images,
            batch.masks,
            layer_valid=batch.layer_valid,
            sample_posterior=sample_posterior,
        )

    @torch.no_grad()
    def predict_layered(self, batch: LayeredBatch) -> LayeredBatch:
        """The reconstruction of ``batch`` as a ``LayeredBatch`` (used by ``LayeredImageLogger``)."""
        recon, _ = self(batch)
        return LayeredBatch(
            images=recon.images.clamp(-1.0, 1.0),
            masks=recon.masks,
            layer_valid=batch.layer_valid,
            prompts=batch.prompts,
            layer_prompts=batch.layer_prompts,
            metadata=batch.metadata,
        )

    # -- losses ----------------------------------------------------------------------------

    def _latent_valid(self, batch: LayeredBatch) -> Tensor | None:
        return batch.layer_valid if self.autoencoder.per_layer else None

    def _composite_target(self, batch: LayeredBatch) -> Tensor:
        """``(B, 3, H, W)`` target of ``recon.composite``.

        The joint model's auxiliary head learns the source image where there is one, else the
        composite (Text2Layer IV-B). The per-layer model's composite of its decoded layers is
        compared with the composite of the target layers (eq. 1): the source image differs
        from it where inpainting and mask edges do.
        """
        head = self.autoencoder.has_composite_head
        return batch.image_or_composite() if head else batch.composite()

    def _losses(
        self, batch: LayeredBatch, recon: LayeredDecoderOutput, posterior: Any
    ) -> dict[str, Tensor]:
        """``L_img`` (L1 + LPIPS per component), ``L_mask`` (eq. 4) and KL; ``nll`` their sum."""
        # the composite term: the auxiliary head's prediction (joint model), or the composite
        # of the decoded layers (per-layer model), which supervises the layers through eq. 1
        terms = image_loss(
            recon.images,
            batch.images,
            batch.layer_valid,
            recon.composite,
            self._composite_target(batch),
            self.lpips,
            self.hparams.lpips_weight,
        )
        terms.update(
            mask_loss(
                recon.masks[:, 1:], batch.masks[:, 1:], batch.images, batch.layer_valid[:, 1:]
            )
        )
        terms["kl"] = kl_loss(posterior, batch.images.shape[-2:], self._latent_valid(batch))
        terms["nll"] = (
            terms["rec"]
            + self.hparams.mask_weight * terms["mask"]
            + self.hparams.kl_weight * terms["kl"]
        )
        return terms

    def _fake_and_real(
        self, batch: LayeredBatch, recon: LayeredDecoderOutput
    ) -> tuple[Tensor, Tensor]:
        """RGB components (valid layers and the composite) for the discriminator, ``(N, 3, H, W)``."""
        valid = batch.layer_valid.flatten()
        fake = recon.images.flatten(0, 1)[valid]
        real = batch.images.flatten(0, 1)[valid]
        if recon.composite is not None:
            fake = torch.cat([fake, recon.composite])
            real = torch.cat([real, self._composite_target(batch)])
        return fake, real

    # -- training --------------------------------------------------------------------------

    def training_step(self, batch: LayeredBatch, batch_idx: int) -> None:
        """One autoencoder step, then one discriminator step once it has started."""
        optimizers = self.optimizers()
        opt_ae, opt_d = optimizers if isinstance(optimizers, list) else (optimizers, None)
        adversarial = opt_d is not None and self.global_step >= self.hparams.discriminator_start

        with self.toggled_optimizer(opt_ae):
            recon, posterior = self(batch, sample_posterior=self.hparams.sample_posterior)
            terms = self._losses(batch, recon, posterior)
            loss = terms["nll"]
            fake, real = self._fake_and_real(batch, recon)
            if adversarial:
                terms["g_loss"] = generator_adversarial_loss(self.discriminator(fake))
                terms["d_weight"] = self.hparams.discriminator_weight * adaptive_weight(
                    terms["nll"], terms["g_loss"], self.autoencoder.last_layer_weight()
                )
                loss = loss + terms["d_weight"] * terms["g_loss"]
            terms["loss"] = loss
            opt_ae.zero_grad()
            self.manual_backward(loss)
            if self.hparams.gradient_clip_val > 0:
                self.clip_gradients(opt_ae, gradient_clip_val=self.hparams.gradient_clip_val)
            opt_ae.step()

        if adversarial:
            with self.toggled_optimizer(opt_d):
                logits_real = self.discriminator(real.detach())
                logits_fake = self.discriminator(fake.detach())
                terms["d_loss"] = hinge_discriminator_loss(logits_real, logits_fake)
                opt_d.zero_grad()
                self.manual_backward(terms["d_loss"])
                # the strategy's step (precision plugin, gradient scaler) without the
                # LightningOptimizer's, which would count it in global_step
                self.trainer.strategy.optimizer_step(opt_d.optimizer, closure=lambda: None)

        schedulers = self.lr_schedulers()
        for scheduler in schedulers if isinstance(schedulers, list) else [schedulers]:
            scheduler.step()
        self.log_dict(
            {f"train/{k}": v.detach() for k, v in terms.items()},
            prog_bar=False,
            batch_size=len(batch),
        )
        self.log_dict(self._batch_metrics(batch, recon), prog_bar=True, batch_size=len(batch))

    @staticmethod
    @torch.no_grad()
    def _batch_metrics(batch: LayeredBatch, recon: LayeredDecoderOutput) -> dict[str, Tensor]:
        """Training-batch composite PSNR (dB, per image on [0, 1]), mask IoU at 0.5 and MAE."""
        pred = to_unit(composite_layers(recon.images, recon.masks)).clamp(0, 1)
        mse = (pred - to_unit(batch.composite())).pow(2).flatten(1).mean(1)
        fg_valid = batch.layer_valid[:, 1:]
        pred_masks, masks = recon.masks[:, 1:][fg_valid], batch.masks[:, 1:][fg_valid]
        return {
            "train/psnr_composite": (-10.0 * torch.log10(mse.clamp_min(1e-10))).mean(),
            "train/mask_iou": mask_iou(pred_masks, masks).mean(),
            "train/mask_mae": (pred_masks - masks).abs().mean(),
        }

    # -- validation ------------------------------------------------------------------------

    def _evaluate(self, batch: LayeredBatch, stage: str) -> None:
        """Losses on the posterior mean; composite PSNR, mask IoU at 0.5 and mask MAE."""
        recon, posterior = self(batch, sample_posterior=False)
        terms = self._losses(batch, recon, posterior)
        self.log_dict(
            {f"{stage}/{k}": v for k, v in terms.items()}, batch_size=len(batch), sync_dist=True
        )
        composite = to_unit(composite_layers(recon.images, recon.masks)).clamp(0, 1)
        self.eval_psnr(composite, to_unit(batch.composite()))
        fg_valid = batch.layer_valid[:, 1:]
        pred_masks, masks = recon.masks[:, 1:][fg_valid], batch.masks[:, 1:][fg_valid]
        self.eval_mask_iou.update(mask_iou(pred_masks, masks))
        self.eval_mask_mae.update((pred_masks - masks).abs().flatten(1).mean(1))
        self.log(f"{stage}/psnr_composite", self.eval_psnr, prog_bar=True)
        self.log(f"{stage}/mask_iou", self.eval_mask_iou, prog_bar=True)
        self.log(f"{stage}/mask_mae", self.eval_mask_mae)
        if stage == "val":
            latents = posterior.mode()
            latent_valid = self._latent_valid(batch)
            if latent_valid is not None:
                latents = latents[latent_valid]
            self.latent_mean.update(latents.float())
            self.latent_sq.update(latents.float().pow(2))

    def validation_step(self, batch: LayeredBatch, batch_idx: int) -> None:
        """Metrics ``val/...`` on the posterior mean (see ``_evaluate``)."""
        self._evaluate(batch, "val")

    def test_step(self, batch: LayeredBatch, batch_idx: int) -> None:
        """Metrics ``test/...`` on the posterior mean (see ``_evaluate``)."""
        self._evaluate(batch, "test")

    def on_validation_epoch_end(self) -> None:
        """Keep the std of the validation latents for ``estimate_scaling_factor``."""
        if self.latent_sq.update_count == 0:
            return
        mean, sq = self.latent_mean.compute(), self.latent_sq.compute()
        self.latent_std.fill_(float((sq - mean**2).clamp_min(1e-12).sqrt()))
        self.log("val/latent_std", self.latent_std)
        self.latent_mean.reset()
        self.latent_sq.reset()

    # -- optimisers and export ---------------------------------------------------------

    def _lr_lambda(self, step: int) -> float:
        warmup = self.hparams.lr_warmup_steps
        if warmup and step < warmup:
            return (step + 1) / warmup
        if self.hparams.lr_schedule == "constant":
            return 1.0
        total = self.trainer.max_steps if self.trainer.max_steps > 0 else 0
        if total <= warmup:
            return 1.0
        progress = min(1.0, (step - warmup) / (total - warmup))
        final = self.hparams.lr_final_ratio
        return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def configure_optimizers(self) -> Any:
        """Adam for the autoencoder (warm-up / cosine schedule) and for the discriminator."""
        opt_ae = torch.optim.Adam(
            self.autoencoder.parameters(), lr=self.hparams.learning_rate, betas=self.hparams.betas
        )
        schedulers = [torch.optim.lr_scheduler.LambdaLR(opt_ae, self._lr_lambda)]
        if self.discriminator is None:
            return [opt_ae], schedulers
        opt_d = torch.optim.Adam(
            self.discriminator.parameters(), lr=self.hparams.learning_rate, betas=self.hparams.betas
        )
        return [opt_ae, opt_d], schedulers

    def export_pretrained(self, directory: str | Path) -> Path:
        """Write the autoencoder with ``save_pretrained`` (safetensors) into ``directory``.

        With ``estimate_scaling_factor`` and a validation run behind it, ``scaling_factor``
        becomes ``1 / std`` of the validation latents.
        """
        directory = Path(directory)
        std = float(self.latent_std)
        if self.hparams.estimate_scaling_factor and std > 0:
            self.autoencoder.register_to_config(scaling_factor=1.0 / std)
            logger.info("scaling_factor = 1 / %.4g (validation latents)", std)
        self.autoencoder.save_pretrained(directory)
        return directory
