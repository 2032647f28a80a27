"""The README demo, end to end on CPU: train, generate, edit, export, contact sheet.

Steps (``run_demo``):

1. build the tiny offline CLIP text encoder of the synthetic-scene vocabulary;
2. train the demo per-layer autoencoder (``configs/demo/ae.yaml``) through LightningCLI; its
   ``SavePretrained`` callback exports it;
3. encode the training and validation scenes once with the frozen autoencoder and text
   encoder (:func:`layergen.apps.cache_latents.cache_latents`), then train the demo layered
   diffusion model (``configs/demo/ldm.yaml``) on those cached latents; the callback exports
   a ``LayeredDiffusionPipeline`` directory;
4. generate layered images for held-out prompts (the test split of the synthetic scenes);
5. edit: replace one foreground (new layer prompt) and regenerate a background behind fixed
   foregrounds — kept layers come back bit-identical;
6. export PSD, OpenRaster and PNG folders with manifests, the contact sheet, and TensorBoard
   logs; measure the layer-prompt colour accuracy (:mod:`layergen.pipelines.colour_check`).
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from layergen.apps.cache_latents import cache_latents
from layergen.console import progress_line
from layergen.data.shapes import COLORS, SHAPES, ShapeScenes, describe_background, vocabulary
from layergen.export import save_contact_sheet, save_layered
from layergen.layers import BACKGROUND_PROMPT, LayeredImage
from layergen.models.text_encoder import build_tiny_text_encoder
from layergen.pipelines.colour_check import ColourCheck, layer_colour_accuracy, named_colour
from layergen.pipelines.layer_prompts import background_phrase
from layergen.pipelines.layered_diffusion import LayeredDiffusionPipeline

logger = logging.getLogger(__name__)

# --fast: a smoke test of every step (minutes), not a trained model
FAST_TRAIN_STEPS = 20
FAST_SAMPLE_STEPS = 4
FAST_NUM_SAMPLES = 3
SAMPLE_BATCH = 16
# the diffusion stage's training scenes: 900 steps of batch 32 see 28 800 samples, which on the
# autoencoder's 4096 scenes repeats each ~7 times; 4x the scenes cost ~30 s more to make and
# encode and learned sizes and shapes better in the same steps (docs/demo_recipe.md)
DIFFUSION_TRAIN_SCENES = 16384
EXPORT_FORMATS = (".psd", ".ora", "")  # "" = a folder of PNGs


@dataclass
class DemoResult:
    """Where the demo wrote everything, and what it measured."""

    out: Path
    pipeline: Path
    files: dict[str, list[Path]] = field(default_factory=dict)
    contact_sheet: Path | None = None
    tensorboard: Path | None = None
    colour: ColourCheck | None = None
    seconds: dict[str, float] = field(default_factory=dict)


def train_with_cli(config: Path, root: Path, overrides: list[str]) -> None:
    """``train.py fit --config CONFIG`` in-process, with outputs under ``root``.

    The config's ``StepBudget`` reports the progress; no progress bar, no model summary.
    """
    from layergen.cli import cli_main

    args = ["fit", "--config", str(config), "--trainer.default_root_dir", str(root), *overrides]
    logger.info("training: %s", " ".join(args))
    cli_main([*args, "--trainer.enable_progress_bar", "false",
              "--trainer.enable_model_summary", "false"])


def announce(stage: str, seconds: dict[str, float]) -> None:
    """One flushed line per demo stage (visible when the output is a file or a pipe)."""
    done = sum(seconds.values()) / 60
    print(f"[demo] {stage} ({done:.1f} min so far)", flush=True)


def cache_demo_latents(ae_config: Path, out: Path, autoencoder: Path, text_encoder: Path,
                       fast: bool) -> Path:
    """Encode ``DIFFUSION_TRAIN_SCENES`` scenes of the autoencoder config's generator (its own
    training scenes first) and its validation scenes once, in memory-sized single shards
    ``out/{train,val}/latents-000000.tar``; returns ``out``."""
    data = yaml.safe_load(ae_config.read_text())["data"]["init_args"]
    counts = {"train": 256 if fast else DIFFUSION_TRAIN_SCENES, "val": 64 if fast else data["num_val"]}
    for split, count in counts.items():
        scenes = ShapeScenes(size=data["image_size"], min_foregrounds=data["min_foregrounds"],
                             max_foregrounds=data["max_foregrounds"], seed=data["seed"],
                             split=split, length=count)
        cache_latents(None, out / split, str(autoencoder), str(text_encoder), batch_size=64,
                      samples_per_shard=count, samples=(scenes[i] for i in range(count)))
    return out


def _fast_overrides(fast: bool) -> list[str]:
    if not fast:
        return []
    steps = str(FAST_TRAIN_STEPS)
    return [
        "--trainer.max_steps",
        steps,
        "--trainer.val_check_interval",
        steps,
        "--trainer.limit_val_batches",
        "2",
        "--trainer.log_every_n_steps",
        "5",
    ]


def held_out_scenes(
    count: int, size: int, max_foregrounds: int, seed: int = 0
) -> list[LayeredImage]:
    """``count`` scenes of the synthetic test split (prompts never seen in training)."""
    scenes = ShapeScenes(
        size=size,
        min_foregrounds=1,
        max_foregrounds=max_foregrounds,
        seed=seed,
        split="test",
        length=count,
    )
    return [scenes[i] for i in range(count)]


def replacement_prompt(layer_prompt: str, taken: set[str]) -> str:
    """A new foreground layer prompt of the same size with another colour and shape."""
    words = layer_prompt.split()
    size = words[1] if len(words) == 4 else "large"
    colour = next(c for c in COLORS if c not in taken and c not in ("white", "black", "gray"))
    shape = next(s for s in SHAPES if s not in layer_prompt)
    return f"a {size} {colour} {shape}"


def replace_background_phrase(prompt: str, colours: list[str], family: str = "stripes") -> str:
    """Swap the trailing ``"on a ... background"`` of a caption for another background."""
    phrase = describe_background(family, colours)
    return re.sub(r"on an? [^,]*background$", f"on {phrase}", prompt)


def demo_edits(
    pipe: LayeredDiffusionPipeline, image: LayeredImage, steps: int, guidance: float, seed: int
) -> dict[str, LayeredImage]:
    """One replaced foreground and one background regenerated behind fixed foregrounds."""
    k = image.num_foregrounds
    taken = {c for p in image.layer_prompts if (c := named_colour(p))}
    new_layer = replacement_prompt(image.layer_prompts[k], taken)
    layer_prompts = list(image.layer_prompts)
    layer_prompts[k] = new_layer
    replaced = pipe.edit(
        image,
        keep=[i for i in range(image.num_layers) if i != k],
        layer_prompts=layer_prompts,
        prompt=image.prompt.replace(image.layer_prompts[k], new_layer),
        num_inference_steps=steps,
        guidance_scale=guidance,
        generator=torch.Generator().manual_seed(seed),
    ).images[0]
    background_colours = [c for c in ("yellow", "blue", "pink", "green") if c not in taken][:2]
    background_prompt = replace_background_phrase(image.prompt, background_colours)
    new_background = pipe.edit(
        image,
        keep=list(range(1, image.num_layers)),
        layer_prompts=[
            background_phrase(background_prompt) or BACKGROUND_PROMPT,
            *image.layer_prompts[1:],
        ],
        prompt=background_prompt,
        num_inference_steps=steps,
        guidance_scale=guidance,
        generator=torch.Generator().manual_seed(seed),
    ).images[0]
    return {"replaced_foreground": replaced, "new_background": new_background}


def export_all(
    images: dict[str, LayeredImage], directory: Path, manifest: dict[str, Any]
) -> list[Path]:
    """Each image as ``NAME.psd``, ``NAME.ora`` and a ``NAME/`` folder of PNGs."""
    paths = []
    for name, image in images.items():
        for suffix in EXPORT_FORMATS:
            paths.append(save_layered(image, directory / f"{name}{suffix}", manifest))
    return paths


def log_to_tensorboard(directory: Path, sheet: Path, colour: ColourCheck) -> Path:
    """Contact sheet and colour accuracy to a TensorBoard run under ``directory``."""
    from lightning.pytorch.loggers import TensorBoardLogger
    from PIL import Image

    tb = TensorBoardLogger(save_dir=str(directory), name="tensorboard", version="demo")
    with Image.open(sheet) as picture:
        tb.experiment.add_image(
            "demo/contact_sheet", np.asarray(picture.convert("RGB")), dataformats="HWC"
        )
    tb.log_metrics({"demo/colour_accuracy": colour.accuracy})
    tb.finalize("success")
    return Path(tb.log_dir)


def run_demo(
    out: str | Path,
    ae_config: str | Path,
    ldm_config: str | Path,
    fast: bool = False,
    num_samples: int = 8,
    num_eval: int = 64,
    steps: int = 50,
    guidance: float = 1.0,
    seed: int = 0,
    reuse: bool = False,
) -> DemoResult:
    """Run the whole demo; see the module docstring.

    Args:
        out: output folder.
        ae_config, ldm_config: the demo training configs.
        fast: tiny training and sampling (a smoke test).
        num_samples: held-out prompts to generate, export and show.
        num_eval: held-out prompts generated for the colour accuracy (at least num_samples).
        steps, guidance: DDIM steps and classifier-free guidance scale for sampling.
        seed: sampling seed.
        reuse: keep already trained models found in ``out`` (skip their training).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    if fast:
        steps, num_samples = min(steps, FAST_SAMPLE_STEPS), min(num_samples, FAST_NUM_SAMPLES)
        num_eval = num_samples

    announce("stage 1/3: tiny text encoder and autoencoder training", seconds)
    start = time.perf_counter()
    text_dir = out / "text_encoder"
    if not (reuse and (text_dir / "text_encoder").exists()):
        build_tiny_text_encoder(text_dir, vocabulary())
    ae_dir = out / "ae" / "pretrained"
    if not (reuse and ae_dir.exists()):
        scenes = ["--data.init_args.num_train", "256", "--data.init_args.num_val", "64"]
        train_with_cli(Path(ae_config), out / "ae", _fast_overrides(fast) + (scenes if fast else []))
    seconds["autoencoder"] = time.perf_counter() - start

    announce("stage 2/3: latent cache and diffusion training", seconds)
    start = time.perf_counter()
    pipeline_dir = out / "ldm" / "pretrained"
    if not (reuse and (pipeline_dir / "model_index.json").exists()):
        latents = cache_demo_latents(Path(ae_config), out / "latents", ae_dir, text_dir, fast)
        train_with_cli(
            Path(ldm_config),
            out / "ldm",
            [
                "--model.init_args.autoencoder",
                str(ae_dir),
                "--model.init_args.text_encoder",
                str(text_dir),
                "--data.init_args.train_shards",
                str(latents / "train" / "latents-000000.tar"),
                "--data.init_args.val_shards",
                str(latents / "val" / "latents-000000.tar"),
                *_fast_overrides(fast),
            ],
        )
    seconds["diffusion"] = time.perf_counter() - start

    announce("stage 3/3: sampling held-out prompts, edits, export", seconds)
    start = time.perf_counter()
    pipe = LayeredDiffusionPipeline.from_pretrained(pipeline_dir, use_safetensors=True)
    pipe.set_progress_bar_config(disable=True)
    size = pipe.default_size
    max_layers = min(pipe.unet.config.max_layers, 3)
    scenes = held_out_scenes(max(num_samples, num_eval), size, max_layers - 1)
    generated = []
    for first in range(0, len(scenes), SAMPLE_BATCH):
        batch = scenes[first : first + SAMPLE_BATCH]
        generated += pipe(
            [s.prompt for s in batch],
            layer_prompts=[s.layer_prompts for s in batch],
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=torch.Generator().manual_seed(seed + first),
        ).images
        print(progress_line("sampling", len(generated), len(scenes), time.perf_counter() - start,
                            "prompt"), flush=True)
    samples = generated[:num_samples]
    source = next((s for s in samples if s.num_foregrounds >= 2), samples[0])
    edits = demo_edits(pipe, source, steps, guidance, seed)
    seconds["sampling"] = time.perf_counter() - start

    manifest = {"model": str(pipeline_dir), "seed": seed, "steps": steps, "guidance": guidance}
    named = {f"sample_{i:02d}": s for i, s in enumerate(samples)}
    result = DemoResult(out=out, pipeline=pipeline_dir, seconds=seconds)
    result.files["samples"] = export_all(named, out / "samples", manifest)
    result.files["edits"] = export_all({"source": source, **edits}, out / "edits", manifest)
    titles = [f"{name}: {image.prompt}" for name, image in named.items()]
    titles += [
        "edit source: " + source.prompt,
        "edit, replaced foreground: " + edits["replaced_foreground"].layer_prompts[-1],
        "edit, new background behind fixed foregrounds: " + edits["new_background"].prompt,
    ]
    rows = [*samples, source, edits["replaced_foreground"], edits["new_background"]]
    result.contact_sheet = save_contact_sheet(rows, out / "contact_sheet.png", titles=titles)
    result.colour = layer_colour_accuracy(generated)
    result.tensorboard = log_to_tensorboard(out, result.contact_sheet, result.colour)
    return result
