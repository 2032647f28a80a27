import pytest
import torch
from diffusers.configuration_utils import register_to_config

from layergen.benchmark import (
    ForegroundSegmenter,
    ShapeProbe,
    autoencoder_metrics,
    load_or_train_probe,
    load_or_train_segmenter,
    probe_accuracy,
    probe_data,
    psnr,
    score_generated,
    segmenter_iou,
)
from layergen.benchmark import probe as probe_module
from layergen.benchmark.cli import main
from layergen.benchmark.probe import COLOR_NAMES, FAMILY_NAMES, SHAPE_NAMES
from layergen.benchmark.segmenter import segmenter_data
from layergen.data.shapes import ShapeScenes
from layergen.latent_layout import PER_LAYER
from layergen.models import (
    LayeredAutoencoderInterface,
    LayeredDecoderOutput,
    LayeredDiagonalGaussian,
    LayeredEncoderOutput,
)


def test_probe_data_labels_follow_metadata():
    scenes = ShapeScenes(size=32, min_foregrounds=2, max_foregrounds=2, length=2)
    data = probe_data(scenes, 32)
    assert data.inputs.shape == (6, 4, 32, 32)  # 2 scenes x (2 foregrounds + background)
    meta = scenes[0].metadata
    assert data.shape[:2].tolist() == [SHAPE_NAMES.index(f["shape"]) for f in meta["foregrounds"]]
    assert data.color[1].item() == COLOR_NAMES.index(meta["foregrounds"][1]["color"])
    assert data.shape[2].item() == -1 and data.family[2].item() == FAMILY_NAMES.index(meta["background"]["family"])
    assert data.bg_colors[2].sum().item() == len(meta["background"]["colors"])
    assert data.bg_colors[:2].sum().item() == 0 and data.family[:2].eq(-1).all()
    assert data.inputs[2, 3].eq(1).all()  # background rows carry an all-ones mask channel


def test_probe_output_shapes():
    probe = ShapeProbe(image_size=32, channels=(8, 16))
    out = probe(torch.randn(3, 4, 48, 48))  # resized to the probe's side
    assert out.features.shape == (3, 16) and out.shape.shape == (3, 8)
    assert out.color.shape == (3, 11) and out.size.shape == (3, 2)
    assert out.family.shape == (3, 7) and out.bg_colors.shape == (3, 11)


def test_cache_round_trip(tmp_path, monkeypatch):
    kwargs = dict(num_scenes=4, steps=2, batch_size=4)
    probe = load_or_train_probe(32, 2, 0, tmp_path, **kwargs)
    segmenter = load_or_train_segmenter(32, 2, 0, tmp_path, num_scenes=4, steps=2, batch_size=4)
    assert (tmp_path / "probe-32px-2fg-seed0" / "diffusion_pytorch_model.safetensors").is_file()

    def fail(**_):
        raise AssertionError("cached model was retrained")

    monkeypatch.setattr(probe_module, "train_probe", fail)
    again = load_or_train_probe(32, 2, 0, tmp_path)
    x = torch.randn(2, 4, 32, 32)
    assert torch.allclose(again(x).features, probe(x).features, atol=1e-6)
    loaded = load_or_train_segmenter(32, 2, 0, tmp_path)
    y = torch.randn(1, 3, 32, 32)
    assert torch.allclose(loaded(y), segmenter(y), atol=1e-6)


def test_psnr_hand_made():
    a = torch.zeros(1, 3, 4, 4)
    b = a.clone()
    b[..., 0, 0] = 1.0  # one pixel off by 0.5 in [0, 1]: mse = 0.25 / 16
    assert psnr(b, a).item() == pytest.approx(10 * torch.log10(torch.tensor(64.0)).item(), rel=1e-5)
    assert psnr(a, a).item() == 100.0
    weight = torch.zeros(1, 1, 4, 4)
    weight[..., 1:, :] = 1  # the wrong pixel is outside the weighted region
    assert psnr(b, a, weight).item() == 100.0


