"""Inference: the layered diffusion pipeline, layer editing and layer-prompt parsing."""

from layergen.pipelines.editing import merge_kept_layers
from layergen.pipelines.layer_prompts import derive_layer_prompts
from layergen.pipelines.layered_diffusion import (
    LayeredDiffusionPipeline,
    LayeredPipelineOutput,
    layerdiff_negative_prompts,
)
from layergen.pipelines.loading import load_pipeline
from layergen.pipelines.recipe import FAMILY_RECIPES, LEGACY_RECIPE, family_recipe

__all__ = [
    "FAMILY_RECIPES",
    "LEGACY_RECIPE",
    "LayeredDiffusionPipeline",
    "LayeredPipelineOutput",
    "derive_layer_prompts",
    "family_recipe",
    "layerdiff_negative_prompts",
    "load_pipeline",
    "merge_kept_layers",
]
