"""Reproduce the papers' comparisons at demo scale on synthetic scenes.

Text2Layer Tables I-II (K = 1): CaT²I-AE-SD, CaT²I-AE-SD (no-sup), SD-AE-UNet (a small
single-image AutoencoderKL trained on composites standing in for SD's VAE, applied to F, B
and m separately) and the text-to-image baseline SD-LAION-L²I (the same UNet on latents of
the composite alone, through that AutoencoderKL; scored on its composites only); LayerDiff
Table 2: the layer-specific prompt enhancer none / S / S + C (per-layer autoencoder, 1-2
foregrounds). The layered autoencoders and all diffusion models are trained with
``train.py``'s LightningCLI and the configs in ``configs/repro/``; the composite
AutoencoderKL is trained by the plain loop of :func:`train_composite_vae`. Everything is
scored by the synthetic benchmark (``layergen.benchmark``): Fréchet distance in the probe's
feature space stands in for FID, layer-prompt adherence for the CLIP score, IoU against the
trained segmenter for the IoU against ICON. Finished stages are skipped when the script is
run again.

    python scripts/reproduce_tables.py --out repro_runs --ae-steps 300 --ldm-steps 300
    python scripts/reproduce_tables.py --only text2layer --budget-minutes 5   # per training
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL

from layergen.benchmark import (
    autoencoder_metrics,
    generate_for_scenes,
    load_or_train_probe,
    load_or_train_segmenter,
    score_generated,
)
from layergen.cli import cli_main
from layergen.data.shapes import ShapeScenes, vocabulary
from layergen.metrics import markdown_table
from layergen.models import CompositeAutoencoder, StackedSDAutoencoder, load_autoencoder
from layergen.models.text_encoder import build_tiny_text_encoder
from layergen.pipelines import load_pipeline

logger = logging.getLogger("reproduce_tables")
CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "repro"
SIZE = 32
AUTOENCODERS = {  # name -> config (None: built here from the composite AutoencoderKL)
    "cat2i": "ae_cat2i.yaml",
    "cat2i_nosup": "ae_cat2i_nosup.yaml",
    "composite_vae": None,
    "t2i_composite": None,
    "layer": "ae_layer.yaml",
}
TEXT2LAYER = {  # row -> (autoencoder, diffusion config)
    "CaT²I-AE-SD": ("cat2i", "ldm_text2layer.yaml"),
    "CaT²I-AE-SD (no-sup)": ("cat2i_nosup", "ldm_text2layer.yaml"),
    "SD-AE-UNet": ("composite_vae", "ldm_sd_ae_unet.yaml"),
    "SD-LAION-L²I (text-to-image)": ("t2i_composite", "ldm_t2i_composite.yaml"),
}
LAYERDIFF = {"none": "none", "S": "s", "S + C": "s+c"}  # Table 2 row -> prompt_enhancer


def _fit(configs: list[str], root: Path, steps: int, budget_minutes: float | None, *extra: str) -> Path:
    """``train.py fit`` with the repro configs; returns the exported ``pretrained`` dir."""
    pretrained = root / "pretrained"
    if (pretrained / "config.json").is_file() or (pretrained / "model_index.json").is_file():
        logger.info("skip (done): %s", root)
        return pretrained
    args = ["fit", *(a for c in configs for a in ("--config", str(CONFIGS / c))),
            f"--trainer.default_root_dir={root}", f"--trainer.max_steps={steps}", *extra]
    if budget_minutes:
        minutes, seconds = divmod(int(budget_minutes * 60), 60)
        args.append(f"--trainer.max_time=00:00:{minutes:02d}:{seconds:02d}")
    started = time.time()
    cli_main(args=args)
    logger.info("trained %s in %.0f s", root, time.time() - started)
    return pretrained


def train_composite_vae(root: Path, steps: int, budget_minutes: float | None = None, seed: int = 0) -> Path:
    """A small single-image ``AutoencoderKL`` trained on composites (L1, posterior mode),
    wrapped as a ``StackedSDAutoencoder`` (the SD-AE-UNet baseline's autoencoder)."""
    deadline = time.time() + budget_minutes * 60 if budget_minutes else float("inf")
    pretrained = root / "pretrained"
    if (pretrained / "config.json").is_file():
        return pretrained
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        down_block_types=["DownEncoderBlock2D"] * 3, up_block_types=["UpDecoderBlock2D"] * 3,
        block_out_channels=(32, 64, 64), layers_per_block=1, latent_channels=4,
        norm_num_groups=8, sample_size=SIZE, mid_block_add_attention=False,
    )
    scenes = ShapeScenes(size=SIZE, min_foregrounds=1, max_foregrounds=2, seed=seed, length=2048)
    composites = torch.stack([scenes[i].composite() for i in range(len(scenes))])
    optimizer = torch.optim.Adam(vae.parameters(), lr=1e-3, betas=(0.5, 0.9))
    generator = torch.Generator().manual_seed(seed)
    for step in range(steps):
        if time.time() > deadline:
            logger.info("composite VAE: time budget reached after %d steps", step)
            break
        x = composites[torch.randint(len(composites), (32,), generator=generator)]
        posterior = vae.encode(x).latent_dist
        loss = F.l1_loss(vae.decode(posterior.mode()).sample, x) + 1e-6 * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % 100 == 0:
            logger.info("composite VAE step %d loss %.4f", step, loss.item())
    with torch.no_grad():
        std = vae.encode(composites[:256]).latent_dist.mode().std().item()
    model = StackedSDAutoencoder(vae_config=dict(vae.config), scaling_factor=1.0 / std)
    model.vae.load_state_dict(vae.state_dict())
    model.save_pretrained(pretrained)
    return pretrained


