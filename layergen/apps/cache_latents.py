"""Encode layered shards (or synthetic scenes) once into latent shards for diffusion training.

``python -m layergen.apps.cache_latents --shards "data/train-{000000..000009}.tar"
--out data/latents --autoencoder outputs/autoencoder --text-encoder outputs/text_encoder``

``python -m layergen.apps.cache_latents --scenes 4096 --size 32 --max-foregrounds 2
--out demo_runs/latents/train --autoencoder demo_runs/ae/pretrained --text-encoder
demo_runs/text_encoder`` (synthetic scenes of a split, as ``LayeredDataModule`` draws them)

:func:`cache_latents` encodes each sample once with the frozen autoencoder and text encoder
(:func:`encode_latent_samples`) and writes the shards of :mod:`layergen.data.latents` with
:func:`~layergen.data.latents.write_latent_shards`, ``T("")`` beside them. It is resumable:
:data:`PROGRESS_FILE` records what the cache is made from and how many shards are complete,
so re-running a killed command with the same arguments encodes only the shards not yet written.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as save_safetensors

from layergen.data.latents import (
    CACHE_FIELDS_VERSION,
    EMPTY_PROMPT_FILE,
    SHARD_PREFIX,
    encode_composites,
    layer_boxes,
    write_latent_shards,
)
from layergen.layers import LayeredBatch, LayeredImage
from layergen.models.autoencoder_interface import LayeredAutoencoderInterface
from layergen.models.text_encoder import encode_prompts, load_text_encoder

logger = logging.getLogger(__name__)

PROGRESS_FILE = "cache_progress.json"


@torch.no_grad()
def encode_latent_samples(
    samples: Sequence[LayeredImage],
    autoencoder: LayeredAutoencoderInterface,
    tokenizer: Any,
    text_encoder: Any,
) -> list[dict[str, Any]]:
    """Encode layered images into cached-latent samples (the fields of :mod:`layergen.data.latents`)."""
    batch = LayeredBatch.collate(samples)
    device = next(autoencoder.parameters()).device
    latents = autoencoder.encode(
        batch.images.to(device), batch.masks.to(device), batch.layer_valid.to(device)
    ).latent_dist.mode()
    full_layers = batch.layer_valid.shape[1]
    layout = autoencoder.latent_layout
    composites = encode_composites(autoencoder, batch.images.to(device), batch.masks.to(device)).cpu()
    boxes = layer_boxes(batch.masks, batch.layer_valid)
    texts = list(batch.prompts) + [p for lp in batch.layer_prompts for p in lp]
    embeds = encode_prompts(tokenizer, text_encoder, texts).half().cpu()
    layer_embeds = embeds[len(samples) :].unflatten(0, (len(samples), full_layers))
    out = []
    for b, sample in enumerate(samples):
        n = sample.num_layers
        z = layout.unpad(latents[b].float().cpu(), n, full_layers)
        out.append(
            {
                "key": str(sample.metadata.get("key", sample.metadata.get("index", b))),
                "prompt": sample.prompt,
                "layer_prompts": list(sample.layer_prompts),
                "latents": z.contiguous(),
                "prompt_embeds": embeds[b].contiguous(),
                "layer_prompt_embeds": layer_embeds[b, :n].contiguous(),
                "composite_latents": composites[b].float().contiguous(),
                "layer_boxes": boxes[b, :n].contiguous(),
            }
        )
    return out


def _fingerprint(model: str) -> list[Any]:
    """A model's path or hub id and, when it is local, the size and modification time of
    each of its files (a model re-trained in place is another model)."""
    path = Path(model)
    if not path.exists():
        return [model]
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return [model] + [
        [
            p.relative_to(path).as_posix() if p != path else p.name,
            p.stat().st_size,
            p.stat().st_mtime_ns,
        ]
        for p in files
    ]


def _write_progress(path: Path, progress: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(progress))
    os.replace(tmp, path)


def _completed_shards(out_dir: Path, identity: dict[str, Any] | None) -> tuple[int, bool]:
    """``(complete shards, whether the cache is finished)`` recorded for ``identity``."""
    path = out_dir / PROGRESS_FILE
    if identity is None or not path.is_file():
        return 0, False
    try:
        progress = json.loads(path.read_text())
    except ValueError:
        return 0, False
    if not isinstance(progress, dict) or progress.get("identity") != identity:
        logger.info("%s: made from other inputs; encoding everything again", path)
        return 0, False
    return int(progress.get("shards", 0)), bool(progress.get("finished", False))


def cache_latents(
    shards: str | list[str] | None,
    out_dir: str | Path,
    autoencoder: str,
    text_encoder: str,
    batch_size: int = 32,
    samples_per_shard: int = 1000,
    device: str = "cpu",
    samples: Iterable[LayeredImage] | None = None,
    source: dict[str, Any] | None = None,
) -> list[Path]:
    """Encode layered shards (or ``samples``) into latent shards with a frozen autoencoder
    and text encoder; ``T("")`` goes beside them (:data:`EMPTY_PROMPT_FILE`) so that reading
    the cache loads no model.

    Resumable: :data:`PROGRESS_FILE` records what the cache is made from (``shards``, or
    ``source``, a description of ``samples``; both models' files; ``samples_per_shard``) and
    the number of complete shards, after each shard. A re-run with the same inputs skips
    (reads but does not encode) the samples of the complete shards, so a killed run loses
    at most the shard it was writing; a finished cache is returned as it is. With other
    inputs, or ``samples`` without ``source``, everything is encoded again.

    Returns:
        Every shard of the cache, in order.
    """
    from layergen.data.shards import read_shards
    from layergen.models.loading import load_autoencoder

    if (shards is None) == (samples is None):
        raise ValueError("cache_latents: give exactly one of `shards` or `samples`")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    identity = None
    if samples is None or source is not None:
        identity = {
            "shards": shards,
            "source": source,
            "samples_per_shard": samples_per_shard,
            "fields": CACHE_FIELDS_VERSION,
            "autoencoder": _fingerprint(autoencoder),
            "text_encoder": _fingerprint(text_encoder),
        }
    done, finished = _completed_shards(out_dir, identity)
    previous = [out_dir / f"{SHARD_PREFIX}-{i:06d}.tar" for i in range(done)]
    if finished and all(p.is_file() for p in previous) and (out_dir / EMPTY_PROMPT_FILE).is_file():
        logger.info("%s: the cache is complete (%d shards)", out_dir, done)
        return previous
    if done:
        logger.info("resuming: %d shards of %s already written", done, out_dir)

    def record(count: int, finished: bool = False) -> None:
        if identity is not None:
            progress = {"identity": identity, "shards": count, "finished": finished}
            _write_progress(out_dir / PROGRESS_FILE, progress)

    record(done)  # replaces the record of another cache before any of its shards is overwritten
    if identity is None:
        (out_dir / PROGRESS_FILE).unlink(missing_ok=True)
    ae = load_autoencoder(autoencoder).to(device).eval()
    tokenizer, te = load_text_encoder(text_encoder)
    te.to(device)

    def encoded() -> Iterator[dict[str, Any]]:
        chunk: list[LayeredImage] = []
        source_samples = read_shards(shards) if samples is None else samples
        for sample in itertools.islice(source_samples, done * samples_per_shard, None):
            chunk.append(sample)
            if len(chunk) == batch_size:
                yield from encode_latent_samples(chunk, ae, tokenizer, te)
                chunk = []
        if chunk:
            yield from encode_latent_samples(chunk, ae, tokenizer, te)

    paths = previous + write_latent_shards(
        encoded(), out_dir, samples_per_shard, SHARD_PREFIX, done, record
    )
    empty = encode_prompts(tokenizer, te, [""])[0].half().cpu().contiguous()
    tmp = out_dir / (EMPTY_PROMPT_FILE + ".tmp")
    tmp.write_bytes(save_safetensors({"empty_prompt_embeds": empty}))
    os.replace(tmp, out_dir / EMPTY_PROMPT_FILE)
    record(len(paths), finished=True)
    logger.info("wrote %d latent shards to %s", len(paths), out_dir)
    return paths


def main(argv: Sequence[str] | None = None) -> None:
    """Parse the command line and call :func:`cache_latents`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--shards", help="layered shard URLs (brace pattern)")
    source.add_argument("--scenes", type=int, help="this many synthetic scenes instead")
    parser.add_argument("--size", type=int, default=32, help="scene side (--scenes)")
    parser.add_argument("--min-foregrounds", type=int, default=1, help="(--scenes)")
    parser.add_argument("--max-foregrounds", type=int, default=2, help="(--scenes)")
    parser.add_argument("--split", default="train", help="scene split (--scenes)")
    parser.add_argument("--seed", type=int, default=0, help="scene seed (--scenes)")
    parser.add_argument("--out", required=True, help="output directory for latent shards")
    parser.add_argument("--autoencoder", required=True, help="layered autoencoder directory")
    parser.add_argument("--text-encoder", required=True, help="CLIP text encoder (hub id or path)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--samples-per-shard", type=int, default=1000)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    samples, source = None, None
    if args.scenes is not None:
        from layergen.data.shapes import ShapeScenes

        scenes = ShapeScenes(size=args.size, min_foregrounds=args.min_foregrounds,
                             max_foregrounds=args.max_foregrounds, seed=args.seed,
                             split=args.split, length=args.scenes)
        samples = (scenes[i] for i in range(len(scenes)))
        source = {"scenes": args.scenes, "size": args.size, "split": args.split, "seed": args.seed,
                  "min_foregrounds": args.min_foregrounds, "max_foregrounds": args.max_foregrounds}
    cache_latents(
        args.shards,
        args.out,
        args.autoencoder,
        args.text_encoder,
        batch_size=args.batch_size,
        samples_per_shard=args.samples_per_shard,
        device=args.device,
        samples=samples,
        source=source,
    )


if __name__ == "__main__":
    main()
