"""The contract of a layered autoencoder: everything the pipeline, training, caching and
benchmark read from one.

A layered autoencoder maps a padded layered batch — images ``(B, L, 3, H, W)`` in [-1, 1] and
visible masks ``(B, L, 1, H, W)`` in [0, 1], layer 0 the background — to latents
``(B, L', C, h, w)`` and back (DESIGN section 1). How the L layers are packed into ``L'``
latent layers is its :class:`~layergen.latent_layout.LatentLayout`.

A new autoencoder subclasses :class:`LayeredAutoencoderInterface`, implements ``encode``,
``decode``, ``latent_layout`` and ``downsample_factor``, and registers ``latent_channels`` and
``scaling_factor`` in its config (``@register_to_config``). Nothing else is needed: the
pipeline, ``load_autoencoder`` and saved pipelines find it by its class name
(:func:`autoencoder_class`).
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod

import torch
from diffusers import ConfigMixin, ModelMixin
from torch import Tensor

from layergen.latent_layout import PER_LAYER, LatentLayout
from layergen.layers import LayeredImageError
from layergen.models.autoencoder_outputs import (
    LayeredDecoderOutput,
    LayeredDiagonalGaussian,
    LayeredEncoderOutput,
)

# old class names that saved autoencoders, pipelines and configs may carry -> current names
ALIASES: dict[str, str] = {"LayeredAutoencoder": "JointAutoencoder"}


class LayeredAutoencoderInterface(ModelMixin, ConfigMixin, ABC):
    """A layered image ``<->`` latents ``(B, L', C, h, w)``.

    Subclasses implement :meth:`encode`, :meth:`decode`, :attr:`latent_layout` and
    :attr:`downsample_factor`, and register ``latent_channels`` (C) and ``scaling_factor``
    (latents are multiplied by it before diffusion) in their config. The other properties
    default to an autoencoder of any L whose decoded composite is that of its layers.
    """

    @property
    @abstractmethod
    def latent_layout(self) -> LatentLayout:
        """How L layers are packed into ``L'`` latent layers."""

    @property
    @abstractmethod
    def downsample_factor(self) -> int:
        """Spatial down-sampling factor f (``H = f * h``)."""

    @abstractmethod
    def encode(
        self, images: Tensor, masks: Tensor, layer_valid: Tensor | None = None
    ) -> LayeredEncoderOutput:
        """Encode a padded layered batch (check it with :meth:`check_layers`).

        Args:
            images: ``(B, L, 3, H, W)`` in [-1, 1], layer 0 the background.
            masks: ``(B, L, 1, H, W)`` in [0, 1].
            layer_valid: optional ``(B, L)`` bool; padded layers (False) do not reach the
                latents (:meth:`check_layers` zeroes them; an autoencoder may skip them).

        Returns:
            ``LayeredEncoderOutput`` whose posterior is over
            ``(B, latent_num_layers(L), C, h, w)``.
        """

    @abstractmethod
    def decode(self, latents: Tensor, num_layers: int | None = None) -> LayeredDecoderOutput:
        """Decode latents ``(B, L', C, h, w)`` into ``num_layers`` layers (default: the L the
        latents hold, or :attr:`fixed_num_layers`).

        Returns:
            ``LayeredDecoderOutput``: images ``(B, L, 3, H, W)``, masks ``(B, L, 1, H, W)``
            (index 0 ``1 - sum_i m_i``, foreground masks normalised) and the composite
            ``(B, 3, H, W)`` (None only for a model that could have a composite head).
        """

    @property
    def fixed_num_layers(self) -> int | None:
        """L when the model encodes and decodes a fixed number of layers (batches are padded
        to it), else None (any L)."""
        return None

    @property
    def has_composite_head(self) -> bool:
        """Whether ``decode``'s composite comes from a head of its own (Text2Layer's auxiliary
        head) rather than being the composite of the decoded layers."""
        return False

    @property
    def composite_only(self) -> bool:
        """Whether the decoded layers carry nothing but the composite (a text-to-image
        baseline): benchmarks then score the composite only."""
        return False

    @property
    def per_layer(self) -> bool:
        """One latent layer per layer (``L' = L``)."""
        return self.latent_layout == PER_LAYER

    def latent_num_layers(self, num_layers: int) -> int:
        """``L'`` of the latents of a batch of ``num_layers`` layers."""
        return self.latent_layout.latent_layers(num_layers)

    @staticmethod
    def check_layers(
        images: Tensor, masks: Tensor, layer_valid: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Check ``encode``'s inputs; returns them with padded layers (``layer_valid`` False)
        set to zero layers, as ``LayeredBatch.collate`` pads them.

        Raises:
            LayeredImageError: shapes other than ``(B, L, 3, H, W)``, ``(B, L, 1, H, W)``
                and ``(B, L)``.
        """
        if images.ndim != 5 or images.shape[2] != 3:
            raise LayeredImageError(f"images: expected (B, L, 3, H, W), got {tuple(images.shape)}")
        if masks.ndim != 5 or masks.shape[:2] != images.shape[:2] or masks.shape[2] != 1:
            raise LayeredImageError(
                f"masks: expected (B, {images.shape[1]}, 1, H, W), got {tuple(masks.shape)}"
            )
        if layer_valid is None:
            return images, masks
        if tuple(layer_valid.shape) != tuple(images.shape[:2]):
            raise LayeredImageError(
                f"layer_valid: expected {tuple(images.shape[:2])}, got {tuple(layer_valid.shape)}"
            )
        if bool(layer_valid.all()):
            return images, masks
        keep = layer_valid.to(images.device)[:, :, None, None, None]  # (B, L, 1, 1, 1)
        return images * keep.to(images.dtype), masks * keep.to(masks.dtype)

    def check_latents(self, latents: Tensor, num_layers: int | None = None) -> int:
        """Check ``decode``'s inputs against :attr:`latent_layout`; returns the L to decode.

        Args:
            latents: ``(B, L', C, h, w)``.
            num_layers: the L asked for; None: the L the latents hold (per-layer,
                components), else :attr:`fixed_num_layers` or 2 (a joint latent holds any L).

        Raises:
            ValueError: not 5-D, an ``L'`` the layout cannot produce, or a ``num_layers``
                the latents do not hold (outside ``2..fixed_num_layers`` for a joint latent).
        """
        layout = self.latent_layout
        expected = {"per_layer": "L", "joint": "1", "components": "2L - 1"}[layout.packing]
        if latents.ndim != 5 or (layout.packing == "joint" and latents.shape[1] != 1):
            raise ValueError(
                f"latents: expected (B, {expected}, C, h, w), got {tuple(latents.shape)}"
            )
        held = layout.num_layers(latents.shape[1])  # None for a joint latent
        if held is None:
            num_layers = num_layers if num_layers is not None else self.fixed_num_layers or 2
            most = self.fixed_num_layers
            if num_layers < 2 or (most is not None and num_layers > most):
                span = f"2..{most}" if most is not None else ">= 2 (a background and foregrounds)"
                raise ValueError(f"num_layers: expected {span}, got {num_layers}")
            return num_layers
        if num_layers is not None and num_layers != held:
            raise ValueError(
                f"num_layers: {latents.shape[1]} latent layers ({layout.packing} packing) hold "
                f"L = {held} layers, got num_layers={num_layers}"
            )
        return held

    def forward(
        self,
        images: Tensor,
        masks: Tensor,
        layer_valid: Tensor | None = None,
        sample_posterior: bool = True,
        generator: torch.Generator | None = None,
    ) -> tuple[LayeredDecoderOutput, LayeredDiagonalGaussian]:
        """Encode, sample (or take the mode) and decode L layers; returns (reconstruction,
        posterior)."""
        posterior = self.encode(images, masks, layer_valid).latent_dist
        z = posterior.sample(generator) if sample_posterior else posterior.mode()
        return self.decode(z, num_layers=images.shape[1]), posterior


def autoencoder_classes() -> dict[str, type[LayeredAutoencoderInterface]]:
    """Every concrete layered autoencoder class defined so far, by class name and by the old
    names of :data:`ALIASES` (a later class of the same name replaces an earlier one)."""
    classes: dict[str, type[LayeredAutoencoderInterface]] = {}
    pending = [LayeredAutoencoderInterface]
    while pending:  # breadth first, in definition order
        cls = pending.pop(0)
        pending += cls.__subclasses__()
        if not inspect.isabstract(cls):
            classes[cls.__name__] = cls
    for alias, name in ALIASES.items():
        if name in classes and alias not in classes:
            classes[alias] = classes[name]
    return classes


def autoencoder_class(name: str) -> type[LayeredAutoencoderInterface]:
    """The layered autoencoder class called ``name`` (or an old name in :data:`ALIASES`).

    Raises:
        ValueError: no such class (its module must have been imported).
    """
    classes = autoencoder_classes()
    if name not in classes:
        raise ValueError(
            f"{name!r} is not a layered autoencoder class; expected one of {sorted(classes)} "
            "(a class of your own must subclass LayeredAutoencoderInterface and be imported)"
        )
    return classes[name]
