"""The autoencoder contract (LayeredAutoencoderInterface): the five autoencoders implement it,
and a sixth that implements it alone encodes and decodes layered batches, scores in the
benchmark, generates and edits through the pipeline and saves and loads by its class name."""

import json

import pytest
import torch
from diffusers.configuration_utils import register_to_config
from pipeline_components import SIZE, TINY_AE, small_scene, tiny_autoencoder, tiny_pipeline
from torch import nn

from layergen.benchmark import autoencoder_metrics
from layergen.data.shapes import ShapeScenes
from layergen.latent_layout import COMPONENTS, JOINT, PER_LAYER
from layergen.layers import (
    LayeredBatch,
    LayeredImageError,
    background_mask,
    composite_layers,
    from_unit,
    normalize_masks,
)
from layergen.models import (
    CompositeAutoencoder,
    JointAutoencoder,
    LayeredAutoencoder,
    LayeredAutoencoderInterface,
    LayeredDecoderOutput,
    LayeredDiagonalGaussian,
    LayeredEncoderOutput,
    PerLayerAutoencoder,
    autoencoder_class,
    load_autoencoder,
)
from layergen.pipelines import LayeredDiffusionPipeline
from layergen.pipelines.checkpoints import autoencoder_from_checkpoint

PROMPT = "a large red star on the left on a green plain background"
LAYERS = ["a green plain background", "a large red star", "a small blue circle"]


class PatchAutoencoder(LayeredAutoencoderInterface):
    """A newcomer's autoencoder: each layer's RGB + mask through one strided conv (f = 2) and
    back through one transposed conv; latents ``(B, L, C, h, w)``. It implements the
    interface and nothing else."""

    @register_to_config
    def __init__(self, latent_channels: int = 4, scaling_factor: float = 1.0) -> None:
        super().__init__()
        self.down = nn.Conv2d(4, 2 * latent_channels, 2, stride=2)
        self.up = nn.ConvTranspose2d(latent_channels, 4, 2, stride=2)

    @property
    def latent_layout(self):
        return PER_LAYER

    @property
    def downsample_factor(self) -> int:
        return 2

    def encode(self, images, masks, layer_valid=None):
        images, masks = self.check_layers(images, masks, layer_valid)
        x = torch.cat([images, from_unit(masks)], 2).flatten(0, 1)  # (B*L, 4, H, W)
        moments = self.down(x).unflatten(0, images.shape[:2])  # (B, L, 2C, h, w)
        return LayeredEncoderOutput(latent_dist=LayeredDiagonalGaussian(moments))

    def decode(self, latents, num_layers=None):
        self.check_latents(latents, num_layers)
        out = self.up(latents.flatten(0, 1)).unflatten(0, latents.shape[:2])  # (B, L, 4, H, W)
        images = out[:, :, :3].tanh()
        fg_masks = normalize_masks(out[:, 1:, 3:].sigmoid())
        masks = torch.cat([background_mask(fg_masks)[:, None], fg_masks], 1)
        return LayeredDecoderOutput(images=images, masks=masks, composite=composite_layers(images, masks))


def _builtin(name: str) -> LayeredAutoencoderInterface:
    torch.manual_seed(0)
    if name == "joint":
        return JointAutoencoder(num_foregrounds=2, **TINY_AE)
    if name == "joint_nosup":
        return JointAutoencoder(num_foregrounds=2, composite_head=False, **TINY_AE)
    if name == "composite":
        return CompositeAutoencoder(vae_config=dict(tiny_autoencoder("stacked").config.vae_config))
    if name == "stacked":
        return tiny_autoencoder("stacked")
    return PerLayerAutoencoder(**TINY_AE)


# name: (latent_layout, fixed_num_layers, has_composite_head, composite_only)
CONTRACTS = {
    "per_layer": (PER_LAYER, None, False, False),
    "joint": (JOINT, 3, True, False),
    "joint_nosup": (JOINT, 3, False, False),
    "stacked": (COMPONENTS, None, False, False),
    "composite": (JOINT, None, False, True),
}


