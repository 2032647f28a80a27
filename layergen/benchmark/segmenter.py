"""The reference-mask segmenter of the synthetic benchmark (our stand-in for ICON).

Text2Layer scores generated masks by their IoU with a salient-object detector's mask of the
generated composite (V-B, Table II). On synthetic scenes we train that detector: a small
U-Net mapping a composite to the union of its foreground masks ``sum_i m_i``, trained on
ground-truth scenes of the training split and cached (safetensors). It satisfies
``layergen.metrics.SalientMaskFn``.
"""

from __future__ import annotations

import logging
import os

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import Tensor, nn

from layergen.benchmark.probe import cache_path
from layergen.data.shapes import ShapeScenes
from layergen.metrics.mask_iou import foreground_union, mask_iou

logger = logging.getLogger(__name__)


def _block(in_ch: int, out_ch: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 3, padding=1), nn.GroupNorm(4, out_ch), nn.SiLU(),
        nn.Conv2d(out_ch, out_ch, 3, padding=1), nn.GroupNorm(4, out_ch), nn.SiLU(),
    )


class ForegroundSegmenter(ModelMixin, ConfigMixin):
    """A two-level U-Net: composite ``(N, 3, H, W)`` in [-1, 1] -> foreground logits
    ``(N, 1, H, W)``; calling :meth:`saliency` gives probabilities in [0, 1].

    Args:
        channels: widths of the full-, half- and quarter-resolution levels.
    """

    @register_to_config
    def __init__(self, channels: tuple[int, int, int] = (16, 32, 64)) -> None:
        super().__init__()
        c1, c2, c3 = channels
        self.down1 = _block(3, c1)
        self.down2 = _block(c1, c2)
        self.mid = _block(c2, c3)
        self.up2 = _block(c3 + c2, c2)
        self.up1 = _block(c2 + c1, c1)
        self.out = nn.Conv2d(c1, 1, 1)

    def forward(self, composites: Tensor) -> Tensor:
        h1 = self.down1(composites)
        h2 = self.down2(F.avg_pool2d(h1, 2))
        h3 = self.mid(F.avg_pool2d(h2, 2))
        u2 = self.up2(torch.cat([F.interpolate(h3, size=h2.shape[-2:]), h2], 1))
        u1 = self.up1(torch.cat([F.interpolate(u2, size=h1.shape[-2:]), h1], 1))
        return self.out(u1)

    @torch.no_grad()
    def saliency(self, composites: Tensor) -> Tensor:
        """``(N, 3, H, W)`` in [-1, 1] -> ``(N, 1, H, W)`` foreground probability."""
        return torch.sigmoid(self(composites.float().to(self.device))).cpu()


def segmenter_data(scenes: ShapeScenes) -> tuple[Tensor, Tensor]:
    """Composites ``(N, 3, H, W)`` and foreground unions ``(N, 1, H, W)`` of all scenes."""
    images = [scenes[i] for i in range(len(scenes))]
    return (torch.stack([im.composite() for im in images]),
            torch.stack([foreground_union(im) for im in images]))


@torch.no_grad()
def segmenter_iou(segmenter: ForegroundSegmenter, composites: Tensor, masks: Tensor) -> float:
    """Mean IoU at 0.5 of the segmenter's masks with ground-truth foreground unions."""
    segmenter.eval()
    return float(mask_iou(segmenter.saliency(composites), masks).mean())


def train_segmenter(
    image_size: int = 32, max_foregrounds: int = 2, num_scenes: int = 2000, steps: int = 600,
    batch_size: int = 32, lr: float = 2e-3, seed: int = 0,
) -> ForegroundSegmenter:
    """Train on ``num_scenes`` training composites with binary cross-entropy on the soft
    foreground union (AdamW, one-cycle learning rate)."""
    torch.manual_seed(seed)
    composites, masks = segmenter_data(ShapeScenes(
        size=image_size, min_foregrounds=1, max_foregrounds=max_foregrounds, seed=seed,
        split="train", length=num_scenes))
    model = ForegroundSegmenter()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.1)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for step in range(steps):
        index = torch.randint(len(composites), (batch_size,), generator=generator)
        loss = F.binary_cross_entropy_with_logits(model(composites[index]), masks[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 200 == 0 or step == steps - 1:
            logger.info("segmenter step %d/%d loss %.4f", step + 1, steps, loss.item())
    return model.eval()


def load_or_train_segmenter(
    image_size: int = 32, max_foregrounds: int = 2, seed: int = 0,
    cache_dir: str | os.PathLike | None = None, retrain: bool = False, **train_kwargs,
) -> ForegroundSegmenter:
    """Load the cached segmenter for this resolution, or train and cache it."""
    path = cache_path("segmenter", image_size, max_foregrounds, seed, cache_dir)
    if (path / "config.json").is_file() and not retrain:
        return ForegroundSegmenter.from_pretrained(path, use_safetensors=True).eval()
    logger.info("training the foreground segmenter (cached at %s)", path)
    model = train_segmenter(image_size=image_size, max_foregrounds=max_foregrounds, seed=seed,
                            **train_kwargs)
    model.save_pretrained(path)
    return model
