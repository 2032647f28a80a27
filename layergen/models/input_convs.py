"""The input and output convolutions :class:`~layergen.models.layered_unet.LayeredUNet` puts
around diffusers' UNet: mask latents (LayerDiff's stacked SD-VAE latents), image conditions
(the composite to decompose and layer boxes, issue 19) and widening (SD-AE-UNet (ft))."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class MaskGatedConvIn(nn.Module):
    """Input conv for image + mask latents (appendix A.1).

    ``h = conv_in(z_img) + g * mask_conv_in(z_mask)`` with the scalar gate ``g`` starting at 0.
    """

    def __init__(self, image_conv: nn.Conv2d, mask_channels: int) -> None:
        super().__init__()
        self.image_conv = image_conv
        self.mask_conv = nn.Conv2d(
            mask_channels, image_conv.out_channels, image_conv.kernel_size, padding=image_conv.padding
        )
        self.mask_gate = nn.Parameter(torch.zeros(()))
        self.init_from_image_conv()

    @torch.no_grad()
    def init_from_image_conv(self) -> None:
        """Copy the image conv's weights into the mask conv when their shapes match."""
        if self.mask_conv.weight.shape == self.image_conv.weight.shape:
            self.mask_conv.load_state_dict(self.image_conv.state_dict())

    def forward(self, x: Tensor) -> Tensor:
        """``(N, C_img + C_mask, h, w) -> (N, C_0, h, w)``."""
        image, mask = x.split([self.image_conv.in_channels, self.mask_conv.in_channels], dim=1)
        return self.image_conv(image) + self.mask_gate * self.mask_conv(mask)


class MaskConvOut(nn.Module):
    """Output conv predicting image and mask latents: ``cat(conv_out(h), mask_conv_out(h))``."""

    def __init__(self, image_conv: nn.Conv2d, mask_channels: int) -> None:
        super().__init__()
        self.image_conv = image_conv
        self.mask_conv = nn.Conv2d(
            image_conv.in_channels, mask_channels, image_conv.kernel_size, padding=image_conv.padding
        )
        self.init_from_image_conv()

    @torch.no_grad()
    def init_from_image_conv(self) -> None:
        """Copy the image conv's weights into the mask conv when their shapes match."""
        if self.mask_conv.weight.shape == self.image_conv.weight.shape:
            self.mask_conv.load_state_dict(self.image_conv.state_dict())

    def forward(self, h: Tensor) -> Tensor:
        """``(N, C_0, h, w) -> (N, C_img + C_mask, h, w)``."""
        return torch.cat([self.image_conv(h), self.mask_conv(h)], dim=1)


class ConditionedConvIn(nn.Module):
    """Input conv with extra condition channels (composite latent, layer box; issue 19).

    ``h = conv_in(z) + cond_conv(c)``, the condition channels ``c`` following the latent's
    channels in the input; ``cond_conv`` starts at zero, so a new conditioned model is the
    unconditioned one it was made from.
    """

    def __init__(self, base_conv: nn.Module, in_channels: int, condition_channels: int) -> None:
        super().__init__()
        self.base_conv = base_conv
        self.in_channels = in_channels
        image_conv = base_conv.image_conv if isinstance(base_conv, MaskGatedConvIn) else base_conv
        out_channels = image_conv.out_channels
        self.cond_conv = nn.Conv2d(condition_channels, out_channels, 3, padding=1)
        nn.init.zeros_(self.cond_conv.weight)
        nn.init.zeros_(self.cond_conv.bias)

    def forward(self, x: Tensor) -> Tensor:
        """``(N, C_in + C_cond, h, w) -> (N, C_0, h, w)``."""
        z, c = x.split([self.in_channels, x.shape[1] - self.in_channels], dim=1)
        return self.base_conv(z) + self.cond_conv(c)


@torch.no_grad()
def widen_conv(conv: nn.Conv2d, in_channels: int, out_channels: int) -> nn.Conv2d:
    """Widen a conv by tiling its weights (SD-AE-UNet (ft), Text2Layer section IV-C).

    Input weights are tiled ``in_channels / conv.in_channels`` times and divided by that
    factor (so identical stacked latents give SD's response); output weights and bias are
    tiled (each stacked component starts from SD's prediction).
    """
    if in_channels % conv.in_channels or out_channels % conv.out_channels:
        raise ValueError(
            f"cannot widen conv ({conv.in_channels} -> {conv.out_channels}) to "
            f"({in_channels} -> {out_channels}): channels must be multiples"
        )
    repeat_in, repeat_out = in_channels // conv.in_channels, out_channels // conv.out_channels
    wide = nn.Conv2d(in_channels, out_channels, conv.kernel_size, conv.stride, conv.padding)
    wide.weight.copy_(conv.weight.repeat(repeat_out, repeat_in, 1, 1) / repeat_in)
    wide.bias.copy_(conv.bias.repeat(repeat_out))
    return wide


def box_maps(boxes: Tensor | None, batch: int, num_layers: int, height: int, width: int) -> Tensor:
    """Boxes ``(B, L, 4)`` ``(x0, y0, x1, y1)`` in [0, 1] -> maps ``(B, L, 1, h, w)``: +1 on the
    latent cells whose centre is inside, -1 outside, 0 for a NaN row or ``boxes`` None."""
    if boxes is None:
        return torch.zeros(batch, num_layers, 1, height, width)
    if tuple(boxes.shape) != (batch, num_layers, 4):
        raise ValueError(f"layer_boxes must be ({batch}, {num_layers}, 4), got {tuple(boxes.shape)}")
    boxes = boxes.float()
    ys = (torch.arange(height, device=boxes.device) + 0.5) / height
    xs = (torch.arange(width, device=boxes.device) + 0.5) / width
    x0, y0, x1, y1 = (boxes[..., i, None, None] for i in range(4))  # (B, L, 1, 1)
    inside = (xs >= x0) & (xs <= x1) & (ys[:, None] >= y0) & (ys[:, None] <= y1)  # (B, L, h, w)
    given = ~boxes.isnan().any(dim=-1)  # (B, L)
    maps = torch.where(inside, 1.0, -1.0) * given[..., None, None]
    return maps[:, :, None]