class IdentityAutoencoder(LayeredAutoencoderInterface):
    """Encodes a layered batch as itself: a perfect per-layer autoencoder (latents are the
    layers' RGB and mask, ``(B, L, 4, H, W)``).

    Padded layers (all-zero masks) decode to the mask ``pad_mask``, as an untrained decoder
    may: they are not part of the scene and must not reach the scores.
    """

    @register_to_config
    def __init__(self, pad_mask: float = 0.0, latent_channels: int = 4, scaling_factor: float = 1.0):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    latent_layout = PER_LAYER
    downsample_factor = 1

    def encode(self, images, masks, layer_valid=None):
        images, masks = self.check_layers(images, masks, layer_valid)
        z = torch.cat([images, masks], dim=2)  # (B, L, 4, H, W), zero log-variance
        return LayeredEncoderOutput(LayeredDiagonalGaussian(torch.cat([z, torch.zeros_like(z)], 2)))

    def decode(self, latents, num_layers=None):
        self.check_latents(latents, num_layers)
        masks = latents[:, :, 3:].clone()
        padded = masks.flatten(2).amax(2) == 0  # (B, L)
        masks[padded] = self.config.pad_mask
        return LayeredDecoderOutput(images=latents[:, :, :3], masks=masks)


@pytest.mark.parametrize("pad_mask", [0.0, 0.5])
def test_autoencoder_metrics_perfect_reconstruction(pad_mask):
    scenes = ShapeScenes(size=32, min_foregrounds=1, max_foregrounds=3, length=6)
    model = IdentityAutoencoder(pad_mask)
    summary = autoencoder_metrics(model, [scenes[i] for i in range(6)], batch_size=4)
    assert summary["all"]["num_samples"] == 6
    assert summary["all"]["psnr_composite"] > 60 and summary["all"]["psnr_background"] == 100.0
    assert summary["all"]["mask_iou"] == 1.0 and summary["all"]["mask_mae"] == 0.0
    assert sum(summary[g]["num_samples"] for g in ("2", "3", "4") if g in summary) == 6
    # every group, including the scenes padded with layers they do not have
    assert all(summary[g]["psnr_composite"] > 60 for g in ("2", "3", "4") if g in summary)


def test_score_generated_rejects_layer_mismatch():
    scenes = ShapeScenes(size=32, min_foregrounds=1, max_foregrounds=1, length=1)
    other = ShapeScenes(size=32, min_foregrounds=2, max_foregrounds=2, length=1)
    probe, seg = ShapeProbe(channels=(8, 16)), ForegroundSegmenter(channels=(4, 8, 8))
    with pytest.raises(ValueError, match="layers"):
        score_generated([other[0]], [scenes[0]], probe, seg)


def test_score_generated_composite_only_leaves_out_layer_metrics():
    scenes = ShapeScenes(size=32, min_foregrounds=1, max_foregrounds=2, split="test", length=6)
    refs = [scenes[i] for i in range(6)]
    probe, seg = ShapeProbe(channels=(8, 16)), ForegroundSegmenter(channels=(4, 8, 8))
    full = score_generated(refs, refs, probe, seg)
    composite = score_generated(refs, refs, probe, seg, composite_only=True)
    assert {"layer_adherence", "bg_family_acc", "mask_iou_segmenter", "fd_layers"} <= set(full["all"])
    assert set(composite["all"]) == {"num_samples", "fd_composite"}
    assert composite["all"]["fd_composite"] == full["all"]["fd_composite"]
    assert composite["all"]["num_samples"] == 6


@pytest.mark.slow
def test_probe_and_segmenter_reach_accuracy(tmp_path, capsys):
    """Trains the benchmark's probe and segmenter with their defaults (a few minutes on 1 CPU)."""
    probe = load_or_train_probe(32, 2, 0, tmp_path)
    held_out = ShapeScenes(size=32, min_foregrounds=1, max_foregrounds=2, split="val", length=300)
    scores = probe_accuracy(probe, probe_data(held_out, 32))
    print(scores)
    for attribute in ("shape", "color", "size", "foreground", "family", "bg_colors"):
        assert scores[attribute] >= 0.95, (attribute, scores)
    segmenter = load_or_train_segmenter(32, 2, 0, tmp_path)
    assert segmenter_iou(segmenter, *segmenter_data(held_out)) >= 0.8
    # the ground truth scores (almost) perfectly on its own benchmark
    test = ShapeScenes(size=32, min_foregrounds=1, max_foregrounds=2, split="test", length=40)
    refs = [test[i] for i in range(40)]
    summary = score_generated(refs, refs, probe, segmenter)["all"]
    assert summary["layer_adherence"] >= 0.95 and summary["mask_iou_segmenter"] >= 0.8
    assert summary["fd_layers"] == pytest.approx(0.0, abs=1e-3)
    assert main(["--model", "ground-truth", "--num-samples", "16", "--cache-dir", str(tmp_path)]) == 0
    assert "| all | 16 |" in capsys.readouterr().out
