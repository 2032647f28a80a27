"""Quality classifiers: freezing, input construction, threshold selection, training, export."""

from __future__ import annotations

import json
import os

import lightning.pytorch as pl
import pytest
import torch

from layergen.data.labels import (
    LabelledSamples,
    QualityLabelsDataModule,
    append_label,
    assign_split,
    read_labels,
)
from layergen.data.shapes import ShapeScenes
from layergen.data.shards import write_shards
from layergen.lit.classifier import QualityClassifierModule
from layergen.models.quality_classifier import (
    QualityClassifier,
    select_threshold,
    threshold_report,
    widen_first_conv,
)
from layergen.synthesis.backends.quality import ClassifierScorer


def _batch(size: int = 4, resolution: int = 32) -> dict:
    return {
        "images": torch.rand(size, 3, resolution, resolution) * 2 - 1,
        "masks": (torch.rand(size, 1, resolution, resolution) > 0.5).float(),
        "labels": torch.tensor([1.0, 0.0, 1.0, 0.0])[:size],
    }


@pytest.mark.parametrize("kind", ["mask", "inpaint"])
def test_only_the_last_layer_changes_after_a_training_step(kind):
    module = QualityClassifierModule(kind=kind, image_size=32, weights=None, learning_rate=0.1)
    assert module.model.in_channels == (4 if kind == "mask" else 3)
    module.train()
    assert not module.model.features.training  # frozen backbone stays in eval mode
    frozen = {
        name: value.clone()
        for name, value in module.model.state_dict().items()
        if not name.startswith("head.")
    }
    head = {name: value.clone() for name, value in module.model.head.state_dict().items()}
    optimizer = module.configure_optimizers()
    loss = module.training_step(_batch(), 0)
    loss.backward()
    optimizer.step()
    after = module.model.state_dict()
    for name, value in frozen.items():  # weights and BatchNorm running statistics
        assert torch.equal(value, after[name]), name
    assert not torch.equal(head["weight"], module.model.head.weight)
    trainable = [name for name, p in module.model.named_parameters() if p.requires_grad]
    assert trainable == ["head.weight", "head.bias"]


def test_mask_classifier_takes_the_image_and_the_mask_as_four_channels():
    model = QualityClassifier(kind="mask", image_size=8)
    assert model.features[0][0].in_channels == 4 and model.in_channels == 4
    image = torch.rand(1, 3, 8, 8) * 2 - 1
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., :4] = 1.0
    inputs = model.prepare_inputs(image, mask)
    assert inputs.shape == (1, 4, 8, 8)
    pixels = inputs * model.std + model.mean  # back to [0, 1]
    assert torch.allclose(pixels[:, :3], (image + 1) / 2, atol=1e-5)  # the whole image I
    assert torch.allclose(pixels[:, 3:], mask, atol=1e-5)  # and its mask m
    with pytest.raises(ValueError, match="masks"):
        model.prepare_inputs(image)
    inpaint = QualityClassifier(kind="inpaint", image_size=8)  # paper: the inpainted image
    assert inpaint.in_channels == 3
    assert inpaint.prepare_inputs(image).shape == (1, 3, 8, 8)


def _calibrated(model: QualityClassifier, images: torch.Tensor, masks: torch.Tensor):
    """Set the BatchNorm statistics of a random backbone from one batch.

    With random weights and the default statistics the activations of EfficientNet-b0 vanish
    (about 1e-15 at the last stage), so every input would get the same score.
    """
    for layer in model.features.modules():
        if isinstance(layer, torch.nn.BatchNorm2d):
            layer.momentum = 1.0
    model.features.train()
    with torch.no_grad():
        model.features(model.prepare_inputs(images, masks))
    return model.eval()


def test_mask_score_depends_on_the_image_and_on_the_mask():
    torch.manual_seed(0)
    image = torch.rand(2, 3, 32, 32) * 2 - 1
    other_image = torch.rand(2, 3, 32, 32) * 2 - 1
    mask = torch.zeros(2, 1, 32, 32)
    mask[..., 8:24, 8:24] = 1.0
    other_mask = torch.zeros(2, 1, 32, 32)
    other_mask[..., :4, :4] = 1.0
    model = QualityClassifier(kind="mask", image_size=32)
    model = _calibrated(model, torch.cat([image, other_image]), torch.cat([mask, other_mask]))
    score = model(image, mask)
    assert not torch.allclose(model(other_image, mask), score)  # RGB under a fixed mask
    assert not torch.allclose(model(image, other_mask), score)  # mask under a fixed image


