"""Build a ``LayeredDiffusionPipeline`` from the Lightning checkpoints of training.

Training writes ``.ckpt`` files of ``LayeredAutoencoderModule`` and ``LayeredDiffusionModule``
(``layergen.lit``); the usual route to a pipeline is their ``export_pretrained``. This module
rebuilds the same pipeline straight from the checkpoints (``torch.load(weights_only=True)``,
no Lightning import): the models are re-created from the saved hyper-parameters and their
weights loaded (the diffusion model's EMA weights when present), the scheduler is the DDIM
version of the training noise schedule and the sampling recipe is the model family's,
updated by the module's ``sampling``, as ``LayeredDiffusionModule.export_pretrained``
writes them.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from diffusers import DDIMScheduler, UNet2DConditionModel
from torch import Tensor

from layergen.models import LayeredAutoencoderInterface, autoencoder_classes, load_autoencoder
from layergen.models.layered_unet import LayeredUNet
from layergen.models.text_encoder import load_text_encoder
from layergen.pipelines.recipe import family_recipe

logger = logging.getLogger(__name__)

UNET_OPTIONS = (
    "layer_blocks",
    "mask_channels",
    "prompt_enhancer",
    "prompt_enhancer_heads",
    "max_layers",
    "latent_layout",
    "composite_condition",
    "box_condition",
)


def load_lightning_checkpoint(path: str | Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """``(hyper_parameters, state_dict)`` of a Lightning checkpoint (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises UnpicklingError or RuntimeError subclasses
        raise ValueError(
            f"{path}: cannot be read with torch.load(weights_only=True) ({err}); "
            "export the model with export_pretrained and load that directory instead"
        ) from err
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ValueError(f"{path}: not a Lightning checkpoint (no 'state_dict')")
    return dict(checkpoint.get("hyper_parameters") or {}), checkpoint["state_dict"]


def _sub_state_dict(state_dict: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}


def autoencoder_from_checkpoint(path: str | Path) -> LayeredAutoencoderInterface:
    """Re-create a layered autoencoder from a ``LayeredAutoencoderModule`` checkpoint.

    The hyper-parameter ``autoencoder`` must be a ``class_path``/``init_args`` dict (as
    LightningCLI saves it). With ``estimate_scaling_factor`` the scaling factor is
    ``1 / latent_std``, as ``export_pretrained`` sets it.
    """
    hparams, state_dict = load_lightning_checkpoint(path)
    spec = hparams.get("autoencoder")
    if not isinstance(spec, dict) or "class_path" not in spec:
        raise ValueError(
            f"{path}: hyper_parameters['autoencoder'] is not a class_path/init_args dict; "
            "load the autoencoder's save_pretrained directory instead"
        )
    class_name = str(spec["class_path"]).rsplit(".", 1)[-1]
    classes = autoencoder_classes()  # with the old names (LayeredAutoencoder)
    if class_name not in classes:
        raise ValueError(f"{path}: unknown autoencoder class {spec['class_path']!r}")
    model = classes[class_name](**dict(spec.get("init_args") or {}))
    model.load_state_dict(_sub_state_dict(state_dict, "autoencoder."))
    std = state_dict.get("latent_std")
    if hparams.get("estimate_scaling_factor", True) and std is not None and float(std) > 0:
        model.register_to_config(scaling_factor=1.0 / float(std))
    return model.eval()


def unet_from_checkpoint(hparams: dict[str, Any], state_dict: dict[str, Tensor]) -> LayeredUNet:
    """Re-create the ``LayeredUNet`` of a ``LayeredDiffusionModule`` checkpoint (EMA weights
    when present). A UNet started from SD weights reads only the base config from
    ``unet_pretrained``, one started from a saved ``LayeredUNet`` its config from ``unet_init``."""
    if hparams.get("unet_init") is not None:
        saved = LayeredUNet.load_config(hparams["unet_init"])
        options = {k: v for k, v in saved.items() if not k.startswith("_")}
        options.update({k: hparams[k] for k in ("composite_condition", "box_condition") if k in hparams})
        unet = LayeredUNet(**options)
        return _load_unet_weights(unet, state_dict)
    if hparams.get("unet_config") is not None:
        config = dict(hparams["unet_config"])
    elif hparams.get("unet_pretrained") is not None:
        config = dict(
            UNet2DConditionModel.load_config(
                hparams["unet_pretrained"], subfolder=hparams.get("unet_subfolder")
            )
        )
        config = {k: v for k, v in config.items() if not k.startswith("_")}
    else:
        raise ValueError("diffusion checkpoint: neither unet_config nor unet_pretrained is set")
    for key in ("in_channels", "out_channels"):
        if hparams.get(key) is not None:
            config[key] = hparams[key]
    options = {k: hparams[k] for k in UNET_OPTIONS if k in hparams}
    unet = LayeredUNet(unet_config=config, **options)
    return _load_unet_weights(unet, state_dict)


def _load_unet_weights(unet: LayeredUNet, state_dict: dict[str, Tensor]) -> LayeredUNet:
    """The EMA weights of a diffusion checkpoint (else the trained ones) into ``unet``."""
    weights = _sub_state_dict(state_dict, "ema_unet.module.") or _sub_state_dict(
        state_dict, "unet."
    )
    if not weights:
        raise ValueError("diffusion checkpoint: no 'unet.' or 'ema_unet.module.' weights")
    unet.load_state_dict(weights)
    return unet.eval()


def scheduler_from_hparams(hparams: dict[str, Any]) -> DDIMScheduler:
    """DDIM with the training noise schedule (as ``export_pretrained`` writes it)."""
    return DDIMScheduler(
        num_train_timesteps=hparams.get("num_train_timesteps", 1000),
        beta_schedule=hparams.get("beta_schedule", "scaled_linear"),
        beta_start=hparams.get("beta_start", 0.00085),
        beta_end=hparams.get("beta_end", 0.012),
        prediction_type=hparams.get("prediction_type", "epsilon"),
        clip_sample=False,
        set_alpha_to_one=False,
    )


def pipeline_from_checkpoints(
    pipeline_class: type,
    autoencoder: str | Path,
    diffusion_checkpoint: str | Path,
    text_encoder: str | None = None,
) -> Any:
    """Build ``pipeline_class`` from an autoencoder (directory or ``.ckpt``) and a diffusion
    ``.ckpt``.

    Args:
        pipeline_class: ``LayeredDiffusionPipeline`` (or a subclass).
        autoencoder: ``save_pretrained`` directory or ``LayeredAutoencoderModule`` checkpoint.
        diffusion_checkpoint: ``LayeredDiffusionModule`` checkpoint.
        text_encoder: text encoder hub id or path (default: the one recorded in training).
    """
    autoencoder = Path(autoencoder)
    model = (
        load_autoencoder(autoencoder).eval()
        if autoencoder.is_dir()
        else autoencoder_from_checkpoint(autoencoder)
    )
    hparams, state_dict = load_lightning_checkpoint(diffusion_checkpoint)
    text_source = text_encoder or hparams.get("text_encoder")
    if not text_source:
        raise ValueError(f"{diffusion_checkpoint}: no text encoder recorded; pass text_encoder=")
    tokenizer, text_model = load_text_encoder(str(text_source))
    logger.info("pipeline from %s and %s", autoencoder, diffusion_checkpoint)
    return pipeline_class(
        autoencoder=model,
        unet=unet_from_checkpoint(hparams, state_dict),
        text_encoder=text_model,
        tokenizer=tokenizer,
        scheduler=scheduler_from_hparams(hparams),
        **family_recipe(hparams.get("layer_blocks", True), hparams.get("sampling")),
    )
