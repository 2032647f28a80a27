"""Text -> layered image: the diffusers pipeline of LayerDiff and Text2Layer.

``LayeredDiffusionPipeline`` samples layered latents ``(N, L', C, h, w)`` with any diffusers
scheduler (DDIM by default), decodes them with the layered autoencoder and returns
``LayeredImage`` s (background, foregrounds, visible masks; LayerDiff eq. 1 composite) and
their composites (:mod:`layergen.pipelines.outputs`). Unset steps, guidance and restyle
strength come from the sampling recipe in the pipeline's config (``model_index.json``;
:mod:`layergen.pipelines.recipe`): LayerDiff 4.2 samples with 100 steps and guidance 3,
Text2Layer V-C with 50 steps and guidance 7.5.

- Per-layer latents (``L' = L``, LayerDiff): global prompt ``y`` and layer prompts ``p_i``;
  classifier-free guidance with LayerDiff's negative prompts
  (:mod:`layergen.pipelines.conditioning`).
- Joint latent (``L' = 1``, Text2Layer's CaT²I-AE): global prompt only, empty-text negative.

It follows diffusers' pipeline conventions: ``num_images_per_prompt``, ``prompt_embeds``,
``eta``, custom ``timesteps``, ``callback_on_step_end`` with ``interrupt``, ``output_type``
and ``return_dict``; model and sequential CPU offload; ``save_pretrained`` folders that
diffusers' generic ``DiffusionPipeline.from_pretrained`` loads, with a model card
(:mod:`layergen.pipelines.saving`). Editing with the same model (kept layers clean at
timestep 0) lives in :mod:`layergen.pipelines.editing`.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from diffusers import DiffusionPipeline, SchedulerMixin
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import retrieve_timesteps
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor
from transformers import CLIPTextModel, CLIPTokenizer

from layergen.layers import LayeredImage, normalize_masks
from layergen.models import LayeredAutoencoderInterface, LayeredUNet, autoencoder_classes
from layergen.pipelines.checkpoints import pipeline_from_checkpoints
from layergen.pipelines.components import COMPONENTS_LIBRARY, component_class
from layergen.pipelines.conditioning import LayeredConditioningMixin, layerdiff_negative_prompts
from layergen.pipelines.editing import LayeredEditingMixin
from layergen.pipelines.image_conditions import BoxesArg, ImageArg, LayeredImageConditionsMixin, image_to_tensor
from layergen.pipelines.inputs import Generators, LayeredInputsMixin, LayerPromptsArg
from layergen.pipelines.outputs import LayeredPipelineOutput, postprocess
from layergen.pipelines.recipe import LEGACY_RECIPE, RECIPE_KEYS, check_recipe
from layergen.pipelines.saving import PretrainedFolderMixin

logger = logging.getLogger(__name__)

StepCallback = Callable[..., dict[str, Any]] | PipelineCallback | MultiPipelineCallbacks | None


class LayeredDiffusionPipeline(
    LayeredInputsMixin,
    LayeredConditioningMixin,
    LayeredEditingMixin,
    LayeredImageConditionsMixin,
    PretrainedFolderMixin,
    DiffusionPipeline,
):
    """Generate (and edit) layered images from text.

    Args:
        autoencoder: a layered autoencoder (any ``LayeredAutoencoderInterface``:
            ``PerLayerAutoencoder``, ``JointAutoencoder``, ``StackedSDAutoencoder``, the
            text-to-image baseline's ``CompositeAutoencoder`` or one of your own) mapping
            layers to latents ``(B, L', C, h, w)``.
        unet: the layer-collaborative UNet; ``unet.config.layer_blocks`` False is the plain
            Text2Layer UNet (layer prompts are then only labels).
        text_encoder: frozen CLIP text model ``T``.
        tokenizer: its tokenizer.
        scheduler: any diffusers scheduler (``DDIMScheduler`` by default in training exports).
        num_inference_steps, guidance_scale, restyle_strength: the sampling recipe, used
            wherever a call leaves them unset and saved in ``model_index.json``; ``None``:
            the defaults from before recipes were recorded (50, 7.5, 0.5). ``components``
            holds the five models only: ``LayeredDiffusionPipeline(**pipe.components,
            **pipe.sampling_recipe)`` rebuilds the pipeline with its recipe.
    """

    model_cpu_offload_seq = "text_encoder->unet->autoencoder"
    # what callback_on_step_end may read and replace; prompt_embeds and layer_prompt_embeds
    # are the UNet's inputs, negatives first while guiding (as in diffusers)
    _callback_tensor_inputs = ["latents", "prompt_embeds", "layer_prompt_embeds"]

    def __init__(
        self,
        autoencoder: LayeredAutoencoderInterface,
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
        self._guidance_scale: float | None = None
        self._num_timesteps: int | None = None
        self._interrupt = False

    @classmethod
    def _get_signature_types(cls) -> dict[str, tuple[type, ...]]:
        """diffusers' component types, the autoencoder's being every layered autoencoder
        class: ``from_pipe`` passes on a component only if its exact type is listed."""
        types = dict(super()._get_signature_types())
        types["autoencoder"] = tuple(dict.fromkeys(autoencoder_classes().values()))
        return types

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
            if component_class(class_name) is type(module):
                self.register_to_config(**{name: (COMPONENTS_LIBRARY, class_name)})

    # ------------------------------------------------------------------------------------
    # Properties of the loaded models and of the running call (diffusers' names)
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
        """L of an autoencoder that decodes a fixed number of layers (joint), else None."""
        return self.autoencoder.fixed_num_layers

    @property
    def default_size(self) -> int:
        """Default image side: the UNet's ``sample_size`` times ``f``."""
        return int(self.unet.config.unet_config["sample_size"]) * self.latent_factor

    @property
    def sampling_recipe(self) -> dict[str, Any]:
        """Default ``num_inference_steps``, ``guidance_scale`` and ``restyle_strength``."""
        return {key: self.config[key] for key in RECIPE_KEYS}  # filled in by __init__

    @property
    def guidance_scale(self) -> float | None:
        """The guidance scale of the running (or last) call; callbacks may change
        ``_guidance_scale`` between steps. The recipe's default is ``sampling_recipe``."""
        return self._guidance_scale

    @property
    def do_classifier_free_guidance(self) -> bool:
        """Whether the running call guides (``guidance_scale > 1``)."""
        return self._guidance_scale is not None and self._guidance_scale > 1.0

    @property
    def num_timesteps(self) -> int | None:
        """Number of timesteps of the running (or last) denoising loop."""
        return self._num_timesteps

    @property
    def interrupt(self) -> bool:
        """Set ``pipe._interrupt = True`` in a callback to skip the remaining steps."""
        return self._interrupt

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
    # Latents, denoising, decoding
    # ------------------------------------------------------------------------------------

    def prepare_latents(
        self, shape: tuple[int, ...], generator: Generators, latents: Tensor | None = None
    ) -> Tensor:
        """Initial noise ``x_T ~ N(0, sigma_init^2 I)`` of shape ``(N, L', C, h, w)``."""
        if latents is None:
            latents = randn_tensor(
                shape, generator=generator, device=self._execution_device, dtype=self.unet.dtype
            )
        else:
            latents = latents.to(device=self._execution_device, dtype=self.unet.dtype)
        return latents * self.scheduler.init_noise_sigma

    def prepare_extra_step_kwargs(self, generator: Generators, eta: float = 0.0) -> dict:
        """``generator`` and ``eta`` (DDIM's eta, Song et al. 2021 eq. 16) where the
        scheduler's ``step`` accepts them; other schedulers ignore ``eta``."""
        parameters = set(inspect.signature(self.scheduler.step).parameters)
        kwargs: dict[str, Any] = {}
        if "generator" in parameters:
            kwargs["generator"] = generator
        if "eta" in parameters:
            kwargs["eta"] = eta
        return kwargs

    def denoise(
        self,
        latents: Tensor,
        timesteps: Tensor,
        encoder_hidden_states: Tensor,
        layer_hidden_states: Tensor | None,
        layer_valid: Tensor,
        guidance_scale: float,
        generator: Generators = None,
        fixed: Tensor | None = None,
        fixed_latents: Tensor | None = None,
        *,
        unet_conditions: dict[str, Tensor] | None = None,
        eta: float = 0.0,
        callback_on_step_end: StepCallback = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    ) -> Tensor:
        """The reverse process ``x_T -> x_0`` with classifier-free guidance.

        Args:
            latents: ``(N, L', C, h, w)`` noisy latents at ``timesteps[0]``.
            timesteps: the scheduler's timesteps to run.
            encoder_hidden_states, layer_hidden_states, layer_valid: from
                ``prepare_conditions`` (doubled, negatives first, when guiding).
            guidance_scale: ``w`` in ``eps = eps_neg + w (eps_cond - eps_neg)``; > 1 guides.
            generator, eta: for stochastic schedulers (``eta``: DDIM only).
            fixed: ``(N, L')`` bool, layers held clean at timestep 0 (editing).
            fixed_latents: ``(N, L', C, h, w)`` clean latents of the fixed layers.
            unet_conditions: the UNet's image conditions for the ``N`` images
                (``prepare_image_conditions``: ``composite_latents``, ``layer_boxes``); both
                halves of a guided batch get them.
            callback_on_step_end: called as ``callback(pipe, i, t, tensors)`` after each
                step with ``tensors`` the named ``callback_on_step_end_tensor_inputs``; the
                tensors it returns replace them. It may set ``pipe._guidance_scale`` (the
                conditional halves are kept once it drops to <= 1) or ``pipe._interrupt``.

        Returns:
            ``(N, L', C, h, w)`` denoised latents.
        """
        self._guidance_scale = guidance_scale
        self._num_timesteps = len(timesteps)
        self._interrupt = False
        batch, latent_layers = latents.shape[:2]
        if fixed is None:
            fixed = torch.zeros(batch, latent_layers, dtype=torch.bool, device=latents.device)
        fixed_5d = fixed[:, :, None, None, None]
        step_kwargs = self.prepare_extra_step_kwargs(generator, eta)
        prompt_embeds, layer_prompt_embeds = encoder_hidden_states, layer_hidden_states
        for i, t in enumerate(self.progress_bar(timesteps)):
            if self.interrupt:
                continue
            # 1. guidance while the scale is > 1 and negatives were encoded; else the
            #    conditional halves (a callback may switch guidance off, like SDCFGCutoffCallback)
            do_cfg = self.do_classifier_free_guidance and prompt_embeds.shape[0] == 2 * batch
            if not do_cfg:
                prompt_embeds, layer_prompt_embeds, layer_valid = (
                    x[-batch:] if x is not None else None
                    for x in (prompt_embeds, layer_prompt_embeds, layer_valid)
                )
            # 2. per-layer timesteps: t on generated layers, 0 on fixed (clean) layers
            layer_t = torch.where(fixed, torch.zeros_like(t), t.expand(batch, latent_layers))
            # 3. model input; the scheduler's input scaling applies to noisy layers only
            model_input = torch.where(
                fixed_5d, latents, self.scheduler.scale_model_input(latents, t)
            )
            conditions = dict(unet_conditions or {})
            if do_cfg:
                model_input = torch.cat([model_input, model_input])
                layer_t = torch.cat([layer_t, layer_t])
                conditions = {k: torch.cat([v, v]) for k, v in conditions.items()}
            # 4. predict the noise (or v) of every layer
            noise_pred = self.unet(
                model_input,
                layer_t,
                encoder_hidden_states=prompt_embeds,
                layer_hidden_states=layer_prompt_embeds,
                layer_valid=layer_valid,
                **conditions,
            ).sample
            # 5. classifier-free guidance: eps = eps_neg + w (eps_cond - eps_neg)
            if do_cfg:
                noise_pred_neg, noise_pred_cond = noise_pred.chunk(2)
                noise_pred = noise_pred_neg + self._guidance_scale * (
                    noise_pred_cond - noise_pred_neg
                )
            # 6. scheduler step x_t -> x_{t-1}; fixed layers never change
            latents = self.scheduler.step(noise_pred, t, latents, **step_kwargs).prev_sample
            if fixed_latents is not None:
                latents = torch.where(fixed_5d, fixed_latents, latents)
            # 7. the callback reads and may replace the declared tensors
            if callback_on_step_end is not None:
                tensors = {
                    "latents": latents,
                    "prompt_embeds": prompt_embeds,
                    "layer_prompt_embeds": layer_prompt_embeds,
                }
                kwargs = {k: tensors[k] for k in callback_on_step_end_tensor_inputs}
                outputs = callback_on_step_end(self, i, t, kwargs)
                latents = outputs.pop("latents", latents)
                prompt_embeds = outputs.pop("prompt_embeds", prompt_embeds)
                layer_prompt_embeds = outputs.pop("layer_prompt_embeds", layer_prompt_embeds)
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
        """Free the offload hooks and pack the output (``images`` unused for "latent")."""
        self.maybe_free_model_hooks()
        return postprocess(None if output_type == "latent" else images, latents, output_type)

    # ------------------------------------------------------------------------------------
    # Text -> layered image
    # ------------------------------------------------------------------------------------

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        layer_prompts: LayerPromptsArg = None,
        num_layers: int | None = None,
        negative_prompt: str | list[str] | None = None,
        num_inference_steps: int | None = None,
        timesteps: list[int] | None = None,
        guidance_scale: float | None = None,
        num_images_per_prompt: int = 1,
        eta: float = 0.0,
        generator: Generators = None,
        latents: Tensor | None = None,
        prompt_embeds: Tensor | None = None,
        negative_prompt_embeds: Tensor | None = None,
        layer_prompt_embeds: Tensor | None = None,
        negative_layer_prompt_embeds: Tensor | None = None,
        height: int | None = None,
        width: int | None = None,
        output_type: str = "layered",
        return_dict: bool = True,
        layer_negatives: bool = True,
        callback_on_step_end: StepCallback = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        image: ImageArg = None,
        layer_boxes: BoxesArg = None,
    ) -> LayeredPipelineOutput | tuple[Any, list[LayeredImage] | None]:
        """Generate layered images.

        Args:
            prompt: global prompt(s) ``y``; a list makes a batch of ``B`` prompts.
            layer_prompts: None, ``"auto"`` (noun phrases of the prompt), ``L`` strings (index
                0 the background) for every prompt, or one list per prompt (L may differ;
                shorter ones are padded and masked with ``layer_valid``).
            num_layers: number of layers including the background, L = K + 1; used when no
                layer prompts are given (foreground prompts then empty), checked otherwise.
            negative_prompt: global negative prompt(s); overrides LayerDiff's global negative.
            num_inference_steps: scheduler steps (default: the pipeline's recipe).
            timesteps: custom timesteps (descending) for schedulers whose ``set_timesteps``
                takes them (not DDIM); they override ``num_inference_steps``.
            guidance_scale: classifier-free guidance weight ``w`` (> 1 enables guidance;
                default: the pipeline's recipe).
            num_images_per_prompt: images per prompt; the ``N = B * num_images_per_prompt``
                images keep each prompt's images next to each other.
            eta: DDIM's eta (0: deterministic DDIM, 1: DDPM-like); other schedulers ignore it.
            generator: one torch generator, or one per image, for the initial noise and
                stochastic schedulers.
            latents: optional initial noise ``(N, L', C, h, w)``.
            prompt_embeds: ``(B, S, D)`` global prompt embeddings instead of ``prompt`` (the
                images' ``prompt`` is then ""; give ``layer_prompts``, ``layer_prompt_embeds``
                or ``num_layers``, as no layer prompts can be parsed).
            negative_prompt_embeds: ``(B, S, D)`` instead of the global negative prompt.
            layer_prompt_embeds: ``(B, L, S, D)`` instead of ``layer_prompts`` (LayerDiff
                UNets); the layers' prompts are then "", and so are the parts of LayerDiff's
                negatives built from them.
            negative_layer_prompt_embeds: ``(B, L, S, D)`` instead of the layer negatives.
            height, width: image size (multiples of the latent factor); default from the UNet.
            output_type: "layered" (``images`` are the ``LayeredImage`` s), "pil", "np", "pt"
                (``images`` are the composites in that format, ``layers`` the
                ``LayeredImage`` s) or "latent" (``images`` are the latents, not decoded);
                see :mod:`layergen.pipelines.outputs`.
            return_dict: False returns ``(images, layers)``.
            layer_negatives: use LayerDiff's negative prompts (else the empty text).
            callback_on_step_end: a function ``(pipe, step, timestep, tensors) -> tensors`` or
                a diffusers ``PipelineCallback`` called after each denoising step; see
                ``denoise``. ``pipe._interrupt = True`` skips the remaining steps.
            callback_on_step_end_tensor_inputs: the tensors it receives, some of
                ``_callback_tensor_inputs`` (a ``PipelineCallback`` names its own).
            image: a picture to decompose into the layers (composite-conditioned UNets;
                PIL, uint8 ``(H, W, 3)``, ``(3, H, W)`` / ``(B, 3, H, W)`` in [-1, 1] or a
                ``LayeredImage``); its size is the output's. See :meth:`decompose`.
            layer_boxes: ``L`` boxes ``(x0, y0, x1, y1)`` in [0, 1] (None for a layer left
                free), or a ``(L, 4)`` / ``(N, L, 4)`` tensor with NaN rows for free layers
                (box-conditioned UNets).

        Returns:
            :class:`~layergen.pipelines.outputs.LayeredPipelineOutput`, or
            ``(images, layers)`` with ``return_dict=False``.
        """
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        # 0. inputs: B prompts, N = B * num_images_per_prompt images
        recipe = self.resolve_recipe(num_inference_steps, guidance_scale)
        num_inference_steps = recipe["num_inference_steps"]
        guidance_scale = recipe["guidance_scale"]
        self.check_prompt_embeds(
            prompt,
            layer_prompts,
            num_layers,
            negative_prompt,
            guidance_scale,
            prompt_embeds,
            negative_prompt_embeds,
            layer_prompt_embeds,
            negative_layer_prompt_embeds,
        )
        if prompt is None:
            prompts = [""] * prompt_embeds.shape[0]
        else:
            prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if layer_prompt_embeds is not None:
            resolved = [[""] * layer_prompt_embeds.shape[1] for _ in prompts]
        else:
            resolved = self.resolve_layer_prompts(prompts, layer_prompts, num_layers)
        if image is not None and height is None and width is None:
            height, width = (int(n) for n in image_to_tensor(image).shape[-2:])
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
            num_images_per_prompt=num_images_per_prompt,
            generator=generator,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
        )
        image_prompts = [p for p in prompts for _ in range(num_images_per_prompt)]
        image_layer_prompts = [lp for lp in resolved for _ in range(num_images_per_prompt)]
        # 1. encode the global, layer and negative prompts (or take the given embeddings)
        encoder_hidden_states, layer_hidden_states, layer_valid = self.prepare_conditions(
            prompts,
            resolved,
            negative_prompt,
            guidance_scale > 1.0,
            layer_negatives,
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds,
            layer_prompt_embeds=layer_prompt_embeds,
            negative_layer_prompt_embeds=negative_layer_prompt_embeds,
            num_images_per_prompt=num_images_per_prompt,
        )
        # 2. timesteps: the scheduler's spacing, or custom ones
        timesteps, num_inference_steps = retrieve_timesteps(
            self.scheduler, num_inference_steps, self._execution_device, timesteps
        )
        # 3. initial noise (N, L', C, h, w)
        latents = self.prepare_latents(
            self.latent_shape(image_layer_prompts, height, width), generator, latents
        )
        # 3b. image conditions: the composite to decompose, layer boxes
        unet_conditions = self.prepare_image_conditions(
            image, layer_boxes, len(image_prompts), layer_valid.shape[1], height, width
        )
        # 4. denoising loop
        latents = self.denoise(
            latents,
            timesteps,
            encoder_hidden_states,
            layer_hidden_states,
            layer_valid,
            guidance_scale,
            generator,
            unet_conditions=unet_conditions,
            eta=eta,
            callback_on_step_end=callback_on_step_end,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
        )
        # 5. decode into layered images (not for "latent"), free the offload hooks
        images = []
        if output_type != "latent":
            metadata = {"steps": num_inference_steps, "guidance": guidance_scale}
            images = self.decode_latents(latents, image_prompts, image_layer_prompts, metadata)
        output = self._output(latents, images, output_type)
        return output if return_dict else (output.images, output.layers)

    # ------------------------------------------------------------------------------------
    # Loading from training checkpoints (save_pretrained: PretrainedFolderMixin)
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


__all__ = ["LayeredDiffusionPipeline", "LayeredPipelineOutput", "layerdiff_negative_prompts"]