def test_widened_first_conv_keeps_the_rgb_weights(tmp_path):
    from torchvision.models import efficientnet_b0

    source = efficientnet_b0(weights=None)
    torch.save(source.state_dict(), tmp_path / "b0.pth")
    rgb = source.features[0][0].weight
    model = QualityClassifier(kind="mask", image_size=32)
    model.load_backbone(str(tmp_path / "b0.pth"))
    weight = model.features[0][0].weight
    assert weight.shape == (rgb.shape[0], 4, *rgb.shape[2:])
    assert torch.equal(weight[:, :3], rgb)
    assert torch.allclose(weight[:, 3], rgb.mean(dim=1))  # mask filter: mean of RGB filters
    assert torch.equal(
        model.features[1][0].block[0][0].weight, source.features[1][0].block[0][0].weight
    )
    assert not model.features[0][0].weight.requires_grad
    assert torch.equal(widen_first_conv(rgb, 3), rgb)


def test_old_three_channel_mask_classifier_is_refused(tmp_path):
    old = QualityClassifier(kind="inpaint", image_size=32)  # a 3-channel backbone
    old.save_pretrained(str(tmp_path / "old"))
    config_path = tmp_path / "old" / "config.json"
    config = json.loads(config_path.read_text())
    config.update(kind="mask", mask_input="cutout")  # as exported by the cut-out version
    config_path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="Retrain"):
        QualityClassifier.from_pretrained(str(tmp_path / "old"))
    with pytest.raises(ValueError, match="Retrain"):
        ClassifierScorer(str(tmp_path / "old"))
    # a 3-channel state dict (e.g. a Lightning checkpoint) into the 4-channel classifier
    module = QualityClassifierModule(kind="mask", image_size=32, weights=None)
    state = {f"model.{key}": value for key, value in old.state_dict().items()}
    with pytest.raises(RuntimeError, match="Retrain"):
        module.load_state_dict(state)


@pytest.mark.parametrize("kind", ["mask", "inpaint"])
def test_configs_train_for_the_papers_100_epochs(kind):
    import yaml

    config = os.path.join(os.path.dirname(__file__), "..", "configs", f"classifier_{kind}.yaml")
    with open(config) as handle:
        settings = yaml.safe_load(handle)
    # "After the classifiers are well-trained after 100 epochs" (Text2Layer sec. III-D)
    assert settings["trainer"]["max_epochs"] == 100
    assert settings["model"]["init_args"]["kind"] == kind
    if kind == "mask":
        assert settings["model"]["init_args"]["mask_input"] == "concat"


def test_select_threshold_by_hand():
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    labels = torch.tensor([1, 1, 0, 1, 1, 0])
    # kept sets from the top: precision 1, 1, 2/3, 3/4, 4/5, 4/6
    assert select_threshold(scores, labels, 1.0) == pytest.approx(0.8)
    assert select_threshold(scores, labels, 0.75) == pytest.approx(0.5)
    assert select_threshold(scores, labels, 0.5) == pytest.approx(0.4)
    report = threshold_report(scores, labels, 0.5)
    assert report["precision"] == pytest.approx(0.8) and report["recall"] == pytest.approx(1.0)


def test_select_threshold_ties_and_unreachable_target():
    scores = torch.tensor([0.9, 0.9, 0.1])
    labels = torch.tensor([1, 0, 0])
    # 0.9 keeps both tied samples (precision 1/2), 0.1 keeps all (1/3); 1.0 is unreachable
    assert select_threshold(scores, labels, 1.0) == pytest.approx(0.9)
    assert select_threshold(scores, labels, 0.4) == pytest.approx(0.9)
    assert select_threshold(scores, labels, 0.3) == pytest.approx(0.1)


def test_missing_imagenet_weights_give_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="IMAGENET1K_V1 weights not found"):
        QualityClassifierModule(image_size=32, weights="IMAGENET1K_V1")
    with pytest.raises(FileNotFoundError, match="not a file"):
        QualityClassifier().load_backbone("no-such-weights")


