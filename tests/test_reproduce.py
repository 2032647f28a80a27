"""scripts/reproduce_tables.py: the text-to-image baseline (composite only) is built from the
composite AutoencoderKL, trains for 2 steps through the repro configs, generates, and is
scored on its composites alone (layer metrics n/a)."""

import importlib.util
import math
from argparse import Namespace
from pathlib import Path

import torch

from layergen.benchmark import ForegroundSegmenter, ShapeProbe, autoencoder_metrics
from layergen.data.shapes import ShapeScenes, vocabulary
from layergen.models import CompositeAutoencoder, StackedSDAutoencoder, load_autoencoder
from layergen.models.text_encoder import build_tiny_text_encoder
from layergen.pipelines import load_pipeline

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "reproduce_tables.py"
LAYER_METRICS = {"fd_layers", "layer_adherence", "shape_acc", "color_acc", "size_acc",
                 "bg_family_acc", "bg_color_acc", "mask_iou_segmenter", "consistency_psnr"}


def load_script():
    """The script as a module (``scripts/`` is not a package)."""
    spec = importlib.util.spec_from_file_location("reproduce_tables", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_text_to_image_baseline_trains_and_scores_composites_only(tmp_path):
    repro = load_script()
    row, (ae_name, config) = next((r, v) for r, v in repro.TEXT2LAYER.items() if v[0] == "t2i_composite")
    # a tiny composite AutoencoderKL, f = 4: 32x32 scenes -> the repro UNet's 8x8 latents
    torch.manual_seed(0)
    stacked = StackedSDAutoencoder(vae_config=dict(
        down_block_types=["DownEncoderBlock2D"] * 3, up_block_types=["UpDecoderBlock2D"] * 3,
        block_out_channels=[8, 16, 16], layers_per_block=1, latent_channels=4, norm_num_groups=4,
        sample_size=32, mid_block_add_attention=False,
    ), scaling_factor=0.5)
    stacked.save_pretrained(tmp_path / "ae_composite_vae" / "pretrained")
    ae_dir = repro.composite_autoencoder(tmp_path / "ae_composite_vae" / "pretrained", tmp_path / f"ae_{ae_name}")
    autoencoder = load_autoencoder(ae_dir)
    assert isinstance(autoencoder, CompositeAutoencoder) and autoencoder.config.scaling_factor == 0.5
    name = "vae.encoder.conv_in.weight"
    assert torch.equal(autoencoder.state_dict()[name], stacked.state_dict()[name])
    scenes = ShapeScenes(size=32, min_foregrounds=1, max_foregrounds=2, seed=0, split="test", length=4)
    ae_summary = autoencoder_metrics(autoencoder, [scenes[i] for i in range(4)])
    assert set(ae_summary["all"]) == {"num_samples", "psnr_composite"}

    # 2 training steps with the repro configs (tiny data), exported as a pipeline
    build_tiny_text_encoder(tmp_path / "te", vocabulary(), hidden_size=32, num_layers=1, max_length=32)
    pipeline_dir = repro._fit(
        ["ldm_common.yaml", config], tmp_path / f"ldm_{ae_name}", 2, None,
        f"--model.init_args.autoencoder={ae_dir}", f"--model.init_args.text_encoder={tmp_path / 'te'}",
        "--trainer.val_check_interval=2", "--trainer.limit_val_batches=1",
        "--data.init_args.batch_size=4", "--data.init_args.num_train=8", "--data.init_args.num_val=4",
    )
    last = next((tmp_path / f"ldm_{ae_name}").rglob("last.ckpt"))
    assert torch.load(last, weights_only=False)["global_step"] == 2
    pipe = load_pipeline(pipeline_dir)
    assert isinstance(pipe.autoencoder, CompositeAutoencoder) and not pipe.unet.config.layer_blocks
    pipe.set_progress_bar_config(disable=True)
    # prompts with different numbers of layers batch together: one composite latent each
    images = pipe(prompt=["a red circle", "a red circle and a blue star"],
                  layer_prompts=[["the background", "a red circle"],
                                 ["the background", "a red circle", "a blue star"]],
                  num_inference_steps=1, guidance_scale=1.0).images
    assert [im.num_layers for im in images] == [2, 3]
    assert all(im.masks.eq(0).all() and torch.equal(im.composite(), im.background) for im in images)

    # scored on its composites alone; the table shows n/a for the layer metrics
    args = Namespace(seed=0, num_samples=4, sample_steps=1, guidance=1.0)
    probe, segmenter = ShapeProbe(channels=(8, 16)), ForegroundSegmenter(channels=(4, 8, 8))
    summary = repro.evaluate_generator(pipeline_dir, 1, args, probe, segmenter)
    assert summary["all"]["num_samples"] == 4 and math.isfinite(summary["all"]["fd_composite"])
    assert not LAYER_METRICS & set(summary["all"])
    table = repro.render({"autoencoders": {}, "text2layer": {row: summary}, "layerdiff": {}}, "cmd")
    assert f"| {row} | {summary['all']['fd_composite']:.3f} | n/a | n/a | n/a | n/a | n/a | n/a |" in table


def test_write_tables_replaces_only_the_marked_section(tmp_path):
    repro = load_script()
    page = tmp_path / "results.md"
    page.write_text(f"# Intro\n\n{repro.BEGIN}\nold table\n{repro.END}\n\n## Honest notes\n")
    repro.write_tables(page, "new table\n")
    assert page.read_text() == f"# Intro\n\n{repro.BEGIN}\nnew table\n{repro.END}\n\n## Honest notes\n"
    fresh = tmp_path / "fresh.md"  # no markers: the whole file is the tables
    repro.write_tables(fresh, "only tables\n")
    assert fresh.read_text() == "only tables\n"
