"""Text conditioning of the layered pipeline: layer prompts, negatives, embeddings.

- Classifier-free guidance (Ho & Salimans 2022) uses LayerDiff's negative prompts (4.2): the
  concatenation of the foreground layer prompts is the negative global prompt and the
  background layer's negative prompt; "the background" is each foreground's negative prompt.
- Each of the four embeddings (global and layer, conditional and negative) can be given
  precomputed, as diffusers' ``prompt_embeds`` / ``negative_prompt_embeds``; the others are
  encoded from text in one batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from layergen.layers import BACKGROUND_PROMPT


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


class LayeredConditioningMixin:
    """Prompt handling of :class:`~layergen.pipelines.LayeredDiffusionPipeline`."""

    def reads_layer_prompts(self, num_layers: int) -> bool:
        """Whether the UNet reads one layer prompt per layer for images of ``num_layers``.

        True when the UNet has layer blocks and each layer has its own latent(s) (per-layer
        or stacked SD-AE latents); a joint latent is conditioned on the global prompt only.
        """
        latent_layers = self.autoencoder.latent_num_layers(num_layers)
        return self.uses_layer_prompts and (
            latent_layers == num_layers or self.unet.config.latent_layout == "stacked"
        )

    def encode_prompt(self, prompts: Sequence[str]) -> Tensor:
        """Text embeddings ``T(y)``: ``N`` strings -> ``(N, S, D)`` (frozen CLIP).

        The tokens of :func:`~layergen.models.text_encoder.encode_prompts` (training's), sent to
        the execution device: under sequential CPU offload the weights sit on "meta".
        """
        tokens = self.tokenizer(
            list(prompts),
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        device = self._execution_device
        embeddings = self.text_encoder(tokens.input_ids.to(device)).last_hidden_state
        return embeddings.to(device=device, dtype=self.unet.dtype)

    def prepare_conditions(
        self,
        prompts: list[str],
        layer_prompts: list[list[str]],
        negative_prompt: str | list[str] | None,
        do_classifier_free_guidance: bool,
        layer_negatives: bool,
        *,
        prompt_embeds: Tensor | None = None,
        negative_prompt_embeds: Tensor | None = None,
        layer_prompt_embeds: Tensor | None = None,
        negative_layer_prompt_embeds: Tensor | None = None,
        num_images_per_prompt: int = 1,
    ) -> tuple[Tensor, Tensor | None, Tensor]:
        """Global and layer embeddings of ``B`` prompts, repeated, negatives first when guiding.

        The given embeddings (``(B, S, D)`` global, ``(B, L, S, D)`` layer) replace the ones
        encoded from ``prompts``, ``layer_prompts`` and the negative prompts; LayerDiff's
        negatives are built from the layer prompts' text (empty strings give the empty text).

        Returns:
            ``encoder_hidden_states`` ``(N or 2N, S, D)``; ``layer_hidden_states``
            ``(N or 2N, L, S, D)`` or None (no layer prompts); ``layer_valid``
            ``(N or 2N, L)`` bool (``(N or 2N, L')`` without layer prompts), where
            ``N = B * num_images_per_prompt``, each prompt's images next to each other.
        """
        batch = len(prompts)
        num_layers = max(len(lp) for lp in layer_prompts)
        padded = [lp + [""] * (num_layers - len(lp)) for lp in layer_prompts]
        valid = torch.tensor(
            [[bool(i < len(lp)) for i in range(num_layers)] for lp in layer_prompts]
        )
        with_layers = self.reads_layer_prompts(num_layers)
        if not with_layers:
            valid = torch.ones(
                batch, self.autoencoder.latent_num_layers(num_layers), dtype=torch.bool
            )
        embeddings = self._given_embeddings(
            batch,
            num_layers,
            with_layers,
            prompt=prompt_embeds,
            layers=layer_prompt_embeds,
            negative=negative_prompt_embeds,
            negative_layers=negative_layer_prompt_embeds,
        )
        # texts of the embeddings not given, encoded in one batch:
        # prompts, layer prompts, global negatives, layer negatives
        groups: dict[str, list[str]] = {}
        if "prompt" not in embeddings:
            groups["prompt"] = list(prompts)
        if with_layers and "layers" not in embeddings:
            groups["layers"] = [p for lp in padded for p in lp]
        if do_classifier_free_guidance:
            if isinstance(negative_prompt, str):
                negative_prompt = [negative_prompt] * batch
            negatives = [layerdiff_negative_prompts(lp, num_layers) for lp in layer_prompts]
            if "negative" not in embeddings:
                if negative_prompt is not None:
                    groups["negative"] = list(negative_prompt)
                elif layer_negatives and with_layers:
                    groups["negative"] = [g for g, _ in negatives]
                else:
                    groups["negative"] = [""] * batch
            if with_layers and "negative_layers" not in embeddings:
                groups["negative_layers"] = [
                    p
                    for lp, (_, layer_neg) in zip(padded, negatives)
                    for p in (layer_neg if layer_negatives else [""] * len(lp))
                ]
        texts = [text for group in groups.values() for text in group]
        encoded = self.encode_prompt(texts) if texts else None  # (T, S, D)
        cursor = 0
        for name, group in groups.items():
            embeddings[name] = encoded[cursor : cursor + len(group)]
            cursor += len(group)
            if name.endswith("layers"):
                # (B*L, S, D) -> (B, L, S, D)
                embeddings[name] = embeddings[name].unflatten(0, (batch, num_layers))

        def repeat(x: Tensor) -> Tensor:
            return x.repeat_interleave(num_images_per_prompt, dim=0)

        valid = repeat(valid.to(self._execution_device))
        cond_global = repeat(embeddings["prompt"])
        cond_layers = repeat(embeddings["layers"]) if with_layers else None
        if not do_classifier_free_guidance:
            return cond_global, cond_layers, valid
        encoder_hidden_states = torch.cat([repeat(embeddings["negative"]), cond_global])
        layer_hidden_states = None
        if with_layers:
            layer_hidden_states = torch.cat([repeat(embeddings["negative_layers"]), cond_layers])
        return encoder_hidden_states, layer_hidden_states, torch.cat([valid, valid])

    def _given_embeddings(
        self, batch: int, num_layers: int, with_layers: bool, **given: Tensor | None
    ) -> dict[str, Tensor]:
        """The given embeddings, checked against ``B`` (and ``L``), on the UNet's device/dtype."""
        arguments = {
            "prompt": "prompt_embeds",
            "layers": "layer_prompt_embeds",
            "negative": "negative_prompt_embeds",
            "negative_layers": "negative_layer_prompt_embeds",
        }
        embeddings = {}
        for name, tensor in given.items():
            if tensor is None:
                continue
            argument = arguments[name]
            if name.endswith("layers") and not with_layers:
                raise ValueError(
                    f"{argument}: this pipeline conditions on the global prompt only (its UNet "
                    "reads no layer prompts)"
                )
            leading = (batch, num_layers) if name.endswith("layers") else (batch,)
            if tuple(tensor.shape[: len(leading)]) != leading:
                expected = f"(B, L) = {leading}" if len(leading) == 2 else f"B = {batch}"
                raise ValueError(
                    f"{argument}: expected {expected} leading dimensions, got shape "
                    f"{tuple(tensor.shape)}"
                )
            embeddings[name] = tensor.to(device=self._execution_device, dtype=self.unet.dtype)
        return embeddings
