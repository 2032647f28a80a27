"""LayeredDiffusionModule: timestep sharing, condition dropout, clean layers, fit, resume,
export, latent caching, 2-process DDP."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from pipeline_components import save_training_assets

from layergen.apps import cache_latents as cache_latents_command
from layergen.cli import cli_main
from layergen.data.latents import LatentDataModule
from layergen.data.shapes import ShapeScenes
from layergen.data.shards import read_shards, write_shards
from layergen.layers import LayeredBatch
from layergen.lit.diffusion import LayeredDiffusionModule
from layergen.models import (
    LayeredUNet,
    StackedSDAutoencoder,
    load_autoencoder,
)

UNET_CONFIG = dict(
    sample_size=16,
    in_channels=4,
    out_channels=4,
    block_out_channels=[8, 16],
    layers_per_block=1,
    down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"],
    cross_attention_dim=16,
    attention_head_dim=4,
    norm_num_groups=4,
)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("diffusion")
    save_training_assets(root)
    return root


def make_module(assets, **kwargs):
    args = dict(autoencoder=str(assets / "ae"), text_encoder=str(assets / "te"),
                unet_config=UNET_CONFIG, prompt_enhancer_heads=2, ema_decay=0.9)
    return LayeredDiffusionModule(**{**args, **kwargs})


def scene_batch(n=2):
    scenes = ShapeScenes(size=32, min_foregrounds=1, max_foregrounds=2, seed=0, length=n)
    return LayeredBatch.collate([scenes[i] for i in range(n)], num_layers=3)


def test_timestep_sampling_shares(assets):
    module = make_module(assets)
    torch.manual_seed(0)
    t = module.sample_timesteps(4000, 3)
    assert t.shape == (4000, 3) and t.min() >= 0 and t.max() < 1000
    shared = (t == t[:, :1]).all(dim=1).float().mean().item()
    assert abs(shared - 0.5) < 0.03  # independent triples coincide with prob. 1e-6
    module.hparams.shared_timestep_prob = 1.0
    t = module.sample_timesteps(100, 3)
    assert (t == t[:, :1]).all()


def test_condition_dropout_rates(assets):
    module = make_module(assets)
    n = 20000
    cond, layer_cond = torch.ones(n, 16, 16), torch.ones(n, 3, 16, 16)
    torch.manual_seed(0)
    dropped_cond, dropped_layers = module.drop_conditions(cond, layer_cond)
    empty = module.empty_embedding()
    g = (dropped_cond == empty).all(dim=(1, 2))
    lay = (dropped_layers == empty).all(dim=(2, 3))
    assert (lay == lay[:, :1]).all()  # a sample's layer conditions drop together
    lay = lay[:, 0]
    assert abs(g.float().mean() - 0.1) < 0.01 and abs(lay.float().mean() - 0.1) < 0.01
    assert abs((g & lay).float().mean() - 0.01) < 0.004  # independent
    assert ((dropped_cond == 1).all(dim=(1, 2)) == ~g).all()


def test_clean_layers_are_clean_and_excluded_from_the_loss(assets, monkeypatch):
    module = make_module(assets, clean_layers_prob=1.0, global_dropout=0.0, layer_dropout=0.0)
    batch = scene_batch()
    latents, *_ = module.prepare_batch(batch)
    clean = torch.tensor([[True, False, False], [False, True, False]])
    monkeypatch.setattr(module, "sample_clean_layers", lambda valid, generator=None: clean & valid)
    seen = {}

    def spy(sample, timestep, cond, layer_cond, layer_valid, **image_conditions):
        seen.update(sample=sample, timestep=timestep, valid=layer_valid)
        seen["pred"] = torch.zeros_like(sample, requires_grad=True)
        return type("Out", (), {"sample": seen["pred"]})()

    loss = module.diffusion_loss(spy, batch)
    loss.backward()
    valid = batch.layer_valid
    assert (seen["timestep"][clean] == 0).all() and (seen["timestep"][~clean] >= 0).all()
    torch.testing.assert_close(seen["sample"][clean], latents[clean])
    grad = seen["pred"].grad.abs().sum(dim=(2, 3, 4))
    assert (grad[clean] == 0).all() and (grad[~valid] == 0).all()
    assert (grad[valid & ~clean] > 0).all()
    # sampled subsets: never all valid layers, never padded ones
    torch.manual_seed(0)
    sampled = LayeredDiffusionModule.sample_clean_layers(module, valid.repeat(500, 1))
    assert not (sampled & ~valid.repeat(500, 1)).any()
    assert ((valid.repeat(500, 1) & ~sampled).sum(1) >= 1).all()
    assert sampled.any()


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_min_snr_weighting(assets, monkeypatch, prediction_type):
    module = make_module(assets, snr_gamma=5.0, prediction_type=prediction_type,
                         global_dropout=0.0, layer_dropout=0.0)
    t = torch.tensor([[0, 10, 999], [500, 500, 500]])
    alpha_bar = module.noise_scheduler.alphas_cumprod[t]
    snr = alpha_bar / (1 - alpha_bar)
    expected = snr.clamp(max=5.0) / (snr + 1 if prediction_type == "v_prediction" else snr)
    torch.testing.assert_close(module.min_snr_weight(t), expected.float())
    # the loss is the weighted mean over valid noisy layers, normalised by their count
    batch = scene_batch()
    monkeypatch.setattr(module, "sample_timesteps", lambda b, n, generator=None: t[:b, :n])
    seen = {}

    def spy(sample, timestep, cond, layer_cond, layer_valid, **image_conditions):
        seen["pred"] = torch.zeros_like(sample)
        return type("Out", (), {"sample": seen["pred"]})()

    loss = module.diffusion_loss(spy, batch, generator=torch.Generator().manual_seed(0), train=False)
    latents, *_ = module.prepare_batch(batch)
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(0))
    flat = (latents.flatten(0, 1), noise.flatten(0, 1), t.flatten())
    target = module.noise_scheduler.get_velocity(*flat) if prediction_type == "v_prediction" else flat[1]
    error = target.view_as(latents).pow(2).mean(dim=(2, 3, 4))  # the spy predicts zeros
    valid = batch.layer_valid.float()
    expected_loss = (error * expected * valid).sum() / valid.sum()
    torch.testing.assert_close(loss, expected_loss.float())


def test_fit_resume_and_export(assets, tmp_path):
    config = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu", "max_steps": 2, "limit_val_batches": 1, "val_check_interval": 2,
            "enable_progress_bar": False, "enable_model_summary": False,
            "default_root_dir": str(tmp_path),
            "logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                       "init_args": {"save_dir": str(tmp_path / "logs")}},
            "callbacks": [
                {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                 "init_args": {"dirpath": str(tmp_path / "ckpt"), "save_last": True}},
                {"class_path": "layergen.lit.callbacks.SavePretrained",
                 "init_args": {"dirpath": str(tmp_path / "pipeline")}},
            ],
        },
        "model": {"class_path": "layergen.lit.diffusion.LayeredDiffusionModule",
                  "init_args": {"autoencoder": str(assets / "ae"), "text_encoder": str(assets / "te"),
                                "unet_config": UNET_CONFIG, "prompt_enhancer_heads": 2,
                                "ema_decay": 0.5, "warmup_steps": 1, "lr": 1e-3,
                                "clean_layers_prob": 0.5}},
        "data": {"class_path": "layergen.data.LayeredDataModule",
                 "init_args": {"image_size": 32, "num_train": 4, "num_val": 2, "batch_size": 2}},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    cli = cli_main(args=["fit", "--config", str(path)])
    module = cli.model
    assert cli.trainer.global_step == 2
    assert torch.isfinite(cli.trainer.callback_metrics["train/loss"])
    assert "val/loss" in cli.trainer.callback_metrics
    ckpt = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)
    assert not any(k.startswith(("autoencoder.", "text_encoder.")) for k in ckpt["state_dict"])
    assert int(ckpt["state_dict"]["ema_unet.n_averaged"]) == 2
    # the EMA differs from the trained weights and is what the pipeline directory holds
    name = "unet.conv_in.weight"
    assert not torch.equal(module.unet.state_dict()[name], module.ema_unet.module.state_dict()[name])
    exported = LayeredUNet.from_pretrained(tmp_path / "pipeline" / "unet")
    torch.testing.assert_close(exported.state_dict()[name], module.ema_unet.module.state_dict()[name])
    index = json.loads((tmp_path / "pipeline" / "model_index.json").read_text())
    assert index["_class_name"] == ["layergen_pipeline", "LayeredDiffusionPipeline"]
    assert (tmp_path / "pipeline" / "README.md").exists()  # the model card
    assert {"unet", "autoencoder", "text_encoder", "tokenizer", "scheduler"} <= set(index)
    assert index["scheduler"][1] == "DDIMScheduler"
    load_autoencoder(tmp_path / "pipeline", subfolder="autoencoder")

    # resume from last.ckpt: training continues at step 2 with the EMA restored
    config["trainer"]["max_steps"] = 3
    path.write_text(yaml.safe_dump(config))
    cli = cli_main(args=["fit", "--config", str(path), "--ckpt_path", str(tmp_path / "ckpt" / "last.ckpt")])
    assert cli.trainer.global_step == 3
    assert int(cli.model.ema_unet.n_averaged) == 3


def test_cached_latents_train_like_images(assets, tmp_path):
    scenes = ShapeScenes(size=32, min_foregrounds=1, max_foregrounds=2, seed=0, length=4)
    shards = write_shards(scenes, tmp_path / "shards", shard_size=4)
    cache_latents_command.main([
        "--shards", shards[0], "--out", str(tmp_path / "latents"), "--autoencoder", str(assets / "ae"),
        "--text-encoder", str(assets / "te"), "--batch-size", "3",
    ])
    paths = sorted(str(p) for p in (tmp_path / "latents").glob("*.tar"))
    assert len(paths) == 1 and not list((tmp_path / "latents").glob("*.tmp"))
    empty = str(tmp_path / "latents" / "empty_prompt.safetensors")
    data = LatentDataModule(str(paths[0]), empty_embedding=empty, val_shards=str(paths[0]), batch_size=4,
                            shuffle_buffer=0)
    data.setup("fit")
    batch = next(iter(data.val_dataloader()))
    module = make_module(assets)
    images = LayeredBatch.collate(list(read_shards(shards)), num_layers=3)  # 8-bit PNG round trip
    cached = module.prepare_batch(batch)
    direct = module.prepare_batch(images)
    assert batch.keys == [f"{i:09d}" for i in range(4)]
    assert torch.equal(batch.layer_valid, images.layer_valid)
    valid = images.layer_valid
    torch.testing.assert_close(cached[0][valid], direct[0][valid], atol=1e-5, rtol=0)
    torch.testing.assert_close(cached[1], direct[1], atol=2e-3, rtol=0)  # stored as float16
    torch.testing.assert_close(cached[2][valid], direct[2][valid], atol=2e-3, rtol=0)
    loss = module.diffusion_loss(module.unet, batch)
    assert torch.isfinite(loss)


def test_scene_latents_in_memory_equal_the_streamed_batches(assets, tmp_path):
    out = tmp_path / "latents"
    cache_latents_command.main([
        "--scenes", "6", "--size", "32", "--max-foregrounds", "2", "--split", "val",
        "--out", str(out), "--autoencoder", str(assets / "ae"), "--text-encoder", str(assets / "te"),
        "--samples-per-shard", "6",
    ])
    shard = str(out / "latents-000000.tar")
    # no text encoder needed to read the cache: T("") was written beside the shards
    streamed = LatentDataModule(shard, val_shards=shard, batch_size=6, shuffle_buffer=0)
    memory = LatentDataModule(shard, val_shards=shard, batch_size=4, in_memory=True)
    for data in (streamed, memory):
        data.setup("fit")
    reference = next(iter(streamed.val_dataloader()))
    val = list(memory.val_dataloader())
    assert len(val) == 1 and val[0].keys == reference.keys[:4]  # unshuffled, last partial dropped
    torch.testing.assert_close(val[0].latents, reference.latents[:4])
    torch.testing.assert_close(val[0].layer_prompt_embeds, reference.layer_prompt_embeds[:4])
    torch.testing.assert_close(val[0].composite_latents, reference.composite_latents[:4])
    torch.testing.assert_close(val[0].layer_boxes, reference.layer_boxes[:4], equal_nan=True)
    train = memory.train_dataloader()
    train.sampler.set_epoch(0)
    first = [b.keys for b in train]
    train.sampler.set_epoch(1)
    assert len(first) == 1 and first != [b.keys for b in train]  # reshuffled per epoch
    scenes = ShapeScenes(size=32, min_foregrounds=1, max_foregrounds=2, seed=0, split="val", length=6)
    direct = make_module(assets).prepare_batch(LayeredBatch.collate([scenes[i] for i in range(6)], 3))
    cached = make_module(assets).prepare_batch(reference)
    valid = reference.layer_valid
    torch.testing.assert_close(cached[0][valid], direct[0][valid], atol=1e-5, rtol=0)
    (out / "empty_prompt.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(f"{out / 'empty_prompt.safetensors'}: no empty-prompt")):
        LatentDataModule(shard, in_memory=True).setup("fit")
    elsewhere = tmp_path / "empty.safetensors"
    with pytest.raises(FileNotFoundError, match=re.escape(f"{elsewhere}: no empty-prompt")):
        LatentDataModule(shard, empty_embedding=str(elsewhere)).setup("fit")


@pytest.mark.slow
def test_ddp_two_processes_on_cpu(assets, tmp_path):
    # (Lightning runs FSDP on GPUs only: configs/ldm_fsdp.yaml is parsed in test_configs.py)
    config = {
        "seed_everything": 0,
        "trainer": {"accelerator": "cpu", "devices": 2, "strategy": "ddp", "max_steps": 2,
                    "default_root_dir": str(tmp_path),
                    "limit_val_batches": 1, "val_check_interval": 2, "logger": False,
                    "enable_checkpointing": False, "enable_progress_bar": False,
                    "callbacks": [{"class_path": "layergen.lit.callbacks.SavePretrained"}]},
        "model": {"class_path": "layergen.lit.diffusion.LayeredDiffusionModule",
                  "init_args": {"autoencoder": str(assets / "ae"), "text_encoder": str(assets / "te"),
                                "unet_config": UNET_CONFIG, "prompt_enhancer_heads": 2}},
        "data": {"class_path": "layergen.data.LayeredDataModule",
                 "init_args": {"image_size": 32, "num_train": 8, "num_val": 4, "batch_size": 2}},
    }
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump(config))
    train = Path(__file__).resolve().parents[1] / "train.py"
    result = subprocess.run([sys.executable, str(train), "fit", "--config", str(path)],
                            capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "max_steps=2" in result.stderr + result.stdout
    # the exported pipeline holds the full (gathered) EMA UNet
    unet = LayeredUNet.from_pretrained(tmp_path / "pretrained" / "unet")
    assert torch.isfinite(next(unet.parameters())).all()


@pytest.mark.parametrize("layout", ["stacked", "folded"])
def test_stacked_sd_autoencoder_layouts(assets, tmp_path, layout):
    torch.manual_seed(0)
    StackedSDAutoencoder(vae_config=dict(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=[8, 16],
        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
        layers_per_block=1, norm_num_groups=4, sample_size=32,
    )).save_pretrained(tmp_path / "sd_ae")
    if layout == "stacked":  # LayerDiff on the SD VAE: (B, 5, 4, h, w) -> (B, 3, 8, h, w)
        options = dict(mask_channels=4, latent_layout="stacked", clean_layers_prob=1.0,
                       composite_condition=True, box_condition=True)
        unet_config = UNET_CONFIG
    else:  # SD-AE-UNet: 5 latent layers folded into 20 channels
        options = dict(layer_blocks=False, prompt_enhancer="none", latent_layout="folded")
        unet_config = {**UNET_CONFIG, "in_channels": 20, "out_channels": 20}
    module = make_module(assets, autoencoder=str(tmp_path / "sd_ae"), unet_config=unet_config, **options)
    batch = scene_batch()
    latents, _, _, valid = module.prepare_batch(batch)
    assert latents.shape == (2, 5, 4, 16, 16)
    loss = module.diffusion_loss(module.unet, batch)
    assert torch.isfinite(loss) and loss > 0
    loss.backward()
    assert all(p.grad is not None for p in module.unet.unet.down_blocks.parameters())


def test_validation_and_ema_follow_the_averaged_weights(assets):
    module = make_module(assets, ema_decay=0.5)
    batch = scene_batch(2)
    with torch.no_grad():
        for p in module.unet.parameters():
            p.add_(0.05 * torch.randn_like(p))  # raw weights move, the EMA copy has not yet
    raw = module.diffusion_loss(module.unet, batch, torch.Generator().manual_seed(0), train=False)
    ema = module.diffusion_loss(
        module.ema_unet.module, batch, torch.Generator().manual_seed(0), train=False
    )
    assert module.inference_unet is module.ema_unet.module and not torch.isclose(raw, ema)
    with pytest.warns(UserWarning):  # self.log without a trainer only warns
        val = module.validation_step(batch, 0)
    assert torch.equal(val, ema)
    # the first update copies the weights; then with decay 0.5 each update goes half-way
    module.ema_unet.update_parameters(module.unet)
    with torch.no_grad():
        for p in module.unet.parameters():
            p.add_(0.05 * torch.randn_like(p))
    before = [p.detach().clone() for p in module.ema_unet.module.parameters()]
    module.ema_unet.update_parameters(module.unet)
    for old, new, p in zip(before, module.ema_unet.module.parameters(), module.unet.parameters()):
        torch.testing.assert_close(new, 0.5 * old + 0.5 * p)


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_lr_schedule_warms_up_then_holds_or_decays_to_zero(assets, schedule):
    module = make_module(assets, lr=1e-3, warmup_steps=10, lr_schedule=schedule)
    module.trainer = type("Trainer", (), {"max_steps": 100})()
    scheduler = module.configure_optimizers()["lr_scheduler"]["scheduler"]
    lrs = []
    for _ in range(100):
        lrs.append(scheduler.get_last_lr()[0])
        scheduler.optimizer.step()
        scheduler.step()
    assert lrs[0] == 0.0 and lrs[5] == pytest.approx(5e-4)
    assert lrs[10] == pytest.approx(1e-3)
    if schedule == "constant":
        assert lrs[-1] == pytest.approx(1e-3)
    else:
        assert lrs[55] == pytest.approx(5e-4, rel=1e-2) and lrs[-1] < 1e-6


def test_condition_inputs_get_their_own_learning_rate(assets):
    module = make_module(assets, lr=1e-3, lr_schedule="constant", composite_condition=True,
                         box_condition=True, condition_lr_scale=10.0)
    module.trainer = type("Trainer", (), {"max_steps": 100})()
    base, conditions = module.configure_optimizers()["optimizer"].param_groups
    assert conditions["initial_lr"] == pytest.approx(1e-2) and base["initial_lr"] == pytest.approx(1e-3)
    cond_conv = module.unet.unet.conv_in.cond_conv
    assert {id(p) for p in conditions["params"]} == {id(cond_conv.weight), id(cond_conv.bias)}
    assert len(base["params"]) + 2 == len([p for p in module.unet.parameters() if p.requires_grad])


def test_cosine_lr_schedule_needs_max_steps(assets):
    module = make_module(assets, lr_schedule="cosine")
    module.trainer = type("Trainer", (), {"max_steps": -1})()
    with pytest.raises(ValueError, match="max_steps"):
        module.configure_optimizers()


def test_image_conditions_cached_like_images_dropped_and_fine_tuned_from_a_saved_unet(assets, tmp_path):
    """Issue 19: the cache holds each scene's composite latent and layer boxes, equal to the
    ones computed from the images; dropout NaNs whole composites and single boxes; a module
    started from a saved UNet (unet_init) first predicts what it does; its checkpoint
    re-creates the conditioned UNet."""
    from layergen.pipelines.checkpoints import unet_from_checkpoint

    scenes = ShapeScenes(size=32, min_foregrounds=1, max_foregrounds=2, seed=0, length=4)
    shards = write_shards(scenes, tmp_path / "shards", shard_size=4)
    cache_latents_command.main([
        "--shards", shards[0], "--out", str(tmp_path / "latents"), "--autoencoder", str(assets / "ae"),
        "--text-encoder", str(assets / "te"), "--batch-size", "3",
    ])
    path = str(next((tmp_path / "latents").glob("*.tar")))
    data = LatentDataModule(path, val_shards=path, batch_size=4, shuffle_buffer=0)
    data.setup("fit")
    batch = next(iter(data.val_dataloader()))
    plain = make_module(assets)
    plain.unet.save_pretrained(tmp_path / "unet")
    module = make_module(assets, unet_config=None, unet_init=str(tmp_path / "unet"),
                         composite_condition=True, box_condition=True)
    images = LayeredBatch.collate(list(read_shards(shards)), num_layers=3)
    cached_composite, cached_boxes = module.image_conditions(batch, train=False)
    direct_composite, direct_boxes = module.image_conditions(images, train=False)
    assert cached_composite.shape == (4, 4, 16, 16)
    torch.testing.assert_close(cached_composite, direct_composite, atol=1e-4, rtol=0)
    torch.testing.assert_close(cached_boxes, direct_boxes, equal_nan=True)
    assert (cached_boxes[:, 0] == torch.tensor([0.0, 0.0, 1.0, 1.0])).all()  # the background's
    assert cached_boxes[~batch.layer_valid].isnan().all()
    for name, layer in enumerate(scenes[0].masks):  # a foreground's box is its mask's
        ys, xs = torch.nonzero(layer[0] > 0.5, as_tuple=True)
        box = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]) / 32
        torch.testing.assert_close(cached_boxes[0, 1 + name], box.float())
    module.hparams.composite_dropout, module.hparams.box_dropout = 1.0, 0.0
    composite, boxes = module.image_conditions(batch)
    assert composite.isnan().all() and torch.equal(boxes.isnan(), cached_boxes.isnan())
    # zero-initialised condition inputs: the fine-tuned module starts as the saved UNet
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        ref = plain.diffusion_loss(plain.unet, batch, generator=generator, train=False)
        generator.manual_seed(0)
        got = module.diffusion_loss(module.unet, batch, generator=generator, train=False)
    torch.testing.assert_close(got, ref)
    state = {f"unet.{k}": v for k, v in module.unet.state_dict().items()}
    rebuilt = unet_from_checkpoint(dict(module.hparams), state)
    assert rebuilt.config.composite_condition and rebuilt.config.box_condition
    with pytest.raises(ValueError, match="no composite_latents"):
        from dataclasses import replace

        module.image_conditions(replace(batch, composite_latents=None))
