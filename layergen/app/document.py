"""The layered image the web app edits: its layers, which are shown, and their order.

A :class:`Document` holds one :class:`~layergen.layers.LayeredImage` and a visibility
flag per layer (the eye of an image editor's layer panel). Hidden layers stay in the
document, so they can be shown again and are edited with the others; the composite on
screen and every download are the *visible image*: the background and the shown
foregrounds, in their order.

Reordering and hiding foregrounds work on the layers' straight alphas
(:func:`~layergen.layers.blend_alphas`), as an image editor stacks them: a layer keeps its
pixels and alpha, and the visible masks ``m_i = a_i prod_{j > i} (1 - a_j)`` are recomputed
for the new stack (:func:`~layergen.layers.visible_masks`). A layered image stores only
what is visible: the parts of a layer under an opaque layer have no alpha of their own, and
stay transparent when the layer is brought forward.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from layergen.data.codec import png_bytes
from layergen.layers import (
    LayeredImage,
    LayeredImageError,
    blend_alphas,
    chw_to_hwc,
    to_unit,
    unit_to_uint8,
    visible_masks,
)


def restack(image: LayeredImage, foregrounds: Sequence[int]) -> LayeredImage:
    """The background under the listed foregrounds, stacked in the order given.

    Args:
        image: a layered image with ``K`` foregrounds.
        foregrounds: layer indices in ``[1, K]`` (0 is the background), back to front; a
            layer left out is removed, one listed twice is refused.

    Returns:
        A layered image with ``len(foregrounds)`` foregrounds whose layers keep their RGB
        ``(3, H, W)`` and straight alpha; its masks ``(K', 1, H, W)`` are the visible masks
        of the new stack. Listing every foreground in order returns ``image`` itself.
    """
    order = [int(i) for i in foregrounds]
    if order == list(range(1, image.num_layers)):
        return image
    if len(set(order)) != len(order) or any(not 1 <= i < image.num_layers for i in order):
        raise LayeredImageError(
            f"order: expected distinct foreground indices in [1, {image.num_layers - 1}], "
            f"got {order}"
        )
    index = torch.tensor([i - 1 for i in order], dtype=torch.long)
    alphas = blend_alphas(image.masks)[index]  # (K', 1, H, W)
    return LayeredImage(
        background=image.background,
        foregrounds=image.foregrounds[index],
        masks=visible_masks(alphas),
        prompt=image.prompt,
        layer_prompts=[image.layer_prompts[0]] + [image.layer_prompts[i] for i in order],
        metadata=dict(image.metadata),
    )


def _rgb_png(rgb: torch.Tensor) -> bytes:
    """``(3, H, W)`` in [-1, 1] as an RGB PNG."""
    return png_bytes(unit_to_uint8(chw_to_hwc(to_unit(rgb.float()))))


@dataclass
class Document:
    """One layered image under edit.

    Attributes:
        image: all its layers, hidden ones included.
        visible: ``L`` flags; the background's (index 0) is always True.
    """

    image: LayeredImage
    visible: list[bool] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.image.validate()
        if not self.visible:
            self.visible = [True] * self.image.num_layers
        if len(self.visible) != self.image.num_layers or not self.visible[0]:
            raise LayeredImageError(
                f"visible: expected {self.image.num_layers} flags with the background's True, "
                f"got {self.visible}"
            )

    @property
    def num_layers(self) -> int:
        """L = K + 1, hidden layers included."""
        return self.image.num_layers

    def check_layer(self, layer: object, what: str = "layer") -> int:
        """``layer`` as an index in ``[0, L - 1]``; ``LayeredImageError`` naming ``what``."""
        if isinstance(layer, bool) or not isinstance(layer, int):
            raise LayeredImageError(f"{what}: expected a layer index, got {layer!r}")
        if not 0 <= layer < self.num_layers:
            raise LayeredImageError(f"{what}: must lie in [0, {self.num_layers - 1}], got {layer}")
        return layer

    def shown_foregrounds(self) -> list[int]:
        """Indices of the visible foregrounds, back to front."""
        return [i for i in range(1, self.num_layers) if self.visible[i]]

    def visible_image(self) -> LayeredImage:
        """The background and the shown foregrounds: the composite on screen, the downloads.

        Raises:
            LayeredImageError: when every foreground is hidden (a layered image needs one).
        """
        shown = self.shown_foregrounds()
        if not shown:
            raise LayeredImageError("visible: every foreground is hidden; show one layer at least")
        return restack(self.image, shown)

    def set_visible(self, layer: int, visible: bool) -> None:
        """Show or hide foreground ``layer`` (the background cannot be hidden)."""
        layer = self.check_layer(layer)
        if layer == 0 and not visible:
            raise LayeredImageError("layer: the background (layer 0) cannot be hidden")
        self.visible[layer] = bool(visible)

    def reorder(self, order: Sequence[int]) -> None:
        """Restack the foregrounds: ``order`` lists every foreground index once, back to front."""
        order = [self.check_layer(i, "order") for i in order]
        if sorted(order) != list(range(1, self.num_layers)):
            raise LayeredImageError(
                f"order: expected each foreground index 1..{self.num_layers - 1} once, got {order}"
            )
        self.image = restack(self.image, order)
        self.visible = [True] + [self.visible[i] for i in order]

    def replace(self, image: LayeredImage, visible: Sequence[bool] | None = None) -> None:
        """Put an edited image in place (same layer count: the flags are kept)."""
        if visible is None:
            if image.num_layers != self.num_layers:
                raise LayeredImageError(
                    f"image: {image.num_layers} layers replace {self.num_layers}; give the flags"
                )
            visible = self.visible
        self.image, self.visible = image.validate(), list(visible)
        self.__post_init__()

    # -- pictures for the page ------------------------------------------------------------

    def layer_png(self, layer: int) -> bytes:
        """Layer ``layer`` as a straight-alpha RGBA PNG (how an image editor stores it)."""
        return png_bytes(self.image.to_rgba()[self.check_layer(layer)])

    def mask_png(self, layer: int) -> bytes:
        """The visible mask of ``layer`` in the whole stack as a greyscale PNG (the
        background's is ``1 - sum_i m_i``)."""
        mask = self.image.layer_masks()[self.check_layer(layer), 0]  # (H, W)
        return png_bytes(unit_to_uint8(mask))

    def composite_png(self) -> bytes:
        """The composite of the visible image as an RGB PNG."""
        return _rgb_png(self.visible_image().composite())
