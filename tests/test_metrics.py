import json
from dataclasses import replace

import pytest
import torch
from torch import nn

from layergen.apps.evaluation import score
from layergen.data.shapes import ShapeScenes
from layergen.layers import LayeredImage
from layergen.metrics import (
    Breakdown,
    CLIPScorer,
    FidelityMetrics,
    MissingWeightsError,
    clean_resize,
    foreground_union,
    layer_mask_ious,
    layer_views,
    markdown_table,
    mask_iou,
)
from layergen.metrics.fid import InceptionFeatures


class TinyFeatures(nn.Module):
    """A fixed random conv + pooling: (N, 3, 16, 16) in [0, 1] -> (N, 8)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, stride=2)
        self.num_features = 8

    def forward(self, x):
        return torch.tanh(self.conv(x)).mean((2, 3))


def _images(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    base = torch.linspace(-1, 1, 32).view(1, 1, 1, 32).expand(n, 3, 32, 32)
    return (base * torch.rand(n, 3, 1, 1, generator=g) + 0.1 * torch.randn(n, 3, 32, 32, generator=g)).clamp(-1, 1)


def test_fid_self_is_zero_and_grows_with_noise():
    real = _images(64, 0)
    values = []
    for sigma in (0.0, 0.2, 0.6):
        metric = FidelityMetrics(feature=TinyFeatures(), image_size=16, compute_kid=True, kid_subset_size=64)
        noisy = (real + sigma * torch.randn(real.shape, generator=torch.Generator().manual_seed(1))).clamp(-1, 1)
        metric.update(real, real=True)
        metric.update(noisy, real=False)
        values.append(metric.compute()["all"])
    assert abs(values[0]["fid"]) < 1e-3
    assert values[0]["fid"] < values[1]["fid"] < values[2]["fid"]
    assert values[0]["kid_mean"] < values[1]["kid_mean"] < values[2]["kid_mean"]


def test_kid_same_distribution_near_zero():
    # KID is an unbiased MMD estimate: ~0 for two independent draws of one distribution.
    def kid(fake):
        metric = FidelityMetrics(feature=TinyFeatures(), image_size=16, compute_kid=True, kid_subset_size=32)
        metric.update(_images(64, 0), real=True)
        metric.update(fake, real=False)
        return metric.compute()["all"]["kid_mean"]

    same = kid(_images(64, 7))
    noisy = kid((_images(64, 7) + 0.6 * torch.randn(64, 3, 32, 32)).clamp(-1, 1))
    assert abs(same) < 0.5 * noisy


def test_fid_groups_and_small_groups_skipped():
    metric = FidelityMetrics(feature=TinyFeatures(), image_size=16)
    images = _images(6, 0)
    groups = ["2", "2", "2", "3", "3", "4"]
    metric.update(images, real=True, groups=groups)
    metric.update(images, real=False, groups=groups)
    result = metric.compute()
    assert set(result) == {"all", "2", "3"}  # "4" has a single image
    with pytest.raises(ValueError, match="groups"):
        metric.update(images, real=True, groups=["2"])


def test_fid_reference_is_the_source_image_where_there_is_one():
    class Recording:
        def __init__(self) -> None:
            self.real = []

        def update(self, images, real, groups=None):
            if real:
                self.real.append(images)

        def compute(self):
            return {}

    scenes = ShapeScenes(size=32, length=2)
    photo = replace(scenes[0], image=torch.full((3, 32, 32), 0.5))
    fidelity = Recording()
    score([scenes[0], scenes[1]], [photo, scenes[1]], fidelity=fidelity)
    (real,) = fidelity.real
    assert torch.equal(real, torch.stack([photo.image, scenes[1].composite()]))


def test_clean_resize_quantises_and_resizes():
    x = torch.full((1, 3, 8, 8), 0.001)  # -> 0.5005 in [0, 1] -> 128/255 after quantisation
    out = clean_resize(x, 8)
    assert torch.allclose(out, torch.full_like(out, 128 / 255))
    assert clean_resize(x, 20).shape == (1, 3, 20, 20)


@pytest.mark.parametrize(("shape", "size"), [((2, 3, 64, 48), 20), ((1, 3, 11, 13), 40)])
def test_clean_resize_matches_pil_float_bicubic(shape, size):
    # clean-fid's "clean" resizer: PIL BICUBIC on each uint8 channel as a float image, no
    # quantisation after the resize.
    import numpy as np
    from PIL import Image

    levels = np.random.default_rng(0).integers(0, 256, shape).astype(np.float32)
    expected = np.stack([
        np.stack([np.asarray(Image.fromarray(c).resize((size, size), Image.Resampling.BICUBIC))
                  for c in image])
        for image in levels
    ]).clip(0, 255) / 255
    out = clean_resize(torch.from_numpy(levels) / 127.5 - 1, size)
    assert out.shape == (shape[0], 3, size, size) and out.dtype == torch.float32
    assert torch.allclose(out, torch.from_numpy(expected), atol=1e-5, rtol=0)
    assert (out * 255 - (out * 255).round()).abs().max() > 0.1  # not re-quantised


def test_inception_missing_weights_error(tmp_path, monkeypatch):
    monkeypatch.delenv("LAYERGEN_INCEPTION_WEIGHTS", raising=False)
    with pytest.raises(MissingWeightsError, match="weights-inception-2015-12-05"):
        InceptionFeatures(tmp_path / "missing.pth")


def test_mask_iou_hand_made():
    a = torch.zeros(1, 1, 4, 4)
    b = torch.zeros(1, 1, 4, 4)
    a[..., :2, :] = 0.9  # 8 pixels
    b[..., :, :2] = 0.8  # 8 pixels, 4 shared
    assert mask_iou(a, b).item() == pytest.approx(4 / 12)
    assert mask_iou(a, a).item() == 1.0
    assert mask_iou(torch.zeros_like(a), torch.zeros_like(a)).item() == 1.0  # both empty
    assert mask_iou(a * 0.5, a).item() == 0.0  # 0.45 is below the threshold
    with pytest.raises(ValueError, match="shapes differ"):
        mask_iou(a, b[..., :2])


def _layered(k: int = 2, size: int = 8) -> LayeredImage:
    masks = torch.zeros(k, 1, size, size)
    for i in range(k):
        masks[i, :, i * 2:(i * 2) + 3, :] = 1.0
    if k > 1:
        masks[1] *= 1 - masks[0]
    fgs = torch.stack([torch.full((3, size, size), 0.5 * (i + 1) - 0.5) for i in range(k)])
    prompts = ["the background"] + [f"l{i}" for i in range(k)]
    return LayeredImage(torch.full((3, size, size), -1.0), fgs, masks, "p", prompts)


def test_foreground_union_and_layer_ious():
    image = _layered()
    union = foreground_union(image)
    assert union.shape == (1, 8, 8) and union[0, :5].eq(1).all() and union[0, 5:].eq(0).all()
    assert torch.equal(layer_mask_ious(image, image), torch.ones(2))
    with pytest.raises(ValueError, match="layer counts differ"):
        layer_mask_ious(image, _layered(k=1))


def test_layer_views_on_grey():
    image = _layered()
    views = layer_views(image)
    assert views.shape == (3, 3, 8, 8)
    assert torch.equal(views[0], image.background)
    assert views[1, :, 0, 0].eq(0.0).all()  # foreground 1 (value 0) inside its mask
    assert views[2, :, 3, 0].eq(0.5).all() and views[2, :, 7, 0].eq(0.0).all()  # grey outside


def test_breakdown_and_table():
    bd = Breakdown()
    for n, v in [(2, 1.0), (2, 3.0), (3, 5.0)]:
        bd.count(n)
        bd.add("clip", v, n)
    bd.add("iou", torch.tensor([0.5, float("nan")]), 3)
    bd.merge({"all": {"fid": 7.0}, "2": {"fid": 1.0}})
    s = bd.summary()
    assert list(s) == ["all", "2", "3"]
    assert s["all"]["clip"] == 3.0 and s["2"]["clip"] == 2.0 and s["3"]["iou"] == 0.5
    assert s["2"]["fid"] == 1.0 and s["3"]["num_samples"] == 1
    table = markdown_table(s, ["num_samples", "fid", "clip"])
    assert "| 3 | 1 | n/a | 5.000 |" in table
    json.dumps(s)


def _save_tiny_clip(path):
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPProcessor,
        CLIPTokenizer,
    )

    chars = "abcdefghijklmnopqrstuvwxyz"
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in chars:
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    (path / "vocab.json").write_text(json.dumps(vocab))
    (path / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(path / "vocab.json"), str(path / "merges.txt"))
    image_processor = CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16})
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=32, bos_token_id=0, eos_token_id=1,
                         pad_token_id=1),
        vision_config=dict(hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
                           image_size=16, patch_size=8),
        projection_dim=8,
    )
    CLIPModel(config).save_pretrained(path)
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(path)


def test_clip_score_matches_hand_computation(tmp_path):
    _save_tiny_clip(tmp_path)
    scorer = CLIPScorer(tmp_path)
    images = _images(3, 0)
    texts = ["a red star", "a blue circle", "the background"]
    scores = scorer.score(images, texts)
    img = scorer.image_embeddings(images)
    txt = scorer.text_embeddings(texts)
    expected = 100 * (img * txt).sum(-1).clamp(min=0)
    assert torch.allclose(scores, expected)
    assert torch.allclose(img.norm(dim=-1), torch.ones(3))
    assert ((scores >= 0) & (scores <= 100)).all()
    # identical inputs give identical scores; the same image with the same text twice
    assert scorer.score(images[:1].repeat(2, 1, 1, 1), texts[:1] * 2).unique().numel() == 1
    per_layer = scorer.layer_scores([_layered(2), _layered(1)])
    assert [s.shape[0] for s in per_layer] == [3, 2]
    with pytest.raises(ValueError, match="texts"):
        scorer.score(images, texts[:1])


class _ProjectedFeatures(nn.Module):
    """A CLIPModel whose ``get_*_features`` return tensors, as torchmetrics 1.9 expects
    (transformers 5 returns model outputs holding them in ``pooler_output``)."""

    def __init__(self, clip) -> None:
        super().__init__()
        self.clip = clip
        self.config = clip.config

    def get_image_features(self, pixel_values):
        return self.clip.get_image_features(pixel_values=pixel_values).pooler_output

    def get_text_features(self, input_ids, attention_mask):
        output = self.clip.get_text_features(input_ids=input_ids, attention_mask=attention_mask)
        return output.pooler_output


def test_clip_score_matches_torchmetrics(tmp_path):
    from torchmetrics.functional.multimodal import clip_score

    _save_tiny_clip(tmp_path)
    scorer = CLIPScorer(tmp_path)
    levels = torch.round((_images(4, 0) + 1) * 127.5).to(torch.uint8)  # (4, 3, 32, 32)
    texts = ["a small yellow triangle", "a blue circle", "the background", "a green square"]
    ours = scorer.score(levels.float() / 127.5 - 1, texts)
    # torchmetrics averages over its batch: one call per pair gives per-sample scores.
    reference = torch.stack([
        clip_score(image, text, lambda: (_ProjectedFeatures(scorer.model), scorer.processor))
        for image, text in zip(levels, texts)
    ]).detach()
    assert torch.allclose(ours, reference, atol=1e-2, rtol=0)  # cosines agree to 1e-4
    assert (reference == 0).any() and (reference > 1).sum() >= 2  # clamped and positive pairs


def test_clip_missing_model_error(tmp_path):
    with pytest.raises(MissingWeightsError, match="clip-vit-large-patch14"):
        CLIPScorer(tmp_path / "nope")
