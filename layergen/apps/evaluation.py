"""Evaluate a layered generator on test prompts: FID/KID, CLIP score, mask IoU, by layer count.

The protocol of Text2Layer V-B (Tables I-II) and LayerDiff 4.2 (Table 1): generate one
layered image per test prompt (with the test sample's layer prompts), then score

* FID (and optionally KID) of the composites against the test images (a test sample's
  source photograph where it has one, as in Text2Layer V-B, else its composite), clean-fid
  preprocessing (:mod:`layergen.metrics.fid`);
* CLIP score of each composite vs its prompt, and of each layer vs its layer prompt;
* mask IoU at 0.5 of the union of the generated foreground masks against a salient-mask
  backend run on the generated composite (the paper's IoU against ICON), and against the
  test sample's ground-truth masks (which, for synthetic scenes, the prompt pins down);
* all of it for every sample and per layer count (2, 3, 4 layers).

Generation is resumable: every sample is written to ``<out>/samples/`` as soon as its batch
is done, and samples already there are not generated again.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from layergen.atomic import write_text_atomic
from layergen.layers import LayeredImage
from layergen.metrics.breakdown import Breakdown, layer_group, markdown_table
from layergen.metrics.clip_score import DEFAULT_CLIP_MODEL, CLIPScorer
from layergen.metrics.fid import FidelityMetrics, MissingWeightsError
from layergen.metrics.mask_iou import SalientMaskFn, foreground_union, layer_mask_ious, mask_iou
from layergen.metrics.samples import SampleStore, sample_key

logger = logging.getLogger(__name__)

STAGE = "test"
REPORT_COLUMNS = (
    "num_samples", "fid", "kid_mean", "clip_score", "clip_background", "clip_foreground",
    "mask_iou_saliency", "mask_iou_reference", "mask_iou_reference_layers",
)
# Everything that decides sample ``i`` (its prompt and its noise). ``num_samples`` is not
# one: test sample ``i`` is the same whatever the count (synthetic scenes are seeded by index,
# shards are read in order), so a run can be extended; stored prompts are checked as well.
GENERATION_KEYS = (
    "model", "autoencoder", "data", "size", "min_foregrounds", "max_foregrounds", "steps",
    "guidance", "seed",
)


@dataclass
class EvaluationSettings:
    """What to generate and which metrics to compute.

    Attributes:
        model: the model's name or path.
        autoencoder: with a diffusion ``.ckpt``, the autoencoder given (``None``: recorded one).
        data: ``"synthetic"`` or the test shards.
        size, min_foregrounds, max_foregrounds: the synthetic test scenes.
        num_samples: test prompts to evaluate.
        steps, guidance, seed: sampling; sample ``i`` uses a generator seeded ``seed + i``.
        batch_size: prompts per pipeline call.
        fid, kid: compute FID / KID (Inception weights from ``inception_weights``).
        inception_weights: torch-fidelity Inception ``.pth`` (or ``$LAYERGEN_INCEPTION_WEIGHTS``).
        clip_model: CLIP hub id or path, ``None`` to skip the CLIP scores.
        grid_size: samples on each contact sheet.

    Resuming checks the fields named in :data:`GENERATION_KEYS`.
    """

    model: str = ""
    autoencoder: str | None = None
    data: str = "synthetic"
    size: int | None = None
    min_foregrounds: int = 1
    max_foregrounds: int = 3
    num_samples: int = 256
    steps: int = 50
    guidance: float = 7.5
    seed: int = 0
    batch_size: int = 8
    fid: bool = True
    kid: bool = False
    inception_weights: str | None = None
    clip_model: str | None = DEFAULT_CLIP_MODEL
    grid_size: int = 8


def load_references(
    data: str, num_samples: int, size: int = 64, min_foregrounds: int = 1,
    max_foregrounds: int = 3, seed: int = 0, num_layers: int | None = None,
) -> list[LayeredImage]:
    """The test samples whose prompts are evaluated.

    Args:
        data: ``"synthetic"`` (held-out shape scenes) or test shards (a directory of
            ``.tar`` files, a brace pattern or a single file).
        num_samples: how many to take (the first ones, in order).
        size, min_foregrounds, max_foregrounds, seed: synthetic scenes only.
        num_layers: keep only samples with this L (a joint autoencoder's fixed L); the
            others are counted and logged.
    """
    if data == "synthetic":
        from layergen.data.shapes import ShapeScenes

        if num_layers is not None:
            min_foregrounds = max_foregrounds = num_layers - 1
        scenes = ShapeScenes(size=size, min_foregrounds=min_foregrounds,
                             max_foregrounds=max_foregrounds, seed=seed, split="test",
                             length=num_samples)
        return [scenes[i] for i in range(len(scenes))]
    from layergen.data.shards import read_shards

    path = Path(data)
    urls = sorted(str(p) for p in path.glob("*.tar")) if path.is_dir() else data
    if not urls:
        raise FileNotFoundError(f"--data {data}: no .tar shards in this directory")
    samples, skipped = [], 0
    for sample in read_shards(urls):
        if num_layers is not None and sample.num_layers != num_layers:
            skipped += 1
            continue
        samples.append(sample)
        if len(samples) == num_samples:
            break
    if skipped:
        logger.warning("skipped %d test samples without %s layers (the model's fixed L)",
                       skipped, num_layers)
    if len(samples) < num_samples:
        logger.warning("--data %s holds only %d usable samples (asked for %d)", data,
                       len(samples), num_samples)
    return samples


def build_saliency(name: str | None, size: int = 64, max_foregrounds: int = 2, seed: int = 0,
                   cache_dir: str | None = None) -> SalientMaskFn | None:
    """The reference-mask backend for the IoU "against ICON".

    ``None``: none; ``"contrast"``: the synthesis pipeline's weight-free colour-contrast
    saliency; ``"segmenter"``: the synthetic benchmark's trained segmenter (synthetic data);
    anything else: a transformers segmentation model by hub id or path.

    Raises:
        MissingWeightsError: a model id that is neither a local directory nor in the cache.
    """
    if name is None:
        return None
    if name == "segmenter":
        from layergen.benchmark.segmenter import load_or_train_segmenter

        return load_or_train_segmenter(size, max_foregrounds, seed, cache_dir).saliency
    from layergen.synthesis.backends.saliency import ContrastSaliency, TransformersSaliency

    if name == "contrast":
        return ContrastSaliency()
    try:
        return TransformersSaliency(name)
    except (OSError, ValueError) as error:
        if Path(name).is_dir():  # the model is there but broken: not a download problem
            raise
        raise MissingWeightsError(
            f"--saliency '{name}': no such directory, and no segmentation model of that hub "
            f"id is available locally ({error.__class__.__name__}). On a machine with "
            f"internet access run `huggingface-cli download {name} --local-dir DIR`, copy DIR "
            "here and pass its path with --saliency (or use --saliency contrast, which needs "
            "no weights)."
        ) from error


def check_resume(out: Path, settings: EvaluationSettings) -> None:
    """Record the generation settings in ``<out>/run.json``; refuse to mix runs.

    Raises:
        ValueError: ``out`` holds samples generated with other settings (names the setting).
    """
    record = {key: getattr(settings, key) for key in GENERATION_KEYS}
    path = out / "run.json"
    if path.is_file():
        previous = json.loads(path.read_text())
        for key in GENERATION_KEYS:
            if previous.get(key) != record[key]:
                raise ValueError(
                    f"{path}: samples in {out} were generated with {key}={previous.get(key)!r}, "
                    f"this run asks for {record[key]!r}; use another --out or the same settings"
                )
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(record, indent=2))


def generate_missing(
    pipe: Any,
    references: Sequence[LayeredImage],
    store: SampleStore,
    settings: EvaluationSettings,
) -> list[LayeredImage]:
    """Generate the samples not yet in ``store`` (batched, with a progress bar), then load all.

    Sample ``i`` is prompted with ``references[i]``'s prompt and layer prompts.

    Raises:
        ValueError: a stored sample was generated for other prompts (the test data changed).
    """
    done = store.done()
    todo = [i for i in range(len(references)) if sample_key(i) not in done]
    if len(todo) < len(references):
        logger.info("resuming: %d of %d samples already generated", len(references) - len(todo),
                    len(references))
    with tqdm(total=len(todo), desc="generating", unit="sample") as progress:
        for start in range(0, len(todo), settings.batch_size):
            chunk = todo[start:start + settings.batch_size]
            output = pipe(
                prompt=[references[i].prompt for i in chunk],
                layer_prompts=[list(references[i].layer_prompts) for i in chunk],
                num_inference_steps=settings.steps,
                guidance_scale=settings.guidance,
                generator=[torch.Generator().manual_seed(settings.seed + i) for i in chunk],
            )
            for i, image in zip(chunk, output.images):
                store.save(sample_key(i), image)
            progress.update(len(chunk))
    generated = [store.load(sample_key(i)) for i in range(len(references))]
    for image, reference in zip(generated, references):
        stored = (image.prompt, list(image.layer_prompts))
        wanted = (reference.prompt, list(reference.layer_prompts))
        if stored != wanted:
            key = image.metadata["key"]
            raise ValueError(
                f"{store.path(key)} was generated for {stored[0]!r} {stored[1]}, but test "
                f"sample {key} is {wanted[0]!r} {wanted[1]}: the test data changed; use "
                "another --out"
            )
    return generated


def score(
    generated: Sequence[LayeredImage],
    references: Sequence[LayeredImage],
    fidelity: FidelityMetrics | None = None,
    clip: CLIPScorer | None = None,
    saliency: SalientMaskFn | Callable | None = None,
    batch_size: int = 16,
) -> dict[str, dict[str, float]]:
    """All metrics, overall and per layer count: ``{group: {metric: value}}``."""
    breakdown = Breakdown()
    for start in range(0, len(generated), batch_size):
        gen = list(generated[start:start + batch_size])
        ref = list(references[start:start + batch_size])
        groups = [layer_group(image.num_layers) for image in gen]
        composites = torch.stack([image.composite() for image in gen])
        for image in gen:
            breakdown.count(image.num_layers)
        if fidelity is not None:
            fidelity.update(torch.stack([r.image_or_composite() for r in ref]), real=True,
                            groups=[layer_group(r.num_layers) for r in ref])
            fidelity.update(composites, real=False, groups=groups)
        if clip is not None:
            clip_scores = clip.score(composites, [image.prompt for image in gen])
            for image, value, layers in zip(gen, clip_scores, clip.layer_scores(gen)):
                breakdown.add("clip_score", value, image.num_layers)
                breakdown.add("clip_background", layers[0], image.num_layers)
                breakdown.add("clip_foreground", layers[1:], image.num_layers)
        unions = torch.stack([foreground_union(image) for image in gen])
        if saliency is not None:
            ious = mask_iou(unions, saliency(composites).float().cpu())
            for image, value in zip(gen, ious):
                breakdown.add("mask_iou_saliency", value, image.num_layers)
        truth = torch.stack([foreground_union(r) for r in ref])
        if truth.shape[-2:] != unions.shape[-2:]:  # test data at another resolution
            truth = F.interpolate(truth, size=unions.shape[-2:], mode="bilinear", antialias=True)
        for image, r, value in zip(gen, ref, mask_iou(unions, truth)):
            breakdown.add("mask_iou_reference", value, image.num_layers)
            if image.num_foregrounds == r.num_foregrounds and image.size == r.size:
                breakdown.add("mask_iou_reference_layers", layer_mask_ious(image, r), image.num_layers)
    if fidelity is not None:
        breakdown.merge(fidelity.compute())
    return breakdown.summary()


def write_reports(
    out: Path, summary: dict[str, dict[str, float]], settings: EvaluationSettings,
    generated: Sequence[LayeredImage],
) -> dict[str, Path]:
    """``metrics.json``, ``report.md``, contact sheets under ``grids/`` and TensorBoard scalars."""
    from lightning.pytorch.loggers import TensorBoardLogger

    from layergen.export.contact_sheet import save_contact_sheet

    paths = {"json": out / "metrics.json", "markdown": out / "report.md"}
    paths["json"].write_text(json.dumps({"settings": asdict(settings), "metrics": summary}, indent=2))
    columns = [c for c in REPORT_COLUMNS if any(c in row for row in summary.values())]
    paths["markdown"].write_text(
        f"# Evaluation of `{settings.model}`\n\n"
        f"Data: `{settings.data}`, {len(generated)} samples, {settings.steps} steps, guidance "
        f"{settings.guidance}, seed {settings.seed}. Rows: all samples, then by number of layers "
        "(background included).\n\n" + markdown_table(summary, columns) + "\n"
    )
    grids: dict[str, list[LayeredImage]] = {"all": list(generated[: settings.grid_size])}
    for image in generated:
        bucket = grids.setdefault(f"{image.num_layers}layers", [])
        if len(bucket) < settings.grid_size:
            bucket.append(image)
    tb = TensorBoardLogger(save_dir=str(out), name="tensorboard", version="")
    for name, images in grids.items():
        paths[f"grid_{name}"] = save_contact_sheet(images, out / "grids" / f"{name}.png", tile=96)
        with Image.open(paths[f"grid_{name}"]) as picture:
            tb.experiment.add_image(f"{STAGE}/grid_{name}", np.asarray(picture.convert("RGB")),
                                    dataformats="HWC")
    scalars = {}
    for group, row in summary.items():
        prefix = STAGE if group == "all" else f"{STAGE}_{group}layers"
        scalars.update({f"{prefix}/{k}": v for k, v in row.items()})
    tb.log_metrics(scalars, step=0)
    tb.finalize("success")
    paths["tensorboard"] = Path(tb.log_dir)
    return paths


def run_evaluation(
    pipe: Any,
    references: Sequence[LayeredImage],
    out: str | Path,
    settings: EvaluationSettings,
    saliency: SalientMaskFn | Callable | None = None,
    fidelity: FidelityMetrics | None = None,
    clip: CLIPScorer | None = None,
) -> dict[str, Any]:
    """Generate (resuming), score and write the reports; returns ``{"metrics", "paths"}``.

    Build ``fidelity`` and ``clip`` before calling (they load weights and fail fast offline).
    """
    out = Path(out)
    check_resume(out, settings)
    generated = generate_missing(pipe, references, SampleStore(out / "samples"), settings)
    summary = score(generated, references, fidelity, clip, saliency, settings.batch_size)
    paths = write_reports(out, summary, settings, generated)
    logger.info("wrote %s", paths["markdown"])
    return {"metrics": summary, "paths": paths}


def load_generator(model: str | None, ckpt: str | None, autoencoder: str | None = None,
                   device: str = "cpu") -> Any:
    """A ``LayeredDiffusionPipeline`` from a pipeline directory / hub id, or from a diffusion
    Lightning checkpoint and its autoencoder (by default the one the checkpoint records).

    Raises:
        MissingWeightsError: the ``--model``, ``--ckpt`` or ``--autoencoder`` is not on this
            machine (names the argument and where to put it).
    """
    from layergen.pipelines import load_pipeline

    if ckpt is None:
        try:
            return load_pipeline(model, device=device)
        except (OSError, ValueError) as error:
            if Path(model).is_dir():  # the pipeline is there but broken: not a download problem
                raise
            raise MissingWeightsError(
                f"--model '{model}': no such directory, and no pipeline of that hub id is "
                f"available locally ({error.__class__.__name__}). Pass the directory a "
                "LayeredDiffusionPipeline was saved to (save_pretrained, e.g. a training run's "
                "pretrained/ folder), or download the hub id on a machine with internet access "
                "(`huggingface-cli download ID --local-dir DIR`), copy DIR here and pass it with "
                "--model."
            ) from error
    if not Path(ckpt).is_file():
        raise MissingWeightsError(
            f"--ckpt '{ckpt}' does not exist. Copy the LayeredDiffusionModule checkpoint that "
            "`train.py fit` wrote (under the run's checkpoints/ folder, e.g. last.ckpt) to this "
            "machine and pass its path with --ckpt."
        )
    argument = "--autoencoder"
    if autoencoder is None:
        from layergen.pipelines.checkpoints import load_lightning_checkpoint

        autoencoder = load_lightning_checkpoint(ckpt)[0].get("autoencoder")
        if not autoencoder:
            raise ValueError(f"{ckpt}: the checkpoint records no autoencoder; pass --autoencoder")
        argument = f"the autoencoder recorded in {ckpt}"
    if not Path(autoencoder).exists():
        raise MissingWeightsError(
            f"{argument} '{autoencoder}' does not exist. Copy the autoencoder directory "
            "(save_pretrained) or its Lightning .ckpt to this machine and pass its path with "
            "--autoencoder."
        )
    return load_pipeline(ckpt, autoencoder=autoencoder, device=device)


def evaluate_model(args: Any) -> dict[str, Any]:
    """Run the evaluation described by ``evaluate.py``'s parsed arguments.

    The metric models are built first, so that missing weights fail before any generation.
    """
    fidelity = (None if args.no_fid
                else FidelityMetrics(weights_path=args.inception_weights, compute_kid=args.kid))
    clip = None if args.no_clip else CLIPScorer(args.clip_model, device=args.device)
    pipe = load_generator(args.model, args.ckpt, args.autoencoder, args.device)
    pipe.set_progress_bar_config(disable=True)
    from layergen.data.shapes import MIN_SIZE

    size = args.size or max(pipe.default_size, MIN_SIZE)
    recipe = pipe.resolve_recipe(args.steps, args.guidance)  # unset: the pipeline's recipe
    settings = EvaluationSettings(
        model=str(args.model or args.ckpt), autoencoder=args.autoencoder, data=args.data,
        size=size, min_foregrounds=args.min_foregrounds, max_foregrounds=args.max_foregrounds,
        num_samples=args.num_samples, steps=recipe["num_inference_steps"],
        guidance=recipe["guidance_scale"], seed=args.seed,
        batch_size=args.batch_size, fid=not args.no_fid, kid=args.kid,
        inception_weights=args.inception_weights,
        clip_model=None if args.no_clip else args.clip_model,
    )
    references = load_references(args.data, args.num_samples, size, args.min_foregrounds,
                                 args.max_foregrounds, args.seed, pipe.fixed_num_layers)
    saliency = build_saliency(None if args.saliency == "none" else args.saliency, size,
                              max(args.max_foregrounds, 2), args.seed)
    return run_evaluation(pipe, references, args.out, settings, saliency, fidelity, clip)