def _layers(batch: int = 2, num_layers: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    images = torch.rand(batch, num_layers, 3, SIZE, SIZE) * 2 - 1
    masks = torch.rand(batch, num_layers, 1, SIZE, SIZE) / num_layers
    return images, masks


@pytest.mark.parametrize("name", list(CONTRACTS))
def test_builtin_autoencoders_keep_the_contract(name):
    model = _builtin(name).eval()
    layout, fixed, head, composite_only = CONTRACTS[name]
    assert isinstance(model, LayeredAutoencoderInterface)
    assert model.latent_layout == layout and model.fixed_num_layers == fixed
    assert model.has_composite_head == head and model.composite_only == composite_only
    assert model.per_layer == (layout == PER_LAYER) and model.downsample_factor == 2
    images, masks = _layers()
    with torch.no_grad():
        z = model.encode(images, masks).latent_dist.mode()
        assert z.shape == (2, model.latent_num_layers(3), 4, SIZE // 2, SIZE // 2)
        out = model.decode(z, num_layers=3)
        recon, posterior = model(images, masks, sample_posterior=False)
    assert out.images.shape == (2, 3, 3, SIZE, SIZE) and out.masks.shape == (2, 3, 1, SIZE, SIZE)
    assert (out.composite is None) == (layout == JOINT and not head and not composite_only)
    assert torch.allclose(recon.images, out.images, atol=1e-6)
    assert torch.equal(posterior.mode(), z)
    # the one shared input check
    with pytest.raises(LayeredImageError, match="masks"):
        model.encode(images, masks[:, :2])
    with pytest.raises(LayeredImageError, match="images"):
        model.encode(images[:, :, :1], masks)
    with pytest.raises(LayeredImageError, match="layer_valid"):
        model.encode(images, masks, torch.ones(2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="latents"):
        model.decode(z[0])


@pytest.mark.parametrize("name", list(CONTRACTS))
def test_padded_layers_do_not_reach_the_latents(name):
    """``layer_valid`` is honoured by every autoencoder: what padded layers hold is ignored."""
    model = _builtin(name).eval()
    images, masks = _layers()
    valid = torch.tensor([[True, True, True], [True, True, False]])
    noisy_images, noisy_masks = images.clone(), masks.clone()
    images[1, 2], masks[1, 2] = 0.0, 0.0
    with torch.no_grad():
        clean = model.encode(images, masks, valid).latent_dist.mode()
        noisy = model.encode(noisy_images, noisy_masks, valid).latent_dist.mode()
    assert torch.equal(clean, noisy)


def test_the_interface_is_abstract():
    class Incomplete(LayeredAutoencoderInterface):
        def encode(self, images, masks, layer_valid=None):
            raise NotImplementedError

    with pytest.raises(TypeError, match="abstract"):
        Incomplete()
    with pytest.raises(ValueError, match="not a layered autoencoder class"):
        autoencoder_class("Incomplete")


def test_sixth_autoencoder_encodes_decodes_and_scores_a_layered_batch():
    model = PatchAutoencoder().eval()
    batch = LayeredBatch.collate([small_scene(1), small_scene(2)])  # L = 3, one layer padded
    with torch.no_grad():
        recon, posterior = model(batch.images, batch.masks, batch.layer_valid, sample_posterior=False)
        z = model.encode(batch.images, batch.masks, batch.layer_valid).latent_dist.mode()
    assert z.shape == (2, 3, 4, SIZE // 2, SIZE // 2) and posterior.kl().shape == (2,)
    assert recon.images.shape == batch.images.shape and recon.masks.shape == batch.masks.shape
    assert torch.allclose(recon.masks.sum(1), torch.ones(()), atol=1e-5)
    with pytest.raises(ValueError, match="num_layers"):
        model.decode(z, num_layers=2)
    scenes = ShapeScenes(size=32, min_foregrounds=1, max_foregrounds=2, split="test", length=4)
    summary = autoencoder_metrics(model, [scenes[i] for i in range(4)], batch_size=2)
    assert summary["all"]["num_samples"] == 4
    assert {"psnr_composite", "mask_iou"} <= set(summary["all"])
    assert "psnr_composite_head" not in summary["all"]


def _run(pipe, **kwargs):
    return pipe(
        prompt=PROMPT, layer_prompts=LAYERS, num_inference_steps=2, guidance_scale=3.0,
        generator=torch.Generator().manual_seed(0), **kwargs,
    )


def test_sixth_autoencoder_in_the_pipeline_saves_and_loads(tmp_path):
    torch.manual_seed(0)
    pipe = tiny_pipeline(tmp_path, autoencoder=PatchAutoencoder().eval())
    assert pipe.fixed_num_layers is None and pipe.latent_factor == 2
    a = _run(pipe).images[0]
    assert a.num_layers == 3 and a.size == (SIZE, SIZE)
    edited = pipe.edit(
        small_scene(2), keep=[0], num_inference_steps=2, generator=torch.Generator().manual_seed(0)
    ).images[0]
    assert torch.equal(edited.background, small_scene(2).background)
    assert LayeredDiffusionPipeline.from_pipe(pipe).autoencoder is pipe.autoencoder

    pipe.save_pretrained(tmp_path / "pipe")
    index = json.loads((tmp_path / "pipe" / "model_index.json").read_text())
    assert index["autoencoder"] == ["layergen.pipelines.components", "PatchAutoencoder"]
    loaded = LayeredDiffusionPipeline.from_pretrained(tmp_path / "pipe")
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded.autoencoder) is PatchAutoencoder
    for key, value in pipe.autoencoder.state_dict().items():
        assert torch.equal(value, loaded.autoencoder.state_dict()[key])
    b = _run(loaded).images[0]
    assert torch.equal(a.foregrounds, b.foregrounds) and torch.equal(a.masks, b.masks)
    assert type(load_autoencoder(tmp_path / "pipe", subfolder="autoencoder")) is PatchAutoencoder


def test_the_old_name_of_the_joint_autoencoder_still_loads(tmp_path):
    """Pipelines, autoencoders, checkpoints and configs saved as ``LayeredAutoencoder``."""
    assert LayeredAutoencoder is JointAutoencoder
    assert autoencoder_class("LayeredAutoencoder") is JointAutoencoder
    pipe = tiny_pipeline(tmp_path, layout="joint")
    pipe.save_pretrained(tmp_path / "pipe")
    index_file = tmp_path / "pipe" / "model_index.json"
    config_file = tmp_path / "pipe" / "autoencoder" / "config.json"
    index, config = json.loads(index_file.read_text()), json.loads(config_file.read_text())
    assert index["autoencoder"][1] == config["_class_name"] == "JointAutoencoder"
    index["autoencoder"][1] = config["_class_name"] = "LayeredAutoencoder"
    index_file.write_text(json.dumps(index))
    config_file.write_text(json.dumps(config))
    loaded = LayeredDiffusionPipeline.from_pretrained(tmp_path / "pipe")
    assert type(loaded.autoencoder) is JointAutoencoder and loaded.fixed_num_layers == 2
    for key, value in pipe.autoencoder.state_dict().items():
        assert torch.equal(value, loaded.autoencoder.state_dict()[key])
    assert type(load_autoencoder(tmp_path / "pipe" / "autoencoder")) is JointAutoencoder
    # a Lightning checkpoint whose hyper-parameters name the old class path
    init_args = {k: v for k, v in config.items() if not k.startswith("_") and k != "scaling_factor"}
    torch.save(
        {
            "hyper_parameters": {
                "autoencoder": {"class_path": "layergen.models.LayeredAutoencoder", "init_args": init_args}
            },
            "state_dict": {f"autoencoder.{k}": v for k, v in pipe.autoencoder.state_dict().items()},
        },
        tmp_path / "ae.ckpt",
    )
    assert type(autoencoder_from_checkpoint(tmp_path / "ae.ckpt")) is JointAutoencoder
