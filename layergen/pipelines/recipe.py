"""Each model family's sampling recipe: the defaults a pipeline records in ``model_index.json``.

- LayerDiff (a UNet with layer blocks; LayerDiff 4.2 and A.4): DDIM with 100 steps, guidance 3;
  layer restyling runs the last 25 of the 100 steps (strength 0.25).
- Text2Layer (no layer blocks: CaT²I-AE-SD and its baselines; Text2Layer V-C): DDIM with 50
  steps, guidance 7.5 (restyle strength 0.5, though a joint latent cannot be edited).

``LayeredDiffusionModule.export_pretrained`` writes its family's recipe, updated by the
module's ``sampling`` argument; a pipeline saved without one falls back to
:data:`LEGACY_RECIPE`, the defaults from before recipes were recorded.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

RECIPE_KEYS = ("num_inference_steps", "guidance_scale", "restyle_strength")
LEGACY_RECIPE: dict[str, Any] = {
    "num_inference_steps": 50,
    "guidance_scale": 7.5,
    "restyle_strength": 0.5,
}
FAMILY_RECIPES: dict[str, dict[str, Any]] = {
    "layerdiff": {"num_inference_steps": 100, "guidance_scale": 3.0, "restyle_strength": 0.25},
    "text2layer": {"num_inference_steps": 50, "guidance_scale": 7.5, "restyle_strength": 0.5},
}

# where each family's recipe comes from, for model cards
FAMILY_SOURCES: dict[str, str] = {
    "layerdiff": "LayerDiff (Huang et al. 2024) 4.2: DDIM, 100 steps, guidance 3; A.4: restyling "
    "runs the last 25 of the 100 steps",
    "text2layer": "Text2Layer (Zhang et al. 2023) V-C: DDIM, 50 steps, guidance 7.5",
}


def model_family(layer_blocks: bool) -> str:
    """``"layerdiff"`` for a UNet with layer blocks, else ``"text2layer"``."""
    return "layerdiff" if layer_blocks else "text2layer"


def check_recipe(recipe: Mapping[str, Any], where: str = "sampling") -> dict[str, Any]:
    """A validated, typed copy of a (partial) recipe; ``None`` values are dropped.

    Raises:
        ValueError: an unknown key, a non-integer or < 1 step count, a negative guidance
            scale or a restyle strength outside (0, 1].
    """
    unknown = sorted(set(recipe) - set(RECIPE_KEYS))
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; expected some of {list(RECIPE_KEYS)}")
    checked: dict[str, Any] = {}
    for key, value in recipe.items():
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{where}.{key}: expected a number, got {value!r}")
        if key == "num_inference_steps":
            if int(value) != value or value < 1:
                raise ValueError(f"{where}.{key}: must be an integer >= 1, got {value!r}")
            checked[key] = int(value)
        elif key == "guidance_scale":
            if value < 0:
                raise ValueError(f"{where}.{key}: must be >= 0, got {value!r}")
            checked[key] = float(value)
        else:
            if not 0.0 < value <= 1.0:
                raise ValueError(f"{where}.{key}: must lie in (0, 1], got {value!r}")
            checked[key] = float(value)
    return checked


def family_recipe(layer_blocks: bool, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The full recipe of the model's family, updated by ``overrides`` (e.g. ``sampling``)."""
    return {**FAMILY_RECIPES[model_family(layer_blocks)], **check_recipe(overrides or {})}
