"""Text -> layered image: the diffusers pipeline of LayerDiff and Text2Layer.

``LayeredDiffusionPipeline`` samples layered latents ``(B, L', C, h, w)`` with any diffusers
scheduler (DDIM by default), decodes them with the layered autoencoder and returns
``LayeredImage`` s (background, foregrounds, visible masks; LayerDiff eq. 1 composite).
Unset steps, guidance and restyle strength come from the sampling recipe in the pipeline's
config (``model_index.json``; :mod:`layergen.pipelines.recipe`): LayerDiff 4.2 samples with
100 steps and guidance 3, Text2Layer V-C with 50 steps and guidance 7.5.

- Per-layer latents (``L' = L``, LayerDiff): global prompt ``y`` and layer prompts ``p_i``;
  classifier-free guidance (Ho & Salimans 2022) with LayerDiff's negative prompts (4.2):
  the concatenation of the foreground layer prompts is the negative global prompt and the
  background layer's negative prompt; "the background" is each foreground's negative prompt.
- Joint latent (``L' = 1``, Text2Layer's CaT²I-AE): global prompt only, empty-text negative.

Editing with the same model (kept layers clean at timestep 0) lives in
:mod:`layergen.pipelines.editing`.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import PIL.Image
import torch
from diffusers import DiffusionPipeline, SchedulerMixin
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor
from transformers import CLIPTextModel, CLIPTokenizer

from layergen.layers import BACKGROUND_PROMPT, LayeredImage, normalize_masks
from layergen.models.layered_unet import LayeredUNet
from layergen.models.text_encoder import encode_prompts
from layergen.pipelines.checkpoints import pipeline_from_checkpoints
from layergen.pipelines.components import COMPONENT_CLASSES, COMPONENTS_LIBRARY
from layergen.pipelines.editing import LayeredEditingMixin
from layergen.pipelines.layer_prompts import derive_layer_prompts
from layergen.pipelines.recipe import LEGACY_RECIPE, RECIPE_KEYS, check_recipe

logger = logging.getLogger(__name__)

OUTPUT_TYPES = ("layered", "pil", "latent")
LayerPromptsArg = str | Sequence[str] | Sequence[Sequence[str]] | None


@dataclass
class LayeredPipelineOutput(BaseOutput):
    """Output of :class:`LayeredDiffusionPipeline`.

    Attributes:
        images: one ``LayeredImage`` per prompt (empty for ``output_type="latent"``).
        composites: PIL RGB composites for ``output_type="pil"``, else None.
        latents: the final latents ``(B, L', C, h, w)`` (scaled) for ``output_type="latent"``.
    """

    images: list[LayeredImage]
    composites: list[PIL.Image.Image] | None = None
    latents: Tensor | None = None


def layerdiff_negative_prompts(
    layer_prompts: Sequence[str], num_layers: int | None = None
) -> tuple[str, list[str]]:
    """LayerDiff's negative prompts (section 4.2) for one layered image.

    Args:
        layer_prompts: the image's ``L`` real layer prompts, index 0 the background (a
            foreground's prompt may be empty).
        num_layers: pad the layer negatives to this many layers (batches of mixed L).

    Returns:
        ``(global_negative, layer_negatives)``: the comma-joined non-empty foreground
        prompts as the global negative and the background's negative, "the background" for
        each foreground (empty prompt or not), "" for padded layers.
    """
    num_layers = len(layer_prompts) if num_layers is None else num_layers
    if num_layers < len(layer_prompts):
        raise ValueError(f"num_layers: {num_layers} < the {len(layer_prompts)} layer prompts")
    joined = ", ".join(p for p in layer_prompts[1:] if p)
    foreground_negatives = [BACKGROUND_PROMPT] * (len(layer_prompts) - 1)
    padding = [""] * (num_layers - len(layer_prompts))
    return joined, [joined, *foreground_negatives, *padding]


class LayeredDiffusionPipeline(LayeredEditingMixin, DiffusionPipeline):
    """Generate (and edit) layered images from text.

    Args:
        autoencoder: a layered autoencoder (``PerLayerAutoencoder``, ``LayeredAutoencoder``,
            ``StackedSDAutoencoder`` or the text-to-image baseline's ``CompositeAutoencoder``)
            mapping layers to latents ``(B, L', C, h, w)``.
        unet: the layer-collaborative UNet; ``unet.config.layer_blocks`` False is the plain
            Text2Layer UNet (layer prompts are then only labels).
        text_encoder: frozen CLIP text model ``T``.
        tokenizer: its tokenizer.
        scheduler: any diffusers scheduler (``DDIMScheduler`` by default in training exports).
        num_inference_steps, guidance_scale, restyle_strength: the sampling recipe, used
            wherever a call leaves them unset and saved in ``model_index.json``; ``None``:
            the defaults from before recipes were recorded (50, 7.5, 0.5).
    """

    model_cpu_offload_seq = "text_encoder->unet->autoencoder"

    def __init__(
        self,
        autoencoder: Any,
        unet: LayeredUNet,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        scheduler: SchedulerMixin,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        restyle_strength: float | None = None,
    ) -> None:
        super().__init__()
        self.register_modules(
            autoencoder=autoencoder,
            unet=unet,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            scheduler=scheduler,
        )
        recipe = dict(
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            restyle_strength=restyle_strength,
        )
        self.register_to_config(**{**LEGACY_RECIPE, **check_recipe(recipe)})

    def register_modules(self, **kwargs: Any) -> None:
        """Register components; layergen models are recorded under ``COMPONENTS_LIBRARY``."""
        super().register_modules(**kwargs)
        self._record_layergen_components(kwargs)

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        if name in ("autoencoder", "unet") and hasattr(self, "_internal_dict"):
            self._record_layergen_components({name: value})

    def _record_layergen_components(self, modules: dict[str, Any]) -> None:
        """Point ``model_index.json`` at :mod:`layergen.pipelines.components` for our models."""
        for name, module in modules.items():
            class_name = type(module).__name__
            if COMPONENT_CLASSES.get(class_name) is type(module):
                self.register_to_config(**{name: (COMPONENTS_LIBRARY, class_name)})

    # ------------------------------------------------------------------------------------
    # Properties of the loaded models
    # ------------------------------------------------------------------------------------

    @property
    def latent_factor(self) -> int:
        """Spatial down-sampling ``f`` of the autoencoder (image side / latent side)."""
        return int(self.autoencoder.downsample_factor)

    @property
    def uses_layer_prompts(self) -> bool:
        """Whether the UNet reads layer prompts (LayerDiff) or only the global prompt."""
        return bool(self.unet.config.layer_blocks)

    @property
    def fixed_num_layers(self) -> int | None:
        """L of a joint autoencoder that decodes a fixed number of layers, else None."""
        return None if self.autoencoder.per_layer else getattr(self.autoencoder, "num_layers", None)

    @property
    def default_size(self) -> int:
        """Default image side: the UNet's ``sample_size`` times ``f``."""
        return int(self.unet.config.unet_config["sample_size"]) * self.latent_factor

    @property
    def sampling_recipe(self) -> dict[str, Any]:
        """Default ``num_inference_steps``, ``guidance_scale`` and ``restyle_strength``."""
        return {key: self.config[key] for key in RECIPE_KEYS}  # filled in by __init__

    def resolve_recipe(
        self,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        restyle_strength: float | None = None,
    ) -> dict[str, Any]:
        """The sampling recipe with the given (not None) arguments in place of its values."""
        given = dict(
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            restyle_strength=restyle_strength,
        )
        return {**self.sampling_recipe, **{k: v for k, v in given.items() if v is not None}}

    # ------------------------------------------------------------------------------------
    # Inputs
    # ------------------------------------------------------------------------------------

    def resolve_layer_prompts(
        self, prompts: list[str], layer_prompts: LayerPromptsArg, num_layers: int | None
    ) -> list[list[str]]:
        """One list of layer prompts (index 0 the background) per prompt.

        ``None``: ``num_layers`` (or the joint autoencoder's L) layers with empty foreground
        prompts when ``num_layers`` is given or the UNet reads no layer prompts, else the
        ``"auto"`` parse; ``"auto"``: noun phrases of each prompt; a list of strings: the
        same layer prompts for every prompt; a list of lists: one per prompt.
        """
        if isinstance(layer_prompts, str):
            if layer_prompts != "auto":
                raise ValueError(
                    f"layer_prompts: expected None, 'auto' or a list of strings, got {layer_prompts!r}"
                )
            return [derive_layer_prompts(p) for p in prompts]
        if layer_prompts is None:
            count = num_layers or self.fixed_num_layers
            if count is None and self.uses_layer_prompts:
                return [derive_layer_prompts(p) for p in prompts]
            count = count or 2
            return [[BACKGROUND_PROMPT] + [""] * (count - 1) for _ in prompts]
        layer_prompts = list(layer_prompts)
        if layer_prompts and all(isinstance(p, str) for p in layer_prompts):
            return [list(layer_prompts) for _ in prompts]
        if len(layer_prompts) != len(prompts):
            raise ValueError(
                f"layer_prompts: got {len(layer_prompts)} lists of layer prompts for "
                f"{len(prompts)} prompts"
            )
        return [list(p) for p in layer_prompts]

    def check_inputs(
        self,
        prompts: list[str],
        layer_prompts: list[list[str]],
        num_layers: int | None,
        negative_prompt: str | list[str] | None,
        height: int,
        width: int,
        guidance_scale: float,
        num_inference_steps: int,
        latents: Tensor | None,
        output_type: str,
    ) -> None:
        """Raise ``ValueError`` with a clear message for inconsistent arguments."""
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise ValueError("prompt: expected a string or a non-empty list of strings")
        for b, lp in enumerate(layer_prompts):
            if len(lp) < 2 or not all(isinstance(p, str) for p in lp):
                raise ValueError(
                    f"layer_prompts[{b}]: need the background's prompt and at least one "
                    f"foreground prompt (strings), got {lp!r}"
                )
            if num_layers is not None and len(lp) != num_layers:
                raise ValueError(
                    f"layer_prompts[{b}]: num_layers={num_layers} needs {num_layers} layer "
                    f"prompts (index 0 the background), got {len(lp)}"
                )
            if self.fixed_num_layers is not None and len(lp) != self.fixed_num_layers:
                raise ValueError(
                    f"layer_prompts[{b}]: this autoencoder decodes exactly "
                    f"L = {self.fixed_num_layers} layers, got {len(lp)} layer prompts"
                )
            if len(lp) > self.unet.config.max_layers and self.unet.config.latent_layout != "folded":
                raise ValueError(
                    f"layer_prompts[{b}]: {len(lp)} layers exceed the UNet's "
                    f"max_layers={self.unet.config.max_layers}"
                )
        lengths = {len(lp) for lp in layer_prompts}
        one_latent_per_layer = self.autoencoder.latent_num_layers(max(lengths)) == max(lengths)
        latent_layers = {self.autoencoder.latent_num_layers(n) for n in lengths}
        if len(latent_layers) > 1 and not one_latent_per_layer:
            raise ValueError(
                "layer_prompts: prompts with different numbers of layers can only be batched with "
                f"one latent layer per layer or a fixed L'; got L = {sorted(lengths)}"
            )
        factor = self.latent_factor
        if height % factor or width % factor or height <= 0 or width <= 0:
            raise ValueError(
                f"height/width: must be positive multiples of the latent factor {factor}, "
                f"got {height}x{width}"
            )
        if guidance_scale < 0:
            raise ValueError(f"guidance_scale: must be >= 0, got {guidance_scale}")
        if negative_prompt is not None and guidance_scale <= 1.0:
            raise ValueError(
                f"negative_prompt: only used by classifier-free guidance; set guidance_scale > 1 "
                f"(got {guidance_scale})"
            )
        if isinstance(negative_prompt, list) and len(negative_prompt) != len(prompts):
            raise ValueError(
                f"negative_prompt: got {len(negative_prompt)} negative prompts for {len(prompts)} prompts"
            )
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps: must be >= 1, got {num_inference_steps}")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type: expected one of {OUTPUT_TYPES}, got {output_type!r}")
        if latents is not None:
            expected = self.latent_shape(layer_prompts, height, width)
            if tuple(latents.shape) != expected:
                raise ValueError(f"latents: expected shape {expected}, got {tuple(latents.shape)}")

    def latent_shape(
        self, layer_prompts: list[list[str]], height: int, width: int
    ) -> tuple[int, int, int, int, int]:
        """``(B, L', C, h, w)`` of the latents for these layer prompts and image size."""
        num_layers = max(len(lp) for lp in layer_prompts)
        return (
            len(layer_prompts),
            self.autoencoder.latent_num_layers(num_layers),
            self.autoencoder.config.latent_channels,
            height // self.latent_factor,
            width // self.latent_factor,
        )

    # ------------------------------------------------------------------------------------
    # Conditioning
    # ------------------------------------------------------------------------------------

    def encode_prompt(self, prompts: Sequence[str]) -> Tensor:
        """Text embeddings ``T(y)``: ``N`` strings -> ``(N, S, D)`` (frozen CLIP)."""
        embeddings = encode_prompts(self.tokenizer, self.text_encoder, list(prompts))
        return embeddings.to(device=self._execution_device, dtype=self.unet.dtype)

    def prepare_conditions(
        self,
        prompts: list[str],
        layer_prompts: list[list[str]],
        negative_prompt: str | list[str] | None,
        do_classifier_free_guidance: bool,
        layer_negatives: bool,
    ) -> tuple[Tensor, Tensor | None, Tensor]:
        """Global and layer embeddings, negatives first when guiding.

        Returns:
            ``encoder_hidden_states`` ``(B or 2B, S, D)``; ``layer_hidden_states``
            ``(B or 2B, L, S, D)`` or None (no layer prompts); ``layer_valid``
            ``(B or 2B, L)`` bool (``(B or 2B, L')`` without layer prompts).
        """
        batch = len(prompts)
        num_layers = max(len(lp) for lp in layer_prompts)
        latent_layers = self.autoencoder.latent_num_layers(num_layers)
        padded = [lp + [""] * (num_layers - len(lp)) for lp in layer_prompts]
        valid = torch.tensor(
            [[bool(i < len(lp)) for i in range(num_layers)] for lp in layer_prompts]
        )
        # the UNet reads layer prompts per layer when each layer has its own latent(s)
        with_layers = self.uses_layer_prompts and (
            latent_layers == num_layers or self.unet.config.latent_layout == "stacked"
        )
        if not with_layers:
            valid = torch.ones(batch, latent_layers, dtype=torch.bool)
        texts = list(prompts) + ([p for lp in padded for p in lp] if with_layers else [])
        if do_classifier_free_guidance:
            if isinstance(negative_prompt, str):
                negative_prompt = [negative_prompt] * batch
            negatives = [layerdiff_negative_prompts(lp, num_layers) for lp in layer_prompts]
            if negative_prompt is not None:
                global_negatives = list(negative_prompt)
            elif layer_negatives and with_layers:
                global_negatives = [g for g, _ in negatives]
            else:
                global_negatives = [""] * batch
            texts += global_negatives
            if with_layers:
                for lp, (_, layer_neg) in zip(padded, negatives):
                    texts += layer_neg if layer_negatives else [""] * len(lp)
        embeddings = self.encode_prompt(texts)  # (N, S, D)
        cond_global = embeddings[:batch]
        cursor = batch
        cond_layers = None
        if with_layers:
            # (B*L, S, D) -> (B, L, S, D)
            cond_layers = embeddings[cursor : cursor + batch * num_layers].unflatten(
                0, (batch, num_layers)
            )
            cursor += batch * num_layers
        valid = valid.to(self._execution_device)
        if not do_classifier_free_guidance:
            return cond_global, cond_layers, valid
        neg_global = embeddings[cursor : cursor + batch]
        cursor += batch
        encoder_hidden_states = torch.cat([neg_global, cond_global])
        layer_hidden_states = None
        if with_layers:
            neg_layers = embeddings[cursor:].unflatten(0, (batch, num_layers))
            layer_hidden_states = torch.cat([neg_layers, cond_layers])
        return encoder_hidden_states, layer_hidden_states, torch.cat([valid, valid])

    # ------------------------------------------------------------------------------------
    # Latents, denoising, decoding
    # ------------------------------------------------------------------------------------

    def prepare_latents(
        self,
        shape: tuple[int, ...],
        generator: torch.Generator | list[torch.Generator] | None,
        latents: Tensor | None = None,
    ) -> Tensor:
        """Initial noise ``x_T ~ N(0, sigma_init^2 I)`` of shape ``(B, L', C, h, w)``."""
        if latents is None:
            latents = randn_tensor(
                shape, generator=generator, device=self._execution_device, dtype=self.unet.dtype
            )
        else:
            latents = latents.to(device=self._execution_device, dtype=self.unet.dtype)
        return latents * self.scheduler.init_noise_sigma

    def _step_kwargs(self, generator: torch.Generator | list[torch.Generator] | None) -> dict:
        """``generator`` (and DDIM's ``eta`` = 0) when the scheduler's ``step`` accepts them."""
        parameters = set(inspect.signature(self.scheduler.step).parameters)
        kwargs: dict[str, Any] = {}
        if "generator" in parameters and not isinstance(generator, list):
            kwargs["generator"] = generator
        if "eta" in parameters:
            kwargs["eta"] = 0.0
        return kwargs

    def denoise(
        self,
        latents: Tensor,
        timesteps: Tensor,
        encoder_hidden_states: Tensor,
        layer_hidden_states: Tensor | None,
        layer_valid: Tensor,
        guidance_scale: float,
        generator: torch.Generator | list[torch.Generator] | None = None,
        fixed: Tensor | None = None,
        fixed_latents: Tensor | None = None,
    ) -> Tensor:
        """The reverse process ``x_T -> x_0`` with classifier-free guidance.

        Args:
            latents: ``(B, L', C, h, w)`` noisy latents at ``timesteps[0]``.
            timesteps: the scheduler's timesteps to run.
            encoder_hidden_states, layer_hidden_states, layer_valid: from
                ``prepare_conditions`` (doubled, negatives first, when guiding).
            guidance_scale: ``w`` in ``eps = eps_neg + w (eps_cond - eps_neg)``; > 1 guides.
            fixed: ``(B, L')`` bool, layers held clean at timestep 0 (editing).
            fixed_latents: ``(B, L', C, h, w)`` clean latents of the fixed layers.

        Returns:
            ``(B, L', C, h, w)`` denoised latents.
        """
        do_cfg = guidance_scale > 1.0
        batch, latent_layers = latents.shape[:2]
        if fixed is None:
            fixed = torch.zeros(batch, latent_layers, dtype=torch.bool, device=latents.device)
        fixed_5d = fixed[:, :, None, None, None]
        step_kwargs = self._step_kwargs(generator)
        for t in self.progress_bar(timesteps):
            # 1. per-layer timesteps: t on generated layers, 0 on fixed (clean) layers
            layer_t = torch.where(fixed, torch.zeros_like(t), t.expand(batch, latent_layers))
            # 2. model input; the scheduler's input scaling applies to noisy layers only
            model_input = torch.where(
                fixed_5d, latents, self.scheduler.scale_model_input(latents, t)
            )
            if do_cfg:
                model_input = torch.cat([model_input, model_input])
                layer_t = torch.cat([layer_t, layer_t])
            # 3. predict the noise (or v) of every layer
            noise_pred = self.unet(
                model_input,
                layer_t,
                encoder_hidden_states=encoder_hidden_states,
                layer_hidden_states=layer_hidden_states,
                layer_valid=layer_valid,
            ).sample
            # 4. classifier-free guidance: eps = eps_neg + w (eps_cond - eps_neg)
            if do_cfg:
                noise_pred_neg, noise_pred_cond = noise_pred.chunk(2)
                noise_pred = noise_pred_neg + guidance_scale * (noise_pred_cond - noise_pred_neg)
            # 5. scheduler step x_t -> x_{t-1}
            latents = self.scheduler.step(noise_pred, t, latents, **step_kwargs).prev_sample
            # 6. fixed layers never change
            if fixed_latents is not None:
                latents = torch.where(fixed_5d, fixed_latents, latents)
        return latents

    def decode_latents(
        self,
        latents: Tensor,
        prompts: list[str],
        layer_prompts: list[list[str]],
        metadata: dict[str, Any] | None = None,
    ) -> list[LayeredImage]:
        """Decode scaled latents ``(B, L', C, h, w)`` into validated ``LayeredImage`` s.

        Each sample is decoded with its own L (padded latent layers are dropped); RGB is
        clamped to [-1, 1], masks to [0, 1] and normalised so that ``sum_i m_i <= 1``.
        """
        images = []
        z = (latents / self.autoencoder.config.scaling_factor).to(self.autoencoder.dtype)
        for b, lp in enumerate(layer_prompts):
            num_layers = len(lp)
            latent_layers = self.autoencoder.latent_num_layers(num_layers)
            out = self.autoencoder.decode(z[b : b + 1, :latent_layers], num_layers=num_layers)
            layers = out.images[0].float().clamp(-1.0, 1.0).cpu()  # (L, 3, H, W)
            fg_masks = normalize_masks(out.masks[0, 1:].float().clamp(0.0, 1.0)).cpu()
            image = LayeredImage(
                background=layers[0],
                foregrounds=layers[1:],
                masks=fg_masks,
                prompt=prompts[b],
                layer_prompts=lp,
                metadata=dict(metadata or {}),
            )
            images.append(image.validate())
        return images

    def _output(
        self, latents: Tensor, images: list[LayeredImage], output_type: str
    ) -> LayeredPipelineOutput:
        if output_type == "latent":
            return LayeredPipelineOutput(images=[], latents=latents)
        composites = [im.composite_pil() for im in images] if output_type == "pil" else None
        return LayeredPipelineOutput(images=images, composites=composites)

    # ------------------------------------------------------------------------------------
    # Text -> layered image
    # ------------------------------------------------------------------------------------

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        layer_prompts: LayerPromptsArg = None,
        num_layers: int | None = None,
        negative_prompt: str | list[str] | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: Tensor | None = None,
        height: int | None = None,
        width: int | None = None,
        output_type: str = "layered",
        layer_negatives: bool = True,
    ) -> LayeredPipelineOutput:
        """Generate layered images.

        Args:
            prompt: global prompt(s) ``y``; a list makes a batch.
            layer_prompts: None, ``"auto"`` (noun phrases of the prompt), ``L`` strings (index
                0 the background) for every prompt, or one list per prompt (L may differ;
                shorter ones are padded and masked with ``layer_valid``).
            num_layers: number of layers including the background, L = K + 1; used when no
                layer prompts are given (foreground prompts then empty), checked otherwise.
            negative_prompt: global negative prompt(s); overrides LayerDiff's global negative.
            num_inference_steps: scheduler steps (default: the pipeline's recipe).
            guidance_scale: classifier-free guidance weight ``w`` (> 1 enables guidance;
                default: the pipeline's recipe).
            generator: torch generator(s) for the initial noise (and stochastic schedulers).
            latents: optional initial noise ``(B, L', C, h, w)``.
            height, width: image size (multiples of the latent factor); default from the UNet.
            output_type: "layered" (``LayeredImage`` s), "pil" (plus PIL composites) or
                "latent" (scaled latents only).
            layer_negatives: use LayerDiff's negative prompts (else the empty text).

        Returns:
            :class:`LayeredPipelineOutput`.
        """
        # 0. inputs
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        recipe = self.resolve_recipe(num_inference_steps, guidance_scale)
        num_inference_steps = recipe["num_inference_steps"]
        guidance_scale = recipe["guidance_scale"]
        resolved = self.resolve_layer_prompts(prompts, layer_prompts, num_layers)
        height = height or self.default_size
        width = width or self.default_size
        self.check_inputs(
            prompts,
            resolved,
            num_layers,
            negative_prompt,
            height,
            width,
            guidance_scale,
            num_inference_steps,
            latents,
            output_type,
        )
        do_cfg = guidance_scale > 1.0
        # 1. encode the global, layer and negative prompts
        encoder_hidden_states, layer_hidden_states, layer_valid = self.prepare_conditions(
            prompts, resolved, negative_prompt, do_cfg, layer_negatives
        )
        # 2. timesteps
        self.scheduler.set_timesteps(num_inference_steps, device=self._execution_device)
        # 3. initial noise (B, L', C, h, w)
        latents = self.prepare_latents(
            self.latent_shape(resolved, height, width), generator, latents
        )
        # 4. denoising loop
        latents = self.denoise(
            latents,
            self.scheduler.timesteps,
            encoder_hidden_states,
            layer_hidden_states,
            layer_valid,
            guidance_scale,
            generator,
        )
        # 5. decode into layered images
        if output_type == "latent":
            return self._output(latents, [], output_type)
        metadata = {"steps": num_inference_steps, "guidance": guidance_scale}
        images = self.decode_latents(latents, prompts, resolved, metadata)
        self.maybe_free_model_hooks()
        return self._output(latents, images, output_type)

    # ------------------------------------------------------------------------------------
    # Loading from training checkpoints
    # ------------------------------------------------------------------------------------

    @classmethod
    def from_checkpoints(
        cls,
        autoencoder: str | Path,
        diffusion_checkpoint: str | Path,
        text_encoder: str | None = None,
    ) -> LayeredDiffusionPipeline:
        """Build a pipeline from the Lightning checkpoints of training.

        Args:
            autoencoder: a ``save_pretrained`` autoencoder directory or the autoencoder
                module's Lightning ``.ckpt``.
            diffusion_checkpoint: the diffusion module's Lightning ``.ckpt`` (EMA weights are
                used when present).
            text_encoder: text encoder hub id or path (default: the one used in training).
        """
        return pipeline_from_checkpoints(cls, autoencoder, diffusion_checkpoint, text_encoder)
