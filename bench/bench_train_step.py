"""Samples/s of the demo diffusion training step: images encoded every step vs cached latents.

Builds the demo models of ``configs/demo/`` (random weights: speed does not depend on them)
and times optimiser steps of ``LayeredDiffusionModule.diffusion_loss`` + backward + AdamW:

- "images": ``LayeredBatch`` es of synthetic scenes collated per step, the frozen
  autoencoder and text encoder run every step (the demo before cached latents);
- "latents": the same scenes encoded once into :class:`~layergen.data.latents.InMemoryLatents`,
  whole batches drawn by tensor indexing (the demo now), at several batch sizes.

    python bench/bench_train_step.py                      # ~2 min on 2 cores
    python bench/bench_train_step.py --batch-sizes 8 16 32 --steps 20 --profile
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import yaml

from layergen.apps.cache_latents import encode_latent_samples
from layergen.data.datamodule import LayeredDataModule
from layergen.data.latents import InMemoryLatents, ShuffledBatches
from layergen.data.shapes import vocabulary
from layergen.lit.diffusion import LayeredDiffusionModule
from layergen.models import PerLayerAutoencoder
from layergen.models.text_encoder import build_tiny_text_encoder, encode_prompts

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "demo"


def init_args(name: str) -> tuple[dict, dict]:
    config = yaml.safe_load((CONFIGS / name).read_text())
    return config["model"]["init_args"], config["data"]["init_args"]


def build_module(tmp: Path) -> tuple[LayeredDiffusionModule, dict]:
    ae_args, _ = init_args("ae.yaml")
    PerLayerAutoencoder(**ae_args["autoencoder"]["init_args"]).save_pretrained(tmp / "ae")
    build_tiny_text_encoder(tmp / "text_encoder", vocabulary())
    model_args, _ = init_args("ldm.yaml")
    model_args.update(autoencoder=str(tmp / "ae"), text_encoder=str(tmp / "text_encoder"))
    _, scene_args = init_args("ae.yaml")  # the scenes both demo stages train on
    return LayeredDiffusionModule(**model_args), scene_args


def time_steps(module: LayeredDiffusionModule, batches, steps: int, warmup: int = 3) -> float:
    """Seconds per optimiser step (median-free mean over ``steps`` after ``warmup``)."""
    optimizer = torch.optim.AdamW(module.unet.parameters(), lr=1e-4)
    module.train()
    for i in range(warmup + steps):
        if i == warmup:
            start = time.perf_counter()
        loss = module.diffusion_loss(module.unet, next(batches))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--num-scenes", type=int, default=512)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 16, 32, 64])
    parser.add_argument("--profile", action="store_true", help="print the top ops of one step")
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    with tempfile.TemporaryDirectory() as tmp:
        module, data_args = build_module(Path(tmp))
        data_args.update(num_train=args.num_scenes, num_val=8, batch_size=8)  # the old demo's batch
        data = LayeredDataModule(**data_args)
        data.setup("fit")

        def image_batches():
            while True:
                yield from data.train_dataloader()

        batch = data_args["batch_size"]
        before = batch / time_steps(module, image_batches(), args.steps)
        print(f"images, batch {batch}: {before:.1f} samples/s")

        scenes = [data.datasets["train"][i] for i in range(args.num_scenes)]
        start = time.perf_counter()
        encoded = []
        for first in range(0, len(scenes), 64):
            encoded += encode_latent_samples(scenes[first:first + 64], module.autoencoder,
                                             module.tokenizer, module.text_encoder)
        empty = encode_prompts(module.tokenizer, module.text_encoder, [""])[0]
        cache = InMemoryLatents(encoded, data_args["max_foregrounds"] + 1, empty)
        print(f"cached {len(cache)} scenes in {time.perf_counter() - start:.1f} s")
        for size in args.batch_sizes:
            sampler = ShuffledBatches(len(cache), size)

            def latent_batches(sampler=sampler):
                while True:
                    for indices in sampler:
                        yield cache[indices]

            rate = size / time_steps(module, latent_batches(), args.steps)
            print(f"latents, batch {size}: {rate:.1f} samples/s ({rate / before:.2f}x images/batch {batch})")
        if args.profile:
            from torch.profiler import profile

            batches = latent_batches()
            with profile() as prof:
                time_steps(module, batches, 2, warmup=1)
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))


if __name__ == "__main__":
    main()
