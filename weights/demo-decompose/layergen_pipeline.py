"""LayeredDiffusionPipeline for diffusers' generic loader (needs layergen installed)."""

from layergen.pipelines.layered_diffusion import LayeredDiffusionPipeline

__all__ = ["LayeredDiffusionPipeline"]
