"""The layer-collaborative UNet of LayerDiff (section 3.2, figure 2) on diffusers' SD UNet.

``LayeredUNet`` wraps a diffusers ``UNet2DConditionModel``. The ``L`` layers of a layered
latent are folded into the batch for the SD blocks, ``# (B, L, C, h, w) -> (B*L, C, h, w)``,
the global prompt is repeated per layer and the per-layer timesteps are flattened. Every
``BasicTransformerBlock`` inside the ``Transformer2DModel`` s of the down, mid and up blocks
is replaced by a
:class:`~layergen.models.layer_attention.LayerCollaborativeTransformerBlock` (the SD block
followed, on the same inner tokens, by inter-layer attention, text-guided intra-layer
attention and an FFN, all zero-initialised), and the layer prompts pass through the
:class:`~layergen.models.prompt_enhancer.LayerPromptEnhancer` first. A fresh model therefore
reproduces the base UNet on every layer exactly, which is what makes starting from Stable
Diffusion weights valid.

Options:

- ``mask_channels > 0``: the latent carries image channels (the UNet's ``in_channels``)
  followed by ``mask_channels`` mask channels. Mask input/output convs are initialised from
  SD's ``conv_in``/``conv_out`` and a zero-initialised learnable scalar gates the mask
  features into the image features after the input conv (appendix A.1).
- ``layer_blocks=False``: the plain SD UNet (Text2Layer's CaT²I-AE-SD, ``L = 1`` joint
  latent); layer prompts are ignored.
- ``latent_layout``: how the UNet reads the autoencoder's ``(B, L', C, h, w)`` latents (their
  packing is :class:`~layergen.latent_layout.LatentLayout`).
  "layers": one latent per layer (``PerLayerAutoencoder``; ``JointAutoencoder`` with
  ``L' = 1``). "stacked": ``StackedSDAutoencoder``'s ``L' = 2L - 1`` latents (L layer
  images, then the K foreground masks) are regrouped into ``(B, L, 2C, h, w)`` image + mask
  latents (``mask_channels = C``; the background's mask latent is zeros in and dropped out,
  since ``m_b = 1 - sum m_i`` is derived) -- LayerDiff's layout on the SD VAE. "folded": the
  latent layers are stacked along channels, ``# (B, L', C, h, w) -> (B, L'*C, h, w)``, for
  one plain UNet (the SD-AE-UNet baselines of Text2Layer section IV-C, eq. 6); the UNet's
  ``in_channels`` must equal ``L'*C`` and the timestep of latent layer 0 is used for all.
- a UNet config with ``class_embed_type: projection`` (and
  ``projection_class_embeddings_input_dim`` = the text width): each layer's enhanced prompt
  (the global prompt without layer blocks),
  mean-pooled over its tokens, is given as diffusers' ``class_labels``, so that its embedding is
  added to the timestep embedding and reaches every ResNet at every resolution, not only the
  attention blocks (:meth:`LayeredUNet.pooled_prompts`). Off in the SD configs; the demo uses
  it (docs/demo_recipe.md).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from diffusers import ConfigMixin, ModelMixin, UNet2DConditionModel
from diffusers.configuration_utils import register_to_config
from diffusers.models.attention import BasicTransformerBlock
from diffusers.utils import BaseOutput
from torch import Tensor

from layergen.latent_layout import COMPONENTS, LatentLayout
from layergen.models.input_convs import ConditionedConvIn, MaskConvOut, MaskGatedConvIn, box_maps, widen_conv
from layergen.models.layer_attention import (
    LAYER_CONTEXT_KEY,
    LayerCollaborativeTransformerBlock,
    LayerContext,
)
from layergen.models.prompt_enhancer import LayerPromptEnhancer

logger = logging.getLogger(__name__)

LATENT_LAYOUTS = ("layers", "stacked", "folded")


@dataclass
class LayeredUNetOutput(BaseOutput):
    """Output of :class:`LayeredUNet`.

    Attributes:
        sample: ``(B, L, C, h, w)`` predicted noise (or v), one map per layer.
    """

    sample: Tensor


class LayeredUNet(ModelMixin, ConfigMixin):
    """Layer-collaborative UNet (LayerDiff eq. 2's ``Phi_u``) on a diffusers SD UNet.

    Args:
        unet_config: the ``UNet2DConditionModel`` config (a dict, as in its ``config.json``); its
            ``in_channels``/``out_channels`` are the image-latent channels (times ``L`` with
            latent_layout "folded").
        layer_blocks: add the layer-collaborative blocks and the prompt enhancer.
        mask_channels: extra mask-latent channels after the image channels (0 = none).
        prompt_enhancer: "none", "s", "s+c" (paper's best) or "s+c+f".
        prompt_enhancer_heads: heads of the prompt enhancer's attentions.
        max_layers: largest ``L`` (size of the layer-index embeddings).
        latent_layout: "layers", "stacked" or "folded" (see the module docstring).
        composite_condition: every layer also sees the composite's latent ``(C, h, w)`` and a
            flag channel (1: given), zero-initialised input channels (image to layers).
        box_condition: every layer also sees its box as a channel (+1 inside, -1 outside, 0
            when not given), zero-initialised (box-guided layers).
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        unet_config: dict[str, Any],
        layer_blocks: bool = True,
        mask_channels: int = 0,
        prompt_enhancer: str = "s+c",
        prompt_enhancer_heads: int = 8,
        max_layers: int = 8,
        latent_layout: str = "layers",
        composite_condition: bool = False,
        box_condition: bool = False,
    ) -> None:
        super().__init__()
        if latent_layout not in LATENT_LAYOUTS:
            raise ValueError(f"LayeredUNet: latent_layout {latent_layout!r} not in {LATENT_LAYOUTS}")
        if latent_layout == "folded" and (layer_blocks or mask_channels):
            raise ValueError("LayeredUNet: latent_layout 'folded' needs layer_blocks=False, mask_channels=0")
        if latent_layout == "stacked" and mask_channels != unet_config["in_channels"]:
            raise ValueError("LayeredUNet: latent_layout 'stacked' needs mask_channels == in_channels")
        self.unet = UNet2DConditionModel.from_config(unet_config)
        self.wrapped_paths: dict[str, str] = {}
        self.layer_prompt_enhancer = None
        if mask_channels:
            self.unet.conv_in = MaskGatedConvIn(self.unet.conv_in, mask_channels)
            self.unet.conv_out = MaskConvOut(self.unet.conv_out, mask_channels)
            self.wrapped_paths.update({"conv_in": "image_conv", "conv_out": "image_conv"})
        if composite_condition or box_condition:
            if latent_layout == "folded":
                raise ValueError("LayeredUNet: composite/box conditions need a per-layer latent layout "
                                 "('layers' or 'stacked'), not 'folded'")
            self.unet.conv_in = ConditionedConvIn(
                self.unet.conv_in, unet_config["in_channels"] + mask_channels, self.condition_channels
            )
            inner = self.wrapped_paths.get("conv_in")
            self.wrapped_paths["conv_in"] = "base_conv" + (f".{inner}" if inner else "")
        if layer_blocks:
            for path, module in list(self.unet.named_modules()):
                if isinstance(module, BasicTransformerBlock):
                    parent_path, _, name = path.rpartition(".")
                    parent = self.unet.get_submodule(parent_path)
                    wrapper = LayerCollaborativeTransformerBlock(module, max_layers=max_layers)
                    parent.register_module(name, wrapper)
                    self.wrapped_paths[path] = "block"
            cross_dim = self.unet.config.cross_attention_dim
            self.layer_prompt_enhancer = LayerPromptEnhancer(
                cross_dim, prompt_enhancer, heads=prompt_enhancer_heads, max_layers=max_layers
            )

    # ------------------------------------------------------------------------------------
    # Construction from a diffusers UNet
    # ------------------------------------------------------------------------------------

    @classmethod
    def from_unet(
        cls,
        unet: UNet2DConditionModel,
        in_channels: int | None = None,
        out_channels: int | None = None,
        **options: Any,
    ) -> LayeredUNet:
        """Wrap a diffusers UNet, keeping its weights (LayerDiff appendix A.1).

        Args:
            unet: the base UNet (e.g. Stable Diffusion's).
            in_channels, out_channels: widen ``conv_in``/``conv_out`` to these image-latent
                channels by tiling (SD-AE-UNet (ft)); default: the UNet's own.
            **options: the other :class:`LayeredUNet` config arguments.
        """
        base_state = dict(unet.state_dict())
        config = dict(unet.config)
        if in_channels is not None and in_channels != unet.config.in_channels:
            wide = widen_conv(unet.conv_in, in_channels, unet.conv_in.out_channels)
            base_state.update({f"conv_in.{k}": v for k, v in wide.state_dict().items()})
            config["in_channels"] = in_channels
        if out_channels is not None and out_channels != unet.config.out_channels:
            wide = widen_conv(unet.conv_out, unet.conv_out.in_channels, out_channels)
            base_state.update({f"conv_out.{k}": v for k, v in wide.state_dict().items()})
            config["out_channels"] = out_channels
        config = {k: v for k, v in config.items() if not k.startswith("_")}
        model = cls(unet_config=config, **options)
        model.load_base_unet_state_dict(base_state)
        return model

    @classmethod
    def from_pretrained_unet(
        cls, name_or_path: str, subfolder: str | None = "unet", **options: Any
    ) -> LayeredUNet:
        """Load an SD UNet by hub id or local path (``subfolder`` "unet") and wrap it."""
        unet = UNet2DConditionModel.from_pretrained(name_or_path, subfolder=subfolder, use_safetensors=True)
        return cls.from_unet(unet, **options)

    @classmethod
    def from_pretrained(cls, *args: Any, **kwargs: Any) -> Any:
        """diffusers' ``from_pretrained``, refusing weights saved with the old block placement.

        Before the layer-collaborative blocks moved onto the transformers' inner tokens they
        ran after each whole ``Transformer2DModel`` (keys ``...attentions.N.transformer.``);
        diffusers would load such a file with the SD blocks randomly re-initialised.
        """
        want_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(
            *args, output_loading_info=True, use_safetensors=kwargs.pop("use_safetensors", True), **kwargs
        )
        old = [k for k in info["unexpected_keys"] if ".transformer." in k]
        if old:
            raise ValueError(
                f"LayeredUNet: {args[0] if args else kwargs.get('pretrained_model_name_or_path')} "
                f"was saved by an older layergen, with the layer-collaborative blocks after each "
                f"Transformer2DModel (e.g. {old[0]!r}); they now run on the transformer's inner "
                "tokens, where the trained blocks do not carry over: re-train the diffusion model "
                "(python train.py fit --config ...) and re-export it with its SavePretrained callback"
            )
        return (model, info) if want_info else model

    @classmethod
    def from_layered_unet(cls, name_or_path: str, subfolder: str | None = None, **options: Any) -> LayeredUNet:
        """A saved ``LayeredUNet`` (e.g. a pipeline's ``unet/``) with config options changed:
        its weights carry over and the new condition inputs (``composite_condition``,
        ``box_condition``) start at zero, so the result first behaves as the saved model."""
        base = cls.from_pretrained(name_or_path, subfolder=subfolder, use_safetensors=True)
        config = {k: v for k, v in base.config.items() if not k.startswith("_")}
        model = cls(**{**config, **options})
        state = {}
        for key, value in base.state_dict().items():
            if key.startswith("unet.conv_in.") and key not in model.state_dict():
                key = "unet.conv_in.base_conv." + key[len("unet.conv_in."):]
            state[key] = value
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected or any(".cond_conv." not in k for k in missing):
            raise ValueError(f"LayeredUNet: {name_or_path} does not match the new options {options}: "
                             f"missing {missing[:5]}, unexpected {unexpected[:5]}")
        return model

    def _wrapped_key(self, key: str) -> str:
        for path, inner in self.wrapped_paths.items():
            if key.startswith(path + "."):
                return f"{path}.{inner}.{key[len(path) + 1:]}"
        return key

    @torch.no_grad()
    def load_base_unet_state_dict(self, state_dict: dict[str, Tensor]) -> None:
        """Load a plain ``UNet2DConditionModel`` state dict into the wrapped UNet.

        Afterwards the intra-layer attentions and the mask convs are re-initialised from the
        loaded SD cross-attention and conv weights; everything else new stays as built.
        """
        mapped = {self._wrapped_key(k): v for k, v in state_dict.items()}
        missing, unexpected = self.unet.load_state_dict(mapped, strict=False)
        if unexpected:
            raise ValueError(f"LayeredUNet: base UNet keys not found in the model: {unexpected[:5]}")
        new = [k for k in missing if not any(m in k for m in (".layer_block.", ".mask_", ".cond_conv."))]
        if new:
            raise ValueError(f"LayeredUNet: base UNet state dict lacks keys: {new[:5]}")
        for module in self.unet.modules():
            if isinstance(module, LayerCollaborativeTransformerBlock):
                module.init_from_transformer()
            elif isinstance(module, (MaskGatedConvIn, MaskConvOut)):
                module.init_from_image_conv()

    # ------------------------------------------------------------------------------------
    # Forward
    # ------------------------------------------------------------------------------------

    @property
    def per_layer_timesteps(self) -> bool:
        """Whether layers may carry different timesteps (False when folded into channels)."""
        return self.config.latent_layout != "folded"

    @staticmethod
    def _flatten_timesteps(timestep: Tensor | float | int, batch: int, num_layers: int,
                           device: torch.device) -> Tensor:
        """Scalar, ``(B,)`` or ``(B, L)`` timesteps -> ``(B, L)``."""
        t = torch.as_tensor(timestep, device=device)
        if t.ndim == 0:
            return t.expand(batch, num_layers)
        if t.ndim == 1:
            if t.shape[0] != batch:
                raise ValueError(f"LayeredUNet: timestep has shape {tuple(t.shape)}, batch is {batch}")
            return t[:, None].expand(batch, num_layers)
        if t.shape != (batch, num_layers):
            raise ValueError(
                f"LayeredUNet: timestep has shape {tuple(t.shape)}, expected ({batch}, {num_layers})"
            )
        return t

    def forward(
        self,
        sample: Tensor,
        timestep: Tensor | float | int,
        encoder_hidden_states: Tensor,
        layer_hidden_states: Tensor | None = None,
        layer_valid: Tensor | None = None,
        composite_latents: Tensor | None = None,
        layer_boxes: Tensor | None = None,
    ) -> LayeredUNetOutput:
        """Predict the noise (or v) of every layer.

        Args:
            sample: ``(B, L', C, h, w)`` noisy latents in the autoencoder's layout (``L' = L``
                for "layers"; ``C`` = image + mask channels when ``mask_channels > 0``).
            timestep: scalar, ``(B,)`` or per-latent-layer ``(B, L')`` timesteps.
            encoder_hidden_states: ``(B, S, D)`` global-prompt embedding ``T(y)``.
            layer_hidden_states: ``(B, L, S, D)`` layer-prompt embeddings ``T(p_i)``; None
                uses the global prompt for every layer.
            layer_valid: ``(B, L)`` bool, False for padded layers; None = all valid. With the
                "stacked" layout, ``(B, 2L - 1)`` (per latent layer) is accepted too.
            composite_latents: ``(B, C, h, w)`` scaled latent of the composite to decompose
                (``composite_condition``); None, or NaN in a sample: none given.
            layer_boxes: ``(B, L, 4)`` boxes ``(x0, y0, x1, y1)`` in [0, 1] (``box_condition``);
                None, or a NaN row: no box for that layer.

        Returns:
            :class:`LayeredUNetOutput` with ``sample`` shaped like ``sample``.
        """
        if sample.ndim != 5:
            raise ValueError(f"LayeredUNet: sample must be (B, L, C, h, w), got {tuple(sample.shape)}")
        batch, latent_layers, channels, height, width = sample.shape
        timesteps = self._flatten_timesteps(timestep, batch, latent_layers, sample.device)
        layout = self.config.latent_layout
        if layout == "folded":
            # (B, L', C, h, w) -> (B, L'*C, h, w); one noise level per sample
            out = self.unet(
                LatentLayout.fold(sample), timesteps[:, 0], encoder_hidden_states,
                class_labels=self.pooled_prompts(encoder_hidden_states),
            ).sample
            return LayeredUNetOutput(sample=LatentLayout.unfold(out, latent_layers))
        if layout == "stacked":
            # (B, 2L-1, C, h, w) -> (B, L, 2C, h, w): [image_i, mask_i], background mask zeros
            num_layers = COMPONENTS.num_layers(latent_layers)
            sample = COMPONENTS.to_image_mask_pairs(sample)
            timesteps = timesteps[:, :num_layers]
            # per-latent-layer validity / prompts (B, 2L-1, ...) -> per layer (B, L, ...):
            # latent layer i < L is layer i's image
            if layer_valid is not None and layer_valid.shape[1] == latent_layers:
                layer_valid = layer_valid[:, :num_layers]
            if layer_hidden_states is not None and layer_hidden_states.shape[1] == latent_layers:
                layer_hidden_states = layer_hidden_states[:, :num_layers]
        if self.condition_channels:
            conditions = self.condition_maps(sample, composite_latents, layer_boxes)
            sample = torch.cat([sample, conditions], dim=2)
        elif composite_latents is not None or layer_boxes is not None:
            raise ValueError("LayeredUNet: composite_latents / layer_boxes given to a model "
                             "built without composite_condition / box_condition")
        out = self._forward_layers(
            sample, timesteps, encoder_hidden_states, layer_hidden_states, layer_valid
        )
        if layout == "stacked":
            # (B, L, 2C, h, w) -> (B, 2L-1, C, h, w)
            out = COMPONENTS.from_image_mask_pairs(out)
        return LayeredUNetOutput(sample=out)

    @property
    def condition_channels(self) -> int:
        """Extra input channels per layer: composite latent + flag, box."""
        composite = self.config.unet_config["in_channels"] + 1 if self.config.composite_condition else 0
        return composite + int(self.config.box_condition)

    def condition_maps(
        self, sample: Tensor, composite_latents: Tensor | None, layer_boxes: Tensor | None
    ) -> Tensor:
        """The condition channels ``(B, L, C_cond, h, w)`` for ``sample`` ``(B, L, C, h, w)``."""
        batch, num_layers, _, height, width = sample.shape
        maps = []
        if self.config.composite_condition:
            channels = self.config.unet_config["in_channels"]
            if composite_latents is None:
                composite_latents = sample.new_full((batch, channels, height, width), float("nan"))
            if tuple(composite_latents.shape) != (batch, channels, height, width):
                raise ValueError(f"LayeredUNet: composite_latents must be {(batch, channels, height, width)}, "
                                 f"got {tuple(composite_latents.shape)}")
            given = ~composite_latents.flatten(1).isnan().any(dim=1)  # (B,)
            z = torch.where(given[:, None, None, None], composite_latents.nan_to_num(0.0), 0.0)
            flag = given.to(sample.dtype)[:, None, None, None].expand(batch, 1, height, width)
            # (B, C + 1, h, w) -> (B, L, C + 1, h, w): the same composite for every layer
            maps.append(torch.cat([z.to(sample.dtype), flag], 1)[:, None].expand(-1, num_layers, -1, -1, -1))
        if self.config.box_condition:
            maps.append(box_maps(layer_boxes, batch, num_layers, height, width).to(sample))
        return torch.cat(maps, dim=2)

    def pooled_prompts(self, hidden_states: Tensor) -> Tensor | None:
        """``(N, S, D)`` prompt embeddings -> ``(N, D)`` token means, the UNet's ``class_labels``
        when its config has ``class_embed_type: projection``; else None (no class embedding)."""
        if self.unet.config.class_embed_type != "projection":
            return None
        return hidden_states.mean(dim=1)

    def _forward_layers(
        self,
        sample: Tensor,
        timesteps: Tensor,
        encoder_hidden_states: Tensor,
        layer_hidden_states: Tensor | None,
        layer_valid: Tensor | None,
    ) -> Tensor:
        """Layers folded into the batch: ``(B, L, C, h, w)`` and ``(B, L)`` timesteps."""
        batch, num_layers, channels, height, width = sample.shape
        if num_layers > self.config.max_layers:
            raise ValueError(f"LayeredUNet: {num_layers} layers exceed max_layers={self.config.max_layers}")
        # (B, L, C, h, w) -> (B*L, C, h, w)
        x = sample.reshape(batch * num_layers, channels, height, width)
        # (B, S, D) -> (B*L, S, D)
        context = encoder_hidden_states.repeat_interleave(num_layers, dim=0)
        kwargs = None
        prompts = context  # what the class embedding pools: (B*L, S, D)
        if self.layer_prompt_enhancer is not None:
            if layer_hidden_states is None:
                layer_hidden_states = encoder_hidden_states[:, None].expand(batch, num_layers, -1, -1)
            enhanced = self.layer_prompt_enhancer(layer_hidden_states, encoder_hidden_states, layer_valid)
            prompts = enhanced.flatten(0, 1)
            kwargs = {
                LAYER_CONTEXT_KEY: LayerContext(
                    num_layers=num_layers,
                    # (B, L, S, D) -> (B*L, S, D)
                    layer_hidden_states=enhanced.flatten(0, 1),
                    layer_valid=layer_valid,
                )
            }
        out = self.unet(
            x, timesteps.reshape(-1), context,
            class_labels=self.pooled_prompts(prompts),
            cross_attention_kwargs=kwargs,
        ).sample
        # (B*L, C, h, w) -> (B, L, C, h, w)
        return out.view(batch, num_layers, -1, height, width)


def build_layered_unet(
    pretrained: str | None = None,
    subfolder: str | None = "unet",
    config: dict[str, Any] | None = None,
    in_channels: int | None = None,
    out_channels: int | None = None,
    **options: Any,
) -> LayeredUNet:
    """Build a :class:`LayeredUNet` from SD weights (hub id or path) or from a UNet config.

    With ``pretrained`` the base weights are loaded and ``in_channels``/``out_channels``
    widen the convs (SD-AE-UNet (ft)); with ``config`` (a ``UNet2DConditionModel`` config
    dict, e.g. from YAML) the UNet is randomly initialised (SD-AE-UNet from scratch, demo).
    """
    if (pretrained is None) == (config is None):
        raise ValueError("build_layered_unet: give exactly one of `pretrained` or `config`")
    if pretrained is not None:
        logger.info("loading base UNet from %s (subfolder %s)", pretrained, subfolder)
        return LayeredUNet.from_pretrained_unet(
            pretrained, subfolder=subfolder, in_channels=in_channels, out_channels=out_channels,
            **options,
        )
    config = dict(config)
    if in_channels is not None:
        config["in_channels"] = in_channels
    if out_channels is not None:
        config["out_channels"] = out_channels
    return LayeredUNet(unet_config=config, **options)
