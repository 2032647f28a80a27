"""Layer editing with the text-to-layers model (LayerDiff 4.5 and appendix A.4).

The per-layer timesteps of the layer-collaborative UNet make editing a sampling problem:
kept layers are encoded clean and held at timestep 0 while the others are denoised.

- **Layer inpainting** (generalised): keep any subset of layers and regenerate the rest from
  noise with (new) layer prompts — a background behind fixed foregrounds, foregrounds on a
  fixed background, an added layer, or one layer replaced.
- **Layer restyling** (style transfer): partial noise on one layer only (like img2img, the
  last ``strength`` fraction of the schedule) under a new layer prompt.

Unset steps, guidance and strength come from the pipeline's sampling recipe (LayerDiff:
100 steps, guidance 3, restyling over the last 25 steps).

Editing needs one latent layer (or more) per layer, each with its own timestep: the
per-layer latents of ``PerLayerAutoencoder`` (``L' = L``) or the stacked SD-AE latents of
``StackedSDAutoencoder`` (``L' = 2L - 1``: layer ``i`` owns image latent ``i`` and, for a
foreground, mask latent ``L - 1 + i``: ``LatentLayout.layer_index``). A joint latent (one
latent for all layers, Text2Layer's CaT²I-AE) or a UNet that folds the latent layers into
its channels (one timestep for all) cannot hold some layers fixed.

Appendix A.4 sets the kept layers' timestep "to 1" in the paper's 1-based indexing of
``T = 1000`` steps; diffusers counts from 0, so the same, least-noisy level is timestep 0
here. Kept latents are never changed during sampling, and the kept layers of the result are
copied from the input (RGB and masks), so they come back bit-identical; generated foreground
masks are scaled to fit in what the kept masks leave free (``sum_i m_i <= 1``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from layergen.latent_layout import JOINT
from layergen.layers import LayeredImage

if TYPE_CHECKING:
    from layergen.pipelines.image_conditions import BoxesArg
    from layergen.pipelines.layered_diffusion import LayeredPipelineOutput


def merge_kept_layers(
    generated: LayeredImage, source: LayeredImage, keep: Sequence[int]
) -> LayeredImage:
    """Put the kept layers of ``source`` into ``generated`` unchanged.

    Kept RGB and masks are copied; generated foreground masks are scaled per pixel by
    ``min(1, (1 - sum_kept m) / sum_generated m)`` so the visible masks still sum to <= 1.

    Args:
        generated: decoded layered image with ``L >= source.num_layers`` layers.
        source: the input layered image.
        keep: indices (0 = background) of the layers to copy.
    """
    kept = set(keep)
    layers = generated.layer_images().clone()  # (L, 3, H, W)
    masks = generated.masks.clone()  # (K, 1, H, W)
    source_layers = source.layer_images()
    kept_fg = torch.zeros(generated.num_foregrounds, dtype=torch.bool)
    for i in kept:
        layers[i] = source_layers[i]
        if i > 0:
            masks[i - 1] = source.masks[i - 1]
            kept_fg[i - 1] = True
    if kept_fg.any() and (~kept_fg).any():
        free = (1.0 - masks[kept_fg].sum(0)).clamp_min(0.0)  # (1, H, W)
        used = masks[~kept_fg].sum(0)
        scale = torch.where(used > free, free / used.clamp_min(1e-12), torch.ones_like(used))
        masks[~kept_fg] = masks[~kept_fg] * scale
    return LayeredImage(
        background=layers[0],
        foregrounds=layers[1:],
        masks=masks,
        prompt=generated.prompt,
        layer_prompts=generated.layer_prompts,
        metadata=generated.metadata,
    )


class LayeredEditingMixin:
    """``edit`` and ``restyle`` for :class:`~layergen.pipelines.LayeredDiffusionPipeline`."""

    def _check_editable(self, image: LayeredImage) -> None:
        # L' = 1: one latent for all layers
        if self.autoencoder.latent_layout == JOINT:
            raise ValueError(
                "editing needs latents of its own for each layer (per-layer or stacked SD-AE "
                f"latents); this pipeline's {type(self.autoencoder).__name__} encodes all layers "
                "into one joint latent (like Text2Layer's CaT²I-AE), so no layer can be kept"
            )
        if not self.unet.per_layer_timesteps:
            raise ValueError(
                "editing needs per-layer timesteps; this UNet folds all latent layers into its "
                "channels (latent_layout 'folded', one timestep for all layers)"
            )
        image.validate()
        height, width = image.size
        if height % self.latent_factor or width % self.latent_factor:
            raise ValueError(
                f"image: size {height}x{width} is not a multiple of the latent factor "
                f"{self.latent_factor}"
            )

    def encode_layers(self, image: LayeredImage, num_layers: int) -> Tensor:
        """Clean scaled latents ``(1, L', C, h, w)`` of ``image``'s layers (mode of q).

        ``L'`` is the autoencoder's ``latent_num_layers(num_layers)`` (``num_layers`` or
        ``2 num_layers - 1``).

        Layers beyond ``image.num_layers`` (layers being added) are encoded from zeros; their
        latents are replaced by noise anyway.
        """
        height, width = image.size
        images = torch.zeros(1, num_layers, 3, height, width)
        masks = torch.zeros(1, num_layers, 1, height, width)
        images[0, : image.num_layers] = image.layer_images()
        masks[0, : image.num_layers] = image.layer_masks()
        device, dtype = self._execution_device, self.autoencoder.dtype
        posterior = self.autoencoder.encode(images.to(device, dtype), masks.to(device, dtype))
        latents = posterior.latent_dist.mode() * self.autoencoder.config.scaling_factor
        return latents.to(self.unet.dtype)

    def _edit(
        self,
        image: LayeredImage,
        keep: Sequence[int],
        layer_prompts: Sequence[str],
        prompt: str,
        negative_prompt: str | None,
        num_inference_steps: int,
        guidance_scale: float,
        generator: torch.Generator | None,
        output_type: str,
        layer_negatives: bool,
        restyle: tuple[int, float] | None = None,
        layer_boxes: BoxesArg = None,
    ) -> LayeredPipelineOutput:
        layer_prompts = [list(layer_prompts)]
        num_layers = len(layer_prompts[0])
        height, width = image.size
        self.check_inputs(
            [prompt],
            layer_prompts,
            None,
            negative_prompt,
            height,
            width,
            guidance_scale,
            num_inference_steps,
            None,
            output_type,
        )
        do_cfg = guidance_scale > 1.0
        device = self._execution_device
        # 1. encode the prompts
        encoder_hidden_states, layer_hidden_states, layer_valid = self.prepare_conditions(
            [prompt], layer_prompts, negative_prompt, do_cfg, layer_negatives
        )
        # 2. clean latents of the input layers; which latent layers stay fixed
        clean = self.encode_layers(image, num_layers)  # (1, L', C, h, w)
        kept = torch.tensor([i in set(keep) for i in range(num_layers)])  # (L,)
        index = self.autoencoder.latent_layout.layer_index(num_layers)  # (L',)
        fixed = kept[index][None].to(device)  # (1, L')
        # 3. timesteps: the whole schedule, or its last `strength` fraction when restyling
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        noise = self.prepare_latents(clean.shape, generator)
        if restyle is not None:
            index, strength = restyle
            start = num_inference_steps - min(
                int(round(num_inference_steps * strength)), num_inference_steps
            )
            timesteps = timesteps[start * self.scheduler.order :]
            if hasattr(self.scheduler, "set_begin_index"):
                self.scheduler.set_begin_index(start * self.scheduler.order)
            # partial noise on the restyled layer only: x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) eps
            noisy = self.scheduler.add_noise(
                clean, noise / self.scheduler.init_noise_sigma, timesteps[:1]
            )
            latents = torch.where(fixed[:, :, None, None, None], clean, noisy)
        else:
            latents = torch.where(fixed[:, :, None, None, None], clean, noise)
        # 4. denoise the other layers; fixed layers stay clean at timestep 0 (boxes: where
        #    the generated layers go, box-conditioned UNets)
        unet_conditions = self.prepare_image_conditions(None, layer_boxes, 1, num_layers, height, width)
        latents = self.denoise(
            latents,
            timesteps,
            encoder_hidden_states,
            layer_hidden_states,
            layer_valid,
            guidance_scale,
            generator,
            fixed=fixed,
            fixed_latents=clean,
            unet_conditions=unet_conditions,
        )
        if output_type == "latent":
            return self._output(latents, [], output_type)
        # 5. decode; kept layers are copied from the input, bit for bit
        metadata = dict(image.metadata)
        metadata.update(
            steps=num_inference_steps,
            guidance=guidance_scale,
            edit={"keep": sorted(keep)}
            if restyle is None
            else {"restyle": restyle[0], "strength": restyle[1]},
        )
        generated = self.decode_latents(latents, [prompt], layer_prompts, metadata)[0]
        result = merge_kept_layers(generated, image, keep).validate()
        self.maybe_free_model_hooks()
        return self._output(latents, [result], output_type)

    @torch.no_grad()
    def edit(
        self,
        image: LayeredImage,
        keep: Sequence[int],
        layer_prompts: Sequence[str] | None = None,
        prompt: str | None = None,
        negative_prompt: str | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        generator: torch.Generator | None = None,
        output_type: str = "layered",
        layer_negatives: bool = True,
        layer_boxes: BoxesArg = None,
    ) -> LayeredPipelineOutput:
        """Regenerate every layer not in ``keep`` (layer inpainting, LayerDiff A.4).

        Examples: a background behind fixed foregrounds (``keep=[1, ..., K]``); foregrounds on
        a fixed background (``keep=[0]``); replace foreground ``i`` (keep all others, new
        ``layer_prompts[i]``); add a layer on top (``layer_prompts`` one longer than the
        image's, keep all existing layers).

        Args:
            image: the layered image to edit (its size must be a multiple of the latent factor).
            keep: indices (0 = background) of input layers kept bit-identical.
            layer_prompts: ``L`` layer prompts of the result (``L >= image.num_layers``;
                default: the image's).
            prompt: global prompt (default: the image's).
            negative_prompt, num_inference_steps, guidance_scale, generator, output_type,
                layer_negatives: as in ``__call__`` (steps and guidance default to the
                pipeline's recipe).
            layer_boxes: ``L`` boxes ``(x0, y0, x1, y1)`` in [0, 1] or None per layer, where
                the regenerated layers go (box-conditioned UNets; as in ``__call__``).

        Returns:
            ``LayeredPipelineOutput`` with one ``LayeredImage`` whose kept layers equal the
            input's exactly.
        """
        self._check_editable(image)
        layer_prompts = (
            list(layer_prompts) if layer_prompts is not None else list(image.layer_prompts)
        )
        keep = sorted(set(int(i) for i in keep))
        if len(layer_prompts) < image.num_layers:
            raise ValueError(
                f"layer_prompts: got {len(layer_prompts)} prompts for an image with "
                f"{image.num_layers} layers (layers can be added, not removed)"
            )
        if any(i < 0 or i >= image.num_layers for i in keep):
            raise ValueError(f"keep: indices must lie in [0, {image.num_layers - 1}], got {keep}")
        if len(keep) == len(layer_prompts):
            raise ValueError("keep: every layer is kept; nothing to generate")
        recipe = self.resolve_recipe(num_inference_steps, guidance_scale)
        return self._edit(
            image,
            keep,
            layer_prompts,
            image.prompt if prompt is None else prompt,
            negative_prompt,
            recipe["num_inference_steps"],
            recipe["guidance_scale"],
            generator,
            output_type,
            layer_negatives,
            layer_boxes=layer_boxes,
        )

    @torch.no_grad()
    def restyle(
        self,
        image: LayeredImage,
        layer: int,
        layer_prompt: str | None = None,
        strength: float | None = None,
        prompt: str | None = None,
        negative_prompt: str | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        generator: torch.Generator | None = None,
        output_type: str = "layered",
        layer_negatives: bool = True,
    ) -> LayeredPipelineOutput:
        """Restyle one layer (LayerDiff's layer style transfer, A.4).

        The layer is noised to ``strength`` (0 = unchanged, 1 = from pure noise) and denoised
        under ``layer_prompt``; every other layer is kept bit-identical.

        Args:
            image: the layered image.
            layer: index of the layer to restyle (0 = background).
            layer_prompt: its new prompt (e.g. the old one plus a style); default unchanged.
            strength: fraction of the schedule run on that layer, in (0, 1] (default: the
                pipeline's recipe, ``restyle_strength``).
            The other arguments are as in ``edit``.
        """
        self._check_editable(image)
        if not 0 <= layer < image.num_layers:
            raise ValueError(f"layer: must lie in [0, {image.num_layers - 1}], got {layer}")
        recipe = self.resolve_recipe(num_inference_steps, guidance_scale, strength)
        num_inference_steps, strength = recipe["num_inference_steps"], recipe["restyle_strength"]
        if not 0.0 < strength <= 1.0:
            raise ValueError(f"strength: must lie in (0, 1], got {strength}")
        if int(round(num_inference_steps * strength)) < 1:
            raise ValueError(
                f"strength: {strength} x {num_inference_steps} steps leaves no step to run"
            )
        layer_prompts = list(image.layer_prompts)
        if layer_prompt is not None:
            layer_prompts[layer] = layer_prompt
        keep = [i for i in range(image.num_layers) if i != layer]
        return self._edit(
            image,
            keep,
            layer_prompts,
            image.prompt if prompt is None else prompt,
            negative_prompt,
            num_inference_steps,
            recipe["guidance_scale"],
            generator,
            output_type,
            layer_negatives,
            restyle=(layer, strength),
        )
