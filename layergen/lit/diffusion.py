"""Training of the layered latent diffusion model (LayerDiff eq. 2, sections 4.1-4.2;
Text2Layer section IV-C eq. 5).

``LayeredDiffusionModule`` owns the optimisation of a :class:`~layergen.models.LayeredUNet`
on the latents of a frozen layered autoencoder, conditioned on a frozen CLIP text encoder:

- latents ``z = E(x).mode() * scaling_factor`` (or a posterior sample), ``(B, L', C, h, w)``;
- diffusers ``DDPMScheduler`` forward process, epsilon or v prediction;
- per-layer timesteps: shared by all layers in ``shared_timestep_prob`` of the samples and
  independent in the rest (LayerDiff 4.1: 50 %);
- independent dropout of the global and the layer conditions (LayerDiff 4.2: 10 % each;
  a dropped condition is the embedding of ""; layer conditions drop for all layers of a
  sample at once, as classifier-free guidance replaces them at once);
- in ``clean_layers_prob`` of the samples a random subset of the valid layers is given
  clean (timestep 0, exact latents) and excluded from the loss, so the model can generate
  missing layers given the others (layer inpainting);
- optional image conditions (issue 19): the composite's latent (``composite_condition``,
  dropped in ``composite_dropout`` of the samples so that text to layers still works; where
  it is kept, both prompts are dropped in ``composite_text_dropout`` of them, so that an
  image decomposes without text) and the layers' boxes from their masks (``box_condition``,
  each layer's dropped with ``box_dropout``);
- MSE over valid, noisy latent layers only, optionally weighted by min-SNR-gamma (Hang et
  al. 2023, diffusers' ``compute_snr``); EMA weights for validation and export.

Batches are ``LayeredBatch`` (images, encoded on the fly) or ``LatentBatch`` (cached
latents and text embeddings, :mod:`layergen.data.latents`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler
from diffusers.optimization import get_scheduler
from diffusers.training_utils import compute_snr
from torch import Tensor
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from layergen.data.latents import LatentBatch, encode_composites, layer_boxes
from layergen.latent_layout import LatentLayout
from layergen.layers import LayeredBatch
from layergen.models.layered_unet import LayeredUNet, build_layered_unet
from layergen.models.loading import load_autoencoder
from layergen.models.text_encoder import encode_prompts, load_text_encoder
from layergen.pipelines.recipe import family_recipe

logger = logging.getLogger(__name__)

FROZEN_PREFIXES = ("autoencoder.", "text_encoder.")


class LayeredDiffusionModule(pl.LightningModule):
    """Layer-collaborative latent diffusion (LayerDiff) and its Text2Layer / baseline modes.

    Args:
        autoencoder: directory of a layered autoencoder written by ``save_pretrained``
            (``export_pretrained`` of the autoencoder module); frozen.
        text_encoder: CLIP text encoder by hub id or path (``load_text_encoder``); frozen.
        unet_pretrained: SD weights (hub id or path) to start the UNet from; or
        unet_config: a ``UNet2DConditionModel`` config for a UNet from scratch.
        unet_subfolder: sub-folder of ``unet_pretrained`` ("unet" for SD repositories).
        in_channels, out_channels: widen a pretrained UNet's convs (SD-AE-UNet (ft)).
        unet_init: a saved ``LayeredUNet`` (e.g. a pipeline's ``unet/`` directory) to start
            from instead of ``unet_config``; its config holds, except for the condition
            options below, whose new inputs start at zero (fine-tuning a text-to-layers model
            into one that also decomposes images or follows boxes).
        layer_blocks, mask_channels, prompt_enhancer, prompt_enhancer_heads, max_layers,
            latent_layout, composite_condition, box_condition:
            :class:`~layergen.models.LayeredUNet` options.
        gradient_checkpointing: recompute activations in the backward pass.
        num_train_timesteps, beta_schedule, beta_start, beta_end, prediction_type:
            ``DDPMScheduler`` settings (SD: 1000, "scaled_linear", 0.00085, 0.012, "epsilon").
        sample_posterior: use ``latent_dist.sample()`` instead of ``.mode()``.
        shared_timestep_prob: share of samples with one timestep for all layers.
        global_dropout, layer_dropout: condition dropout rates.
        clean_layers_prob: share of samples with a clean, loss-free subset of layers.
        composite_dropout, composite_text_dropout, box_dropout: image-condition dropout
            (module docstring).
        condition_lr_scale: learning-rate multiplier of the condition inputs
            (``ConditionedConvIn.cond_conv``): zero-initialised, they start from nothing while
            the rest of a fine-tuned UNet is already trained.
        snr_gamma: min-SNR loss weighting ``min(SNR_t, gamma) / SNR_t`` (epsilon) or
            ``/ (SNR_t + 1)`` (v-prediction); None: unweighted MSE (the papers' loss).
        lr, weight_decay, warmup_steps, betas: AdamW and linear warm-up.
        lr_schedule: after the warm-up, ``"constant"`` or ``"cosine"`` (decay to 0 at the
            Trainer's ``max_steps``; diffusers' ``get_scheduler`` names).
        ema_decay: EMA decay per optimizer step (None: no EMA; the raw weights are used).
        sampling: the exported pipeline's sampling recipe (``num_inference_steps``,
            ``guidance_scale``, ``restyle_strength``), over the family's defaults
            (:mod:`layergen.pipelines.recipe`: LayerDiff with ``layer_blocks``: 100, 3.0,
            0.25; Text2Layer without: 50, 7.5, 0.5).
    """

    def __init__(
        self,
        autoencoder: str,
        text_encoder: str,
        unet_pretrained: str | None = None,
        unet_config: dict[str, Any] | None = None,
        unet_init: str | None = None,
        unet_subfolder: str | None = "unet",
        in_channels: int | None = None,
        out_channels: int | None = None,
        layer_blocks: bool = True,
        mask_channels: int = 0,
        prompt_enhancer: str = "s+c",
        prompt_enhancer_heads: int = 8,
        max_layers: int = 8,
        latent_layout: str = "layers",
        composite_condition: bool = False,
        box_condition: bool = False,
        gradient_checkpointing: bool = False,
        num_train_timesteps: int = 1000,
        beta_schedule: str = "scaled_linear",
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        prediction_type: str = "epsilon",
        sample_posterior: bool = False,
        shared_timestep_prob: float = 0.5,
        global_dropout: float = 0.1,
        layer_dropout: float = 0.1,
        clean_layers_prob: float = 0.0,
        composite_dropout: float = 0.5,
        composite_text_dropout: float = 0.5,
        box_dropout: float = 0.5,
        condition_lr_scale: float = 1.0,
        snr_gamma: float | None = None,
        lr: float = 1e-5,
        weight_decay: float = 1e-4,
        warmup_steps: int = 500,
        betas: tuple[float, float] = (0.9, 0.999),
        lr_schedule: Literal["constant", "cosine"] = "constant",
        ema_decay: float | None = 0.9999,
        sampling: dict[str, int | float] | None = None,
    ) -> None:
        super().__init__()
        family_recipe(layer_blocks, sampling)  # fail early on a bad recipe
        self.save_hyperparameters()
        self.autoencoder = load_autoencoder(autoencoder).requires_grad_(False).eval()
        self.tokenizer, self.text_encoder = load_text_encoder(text_encoder)
        conditions = {"composite_condition": composite_condition, "box_condition": box_condition}
        if unet_init is not None:
            if unet_pretrained is not None or unet_config is not None:
                raise ValueError("unet_init: give it instead of unet_pretrained / unet_config")
            self.unet: LayeredUNet = LayeredUNet.from_layered_unet(unet_init, **conditions)
        else:
            self.unet = build_layered_unet(
                pretrained=unet_pretrained,
                subfolder=unet_subfolder,
                config=unet_config,
                in_channels=in_channels,
                out_channels=out_channels,
                layer_blocks=layer_blocks,
                mask_channels=mask_channels,
                prompt_enhancer=prompt_enhancer,
                prompt_enhancer_heads=prompt_enhancer_heads,
                max_layers=max_layers,
                latent_layout=latent_layout,
                **conditions,
            )
        if gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
        self.noise_scheduler = DDPMScheduler(
            num_train_timesteps=num_train_timesteps,
            beta_schedule=beta_schedule,
            beta_start=beta_start,
            beta_end=beta_end,
            prediction_type=prediction_type,
            clip_sample=False,
        )
        self.ema_unet = None
        if ema_decay is not None:
            self.ema_unet = AveragedModel(
                self.unet, multi_avg_fn=get_ema_multi_avg_fn(ema_decay), use_buffers=True
            ).requires_grad_(False)
        # checkpoints hold the trained weights only; the frozen models reload from their paths
        self.strict_loading = False
        self._empty_embedding: Tensor | None = None

    # ------------------------------------------------------------------------------------
    # Conditions and latents
    # ------------------------------------------------------------------------------------

    def empty_embedding(self) -> Tensor:
        """``T("")``, ``(S, D)``: the embedding of a dropped condition (cached)."""
        if self._empty_embedding is None or self._empty_embedding.device != self.device:
            self._empty_embedding = encode_prompts(self.tokenizer, self.text_encoder, [""])[0]
        return self._empty_embedding

    @torch.no_grad()
    def prepare_batch(self, batch: LayeredBatch | LatentBatch) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Latents and conditions of a batch.

        Returns:
            latents ``(B, L', C, h, w)`` (scaled), global embedding ``(B, S, D)``, layer
            embeddings ``(B, L, S, D)``, ``layer_valid`` ``(B, L)``.
        """
        if isinstance(batch, LatentBatch):
            latents = batch.latents
            cond, layer_cond = batch.prompt_embeds, batch.layer_prompt_embeds
        else:
            dist = self.autoencoder.encode(batch.images, batch.masks, batch.layer_valid).latent_dist
            latents = dist.sample() if self.hparams.sample_posterior else dist.mode()
            num_layers = batch.layer_valid.shape[1]
            texts = list(batch.prompts) + [p for lp in batch.layer_prompts for p in lp]
            embeddings = encode_prompts(self.tokenizer, self.text_encoder, texts)
            cond = embeddings[: len(batch)]
            # (B*L, S, D) -> (B, L, S, D)
            layer_cond = embeddings[len(batch) :].unflatten(0, (len(batch), num_layers))
        latents = latents * self.autoencoder.config.scaling_factor
        return latents.to(self.dtype), cond.to(self.dtype), layer_cond.to(self.dtype), batch.layer_valid

    @torch.no_grad()
    def image_conditions(
        self, batch: LayeredBatch | LatentBatch, train: bool = True
    ) -> tuple[Tensor | None, Tensor | None]:
        """The composite latents ``(B, C, h, w)`` (scaled) and layer boxes ``(B, L, 4)`` the
        UNet is conditioned on (None when it is not); dropped ones NaN (training only)."""
        composite, boxes = None, None
        if self.unet.config.composite_condition:
            if isinstance(batch, LatentBatch):
                composite = _cached_field(batch, "composite_latents", "composite_condition")
            else:
                composite = encode_composites(self.autoencoder, batch.images, batch.masks)
            composite = (composite * self.autoencoder.config.scaling_factor).to(self.dtype)
            if train:
                drop = torch.rand(len(composite), device=composite.device) < self.hparams.composite_dropout
                composite = torch.where(drop[:, None, None, None], float("nan"), composite)
        if self.unet.config.box_condition:
            if isinstance(batch, LatentBatch):
                boxes = _cached_field(batch, "layer_boxes", "box_condition")
            else:
                boxes = layer_boxes(batch.masks, batch.layer_valid)
            if train:
                drop = torch.rand(boxes.shape[:2], device=boxes.device) < self.hparams.box_dropout
                boxes = torch.where(drop[..., None], float("nan"), boxes)
        return composite, boxes

    def drop_text_given_composite(
        self, cond: Tensor, layer_cond: Tensor, composite: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """Drop both prompts in ``composite_text_dropout`` of the samples with a composite."""
        if composite is None:
            return cond, layer_cond
        given = ~composite.flatten(1).isnan().any(dim=1)
        drop = given & (torch.rand(len(given), device=given.device) < self.hparams.composite_text_dropout)
        empty = self.empty_embedding().to(cond.dtype)
        cond = torch.where(drop[:, None, None], empty, cond)
        layer_cond = torch.where(drop[:, None, None, None], empty, layer_cond)
        return cond, layer_cond

    def drop_conditions(
        self, cond: Tensor, layer_cond: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """Replace the global / layer conditions of random samples by ``T("")`` (LayerDiff 4.2)."""
        batch = cond.shape[0]
        empty = self.empty_embedding().to(cond.dtype)
        drop_global = torch.rand(batch, device=cond.device, generator=generator) < self.hparams.global_dropout
        drop_layers = torch.rand(batch, device=cond.device, generator=generator) < self.hparams.layer_dropout
        cond = torch.where(drop_global[:, None, None], empty, cond)
        layer_cond = torch.where(drop_layers[:, None, None, None], empty, layer_cond)
        return cond, layer_cond

    def sample_timesteps(
        self, batch: int, num_layers: int, generator: torch.Generator | None = None
    ) -> Tensor:
        """``(B, L)`` timesteps: shared across layers in ``shared_timestep_prob`` of samples."""
        high = self.noise_scheduler.config.num_train_timesteps
        t = torch.randint(0, high, (batch, num_layers), device=self.device, generator=generator)
        shared = torch.rand(batch, device=self.device, generator=generator) < self.hparams.shared_timestep_prob
        if not self.unet.per_layer_timesteps:
            shared = torch.ones_like(shared)
        return torch.where(shared[:, None], t[:, :1], t)

    def sample_clean_layers(self, layer_valid: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """``(B, L)`` bool: layers given clean in ``clean_layers_prob`` of the samples.

        In a chosen sample each valid layer is clean with probability 1/2, except one
        random valid layer that always stays noisy (so every sample has a loss term).
        """
        batch, num_layers = layer_valid.shape
        device = layer_valid.device
        if not (self.unet.per_layer_timesteps and self.unet.config.layer_blocks):
            return torch.zeros_like(layer_valid, dtype=torch.bool)
        chosen = torch.rand(batch, device=device, generator=generator) < self.hparams.clean_layers_prob
        clean = torch.rand(batch, num_layers, device=device, generator=generator) < 0.5
        scores = torch.rand(batch, num_layers, device=device, generator=generator)
        keep = F.one_hot(scores.masked_fill(~layer_valid, -1).argmax(1), num_layers).bool()
        return clean & layer_valid & ~keep & chosen[:, None]

    # ------------------------------------------------------------------------------------
    # Loss
    # ------------------------------------------------------------------------------------

    def diffusion_loss(
        self,
        unet: LayeredUNet,
        batch: LayeredBatch | LatentBatch,
        generator: torch.Generator | None = None,
        train: bool = True,
    ) -> Tensor:
        """LayerDiff eq. 2: ``|| target - Phi_u(z_t, t, T(y), T(p)) ||^2`` over noisy valid layers."""
        latents, cond, layer_cond, layer_valid = self.prepare_batch(batch)
        batch_size, latent_layers = latents.shape[:2]
        num_layers = layer_valid.shape[1]
        index = LatentLayout.infer(num_layers, latent_layers).layer_index(num_layers).to(self.device)
        composite, boxes = self.image_conditions(batch, train)
        if train:
            cond, layer_cond = self.drop_conditions(cond, layer_cond)
            cond, layer_cond = self.drop_text_given_composite(cond, layer_cond, composite)
        t = self.sample_timesteps(batch_size, num_layers, generator)
        clean = self.sample_clean_layers(layer_valid, generator) if train else torch.zeros_like(layer_valid)
        t = torch.where(clean, torch.zeros_like(t), t)
        # per layer (B, L) -> per latent layer (B, L')
        t_latent, clean_latent, valid_latent = t[:, index], clean[:, index], layer_valid[:, index]
        noise = torch.randn(latents.shape, device=self.device, dtype=latents.dtype, generator=generator)
        flat = (latents.flatten(0, 1), noise.flatten(0, 1), t_latent.flatten())
        noisy = self.noise_scheduler.add_noise(*flat).view_as(latents)
        noisy = torch.where(clean_latent[:, :, None, None, None], latents, noisy)
        if self.noise_scheduler.config.prediction_type == "v_prediction":
            target = self.noise_scheduler.get_velocity(*flat).view_as(latents)
        else:
            target = noise
        pred = unet(noisy, t_latent, cond, layer_cond, layer_valid,
                    composite_latents=composite, layer_boxes=boxes).sample
        error = (pred.float() - target.float()).pow(2).mean(dim=(2, 3, 4))  # (B, L')
        noisy_valid = (valid_latent & ~clean_latent).float()
        weight = noisy_valid
        if self.hparams.snr_gamma is not None:
            weight = weight * self.min_snr_weight(t_latent)
        return (error * weight).sum() / noisy_valid.sum().clamp_min(1.0)

    def min_snr_weight(self, timesteps: Tensor) -> Tensor:
        """Min-SNR-gamma loss weights of integer ``timesteps`` (any shape), same shape."""
        snr = compute_snr(self.noise_scheduler, timesteps.flatten()).view_as(timesteps).float()
        clipped = snr.clamp(max=self.hparams.snr_gamma)
        if self.noise_scheduler.config.prediction_type == "v_prediction":
            return clipped / (snr + 1)
        return clipped / snr.clamp_min(1e-8)

    def training_step(self, batch: LayeredBatch | LatentBatch, batch_idx: int) -> Tensor:
        loss = self.diffusion_loss(self.unet, batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch))
        return loss

    def validation_step(self, batch: LayeredBatch | LatentBatch, batch_idx: int) -> Tensor:
        # fixed noise and timesteps per batch: val/loss is comparable across epochs
        generator = torch.Generator(self.device).manual_seed(batch_idx)
        loss = self.diffusion_loss(self.inference_unet, batch, generator=generator, train=False)
        self.log("val/loss", loss, prog_bar=True, batch_size=len(batch), sync_dist=True)
        return loss

    # ------------------------------------------------------------------------------------
    # EMA, optimisation, checkpoints, export
    # ------------------------------------------------------------------------------------

    @property
    def inference_unet(self) -> LayeredUNet:
        """The EMA UNet (or the trained one without EMA): used for validation and export."""
        return self.ema_unet.module if self.ema_unet is not None else self.unet

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        # once per optimizer step (after gradient accumulation): EMA of the new weights
        super().optimizer_step(*args, **kwargs)
        if self.ema_unet is not None:
            self.ema_unet.update_parameters(self.unet)

    def configure_optimizers(self) -> dict[str, Any]:
        named = [(n, p) for n, p in self.unet.named_parameters() if p.requires_grad]
        groups = [{"params": [p for n, p in named if ".cond_conv." not in n]}]
        conditions = [p for n, p in named if ".cond_conv." in n]
        if conditions:
            groups.append({"params": conditions, "lr": self.hparams.lr * self.hparams.condition_lr_scale})
        optimizer = torch.optim.AdamW(
            groups, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay,
            betas=tuple(self.hparams.betas),
        )
        name = "constant_with_warmup" if self.hparams.lr_schedule == "constant" else "cosine"
        total = self.trainer.max_steps if self.trainer.max_steps > 0 else None
        if name == "cosine" and total is None:
            raise ValueError("lr_schedule: 'cosine' needs the Trainer's max_steps")
        scheduler = get_scheduler(name, optimizer, num_warmup_steps=self.hparams.warmup_steps,
                                  num_training_steps=total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint["state_dict"]
        for key in [k for k in state if k.startswith(FROZEN_PREFIXES)]:
            del state[key]

    def train(self, mode: bool = True) -> LayeredDiffusionModule:
        super().train(mode)
        self.autoencoder.eval()
        self.text_encoder.eval()
        if self.ema_unet is not None:
            self.ema_unet.eval()
        return self

    def export_pretrained(self, directory: str | Path) -> Path:
        """Write a ``LayeredDiffusionPipeline`` directory (diffusers format).

        ``unet/`` (EMA weights), ``autoencoder/``, ``text_encoder/``, ``tokenizer/``,
        ``scheduler/`` (a ``DDIMScheduler`` with the training noise schedule) and
        ``model_index.json`` (with the sampling recipe, see ``sampling``); loadable with
        ``LayeredDiffusionPipeline.from_pretrained``.
        """
        from layergen.pipelines.layered_diffusion import LayeredDiffusionPipeline

        scheduler = DDIMScheduler.from_config(
            self.noise_scheduler.config, clip_sample=False, set_alpha_to_one=False
        )
        # the family of the exported network (with unet_init it is the saved UNet's, not the
        # layer_blocks argument's default)
        layer_blocks = (self.inference_unet.config.layer_blocks if self.hparams.get("unet_init")
                        else self.hparams.layer_blocks)
        pipeline = LayeredDiffusionPipeline(
            autoencoder=self.autoencoder,
            unet=self.inference_unet,
            text_encoder=self.text_encoder,
            tokenizer=self.tokenizer,
            scheduler=scheduler,
            **family_recipe(layer_blocks, self.hparams.get("sampling")),
        )
        directory = Path(directory)
        pipeline.save_pretrained(directory, safe_serialization=True)
        logger.info("exported pipeline to %s", directory)
        return directory


def _cached_field(batch: LatentBatch, field: str, condition: str) -> Tensor:
    """``batch.<field>``, which a ``condition`` model needs from the latent cache."""
    value = getattr(batch, field)
    if value is None:
        raise ValueError(f"{condition}: the cached latents have no {field} "
                         "(re-run python -m layergen.apps.cache_latents)")
    return value