def composite_autoencoder(composite_vae: Path, root: Path) -> Path:
    """The text-to-image baseline's ``CompositeAutoencoder``: the composite ``AutoencoderKL``
    of ``train_composite_vae`` (its weights and scaling factor), applied to the composite only."""
    pretrained = root / "pretrained"
    if (pretrained / "config.json").is_file():
        return pretrained
    stacked = load_autoencoder(composite_vae)
    model = CompositeAutoencoder(vae_config=stacked.config.vae_config,
                                 scaling_factor=stacked.config.scaling_factor)
    model.load_state_dict(stacked.state_dict())
    model.save_pretrained(pretrained)
    return pretrained


def evaluate_generator(pipeline_dir: Path, max_foregrounds: int, args: argparse.Namespace, probe, segmenter):
    pipe = load_pipeline(pipeline_dir)
    pipe.set_progress_bar_config(disable=True)
    scenes = ShapeScenes(size=SIZE, min_foregrounds=1, max_foregrounds=max_foregrounds,
                         seed=args.seed, split="test", length=args.num_samples)
    refs = [scenes[i] for i in range(len(scenes))]
    images, consistency = generate_for_scenes(pipe, refs, args.sample_steps, args.guidance, args.seed)
    composite_only = pipe.autoencoder.composite_only
    return score_generated(images, refs, probe, segmenter, consistency, composite_only)


def run(args: argparse.Namespace) -> dict:
    out = args.out
    results: dict = {"settings": {k: str(v) for k, v in vars(args).items()}, "autoencoders": {},
                     "text2layer": {}, "layerdiff": {}}
    text_encoder = out / "text_encoder"
    if not (text_encoder / "text_encoder").exists():
        build_tiny_text_encoder(text_encoder, vocabulary(), hidden_size=32, num_layers=2, max_length=32)
    wanted = {"text2layer", "layerdiff"} if not args.only else set(args.only)
    ae_needed = set()
    if "text2layer" in wanted:  # t2i_composite wraps composite_vae
        ae_needed |= {"cat2i", "cat2i_nosup", "composite_vae", "t2i_composite"}
    if "layerdiff" in wanted:
        ae_needed.add("layer")
    autoencoders: dict[str, Path] = {}
    for name, config in AUTOENCODERS.items():
        if name not in ae_needed:
            continue
        root = out / f"ae_{name}"
        if name == "composite_vae":
            autoencoders[name] = train_composite_vae(root, args.ae_steps, args.budget_minutes)
        elif name == "t2i_composite":
            autoencoders[name] = composite_autoencoder(autoencoders["composite_vae"], root)
        else:
            autoencoders[name] = _fit(["ae_common.yaml", config], root, args.ae_steps, args.budget_minutes)
        max_fg = 2 if name == "layer" else 1
        scenes = ShapeScenes(size=SIZE, min_foregrounds=1, max_foregrounds=max_fg, seed=args.seed,
                             split="test", length=args.num_samples)
        results["autoencoders"][name] = autoencoder_metrics(
            load_autoencoder(autoencoders[name]), [scenes[i] for i in range(len(scenes))])["all"]
    common = [f"--model.init_args.text_encoder={text_encoder}"]
    pipelines: dict[tuple[str, str], Path] = {}
    if "text2layer" in wanted:
        for row, (ae, config) in TEXT2LAYER.items():
            pipelines["text2layer", row] = _fit(
                ["ldm_common.yaml", config], out / f"ldm_{ae}", args.ldm_steps, args.budget_minutes,
                f"--model.init_args.autoencoder={autoencoders[ae]}", *common)
    if "layerdiff" in wanted:
        for row, mode in LAYERDIFF.items():
            pipelines["layerdiff", row] = _fit(
                ["ldm_common.yaml", "ldm_layerdiff.yaml"], out / f"ldm_layerdiff_{mode.replace('+', '')}",
                args.ldm_steps, args.budget_minutes, f"--model.init_args.autoencoder={autoencoders['layer']}",
                f"--model.init_args.prompt_enhancer={mode}", *common)
    probe = load_or_train_probe(SIZE, 2, args.seed)
    segmenter = load_or_train_segmenter(SIZE, 2, args.seed)
    for (table, row), pipe in pipelines.items():
        max_fg = 1 if table == "text2layer" else 2
        results[table][row] = evaluate_generator(pipe, max_fg, args, probe, segmenter)
    return results


