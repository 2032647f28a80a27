"""FSDP on CPU: configs/ldm_fsdp.yaml's strategy (wrap policy, sharding, full state dicts)
trains a tiny diffusion module for a few steps in 2 processes over gloo, and the pipeline
``SavePretrained`` exports equals the one a DDP run exports: with FULL_SHARD it does; with
the shipped SHARD_GRAD_OP the trained weights do but the EMA does not (``STALE_EMA``).

Lightning refuses ``FSDPStrategy`` without a GPU accelerator, and PyTorch's FSDP needs
``device_id=torch.device("cpu")`` to run on CPU (Lightning passes the device's index, None).
``CPUFSDPStrategy`` below lifts both (test-only); everything else is Lightning's and
PyTorch's FSDP path: wrapping, sharded optimizer steps, the EMA update over sharded
parameters, ``summon_full_params`` in ``SavePretrained``, full-state-dict checkpoints.
``CPUFSDPPrecision`` runs bf16-mixed under CPU autocast (its docstring says how it differs
from the GPU's).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from contextlib import AbstractContextManager
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch.plugins.precision import FSDPPrecision
from lightning.pytorch.strategies import FSDPStrategy
from pipeline_components import save_training_assets
from safetensors.torch import load_file
from test_lit_diffusion import UNET_CONFIG
from torch.distributed.fsdp import MixedPrecision

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
TIMEOUT = 900
UNET_FILE = Path("pretrained") / "unet" / "diffusion_pytorch_model.safetensors"
SHIPPED = yaml.safe_load((ROOT / "configs" / "ldm_fsdp.yaml").read_text())["trainer"]["strategy"]
# SHARD_GRAD_OP (and _HYBRID_SHARD_ZERO2) keep a unit's gathered parameters after a forward
# without backward and reuse them at the next gather: the EMA UNet, which only runs in
# validation, then validates, checkpoints and exports the weights of the first validation
# (the sanity check's), i.e. the initial ones, while training itself is right
STALE_EMA = pytest.mark.xfail(
    SHIPPED["init_args"]["sharding_strategy"] in ("SHARD_GRAD_OP", "_HYBRID_SHARD_ZERO2"),
    strict=True,
    reason="issue 18: configs/ldm_fsdp.yaml's SHARD_GRAD_OP never re-gathers the EMA UNet",
)


class CPUFSDPStrategy(FSDPStrategy):
    """Lightning's ``FSDPStrategy`` on CPU processes (gloo): FSDP units on ``device_id=cpu``."""

    def _setup_model(self, model: torch.nn.Module) -> torch.nn.Module:
        from lightning.pytorch.strategies.fsdp import _setup_activation_checkpointing
        from torch.distributed.fsdp import FullyShardedDataParallel

        model = FullyShardedDataParallel(
            module=model, cpu_offload=self.cpu_offload, mixed_precision=self.mixed_precision_config,
            sharding_strategy=self.sharding_strategy, device_id=torch.device("cpu"), **self.kwargs,
        )
        _setup_activation_checkpointing(model, self._activation_checkpointing_kwargs)
        return model


class CPUFSDPPrecision(FSDPPrecision):
    """bf16-mixed FSDP on CPU: float32 parameters, bf16 compute under CPU autocast, bf16
    gradient reduction.

    Lightning's GPU ``FSDPPrecision("bf16-mixed")`` also casts the parameters to bf16 for
    compute (``param_dtype``); CUDA autocast then runs layer norms in float32. CPU autocast
    leaves ``layer_norm`` to its inputs' dtype, so float32 activations would meet bf16 norm
    weights: on CPU the parameters stay float32 (``bench/fsdp_check.py`` runs the GPU path).
    """

    @property
    def mixed_precision_config(self) -> MixedPrecision:
        return MixedPrecision(param_dtype=torch.float32, reduce_dtype=torch.bfloat16,
                              buffer_dtype=torch.float32)

    def forward_context(self) -> AbstractContextManager:
        return torch.autocast("cpu", dtype=torch.bfloat16)


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    root = tmp_path_factory.mktemp("fsdp")
    save_training_assets(root)
    config = {
        "seed_everything": 0,
        "trainer": {"accelerator": "cpu", "devices": 2, "strategy": "ddp", "max_steps": 3,
                    "limit_val_batches": 1, "val_check_interval": 3, "logger": False,
                    "enable_progress_bar": False, "enable_model_summary": False,
                    "callbacks": [
                        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                         "init_args": {"save_last": True, "save_top_k": 0}},
                        {"class_path": "layergen.lit.callbacks.SavePretrained"}]},
        "model": {"class_path": "layergen.lit.diffusion.LayeredDiffusionModule",
                  "init_args": {"autoencoder": str(root / "ae"), "text_encoder": str(root / "te"),
                                "unet_config": UNET_CONFIG, "prompt_enhancer_heads": 2,
                                "ema_decay": 0.5, "warmup_steps": 1, "lr": 1e-3,
                                "clean_layers_prob": 0.5}},
        "data": {"class_path": "layergen.data.LayeredDataModule",
                 "init_args": {"image_size": 32, "num_train": 12, "num_val": 4, "batch_size": 2}},
    }
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return root, path


