"""Training-step time and peak memory: joint layered autoencoder vs diffusers' AutoencoderKL.

Both models share one body (widths, depth, groups, latent channels) and see the same batch of
synthetic two-layer scenes; the layered model trains with its full loss (L1 per component,
mask loss, KL), the AutoencoderKL with L1 + KL on the composite. Each model is measured in its
own process so that peak memory (CUDA: max allocated; CPU: peak resident set) is its own.

    python bench/bench_autoencoder.py                       # tiny, CPU
    python bench/bench_autoencoder.py --size 256 --channels 128 256 512 512 --layers-per-block 2 \
        --groups 32 --batch 8 --device cuda                  # SD's body
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import time

import torch

from layergen.data.shapes import ShapeScenes
from layergen.layers import LayeredBatch


def _batch(size: int, batch: int, device: str) -> LayeredBatch:
    scenes = ShapeScenes(size=size, min_foregrounds=1, max_foregrounds=1, length=batch)
    return LayeredBatch.collate([scenes[i] for i in range(batch)], num_layers=2).to(device)


def _measure(kind: str, args: argparse.Namespace, queue: mp.Queue) -> None:
    from diffusers import AutoencoderKL

    from layergen.losses.image_loss import image_loss, kl_loss
    from layergen.losses.mask_loss import mask_loss
    from layergen.models import JointAutoencoder

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    body = {
        "block_out_channels": tuple(args.channels),
        "layers_per_block": args.layers_per_block,
        "norm_num_groups": args.groups,
        "latent_channels": args.latent_channels,
    }
    batch = _batch(args.size, args.batch, args.device)
    if kind == "layered":
        model = JointAutoencoder(num_foregrounds=1, **body)
    else:
        blocks = len(args.channels)
        model = AutoencoderKL(
            down_block_types=("DownEncoderBlock2D",) * blocks,
            up_block_types=("UpDecoderBlock2D",) * blocks,
            **body,
        )
    model.to(args.device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    composite = batch.composite()

    def step() -> None:
        if kind == "layered":
            recon, posterior = model(batch.images, batch.masks)
            terms = image_loss(
                recon.images, batch.images, batch.layer_valid, recon.composite, composite
            )
            masks = mask_loss(recon.masks[:, 1:], batch.masks[:, 1:], batch.images)
            loss = terms["rec"] + masks["mask"] + 1e-6 * kl_loss(posterior, (args.size,) * 2)
        else:
            posterior = model.encode(composite).latent_dist
            recon = model.decode(posterior.sample()).sample
            loss = (recon - composite).abs().mean() + 1e-6 * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    cuda = args.device.startswith("cuda")
    for _ in range(args.warmup):
        step()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    if cuda:
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / args.steps
    if cuda:
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    params = sum(p.numel() for p in model.parameters())
    queue.put((kind, seconds, peak_mb, params))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--channels", type=int, nargs="+", default=[16, 32])
    parser.add_argument("--layers-per-block", type=int, default=1)
    parser.add_argument("--groups", type=int, default=8)
    parser.add_argument("--latent-channels", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    context = mp.get_context("spawn")
    results = {}
    for kind in ("layered", "autoencoder_kl"):
        queue = context.Queue()
        process = context.Process(target=_measure, args=(kind, args, queue))
        process.start()
        results[kind] = queue.get()
        process.join()
    memory = "peak CUDA allocated" if args.device.startswith("cuda") else "peak RSS"
    print(
        f"body {args.channels} x{args.layers_per_block}, {args.size}px, batch {args.batch}, "
        f"{args.device}, {args.threads} thread(s)"
    )
    for kind, seconds, peak_mb, params in results.values():
        print(
            f"{kind:>15}: {seconds * 1000:8.1f} ms/step  {memory} {peak_mb:8.1f} MiB  "
            f"{params / 1e6:.2f} M params"
        )
    ratio = results["layered"][1] / results["autoencoder_kl"][1]
    print(f"step-time ratio layered / AutoencoderKL: {ratio:.2f}")


if __name__ == "__main__":
    main()
