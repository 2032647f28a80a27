"""Samples/s of the demo diffusion step on idle cores and beside a second CPU-bound process.

PyTorch's CPU ops run on an OpenMP thread pool, one thread per core. When another process
takes a core, a pool thread waits for its peer at every op's barrier, and by default OpenMP
threads wait by spinning, burning the time slice the peer needs. This script measures the
demo's training step (cached latents, batch 32; :mod:`bench_train_step`'s models) for a few
thread settings, each in a fresh process (the OpenMP settings are read once, at start-up),
first alone and then beside a competitor that multiplies matrices on every core (as another
training would):

    python bench/bench_threads_under_load.py            # ~4 min on 2 cores, on an idle machine
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SETTINGS = {  # name -> environment of the measured process
    "default (OpenMP spins)": {},
    "OMP_WAIT_POLICY=PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"},
    "GOMP_SPINCOUNT=10000": {"GOMP_SPINCOUNT": "10000"},
    "GOMP_SPINCOUNT=1000": {"GOMP_SPINCOUNT": "1000"},
    "1 thread": {"OMP_NUM_THREADS": "1"},
}
COMPETITOR = (
    "import torch\n"
    "a = torch.randn(512, 512)\n"
    "while True:\n"
    "    a = torch.tanh(a @ a)\n"
)


def measure(steps: int, batch_size: int) -> None:
    """In the child: build the demo modules, cache scenes, print samples/s of ``steps`` steps."""
    import torch
    from bench_train_step import build_module, time_steps

    from layergen.apps.cache_latents import encode_latent_samples
    from layergen.data.datamodule import LayeredDataModule
    from layergen.data.latents import InMemoryLatents, ShuffledBatches
    from layergen.models.text_encoder import encode_prompts

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        module, data_args = build_module(Path(tmp))
        data_args.update(num_train=256, num_val=8)
        data = LayeredDataModule(**data_args)
        data.setup("fit")
        scenes = [data.datasets["train"][i] for i in range(256)]
        encoded = encode_latent_samples(scenes, module.autoencoder, module.tokenizer,
                                        module.text_encoder)
        empty = encode_prompts(module.tokenizer, module.text_encoder, [""])[0]
        cache = InMemoryLatents(encoded, data_args["max_foregrounds"] + 1, empty)
        sampler = ShuffledBatches(len(cache), batch_size)

        def batches():
            while True:
                for indices in sampler:
                    yield cache[indices]

        rate = batch_size / time_steps(module, batches(), steps)
        print(f"{rate:.2f} {torch.get_num_threads()}")


def run_child(env: dict[str, str], steps: int, batch_size: int) -> tuple[float, int]:
    """Samples/s and thread count of one measurement in a fresh process."""
    out = subprocess.run(
        [sys.executable, __file__, "--child", "--steps", str(steps), "--batch-size", str(batch_size)],
        env={**os.environ, **env}, capture_output=True, text=True, check=True,
    ).stdout.split()
    return float(out[-2]), int(out[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        measure(args.steps, args.batch_size)
        return
    print(f"{os.cpu_count()} cores; demo diffusion step, cached latents, batch {args.batch_size}")
    print("| setting | threads | idle samples/s | beside a CPU-bound process | loaded / idle |")
    print("|---|---|---|---|---|")
    for name in args.settings:
        env = SETTINGS[name]
        idle, threads = run_child(env, args.steps, args.batch_size)
        competitor = subprocess.Popen([sys.executable, "-c", COMPETITOR])
        try:
            time.sleep(2)
            loaded, _ = run_child(env, args.steps, args.batch_size)
        finally:
            competitor.kill()
            competitor.wait()
        print(f"| {name} | {threads} | {idle:.1f} | {loaded:.1f} | {loaded / idle:.2f} |", flush=True)


if __name__ == "__main__":
    main()
