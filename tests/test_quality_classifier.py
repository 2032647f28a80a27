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
from layergen.models.quality_classifier import QualityClassifier, select_threshold, threshold_report
from layergen.synthesis.backends.quality import ClassifierScorer


def _batch(size: int = 4, resolution: int = 32) -> dict:
    return {
        "images": torch.rand(size, 3, resolution, resolution) * 2 - 1,
        "masks": (torch.rand(size, 1, resolution, resolution) > 0.5).float(),
        "labels": torch.tensor([1.0, 0.0, 1.0, 0.0])[:size],
    }


def test_only_the_last_layer_changes_after_a_training_step():
    module = QualityClassifierModule(kind="mask", image_size=32, weights=None, learning_rate=0.1)
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


def test_mask_enters_as_a_cutout_over_grey():
    model = QualityClassifier(kind="mask", image_size=8)
    image = torch.full((1, 3, 8, 8), 1.0)  # white
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., :4] = 1.0
    pixels = model.prepare_inputs(image, mask) * model.std + model.mean  # back to [0, 1]
    assert torch.allclose(pixels[..., :3], torch.ones(1, 3, 8, 3), atol=1e-5)
    assert torch.allclose(pixels[..., 5:], torch.full((1, 3, 8, 3), 0.5), atol=1e-5)
    with pytest.raises(ValueError, match="masks"):
        model.prepare_inputs(image)
    side = QualityClassifier(kind="mask", mask_input="side_by_side", image_size=8)
    assert side.prepare_inputs(image, mask).shape == (1, 3, 8, 8)


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
    model = QualityClassifier(image_size=32)
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
