"""Tiny pipeline components for the pipeline and generate.py tests (diffusers-test style)."""

from pathlib import Path

import torch
from diffusers import DDIMScheduler

from layergen.data.shapes import ShapeScenes, vocabulary
from layergen.layers import LayeredImage
from layergen.models import JointAutoencoder, PerLayerAutoencoder, StackedSDAutoencoder
from layergen.models.layered_unet import LayeredUNet
from layergen.models.text_encoder import build_tiny_text_encoder, load_text_encoder
from layergen.pipelines import LayeredDiffusionPipeline

SIZE = 16  # image side; latents are 8x8 (f = 2)


def tiny_unet_config(in_channels: int = 4) -> dict:
    return {
        "sample_size": SIZE // 2,
        "in_channels": in_channels,
        "out_channels": in_channels,
        "block_out_channels": (8, 16),
        "layers_per_block": 1,
        "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
        "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
        "cross_attention_dim": 32,
        "attention_head_dim": 2,
        "norm_num_groups": 4,
    }


TINY_AE = dict(
    latent_channels=4,
    block_out_channels=(8, 16),
    layers_per_block=1,
    norm_num_groups=4,
    mid_block_add_attention=False,
)


def tiny_autoencoder(layout: str) -> torch.nn.Module:
    """Per-layer, joint (K = 1) or stacked SD-AE autoencoder (a tiny random SD VAE)."""
    if layout == "joint":
        return JointAutoencoder(num_foregrounds=1, **TINY_AE)
    if layout == "stacked":
        vae_config = dict(
            TINY_AE,
            down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2,
            sample_size=SIZE,
        )
        return StackedSDAutoencoder(vae_config=vae_config)
    return PerLayerAutoencoder(**TINY_AE)


def save_training_assets(root: Path) -> Path:
    """The tiny per-layer autoencoder (``root/ae``) and text encoder (``root/te``, width 16)
    that the diffusion LightningModule tests load by path; seeded, so every test file gets
    the same weights. Returns ``root``."""
    torch.manual_seed(0)
    PerLayerAutoencoder(**TINY_AE).save_pretrained(root / "ae")
    build_tiny_text_encoder(root / "te", vocabulary(), hidden_size=16, num_layers=1, max_length=16)
    return root


def tiny_pipeline(
    tmp_path: Path, layout: str = "layers", autoencoder: torch.nn.Module | None = None
) -> LayeredDiffusionPipeline:
    """Tiny pipeline, eval mode, CPU, for a latent ``layout``.

    "layers": per-layer latents (LayerDiff); "joint": one latent (Text2Layer, K = 1);
    "stacked": SD-AE latents ``(B, 2L - 1, C, h, w)`` regrouped into image + mask latents.
    ``autoencoder``: one to use instead of the layout's (C = 4, f = 2).
    """
    text_dir = tmp_path / "text"
    if not (text_dir / "text_encoder").exists():
        build_tiny_text_encoder(text_dir, vocabulary())
    tokenizer, text_encoder = load_text_encoder(str(text_dir))
    torch.manual_seed(0)
    autoencoder = tiny_autoencoder(layout) if autoencoder is None else autoencoder
    torch.manual_seed(0)
    unet = LayeredUNet(
        unet_config=tiny_unet_config(),
        layer_blocks=layout != "joint",
        mask_channels=4 if layout == "stacked" else 0,
        prompt_enhancer_heads=2,
        max_layers=4,
        latent_layout="stacked" if layout == "stacked" else "layers",
    )
    scheduler = DDIMScheduler(prediction_type="v_prediction", beta_schedule="squaredcos_cap_v2")
    pipe = LayeredDiffusionPipeline(
        autoencoder=autoencoder.eval(),
        unet=unet.eval(),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=scheduler,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def small_scene(k: int = 2) -> LayeredImage:
    """A test scene with ``k`` foregrounds at the tiny pipeline's side (scenes are >= 32)."""
    image = ShapeScenes(size=2 * SIZE, min_foregrounds=k, max_foregrounds=k, split="test")[0]
    pool = torch.nn.functional.avg_pool2d
    return LayeredImage(
        background=pool(image.background[None], 2)[0],
        foregrounds=pool(image.foregrounds, 2),
        masks=pool(image.masks, 2),
        prompt=image.prompt,
        layer_prompts=image.layer_prompts,
    ).validate()
