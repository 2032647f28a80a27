"""The attribute probe of the synthetic benchmark: a small CNN reading single layers.

The synthetic scenes (``layergen.data.shapes``) have exact attributes, so a generated layer
can be checked against its layer prompt: the probe predicts a foreground layer's shape,
colour and size, and a background layer's family (solid, stripes, ...) and colours. It is
trained on ground-truth layers of the training split and cached (safetensors) so that the
benchmark runs without downloads; :func:`load_or_train_probe` does both.

Input encoding (``(N, 4, S, S)``): a foreground is ``(m F, m)`` (premultiplied RGB and its
visible mask), a background ``(B, 1)``; RGB in [-1, 1], masks in [0, 1].
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import Tensor, nn

from layergen.data.shapes import BACKGROUND_FAMILIES, COLORS, SHAPES, SIZES, ShapeScenes
from layergen.layers import LayeredImage

logger = logging.getLogger(__name__)

SHAPE_NAMES = list(SHAPES)
COLOR_NAMES = list(COLORS)
SIZE_NAMES = list(SIZES)
FAMILY_NAMES = list(BACKGROUND_FAMILIES)
DEFAULT_CACHE_DIR = Path(os.environ.get("LAYERGEN_CACHE", Path.home() / ".cache" / "layergen")) / "benchmark"


def _resize(x: Tensor, size: int) -> Tensor:
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def foreground_input(foregrounds: Tensor, masks: Tensor, size: int) -> Tensor:
    """``(K, 3, H, W)`` RGB in [-1, 1] and ``(K, 1, H, W)`` masks -> ``(K, 4, size, size)``."""
    masks = masks.float().clamp(0, 1)
    return _resize(torch.cat([foregrounds.float() * masks, masks], dim=1), size)


def background_input(backgrounds: Tensor, size: int) -> Tensor:
    """``(N, 3, H, W)`` RGB in [-1, 1] -> ``(N, 4, size, size)`` with an all-ones mask."""
    ones = torch.ones_like(backgrounds[:, :1])
    return _resize(torch.cat([backgrounds.float(), ones], dim=1), size)


@dataclass
class ProbeOutput:
    """Logits of every head and the pooled features.

    Attributes:
        features: ``(N, D)`` pooled trunk features (the Fréchet-distance space).
        shape, color, size: foreground logits ``(N, 8)``, ``(N, 11)``, ``(N, 2)``.
        family: background-family logits ``(N, 7)``.
        bg_colors: background-colour multi-label logits ``(N, 11)``.
    """

    features: Tensor
    shape: Tensor
    color: Tensor
    size: Tensor
    family: Tensor
    bg_colors: Tensor


class ShapeProbe(ModelMixin, ConfigMixin):
    """A small conv net with one head per attribute.

    Args:
        image_size: side ``S`` the inputs are resized to.
        channels: trunk widths; every block after the first halves the resolution.
    """

    @register_to_config
    def __init__(self, image_size: int = 32, channels: tuple[int, ...] = (16, 32, 64, 128)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = 4
        for i, ch in enumerate(channels):
            layers += [nn.Conv2d(in_ch, ch, 3, stride=1 if i == 0 else 2, padding=1),
                       nn.GroupNorm(8, ch), nn.SiLU(),
                       nn.Conv2d(ch, ch, 3, padding=1), nn.GroupNorm(8, ch), nn.SiLU()]
            in_ch = ch
        self.trunk = nn.Sequential(*layers)
        self.heads = nn.ModuleDict({
            "shape": nn.Linear(in_ch, len(SHAPE_NAMES)),
            "color": nn.Linear(in_ch, len(COLOR_NAMES)),
            "size": nn.Linear(in_ch, len(SIZE_NAMES)),
            "family": nn.Linear(in_ch, len(FAMILY_NAMES)),
            "bg_colors": nn.Linear(in_ch, len(COLOR_NAMES)),
        })
        self.num_features = in_ch

    def forward(self, x: Tensor) -> ProbeOutput:
        """``x``: ``(N, 4, S, S)`` from :func:`foreground_input` / :func:`background_input`."""
        features = self.trunk(_resize(x, self.config.image_size)).mean((2, 3))
        return ProbeOutput(features, **{k: head(features) for k, head in self.heads.items()})

    @torch.no_grad()
    def predict_foregrounds(self, image: LayeredImage) -> list[dict[str, str]]:
        """Predicted ``shape``, ``color``, ``size`` of each foreground of ``image``."""
        out = self(foreground_input(image.foregrounds, image.masks, self.config.image_size).to(self.device))
        return [
            {"shape": SHAPE_NAMES[s], "color": COLOR_NAMES[c], "size": SIZE_NAMES[z]}
            for s, c, z in zip(out.shape.argmax(-1).tolist(), out.color.argmax(-1).tolist(),
                               out.size.argmax(-1).tolist())
        ]

    @torch.no_grad()
    def predict_backgrounds(self, backgrounds: Tensor, num_colors: list[int]) -> list[dict]:
        """Family and the ``num_colors[n]`` most likely colours of each ``(N, 3, H, W)``."""
        out = self(background_input(backgrounds, self.config.image_size).to(self.device))
        families = out.family.argmax(-1).tolist()
        ranked = out.bg_colors.argsort(-1, descending=True).tolist()
        return [
            {"family": FAMILY_NAMES[f], "colors": sorted(COLOR_NAMES[c] for c in r[:n])}
            for f, r, n in zip(families, ranked, num_colors)
        ]


@dataclass
class ProbeData:
    """Encoded layers and their labels (``-1`` where a head does not apply)."""

    inputs: Tensor
    shape: Tensor
    color: Tensor
    size: Tensor
    family: Tensor
    bg_colors: Tensor  # (N, 11) multi-hot; all zeros for foreground rows

    def __len__(self) -> int:
        return len(self.inputs)


def probe_data(scenes: ShapeScenes, probe_size: int) -> ProbeData:
    """Every layer of every scene, encoded for the probe, with its ground-truth labels."""
    rows: dict[str, list] = {k: [] for k in ("inputs", "shape", "color", "size", "family", "bg_colors")}
    for index in range(len(scenes)):
        image = scenes[index]
        meta = image.metadata
        k = image.num_foregrounds
        rows["inputs"] += [foreground_input(image.foregrounds, image.masks, probe_size),
                           background_input(image.background[None], probe_size)]
        fgs = meta["foregrounds"]
        rows["shape"] += [SHAPE_NAMES.index(f["shape"]) for f in fgs] + [-1]
        rows["color"] += [COLOR_NAMES.index(f["color"]) for f in fgs] + [-1]
        rows["size"] += [SIZE_NAMES.index(f["size"]) for f in fgs] + [-1]
        rows["family"] += [-1] * k + [FAMILY_NAMES.index(meta["background"]["family"])]
        multi_hot = torch.zeros(k + 1, len(COLOR_NAMES))
        for c in meta["background"]["colors"]:
            multi_hot[k, COLOR_NAMES.index(c)] = 1.0
        rows["bg_colors"].append(multi_hot)
    return ProbeData(
        inputs=torch.cat(rows["inputs"]),
        bg_colors=torch.cat(rows["bg_colors"]),
        **{k: torch.tensor(rows[k]) for k in ("shape", "color", "size", "family")},
    )


BG_COLORS_WEIGHT = 5.0  # the multi-label colour head learns slowest


def probe_loss(out: ProbeOutput, data: ProbeData) -> Tensor:
    """Sum of the heads' cross-entropies (ignoring rows a head does not apply to) and the
    background-colour binary cross-entropy on background rows (weighted by 5)."""
    loss = sum(F.cross_entropy(getattr(out, k), getattr(data, k), ignore_index=-1)
               for k in ("shape", "color", "size", "family"))
    background = data.family >= 0
    bce = F.binary_cross_entropy_with_logits(out.bg_colors[background], data.bg_colors[background])
    return loss + BG_COLORS_WEIGHT * bce


@torch.no_grad()
def probe_accuracy(probe: ShapeProbe, data: ProbeData, batch_size: int = 256) -> dict[str, float]:
    """Accuracy of each head on the rows it applies to, and of the whole foreground."""
    probe.eval()
    preds: dict[str, list[Tensor]] = {k: [] for k in ("shape", "color", "size", "family", "bg_colors")}
    for start in range(0, len(data), batch_size):
        out = probe(data.inputs[start:start + batch_size].to(probe.device))
        for k in ("shape", "color", "size", "family"):
            preds[k].append(getattr(out, k).argmax(-1).cpu())
        preds["bg_colors"].append(out.bg_colors.cpu())
    result = {}
    fg = data.shape >= 0
    bg = ~fg
    correct_fg = torch.ones(int(fg.sum()), dtype=torch.bool)
    for k in ("shape", "color", "size"):
        hit = torch.cat(preds[k])[fg] == getattr(data, k)[fg]
        result[k] = float(hit.float().mean())
        correct_fg &= hit
    result["foreground"] = float(correct_fg.float().mean())
    result["family"] = float((torch.cat(preds["family"])[bg] == data.family[bg]).float().mean())
    # the ``n`` most likely colours, ``n`` = the true number of colours of the background
    scores, target = torch.cat(preds["bg_colors"])[bg], data.bg_colors[bg]
    ranks = scores.argsort(-1, descending=True).argsort(-1)
    chosen = (ranks < target.sum(-1, keepdim=True)).float()
    result["bg_colors"] = float((chosen == target).all(-1).float().mean())
    return result


def train_probe(
    image_size: int = 32,
    max_foregrounds: int = 2,
    num_scenes: int = 3000,
    steps: int = 800,
    batch_size: int = 64,
    lr: float = 2e-3,
    seed: int = 0,
) -> ShapeProbe:
    """Train a probe on the ground-truth layers of ``num_scenes`` training scenes (AdamW,
    cosine learning-rate decay). The layers are encoded once, up front."""
    torch.manual_seed(seed)
    scenes = ShapeScenes(size=image_size, min_foregrounds=1, max_foregrounds=max_foregrounds,
                         seed=seed, split="train", length=num_scenes)
    data = probe_data(scenes, image_size)
    probe = ShapeProbe(image_size=image_size)
    optimizer = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.1)
    generator = torch.Generator().manual_seed(seed)
    probe.train()
    for step in range(steps):
        index = torch.randint(len(data), (batch_size,), generator=generator)
        batch = ProbeData(*(getattr(data, f)[index] for f in ProbeData.__dataclass_fields__))
        loss = probe_loss(probe(batch.inputs), batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 250 == 0 or step == steps - 1:
            logger.info("probe step %d/%d loss %.4f", step + 1, steps, loss.item())
    return probe.eval()


def cache_path(kind: str, image_size: int, max_foregrounds: int, seed: int,
               cache_dir: str | os.PathLike | None = None) -> Path:
    """``<cache_dir>/<kind>-<S>px-<K>fg-seed<seed>`` (``save_pretrained`` layout)."""
    return Path(cache_dir or DEFAULT_CACHE_DIR) / f"{kind}-{image_size}px-{max_foregrounds}fg-seed{seed}"


def load_or_train_probe(
    image_size: int = 32, max_foregrounds: int = 2, seed: int = 0,
    cache_dir: str | os.PathLike | None = None, retrain: bool = False, **train_kwargs,
) -> ShapeProbe:
    """Load the cached probe for this resolution, or train and cache it."""
    path = cache_path("probe", image_size, max_foregrounds, seed, cache_dir)
    if (path / "config.json").is_file() and not retrain:
        return ShapeProbe.from_pretrained(path, use_safetensors=True).eval()
    logger.info("training the attribute probe (cached at %s)", path)
    probe = train_probe(image_size=image_size, max_foregrounds=max_foregrounds, seed=seed, **train_kwargs)
    probe.save_pretrained(path)
    return probe
