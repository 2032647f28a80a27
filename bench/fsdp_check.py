"""FSDP on GPUs, one command: does the FSDP export equal the DDP export?

    python bench/fsdp_check.py                 # every visible GPU (2 or more recommended)
    python bench/fsdp_check.py --devices 2 --precision 32-true bf16-mixed

Trains a tiny LayeredDiffusionModule (random weights, synthetic scenes, nothing downloaded)
for a few steps with ``train.py`` under DDP and under Lightning's unmodified
``FSDPStrategy`` with configs/ldm_fsdp.yaml's settings (the shipped sharding strategy, and
FULL_SHARD), then compares the UNets that ``SavePretrained`` exported (EMA weights) and the
trained weights in ``last.ckpt``. CPU runs of the same comparison are in tests/test_fsdp.py
(a test-only strategy lifts Lightning's GPU requirement); this script covers what they
cannot: CUDA devices, NCCL, and FSDP's bf16 parameters under CUDA autocast. Exit status 0
when every FSDP run matches DDP within the tolerance (32-true: 1e-5, the real check;
bf16-mixed: ``2 x steps x lr``, Adam's bound, as FSDP computes with bf16 parameters and
reduces gradients in bf16 where DDP autocasts float32 ones: a smoke test).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
UNET_FILE = Path("pretrained") / "unet" / "diffusion_pytorch_model.safetensors"
UNET_CONFIG = dict(
    sample_size=16, in_channels=4, out_channels=4, block_out_channels=[32, 64],
    layers_per_block=1, down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"], cross_attention_dim=32,
    attention_head_dim=8, norm_num_groups=8,
)
STEPS, LR = 4, 1e-4


def write_assets(root: Path) -> Path:
    """Tiny autoencoder and text encoder directories and the model config using them."""
    from layergen.data.shapes import vocabulary
    from layergen.models import PerLayerAutoencoder
    from layergen.models.text_encoder import build_tiny_text_encoder

    torch.manual_seed(0)
    PerLayerAutoencoder(
        latent_channels=4, block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8,
        mid_block_add_attention=False,
    ).save_pretrained(root / "ae")
    build_tiny_text_encoder(root / "te", vocabulary(), hidden_size=32, num_layers=1, max_length=16)
    config = {
        "seed_everything": 0,
        "trainer": {
            "max_steps": STEPS, "limit_val_batches": 1, "val_check_interval": STEPS,
            "logger": False, "enable_progress_bar": False, "enable_model_summary": False,
            "callbacks": [
                {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                 "init_args": {"save_last": True, "save_top_k": 0}},
                {"class_path": "layergen.lit.callbacks.SavePretrained"},
            ],
        },
        "model": {"class_path": "layergen.lit.diffusion.LayeredDiffusionModule",
                  "init_args": {"autoencoder": str(root / "ae"), "text_encoder": str(root / "te"),
                                "unet_config": UNET_CONFIG, "prompt_enhancer_heads": 2,
                                "ema_decay": 0.5, "warmup_steps": 1, "lr": LR}},
        "data": {"class_path": "layergen.data.LayeredDataModule",
                 "init_args": {"image_size": 32, "num_train": 64, "num_val": 8, "batch_size": 2}},
    }
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def strategies() -> list[tuple[str, str, str]]:
    """``(run name, label, --trainer.strategy)``: DDP, the shipped FSDP settings, FULL_SHARD."""
    shipped = yaml.safe_load((ROOT / "configs" / "ldm_fsdp.yaml").read_text())["trainer"]["strategy"]
    full = {**shipped, "init_args": {**shipped["init_args"], "sharding_strategy": "FULL_SHARD"}}
    name = shipped["init_args"].get("sharding_strategy", "FULL_SHARD")
    return [("ddp", "ddp", "ddp"),
            ("fsdp_shipped", f"fsdp {name} (ldm_fsdp.yaml)", json.dumps(shipped)),
            ("fsdp_full_shard", "fsdp FULL_SHARD", json.dumps(full))]


def train(config: Path, run: Path, accelerator: str, devices: int, precision: str,
          strategy: str) -> None:
    command = [sys.executable, str(ROOT / "train.py"), "fit", "--config", str(config),
               f"--trainer.accelerator={accelerator}", f"--trainer.devices={devices}",
               f"--trainer.precision={precision}", f"--trainer.strategy={strategy}",
               f"--trainer.default_root_dir={run}"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    result = subprocess.run(command, cwd=run.parent, env=env, capture_output=True, text=True)
    if result.returncode:
        sys.exit(f"{' '.join(command)}\nfailed:\n{(result.stdout + result.stderr)[-4000:]}")


def max_difference(run: Path, reference: Path) -> tuple[float, float]:
    """Largest |difference| of the exported (EMA) UNet and of the trained UNet in last.ckpt."""
    exported, expected = load_file(run / UNET_FILE), load_file(reference / UNET_FILE)
    if exported.keys() != expected.keys():
        return float("inf"), float("inf")
    ema = max((exported[k].float() - expected[k].float()).abs().max().item() for k in expected)
    ckpt, ref = (torch.load(r / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
                 for r in (run, reference))
    keys = [k for k in ref if k.startswith("unet.")]
    if sorted(keys) != sorted(k for k in ckpt if k.startswith("unet.")):
        return ema, float("inf")
    trained = max((ckpt[k].float() - ref[k].float()).abs().max().item() for k in keys)
    return ema, trained


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=max(1, torch.cuda.device_count()))
    parser.add_argument("--accelerator", default="gpu",
                        help="gpu (FSDP needs it); cpu runs the DDP part only (a plumbing check)")
    parser.add_argument("--precision", nargs="+", default=["32-true", "bf16-mixed"])
    parser.add_argument("--out", help="keep the runs here (default: a temporary directory)")
    args = parser.parse_args(argv)
    if args.accelerator == "gpu" and not torch.cuda.is_available():
        sys.exit("no CUDA device: run tests/test_fsdp.py for the CPU version of this check")
    root = Path(args.out or tempfile.mkdtemp(prefix="fsdp_check_"))
    root.mkdir(parents=True, exist_ok=True)
    config = write_assets(root)
    runs = strategies() if args.accelerator == "gpu" else strategies()[:1]
    failed = False
    print(f"{args.devices} x {args.accelerator}, {STEPS} steps at lr {LR}; runs in {root}")
    print(f"{'precision':<11} {'strategy':<28} {'max |EMA export - DDP|':>24} "
          f"{'max |trained - DDP|':>20}  verdict")
    for precision in args.precision:
        # bf16-mixed: Adam moves a weight by at most ~lr per step, in either run
        tolerance = 1e-5 if precision == "32-true" else 2 * STEPS * LR
        reference = None
        for slug, name, strategy in runs:
            run = root / f"{precision}-{slug}"
            train(config, run, args.accelerator, args.devices, precision, strategy)
            if reference is None:
                reference = run
                print(f"{precision:<11} {name:<28} {'(reference)':>24} {'':>20}")
                continue
            ema, trained = max_difference(run, reference)
            ok = ema <= tolerance and trained <= tolerance
            failed |= not ok
            print(f"{precision:<11} {name:<28} {ema:>24.3g} {trained:>20.3g}  "
                  f"{'same' if ok else 'DIFFERENT'} (tolerance {tolerance:g})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