def _row(summary: dict, group: str, columns: list[str]) -> dict:
    return {c: summary.get(group, {}).get(c, float("nan")) for c in columns}


def render(results: dict, command: str) -> str:
    """The Markdown of docs/results.md's tables."""
    parts = [f"Reproduce with:\n\n    {command}\n"]
    if results["autoencoders"]:
        cols = ["psnr_composite", "psnr_composite_head", "psnr_background", "psnr_foreground",
                "mask_iou", "mask_mae"]
        parts.append("### Autoencoders (reconstruction of held-out scenes)\n\n" + markdown_table(
            {k: _row({"all": v}, "all", cols) for k, v in results["autoencoders"].items()}, cols,
            row_label="autoencoder"))
    if results["text2layer"]:
        cols = ["fd_composite", "fd_layers", "layer_adherence", "bg_family_acc", "bg_color_acc",
                "mask_iou_segmenter", "consistency_psnr"]
        parts.append("### Text2Layer Tables I-II (two-layer scenes)\n\n" + markdown_table(
            {k: _row(v, "all", cols) for k, v in results["text2layer"].items()}, cols, row_label="method")
            + "\n\nThe text-to-image baseline generates composites only: its layer metrics are n/a.")
    if results["layerdiff"]:
        rows = {}
        for name, summary in results["layerdiff"].items():
            rows[name] = {f"{g} layers {c}": summary.get(g, {}).get(c, float("nan"))
                          for g in ("2", "3") for c in ("fd_composite", "layer_adherence")}
        parts.append("### LayerDiff Table 2 (prompt-enhancer ablation)\n\n" + markdown_table(
            rows, list(next(iter(rows.values()))), row_label="enhancer"))
    return "\n\n".join(parts) + "\n"


BEGIN, END = "<!-- tables:begin -->", "<!-- tables:end -->"


def write_tables(path: Path, markdown: str) -> None:
    """Write the tables to ``path``; in a file that has the BEGIN/END markers (docs/results.md),
    only the text between them is replaced, keeping the page's explanations."""
    text = path.read_text() if path.is_file() else ""
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        markdown = f"{head}{BEGIN}\n{markdown}{END}{rest.split(END, 1)[1]}"
    path.write_text(markdown)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("repro_runs"))
    parser.add_argument("--only", nargs="*", choices=["text2layer", "layerdiff"])
    parser.add_argument("--ae-steps", type=int, default=300)
    parser.add_argument("--ldm-steps", type=int, default=300)
    parser.add_argument("--budget-minutes", type=float, default=None, help="wall-clock cap per training")
    parser.add_argument("--num-samples", type=int, default=64)
    parser.add_argument("--sample-steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results", type=Path, default=None, help="write the tables here (Markdown)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    results = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    settings = ("ae_steps", "ldm_steps", "budget_minutes", "num_samples", "sample_steps", "guidance")
    command = "python scripts/reproduce_tables.py " + " ".join(
        f"--{k.replace('_', '-')} {getattr(args, k)}" for k in settings if getattr(args, k) is not None)
    markdown = render(results, command)
    (args.out / "results.md").write_text(markdown)
    if args.results:
        write_tables(args.results, markdown)
    print(markdown)


if __name__ == "__main__":
    main()
