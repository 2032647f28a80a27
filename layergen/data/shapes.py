"""Synthetic layered scenes: textured backgrounds and flat-coloured shapes with exact layers.

Every scene is drawn from a numpy ``Generator`` seeded with ``(seed, split, index)``, so a
scene depends only on those three values (never on global RNG state or on the order of
access). The split enters the seed, so train, val and test never share a scene.

Rendering:
    * background ``B``: a full-frame texture from one of ``BACKGROUND_FAMILIES``;
    * foreground ``F_i``: the shape's flat colour over the whole frame (the mask alone says
      where the shape is), so a layer's RGB is defined even where its mask is 0;
    * straight alpha ``a_i``: anti-aliased coverage from the shape's signed distance ``d``
      in pixels, ``a_i = clip(0.5 - d, 0, 1)`` (a soft edge about one pixel wide);
    * visible masks (later shapes in front): ``m_i = a_i * prod_{j > i} (1 - a_j)``.

The scene "as rendered" is the painter's algorithm over the straight alphas; it equals the
layered composite ``(1 - sum_i m_i) B + sum_i m_i F_i`` (LayerDiff eq. 1).

Captions come from a small grammar: layer prompts ``"a large red star"``, the background's
layer prompt is its description (``"a green and white striped background"``; LayerDiff's
fixed ``BACKGROUND_PROMPT`` left the background's family and colours to the global prompt
alone, docs/demo_recipe.md) and the global prompt lists every shape with its position
followed by the background's description, e.g. ``"a large red star on the left and a small
blue circle at the top on a green and white striped background"``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from layergen.layers import BACKGROUND_PROMPT, LayeredImage, visible_masks

SPLITS = ("train", "val", "test")
SHAPES = ("circle", "square", "triangle", "star", "diamond", "hexagon", "heart", "cross")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (245, 140, 20),
    "yellow": (240, 220, 30),
    "green": (40, 170, 60),
    "blue": (30, 80, 220),
    "purple": (130, 50, 180),
    "pink": (245, 130, 190),
    "brown": (120, 70, 30),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
    "gray": (128, 128, 128),
}
SIZES: dict[str, float] = {"small": 0.12, "large": 0.22}  # radius as a fraction of the side
POSITIONS: dict[str, tuple[float, float]] = {  # (x, y) centre as a fraction of the side
    "center": (0.5, 0.5),
    "left": (0.25, 0.5),
    "right": (0.75, 0.5),
    "top": (0.5, 0.25),
    "bottom": (0.5, 0.75),
    "top left": (0.25, 0.25),
    "top right": (0.75, 0.25),
    "bottom left": (0.25, 0.75),
    "bottom right": (0.75, 0.75),
}
POSITION_PHRASES: dict[str, str] = {
    "center": "in the center",
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "top left": "in the top left",
    "top right": "in the top right",
    "bottom left": "in the bottom left",
    "bottom right": "in the bottom right",
}
# family -> (number of colours, adjective used in captions)
BACKGROUND_FAMILIES: dict[str, tuple[int, str]] = {
    "solid": (1, "plain"),
    "gradient": (2, "gradient"),
    "stripes": (2, "striped"),
    "checks": (2, "checkered"),
    "dots": (2, "dotted"),
    "horizon": (2, "horizon"),
    "noise": (1, "noisy"),
}
MIN_SIZE, MAX_SIZE = 32, 512
_JITTER = 0.03  # centre jitter, fraction of the side
_MIN_VISIBLE = 0.3  # each shape keeps at least this fraction of its area visible
_LAYOUT_TRIES = 8


# ----------------------------------------------------------------------------------------
# Signed distances, in units of the shape's radius (negative inside)
# ----------------------------------------------------------------------------------------


def _sd_box(px: np.ndarray, py: np.ndarray, hx: float, hy: float) -> np.ndarray:
    qx, qy = np.abs(px) - hx, np.abs(py) - hy
    outside = np.hypot(np.maximum(qx, 0.0), np.maximum(qy, 0.0))
    return outside + np.minimum(np.maximum(qx, qy), 0.0)


def _sd_polygon(px: np.ndarray, py: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    """Exact signed distance to a simple polygon (winding-number sign), vectorised."""
    d = (px - vertices[0, 0]) ** 2 + (py - vertices[0, 1]) ** 2
    sign = np.ones_like(d)
    for i in range(len(vertices)):
        vix, viy = vertices[i]
        vjx, vjy = vertices[i - 1]
        ex, ey = vjx - vix, vjy - viy
        wx, wy = px - vix, py - viy
        t = np.clip((wx * ex + wy * ey) / (ex * ex + ey * ey), 0.0, 1.0)
        bx, by = wx - ex * t, wy - ey * t
        d = np.minimum(d, bx * bx + by * by)
        c1, c2, c3 = py >= viy, py < vjy, ex * wy > ey * wx
        flip = (c1 & c2 & c3) | (~c1 & ~c2 & ~c3)
        sign = np.where(flip, -sign, sign)
    return sign * np.sqrt(d)


def _regular_polygon(n: int, radius: float, phase: float) -> np.ndarray:
    angles = phase + 2.0 * np.pi * np.arange(n) / n
    return np.stack([radius * np.cos(angles), radius * np.sin(angles)], axis=1)


def _star_vertices(points: int = 5, outer: float = 1.0, inner: float = 0.45) -> np.ndarray:
    angles = -np.pi / 2 + np.pi * np.arange(2 * points) / points
    radii = np.where(np.arange(2 * points) % 2 == 0, outer, inner)
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


_TRIANGLE = _regular_polygon(3, 1.0, -np.pi / 2) + np.array([0.0, 0.2])  # apex up
_STAR = _star_vertices()
_DIAMOND = np.array([[0.0, -1.0], [0.75, 0.0], [0.0, 1.0], [-0.75, 0.0]])
_HEXAGON = _regular_polygon(6, 0.95, 0.0)
_HEART_TIP = np.array([[-0.9, -0.15], [0.0, 0.95], [0.9, -0.15]])


def shape_sdf(shape: str, px: np.ndarray, py: np.ndarray) -> np.ndarray:
    """Signed distance (negative inside) of a unit-radius shape at the origin, y pointing down."""
    if shape == "circle":
        return np.hypot(px, py) - 1.0
    if shape == "square":
        return _sd_box(px, py, 0.8, 0.8)
    if shape == "triangle":
        return _sd_polygon(px, py, _TRIANGLE)
    if shape == "star":
        return _sd_polygon(px, py, _STAR)
    if shape == "diamond":
        return _sd_polygon(px, py, _DIAMOND)
    if shape == "hexagon":
        return _sd_polygon(px, py, _HEXAGON)
    if shape == "heart":
        lobes = np.minimum(np.hypot(px + 0.45, py + 0.35), np.hypot(px - 0.45, py + 0.35)) - 0.5
        return np.minimum(lobes, _sd_polygon(px, py, _HEART_TIP))
    if shape == "cross":
        return np.minimum(_sd_box(px, py, 0.9, 0.3), _sd_box(px, py, 0.3, 0.9))
    raise ValueError(f"shape: unknown shape {shape!r}; choose from {SHAPES}")


def shape_alpha(shape: str, size: int, center: tuple[float, float], radius: float) -> np.ndarray:
    """Anti-aliased straight alpha ``(H, W)`` in [0, 1] of a shape on a ``size``-pixel grid.

    Args:
        shape: one of ``SHAPES``.
        size: side of the square grid in pixels.
        center: ``(x, y)`` centre in pixels.
        radius: radius in pixels.

    Returns:
        ``clip(0.5 - d, 0, 1)`` with ``d`` the signed distance in pixels from pixel centres.
    """
    coords = np.arange(size, dtype=np.float32) + 0.5
    # Only the bounding box around the shape can be non-zero.
    lo = np.searchsorted(coords, [center[0] - radius - 1, center[1] - radius - 1])
    hi = np.searchsorted(coords, [center[0] + radius + 1, center[1] + radius + 1])
    px = (coords[None, lo[0] : hi[0]] - center[0]) / radius
    py = (coords[lo[1] : hi[1], None] - center[1]) / radius
    alpha = np.zeros((size, size), dtype=np.float32)
    alpha[lo[1] : hi[1], lo[0] : hi[0]] = np.clip(0.5 - shape_sdf(shape, px, py) * radius, 0, 1)
    return alpha


# ----------------------------------------------------------------------------------------
# Backgrounds, in [0, 1]
# ----------------------------------------------------------------------------------------


def _rgb(name: str) -> np.ndarray:
    return np.asarray(COLORS[name], dtype=np.float32) / 255.0


def _mix(c1: np.ndarray, c2: np.ndarray, t: np.ndarray) -> np.ndarray:
    """``(1 - t) c1 + t c2`` for ``t`` of shape ``(H, W)`` -> ``(H, W, 3)``."""
    return c1 + (c2 - c1) * t[..., None]


def _soft_square_wave(u: np.ndarray, period: float) -> np.ndarray:
    """0/1 bands of width ``period / 2`` along ``u`` (pixels) with ~1-pixel soft edges."""
    return np.clip(0.5 + period / (2 * np.pi) * np.sin(2 * np.pi * u / period), 0.0, 1.0)


def render_background(
    family: str, colors: list[str], size: int, rng: np.random.Generator
) -> tuple[np.ndarray, dict[str, Any]]:
    """Render a full-frame background texture.

    Returns:
        ``(H, W, 3)`` float32 in [0, 1] and the family's parameters (JSON-serialisable).
    """
    c1 = _rgb(colors[0])
    c2 = _rgb(colors[1]) if len(colors) > 1 else c1
    coords = np.arange(size, dtype=np.float32) + 0.5
    x, y = coords[None, :], coords[:, None]
    params: dict[str, Any] = {}
    if family == "solid":
        image = np.broadcast_to(c1, (size, size, 3))
    elif family == "gradient":
        angle = float(rng.uniform(0, 2 * np.pi))
        u = (x - size / 2) * np.cos(angle) + (y - size / 2) * np.sin(angle)
        image = _mix(c1, c2, np.clip(u / size * np.sqrt(0.5) + 0.5, 0, 1))
        params["angle"] = angle
    elif family == "stripes":
        angle = float(rng.choice([0.0, 0.25, 0.5, 0.75]) * np.pi)
        period = float(rng.uniform(0.12, 0.25) * size)
        u = x * np.cos(angle) + y * np.sin(angle)
        image = _mix(c1, c2, _soft_square_wave(u, period))
        params.update(angle=angle, period=period)
    elif family == "checks":
        period = float(rng.uniform(0.15, 0.3) * size)
        t = _soft_square_wave(x, period) + _soft_square_wave(y, period)
        image = _mix(c1, c2, np.abs(t - 1.0))
        params["period"] = period
    elif family == "dots":
        spacing = float(rng.uniform(0.12, 0.22) * size)
        radius = spacing * float(rng.uniform(0.2, 0.35))
        dx = np.abs((x % spacing) - spacing / 2)
        dy = np.abs((y % spacing) - spacing / 2)
        image = _mix(c1, c2, np.clip(radius + 0.5 - np.hypot(dx, dy), 0, 1))
        params.update(spacing=spacing, radius=radius)
    elif family == "horizon":
        level = float(rng.uniform(0.45, 0.7) * size)
        tilt = float(rng.uniform(-0.15, 0.15))
        sky = 1.0 - 0.25 * (y / size)  # sky slightly brighter at the top
        line = np.clip(y - level - tilt * (x - size / 2) + 0.5, 0, 1)
        image = _mix(c1 * sky[..., None] * np.ones_like(x)[..., None], c2, line)
        image = np.clip(image, 0, 1)
        params.update(level=level, tilt=tilt)
    elif family == "noise":
        cells = int(rng.integers(3, 7))
        coarse = rng.uniform(-1, 1, size=(cells + 1, cells + 1)).astype(np.float32)
        g = coords / size * cells  # bilinear upsampling of the coarse grid
        i0 = np.minimum(g.astype(np.int64), cells - 1)
        f = g - i0
        rows = coarse[i0] * (1 - f)[:, None] + coarse[i0 + 1] * f[:, None]
        field = rows[:, i0] * (1 - f)[None, :] + rows[:, i0 + 1] * f[None, :]
        image = np.clip(c1 * (1.0 + 0.25 * field[..., None]), 0, 1)
        params["cells"] = cells
    else:
        raise ValueError(f"family: unknown background family {family!r}")
    return np.ascontiguousarray(image, dtype=np.float32), params


def describe_background(family: str, colors: list[str]) -> str:
    """Caption phrase, e.g. ``"a green and white striped background"``."""
    adjective = BACKGROUND_FAMILIES[family][1]
    article = "an" if colors[0][0] in "aeiou" else "a"
    return f"{article} {' and '.join(colors)} {adjective} background"


def describe_foreground(size: str, color: str, shape: str) -> str:
    """Layer prompt, e.g. ``"a large red star"``."""
    return f"a {size} {color} {shape}"


def global_prompt(layer_prompts: list[str], positions: list[str], background: str) -> str:
    """``"<fg 1> <where> and <fg 2> <where> on <background>"`` (back to front)."""
    phrases = [f"{p} {POSITION_PHRASES[q]}" for p, q in zip(layer_prompts, positions)]
    listed = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
    return f"{listed} on {background}"


def vocabulary() -> list[str]:
    """Sorted list of every word the caption grammar can emit (prompts and layer prompts)."""
    words = {"a", "an", "and", "on", "background"} | set(BACKGROUND_PROMPT.split())
    words |= set(SHAPES) | set(COLORS) | set(SIZES)
    words |= {adjective for _, adjective in BACKGROUND_FAMILIES.values()}
    for phrase in POSITION_PHRASES.values():
        words |= set(phrase.split())
    return sorted(words)


# ----------------------------------------------------------------------------------------
# Scenes
# ----------------------------------------------------------------------------------------


@dataclass
class Scene:
    """A rendered scene before conversion to tensors.

    Attributes:
        background: ``(H, W, 3)`` float32 in [0, 1].
        colors: ``(K, 3)`` float32 in [0, 1], the flat colour of each foreground.
        alphas: ``(K, H, W)`` float32 straight alphas in [0, 1], back to front.
        prompt: global prompt.
        layer_prompts: ``K + 1`` strings, index 0 the background's description.
        metadata: ground-truth attributes (JSON-serialisable).
    """

    background: np.ndarray
    colors: np.ndarray
    alphas: np.ndarray
    prompt: str
    layer_prompts: list[str]
    metadata: dict[str, Any]

    def render(self) -> np.ndarray:
        """The scene as painted back to front with straight alphas: ``(H, W, 3)`` in [0, 1]."""
        image = self.background.copy()
        for color, alpha in zip(self.colors, self.alphas):
            image = image * (1.0 - alpha[..., None]) + color * alpha[..., None]
        return image

    def to_layered(self) -> LayeredImage:
        """Convert to a ``LayeredImage`` (RGB in [-1, 1], visible masks ``m_i``)."""
        size = self.background.shape[0]
        background = torch.from_numpy(self.background).permute(2, 0, 1) * 2.0 - 1.0
        colors = torch.from_numpy(self.colors) * 2.0 - 1.0
        foregrounds = colors[:, :, None, None].expand(-1, -1, size, size).contiguous()
        masks = visible_masks(torch.from_numpy(self.alphas)[:, None])
        return LayeredImage(
            background=background.contiguous(),
            foregrounds=foregrounds,
            masks=masks,
            prompt=self.prompt,
            layer_prompts=self.layer_prompts,
            metadata=self.metadata,
        )


def _visible_fractions(alphas: np.ndarray) -> np.ndarray:
    """Visible area / own area of each layer under back-to-front occlusion."""
    covered_above = np.zeros_like(alphas[0])
    fractions = np.zeros(len(alphas))
    for i in range(len(alphas) - 1, -1, -1):
        own = alphas[i].sum()
        fractions[i] = (alphas[i] * (1.0 - covered_above)).sum() / max(own, 1e-6)
        covered_above = covered_above + alphas[i] * (1.0 - covered_above)
    return fractions


def sample_scene(
    rng: np.random.Generator, size: int = 64, min_foregrounds: int = 1, max_foregrounds: int = 2
) -> Scene:
    """Draw and render one scene from ``rng``.

    Foregrounds sit at distinct named positions, get colours that differ from each other
    and from the background (while the palette allows), and the layout is redrawn (a few
    times) until every shape keeps at least 30% of its area visible.
    """
    families = list(BACKGROUND_FAMILIES)
    family = families[int(rng.integers(len(families)))]
    num_bg_colors = BACKGROUND_FAMILIES[family][0]
    palette = list(COLORS)
    bg_colors = [str(c) for c in rng.choice(palette, size=num_bg_colors, replace=False)]
    background, bg_params = render_background(family, bg_colors, size, rng)

    k = int(rng.integers(min_foregrounds, max_foregrounds + 1))
    free = [c for c in palette if c not in bg_colors]
    fg_colors = [str(c) for c in rng.choice(free, size=k, replace=k > len(free))]
    shapes = [str(s) for s in rng.choice(SHAPES, size=k)]
    sizes = [str(s) for s in rng.choice(list(SIZES), size=k)]
    names = list(POSITIONS)
    for _ in range(_LAYOUT_TRIES):
        positions = [names[i] for i in rng.permutation(len(names))[:k]]
        jitter = rng.uniform(-_JITTER, _JITTER, size=(k, 2))
        centers = [
            ((POSITIONS[p][0] + jx) * size, (POSITIONS[p][1] + jy) * size)
            for p, (jx, jy) in zip(positions, jitter)
        ]
        alphas = np.stack(
            [
                shape_alpha(shape, size, center, SIZES[s] * size)
                for shape, center, s in zip(shapes, centers, sizes)
            ]
        )
        if _visible_fractions(alphas).min() >= _MIN_VISIBLE:
            break

    layer_prompts = [describe_foreground(s, c, sh) for s, c, sh in zip(sizes, fg_colors, shapes)]
    background_text = describe_background(family, bg_colors)
    metadata = {
        "source": "shapes",
        "background": {
            "family": family,
            "colors": bg_colors,
            "description": background_text,
            **bg_params,
        },
        "foregrounds": [
            {
                "shape": sh,
                "color": c,
                "size": s,
                "position": p,
                "center": [float(cx / size), float(cy / size)],
            }
            for sh, c, s, p, (cx, cy) in zip(shapes, fg_colors, sizes, positions, centers)
        ],
        "depth": list(range(1, k + 1)),
    }
    return Scene(
        background=background,
        colors=np.stack([_rgb(c) for c in fg_colors]),
        alphas=alphas,
        prompt=global_prompt(layer_prompts, positions, background_text),
        layer_prompts=[background_text, *layer_prompts],
        metadata=metadata,
    )


class ShapeScenes(Dataset):
    """Deterministic synthetic layered scenes (a map-style torch ``Dataset``).

    Scene ``index`` of ``split`` is drawn from ``np.random.default_rng([seed, split_id,
    index])``: the same arguments always give the same scene and the splits are disjoint.

    Args:
        size: side in pixels, 32..512.
        min_foregrounds: fewest foreground shapes per scene (>= 1).
        max_foregrounds: most foreground shapes per scene (<= number of positions).
        seed: base seed.
        split: ``"train"``, ``"val"`` or ``"test"``.
        length: number of scenes.

    Returns (per item):
        ``LayeredImage`` with metadata holding ``split``, ``index``, ``seed``, the background's
        ``family`` and ``colors`` and, per foreground, ``shape``, ``color``, ``size``,
        ``position`` (back to front).
    """

    def __init__(
        self,
        size: int = 64,
        min_foregrounds: int = 1,
        max_foregrounds: int = 2,
        seed: int = 0,
        split: str = "train",
        length: int = 1000,
    ) -> None:
        if not MIN_SIZE <= size <= MAX_SIZE:
            raise ValueError(f"size: must lie in [{MIN_SIZE}, {MAX_SIZE}], got {size}")
        if not 1 <= min_foregrounds <= max_foregrounds <= len(POSITIONS):
            raise ValueError(
                f"min_foregrounds, max_foregrounds: need 1 <= min <= max <= {len(POSITIONS)}, "
                f"got {min_foregrounds}, {max_foregrounds}"
            )
        if split not in SPLITS:
            raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")
        if length < 0:
            raise ValueError(f"length: must be >= 0, got {length}")
        self.size = size
        self.min_foregrounds = min_foregrounds
        self.max_foregrounds = max_foregrounds
        self.seed = seed
        self.split = split
        self.length = length

    def __len__(self) -> int:
        return self.length

    def scene(self, index: int) -> Scene:
        """The un-converted ``Scene`` at ``index`` (straight alphas, flat colours)."""
        if not 0 <= index < self.length:
            raise IndexError(f"index: {index} out of range for {self.length} scenes")
        rng = np.random.default_rng([self.seed, SPLITS.index(self.split), index])
        scene = sample_scene(rng, self.size, self.min_foregrounds, self.max_foregrounds)
        scene.metadata.update(split=self.split, index=index, seed=self.seed)
        return scene

    def __getitem__(self, index: int) -> LayeredImage:
        return self.scene(index).to_layered()
