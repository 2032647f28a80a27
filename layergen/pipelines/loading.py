"""Load a layered diffusion pipeline from a directory, a hub id or training checkpoints."""

from __future__ import annotations

from pathlib import Path

import torch

from layergen.pipelines.layered_diffusion import LayeredDiffusionPipeline


def load_pipeline(
    model: str | Path,
    autoencoder: str | Path | None = None,
    text_encoder: str | None = None,
    device: str | torch.device = "cpu",
) -> LayeredDiffusionPipeline:
    """Load a pipeline from a directory / hub id (``from_pretrained``) or from checkpoints.

    Args:
        model: pipeline directory or hub id, or a ``LayeredDiffusionModule`` ``.ckpt``.
        autoencoder: with a ``.ckpt`` model, the autoencoder directory or ``.ckpt``.
        text_encoder: with a ``.ckpt`` model, overrides the recorded text encoder.
        device: where to run.
    """
    model = str(model)
    if model.endswith(".ckpt"):
        if autoencoder is None:
            raise ValueError(
                f"{model}: a diffusion checkpoint needs --autoencoder (directory or .ckpt)"
            )
        pipe = LayeredDiffusionPipeline.from_checkpoints(autoencoder, model, text_encoder)
    else:
        pipe = LayeredDiffusionPipeline.from_pretrained(model, use_safetensors=True)
    return pipe.to(device)