def fsdp_strategy(**init_args: str) -> str:
    """configs/ldm_fsdp.yaml's strategy with the CPU class (its wrap policy, sharding, state dicts)."""
    assert SHIPPED["class_path"] == "lightning.pytorch.strategies.FSDPStrategy"
    init_args = {**SHIPPED["init_args"], **init_args}
    return json.dumps({"class_path": "test_fsdp.CPUFSDPStrategy", "init_args": init_args})


def train(config: Path, run_dir: Path, *args: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RANK", "LOCAL_RANK", "WORLD_SIZE"))}
    env.update(PYTHONPATH=os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    command = [sys.executable, str(ROOT / "train.py"), "fit", "--config", str(config),
               f"--trainer.default_root_dir={run_dir}", *args]  # checkpoints in <run>/checkpoints
    result = subprocess.run(command, env=env, cwd=run_dir.parent, capture_output=True, text=True,
                            timeout=TIMEOUT)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]


@pytest.fixture(scope="module")
def ddp_run(config):
    root, path = config
    train(path, root / "ddp")
    return root / "ddp"


@pytest.mark.slow
@pytest.mark.parametrize(
    "sharding", [pytest.param(None, id="shipped", marks=STALE_EMA), "FULL_SHARD"]
)
def test_fsdp_on_cpu_exports_the_pipeline_ddp_exports(config, ddp_run, sharding):
    root, path = config
    run = root / f"fsdp_{sharding or 'shipped'}"
    options = {"sharding_strategy": sharding} if sharding else {}
    train(path, run, f"--trainer.strategy={fsdp_strategy(**options)}")
    ddp, fsdp = load_file(ddp_run / UNET_FILE), load_file(run / UNET_FILE)
    assert ddp.keys() == fsdp.keys()
    for name, tensor in ddp.items():  # whole tensors, not one rank's shard
        assert fsdp[name].shape == tensor.shape, name
        torch.testing.assert_close(fsdp[name], tensor, rtol=1e-5, atol=1e-6, msg=name)
    # the full-state-dict checkpoint holds whole trained and EMA weights too
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 3
    name = "unet.conv_in.weight"
    torch.testing.assert_close(ckpt["state_dict"][f"ema_unet.module.{name}"], fsdp[name])
    reference = torch.load(ddp_run / "checkpoints" / "last.ckpt", weights_only=False)
    torch.testing.assert_close(ckpt["state_dict"][f"unet.{name}"],
                               reference["state_dict"][f"unet.{name}"], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_fsdp_bf16_mixed_precision_on_cpu_trains_and_exports_float32(config):
    root, path = config
    plugin = json.dumps({"class_path": "test_fsdp.CPUFSDPPrecision",
                         "init_args": {"precision": "bf16-mixed"}})
    strategy = fsdp_strategy(sharding_strategy="FULL_SHARD")
    train(path, root / "fsdp_bf16", f"--trainer.strategy={strategy}", f"--trainer.plugins={plugin}")
    exported = load_file(root / "fsdp_bf16" / UNET_FILE)
    assert {t.dtype for t in exported.values()} == {torch.float32}
    assert all(torch.isfinite(t).all() for t in exported.values())
    ckpt = torch.load(root / "fsdp_bf16" / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 3


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")
@STALE_EMA
def test_fsdp_on_gpus_exports_what_ddp_exports(tmp_path):
    # Lightning's own FSDPStrategy, NCCL, bf16 parameters under CUDA autocast
    command = [sys.executable, str(ROOT / "bench" / "fsdp_check.py"), "--devices", "2",
               "--out", str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=2 * TIMEOUT)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
