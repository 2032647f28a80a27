"""The layered pipeline's call arguments: layer prompts resolved per prompt, and checked.

``__call__``, ``edit`` and ``restyle`` check their arguments before any model runs and raise
``ValueError`` naming the argument: layer prompts (one list per prompt, index 0 the
background), texts given together with their embeddings (diffusers forbids ``prompt`` with
``prompt_embeds``), image size, guidance, output type, generators and callback inputs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from layergen.layers import BACKGROUND_PROMPT
from layergen.pipelines.layer_prompts import background_phrase, derive_layer_prompts
from layergen.pipelines.outputs import OUTPUT_TYPES

LayerPromptsArg = str | Sequence[str] | Sequence[Sequence[str]] | None
Generators = torch.Generator | list[torch.Generator] | None


class LayeredInputsMixin:
    """Argument handling of :class:`~layergen.pipelines.LayeredDiffusionPipeline`."""

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
            backgrounds = [background_phrase(p) or BACKGROUND_PROMPT for p in prompts]
            return [[b] + [""] * (count - 1) for b in backgrounds]
        layer_prompts = list(layer_prompts)
        if layer_prompts and all(isinstance(p, str) for p in layer_prompts):
            return [list(layer_prompts) for _ in prompts]
        if len(layer_prompts) != len(prompts):
            raise ValueError(
                f"layer_prompts: got {len(layer_prompts)} lists of layer prompts for "
                f"{len(prompts)} prompts"
            )
        return [list(p) for p in layer_prompts]

    def check_prompt_embeds(
        self,
        prompt: str | list[str] | None,
        layer_prompts: LayerPromptsArg,
        num_layers: int | None,
        negative_prompt: str | list[str] | None,
        guidance_scale: float,
        prompt_embeds: Tensor | None,
        negative_prompt_embeds: Tensor | None,
        layer_prompt_embeds: Tensor | None,
        negative_layer_prompt_embeds: Tensor | None,
    ) -> None:
        """Raise ``ValueError`` for texts given with their embeddings, or embeddings of the
        wrong rank; batch sizes and L are checked by ``prepare_conditions``."""
        if (prompt is None) == (prompt_embeds is None):
            raise ValueError("prompt: give exactly one of prompt and prompt_embeds")
        if negative_prompt is not None and negative_prompt_embeds is not None:
            raise ValueError(
                "negative_prompt: give at most one of negative_prompt and negative_prompt_embeds"
            )
        if layer_prompts is not None and layer_prompt_embeds is not None:
            raise ValueError(
                "layer_prompts: give at most one of layer_prompts and layer_prompt_embeds"
            )
        ranks = {
            "prompt_embeds": (prompt_embeds, 3, "(B, S, D)"),
            "negative_prompt_embeds": (negative_prompt_embeds, 3, "(B, S, D)"),
            "layer_prompt_embeds": (layer_prompt_embeds, 4, "(B, L, S, D)"),
            "negative_layer_prompt_embeds": (negative_layer_prompt_embeds, 4, "(B, L, S, D)"),
        }
        for name, (tensor, rank, shape) in ranks.items():
            if tensor is not None and tensor.ndim != rank:
                raise ValueError(f"{name}: expected shape {shape}, got {tuple(tensor.shape)}")
        for name in ("negative_prompt_embeds", "negative_layer_prompt_embeds"):
            if ranks[name][0] is not None and guidance_scale <= 1.0:
                raise ValueError(
                    f"{name}: only used by classifier-free guidance; set guidance_scale > 1 "
                    f"(got {guidance_scale})"
                )
        if layer_prompt_embeds is not None:
            count = layer_prompt_embeds.shape[1]
            if num_layers is not None and count != num_layers:
                raise ValueError(f"layer_prompt_embeds: num_layers={num_layers} but L = {count}")
        # layer prompts parsed from the prompt's text (see resolve_layer_prompts)
        parsed = (
            layer_prompts == "auto"
            if isinstance(layer_prompts, str)
            else (
                layer_prompts is None
                and layer_prompt_embeds is None
                and num_layers is None
                and self.fixed_num_layers is None
                and self.uses_layer_prompts
            )
        )
        if prompt is None and parsed:
            raise ValueError(
                "layer_prompts: cannot be parsed from prompt_embeds; give layer_prompts, "
                "layer_prompt_embeds or num_layers"
            )

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
        *,
        num_images_per_prompt: int = 1,
        generator: Generators = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    ) -> None:
        """Raise ``ValueError`` with a clear message for inconsistent arguments.

        ``prompts`` and ``layer_prompts`` are per prompt (``B``); ``latents`` and a list of
        generators are per image (``N = B * num_images_per_prompt``).
        """
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
        if isinstance(num_images_per_prompt, bool) or not isinstance(num_images_per_prompt, int):
            raise ValueError(
                f"num_images_per_prompt: expected an integer, got {num_images_per_prompt!r}"
            )
        if num_images_per_prompt < 1:
            raise ValueError(f"num_images_per_prompt: must be >= 1, got {num_images_per_prompt}")
        num_images = len(prompts) * num_images_per_prompt
        if isinstance(generator, list) and len(generator) != num_images:
            raise ValueError(
                f"generator: got a list of {len(generator)} generators for {num_images} images "
                f"({len(prompts)} prompts x num_images_per_prompt={num_images_per_prompt})"
            )
        unknown = [
            k for k in callback_on_step_end_tensor_inputs if k not in self._callback_tensor_inputs
        ]
        if unknown:
            raise ValueError(
                f"callback_on_step_end_tensor_inputs: {unknown} are not among "
                f"{self._callback_tensor_inputs}"
            )
        if latents is not None:
            expected = (num_images, *self.latent_shape(layer_prompts, height, width)[1:])
            if tuple(latents.shape) != expected:
                raise ValueError(f"latents: expected shape {expected}, got {tuple(latents.shape)}")