def test_backbone_loads_from_a_state_dict_path(tmp_path):
    from torchvision.models import efficientnet_b0

    source = efficientnet_b0(weights=None)
    torch.save(source.state_dict(), tmp_path / "b0.pth")
    model = QualityClassifier(kind="inpaint", image_size=32)
    model.load_backbone(str(tmp_path / "b0.pth"))
    assert torch.equal(model.features[0][0].weight, source.features[0][0].weight)


@pytest.fixture
def labelled(tmp_path):
    shards = write_shards(
        ShapeScenes(size=32, length=12, seed=0), tmp_path / "shards", shard_size=6
    )
    labels = tmp_path / "labels.jsonl"
    for index in range(12):
        key = f"{index:09d}"
        append_label(labels, key, "mask", index % 2, "val" if index >= 8 else "train")
    append_label(labels, "000000000", "mask", None, "train")  # skipped later: dropped
    return shards, str(labels)


def test_labels_reader_and_dataset(labelled, tmp_path):
    shards, labels = labelled
    assert set(read_labels(labels, "mask", "train")) == {f"{i:09d}" for i in range(1, 8)}
    assert read_labels(labels, "inpaint") == {}
    data = LabelledSamples(shards, labels, "mask", "val", image_size=16)
    item = data[0]
    assert item["images"].shape == (3, 16, 16) and item["masks"].shape == (1, 16, 16)
    assert sorted(data.keys) == [f"{i:09d}" for i in range(8, 12)]
    assert assign_split("abc") == assign_split("abc")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"key": "a", "kind": "mask", "label": 3, "split": "train"}) + "\n")
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        read_labels(bad, "mask")


def test_fit_chooses_and_exports_the_threshold(labelled, tmp_path):
    shards, labels = labelled
    module = QualityClassifierModule(kind="mask", image_size=32, weights=None, target_precision=0.5)
    data = QualityLabelsDataModule(shards, labels, kind="mask", image_size=32, batch_size=4)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, datamodule=data)
    metrics = trainer.callback_metrics
    assert {"val/accuracy", "val/auroc", "val/precision", "val/recall", "val/threshold"} <= set(
        metrics
    )
    threshold = float(metrics["val/threshold"])
    assert module.model.config.threshold == pytest.approx(threshold)

    module.export_pretrained(str(tmp_path / "export"))
    reloaded = QualityClassifier.from_pretrained(str(tmp_path / "export"))
    assert reloaded.config.threshold == pytest.approx(threshold)
    assert torch.equal(reloaded.head.weight, module.model.head.weight)
    scorer = ClassifierScorer(str(tmp_path / "export"))
    assert scorer.threshold == pytest.approx(threshold)
    scores = scorer(torch.zeros(2, 3, 32, 32), torch.ones(2, 1, 32, 32), None)
    assert scores.shape == (2,) and bool(((scores >= 0) & (scores <= 1)).all())


@pytest.mark.parametrize("kind", ["mask", "inpaint"])
def test_shipped_config_trains_and_exports(labelled, tmp_path, monkeypatch, kind):
    from layergen.cli import cli_main

    shards, labels = labelled
    if kind == "inpaint":  # the fixture labelled the mask kind only
        for line in open(labels).read().splitlines():
            entry = json.loads(line)
            append_label(labels, entry["key"], "inpaint", entry["label"], entry["split"])
    config = os.path.join(os.path.dirname(__file__), "..", "configs", f"classifier_{kind}.yaml")
    monkeypatch.chdir(tmp_path)
    cli_main(
        [
            "fit",
            "--config",
            config,
            "--model.init_args.weights=null",
            "--model.init_args.image_size=32",
            f"--data.init_args.shards=[{shards[0]}, {shards[1]}]",
            f"--data.init_args.labels={labels}",
            "--data.init_args.image_size=32",
            "--data.init_args.batch_size=4",
            "--data.init_args.num_workers=0",
            "--trainer.max_steps=1",
            "--trainer.enable_progress_bar=false",
            f"--trainer.default_root_dir={tmp_path}",
        ]
    )
    exported = QualityClassifier.from_pretrained(str(tmp_path / "classifiers" / kind))
    assert exported.config.kind == kind
