"""LayeredAutoencoderModule through LightningCLI: fit, resume, export, DDP, the full-size config."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from layergen.cli import cli_main
from layergen.data.shapes import ShapeScenes
from layergen.data.shards import write_shards
from layergen.layers import LayeredBatch
from layergen.lit.autoencoder import LayeredAutoencoderModule
from layergen.lit.callbacks import layered_grid
from layergen.metrics.mask_iou import mask_iou
from layergen.models import JointAutoencoder, PerLayerAutoencoder, load_autoencoder

ROOT = Path(__file__).resolve().parents[1]
TINY_AE = {
    "latent_channels": 4,
    "block_out_channels": [8, 16],
    "layers_per_block": 1,
    "norm_num_groups": 4,
    "mid_block_add_attention": False,
}


def _config(tmp_path: Path, autoencoder: dict, **model) -> Path:
    """A tiny CPU config: 32x32 synthetic scenes, batch 2, 2 steps."""
    config = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu",
            "devices": 1,
            "max_steps": 2,
            "limit_val_batches": 1,
            "val_check_interval": 2,
            "check_val_every_n_epoch": None,
            "log_every_n_steps": 1,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "default_root_dir": str(tmp_path / "run"),
            "callbacks": [
                {
                    "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                    "init_args": {
                        "dirpath": str(tmp_path / "ckpt"),
                        "save_last": True,
                        "every_n_train_steps": 1,
                    },
                },
                {"class_path": "layergen.lit.callbacks.SavePretrained"},
                {"class_path": "layergen.lit.callbacks.LayeredImageLogger"},
            ],
        },
        "model": {
            "class_path": "layergen.lit.autoencoder.LayeredAutoencoderModule",
            "init_args": {
                "autoencoder": autoencoder,
                "learning_rate": 1e-3,
                "lpips_weight": 0.0,
                "discriminator_weight": 0.0,
                **model,
            },
        },
        "data": {
            "class_path": "layergen.data.datamodule.LayeredDataModule",
            "init_args": {
                "image_size": 32,
                "max_foregrounds": 2,
                "num_train": 8,
                "num_val": 4,
                "num_test": 4,
                "batch_size": 2,
                "num_workers": 0,
            },
        },
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


PER_LAYER = {"class_path": "layergen.models.PerLayerAutoencoder", "init_args": TINY_AE}
JOINT = {
    "class_path": "layergen.models.JointAutoencoder",
    "init_args": {**TINY_AE, "num_foregrounds": 2},
}


def test_fit_per_layer_exports_and_logs(tmp_path):
    config = _config(tmp_path, PER_LAYER)
    cli = cli_main(["fit", "--config", str(config)])
    assert cli.trainer.global_step == 2
    metrics = cli.trainer.callback_metrics
    for name in ("val/psnr_composite", "val/mask_iou", "val/mask_mae", "val/l1/composite"):
        assert name in metrics and torch.isfinite(metrics[name])
    assert "train/loss" in metrics and "train/mask_comp" in metrics
    exported = tmp_path / "run" / "pretrained"
    model = load_autoencoder(exported)
    assert isinstance(model, PerLayerAutoencoder)
    std = float(cli.model.latent_std)
    assert std > 0 and model.config.scaling_factor == pytest.approx(1.0 / std)
    events = list((tmp_path / "run").rglob("events.out.tfevents*"))
    assert events, "no TensorBoard event file"
    accumulator = EventAccumulator(str(events[0].parent))
    accumulator.Reload()
    assert {"val/layers_target", "val/layers_output"} <= set(accumulator.Tags()["images"])
    # hyper-parameters keep the autoencoder's class path (load_from_checkpoint works)
    restored = LayeredAutoencoderModule.load_from_checkpoint(tmp_path / "ckpt" / "last.ckpt")
    assert isinstance(restored.autoencoder, PerLayerAutoencoder)


def test_fit_joint_with_lpips_and_discriminator(tmp_path):
    config = _config(
        tmp_path,
        JOINT,
        lpips_weight=1.0,
        lpips_net="alex",
        lpips_backbone="random",
        discriminator_weight=0.5,
        discriminator_start=0,
        discriminator_channels=8,
        discriminator_layers=2,
    )
    cli = cli_main(["fit", "--config", str(config), "--trainer.max_steps=4"])
    metrics = cli.trainer.callback_metrics
    assert {"train/g_loss", "train/d_loss", "train/d_weight", "val/lpips/composite"} <= set(metrics)
    assert cli.trainer.global_step == 4  # autoencoder steps, one per batch
    assert isinstance(load_autoencoder(tmp_path / "run" / "pretrained"), JointAutoencoder)
    # LPIPS stayed frozen and in eval mode
    assert not cli.model.lpips.model.training
    assert not any(p.requires_grad for p in cli.model.lpips.parameters())


def test_gan_max_steps_counts_autoencoder_updates_and_the_schedule_ends(tmp_path):
    config = _config(
        tmp_path,
        JOINT,
        lr_schedule="cosine",
        lr_final_ratio=0.1,
        discriminator_weight=0.5,
        discriminator_start=1,
        discriminator_channels=8,
        discriminator_layers=2,
    )
    cli = cli_main(["fit", "--config", str(config), "--trainer.max_steps=3"])
    opt_ae, opt_d = (optimizer.optimizer for optimizer in cli.model.optimizers())

    def adam_steps(optimizer):
        return {int(state["step"]) for state in optimizer.state.values()}

    assert cli.trainer.global_step == 3
    assert adam_steps(opt_ae) == {3}  # max_steps autoencoder updates
    assert adam_steps(opt_d) == {2}  # from discriminator_start = 1 on
    assert cli.trainer.lr_scheduler_configs[0].scheduler.last_epoch == 3
    assert opt_ae.param_groups[0]["lr"] == pytest.approx(0.1 * 1e-3)  # the cosine's end


def test_composite_head_learns_the_source_image_when_there_is_one():
    autoencoder = JointAutoencoder(**TINY_AE, num_foregrounds=2)
    module = LayeredAutoencoderModule(autoencoder, lpips_weight=0.0, discriminator_weight=0.0)
    scenes = ShapeScenes(size=32, max_foregrounds=2, length=2)
    photo = replace(scenes[0], image=torch.full((3, 32, 32), 0.5))  # differs from its composite
    batch = LayeredBatch.collate([photo, scenes[1]], num_layers=3)
    with torch.no_grad():
        recon, posterior = module(batch)
        terms = module._losses(batch, recon, posterior)
        without_image = module._losses(replace(batch, image=None), recon, posterior)
    # the source image where the sample has one, the derived composite where not
    target = torch.stack([photo.image, scenes[1].composite()])
    expected = (recon.composite - target).abs().mean()
    assert terms["l1/composite"].item() == pytest.approx(expected.item(), rel=1e-5)
    expected = (recon.composite - batch.composite()).abs().mean()
    assert without_image["l1/composite"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_resume_from_last_checkpoint_continues_global_step(tmp_path):
    config = _config(tmp_path, PER_LAYER)
    cli_main(["fit", "--config", str(config)])
    last = tmp_path / "ckpt" / "last.ckpt"
    assert torch.load(last, weights_only=False)["global_step"] == 2
    cli = cli_main(
        ["fit", "--config", str(config), "--trainer.max_steps=4", "--ckpt_path", str(last)]
    )
    assert cli.trainer.global_step == 4
    assert torch.load(last, weights_only=False)["global_step"] == 4


def test_validate_reports_metrics(tmp_path):
    config = _config(tmp_path, PER_LAYER)
    cli_main(["fit", "--config", str(config)])
    cli = cli_main(
        ["validate", "--config", str(config), "--ckpt_path", str(tmp_path / "ckpt" / "last.ckpt")]
    )
    assert 0 <= float(cli.trainer.callback_metrics["val/mask_iou"]) <= 1


def test_mask_iou_and_grid():
    pred = torch.zeros(3, 1, 4, 4)
    target = torch.zeros(3, 1, 4, 4)
    pred[0, :, :2] = 0.9  # 8 pixels
    target[0, :, :1] = 1.0  # 4 pixels inside them
    pred[1] = 0.6  # all 16 vs none
    # sample 2: both empty -> 1
    assert mask_iou(pred, target).tolist() == [0.5, 0.0, 1.0]
    scenes = ShapeScenes(size=32, length=2)
    batch = LayeredBatch.collate([scenes[0], scenes[1]], num_layers=3)
    grid = layered_grid(batch.images, batch.masks, batch.layer_valid)
    assert grid.shape[0] == 3 and 0 <= grid.min() and grid.max() <= 1
    assert grid.shape[-1] == 7 * 32 + 8  # 2L + 1 tiles with 1-pixel padding


def test_full_size_config_fast_dev_run_on_a_shard(tmp_path):
    scenes = ShapeScenes(size=32, min_foregrounds=1, max_foregrounds=1, length=4)
    shards = write_shards(scenes, tmp_path / "shards", shard_size=4)
    cli = cli_main(
        [
            "fit",
            "--config",
            str(ROOT / "configs" / "ae.yaml"),
            "--trainer.fast_dev_run=true",
            "--trainer.accelerator=cpu",
            "--trainer.devices=1",
            "--trainer.strategy=auto",
            "--trainer.precision=32-true",
            f"--trainer.default_root_dir={tmp_path / 'run'}",
            f"--data.init_args.train_shards={shards[0]}",
            f"--data.init_args.val_shards={shards[0]}",
            "--data.init_args.image_size=32",
            "--data.init_args.batch_size=2",
            "--data.init_args.num_workers=0",
            "--model.init_args.autoencoder.init_args.block_out_channels=[8,16]",
            "--model.init_args.autoencoder.init_args.layers_per_block=1",
            "--model.init_args.autoencoder.init_args.norm_num_groups=4",
            "--model.init_args.lpips_weight=0",
        ]
    )
    assert cli.trainer.global_step == 1
    config = json.loads((tmp_path / "run" / "pretrained" / "config.json").read_text())
    assert config["_class_name"] == "JointAutoencoder" and config["num_foregrounds"] == 1


def test_demo_config_fast_dev_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the config's checkpoint directory is relative
    cli = cli_main(
        [
            "fit",
            "--config", str(ROOT / "configs" / "demo" / "ae.yaml"),
            "--trainer.fast_dev_run=true",
            f"--trainer.default_root_dir={tmp_path}",
            "--data.init_args.num_train=8",
            "--data.init_args.num_val=8",
        ]
    )  # fmt: skip
    assert cli.trainer.global_step == 1
    assert isinstance(cli.model.autoencoder, PerLayerAutoencoder)
    assert cli.model.autoencoder.downsample_factor == 2  # 16x16 latents of 32x32 scenes


@pytest.mark.slow
@pytest.mark.parametrize(
    "discriminator",
    [
        {"discriminator_weight": 0.0},
        # the full-size config's case: a PatchGAN that has not started yet (no gradients)
        {"discriminator_weight": 0.5, "discriminator_start": 1000, "discriminator_channels": 8},
        {"discriminator_weight": 0.5, "discriminator_start": 0, "discriminator_channels": 8},
    ],
    ids=["no_gan", "gan_not_started", "gan"],
)
def test_ddp_two_processes_on_cpu(tmp_path, discriminator):
    # train.py as a subprocess: Lightning's DDP launcher re-runs the command once per rank
    config = _config(tmp_path, PER_LAYER, **discriminator)
    strategy = yaml.safe_load((ROOT / "configs" / "ae.yaml").read_text())["trainer"]["strategy"]
    args = ["fit", "--config", str(config), "--trainer.devices=2", f"--trainer.strategy={strategy}"]
    result = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)["global_step"] == 2
    assert isinstance(load_autoencoder(tmp_path / "run" / "pretrained"), PerLayerAutoencoder)


def test_cosine_schedule_warms_up_and_ends_at_the_final_ratio():
    module = LayeredAutoencoderModule(
        PerLayerAutoencoder(**TINY_AE), learning_rate=1e-3, lr_warmup_steps=10,
        lr_schedule="cosine", lr_final_ratio=0.0, lpips_weight=0.0, discriminator_weight=0.0,
    )
    module.trainer = type("Trainer", (), {"max_steps": 110})()  # only max_steps is read
    assert module._lr_lambda(0) == pytest.approx(0.1)  # warm-up: (step + 1) / 10
    assert module._lr_lambda(10) == pytest.approx(1.0)
    assert module._lr_lambda(60) == pytest.approx(0.5)  # half-way down the cosine
    assert module._lr_lambda(110) == pytest.approx(0.0)
    module.hparams.lr_final_ratio = 0.1
    assert module._lr_lambda(110) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="lr_final_ratio"):
        LayeredAutoencoderModule(PerLayerAutoencoder(**TINY_AE), lr_final_ratio=1.5)
