"""Prediction heads that replace the last layer of the SD-AE decoder (Text2Layer IV-B)."""

from __future__ import annotations

from torch import Tensor, nn


class ConvBnReluConvHead(nn.Module):
    """A tiny two-layer head, conv-bn-relu-conv (Text2Layer IV-B: one head per component).

    Args:
        in_channels: channels of the decoder's last feature map.
        out_channels: 3 for an RGB component, 1 for a mask.
        hidden_channels: width of the hidden layer (default ``in_channels``).
        sigmoid: apply a sigmoid to the output (the mask heads).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        hidden_channels: int | None = None,
        sigmoid: bool = False,
    ) -> None:
        super().__init__()
        hidden_channels = hidden_channels or in_channels
        self.conv1 = nn.Conv2d(in_channels, hidden_channels, 3, padding=1, bias=False)
        self.norm = nn.BatchNorm2d(hidden_channels)
        self.act = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(hidden_channels, out_channels, 3, padding=1)
        self.sigmoid = sigmoid

    def forward(self, features: Tensor) -> Tensor:
        """``(N, in_channels, H, W)`` -> ``(N, out_channels, H, W)`` (in [0, 1] with sigmoid)."""
        out = self.conv2(self.act(self.norm(self.conv1(features))))
        return out.sigmoid() if self.sigmoid else out
