"""Overhead of the layer-collaborative blocks: LayeredUNet on L layers vs the base UNet.

Times forward + backward of ``LayeredUNet`` on ``(B, L, C, h, w)`` against the base
``UNet2DConditionModel`` of the same config run L times on ``(B, C, h, w)`` (one layer each),
and reports the ratio (goal <= 1.2) and the memory of the activations saved for backward
with and without gradient checkpointing (plus the CUDA peak on a GPU).

    python bench/bench_unet.py --preset tiny            # CPU, seconds
    python bench/bench_unet.py --preset sd --device cuda --dtype bfloat16 --layers 4
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from diffusers import UNet2DConditionModel

from layergen.models.layered_unet import LayeredUNet

PRESETS = {
    "tiny": dict(sample_size=8, block_out_channels=(32, 64), layers_per_block=1,
                 down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
                 cross_attention_dim=32, attention_head_dim=4, norm_num_groups=8),
    "small": dict(sample_size=16, block_out_channels=(64, 128, 128), layers_per_block=1,
                  down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                  up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
                  cross_attention_dim=64, attention_head_dim=8, norm_num_groups=16),
    "sd": dict(sample_size=32, cross_attention_dim=768, attention_head_dim=8),  # SD 1.x UNet
}


def saved_activation_bytes(step: Callable[[], torch.Tensor]) -> int:
    """Bytes of the distinct tensors autograd saves for backward during ``step()``."""
    seen: dict[tuple[int, int], int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.device.type != "meta":
            seen[(t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())] = (
                t.untyped_storage().nbytes()
            )
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = step()
    loss.backward()
    return sum(seen.values())


def timed(step: Callable[[], torch.Tensor], repeats: int, device: torch.device) -> float:
    """Median seconds of forward + backward."""
    times = []
    for _ in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        step().backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return sorted(times[1:])[len(times[1:]) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    torch.manual_seed(0)
    config = PRESETS[args.preset]
    base = UNet2DConditionModel(**config).to(device, dtype)
    model = LayeredUNet.from_unet(base).to(device, dtype)
    b, n, size, dim = args.batch, args.layers, config["sample_size"], config["cross_attention_dim"]
    x = torch.randn(b, n, 4, size, size, device=device, dtype=dtype)
    t = torch.randint(0, 1000, (b, n), device=device)
    g = torch.randn(b, 77 if args.preset == "sd" else 16, dim, device=device, dtype=dtype)
    lh = torch.randn(b, n, g.shape[1], dim, device=device, dtype=dtype)

    def layered() -> torch.Tensor:
        return model(x, t, g, lh).sample.float().square().mean()

    def base_per_layer() -> torch.Tensor:
        return sum(base(x[:, i], t[:, i], g).sample.float().square().mean() for i in range(n))

    def base_folded() -> torch.Tensor:
        # the same SD blocks on the layers folded into the batch, without layer blocks
        return base(x.flatten(0, 1), t.flatten(), g.repeat_interleave(n, 0)).sample.float().square().mean()

    t_layered = timed(layered, args.repeats, device)
    t_base = timed(base_per_layer, args.repeats, device)
    t_folded = timed(base_folded, args.repeats, device)
    extra = sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in base.parameters())
    print(f"preset {args.preset}, B={b}, L={n}, {device}, {args.dtype}")
    print(f"parameters: base {sum(p.numel() for p in base.parameters()) / 1e6:.2f} M, "
          f"layer blocks + enhancer {extra / 1e6:.2f} M")
    print(f"forward+backward: LayeredUNet {t_layered * 1e3:.1f} ms, "
          f"{n} x base UNet {t_base * 1e3:.1f} ms, ratio {t_layered / t_base:.2f}")
    print(f"layer-block overhead vs base UNet on the folded batch ({t_folded * 1e3:.1f} ms): "
          f"{t_layered / t_folded:.2f}")
    for checkpointing in (False, True):
        if checkpointing:
            model.enable_gradient_checkpointing()
        model.train()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        saved = saved_activation_bytes(layered)
        peak = f", CUDA peak {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB" if device.type == "cuda" else ""
        print(f"gradient checkpointing {'on ' if checkpointing else 'off'}: "
              f"saved activations {saved / 2**20:.1f} MiB{peak}")
        model.zero_grad(set_to_none=True)


if __name__ == "__main__":
    main()
