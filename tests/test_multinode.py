"""Multi-node launch on localhost: scripts/torchrun_train.sh (torchrun, 2 nodes x 1 process)
and scripts/slurm/train.sbatch (under a stand-in ``srun`` that starts SLURM's tasks here)
with configs/cluster/multinode.yaml over a tiny diffusion config on shards.

Each node reads its own half of the shards (``layergen.data.sharding``), the exported
pipeline equals a single-node 2-process DDP run's, and a SLURM job resumes the run from its
last checkpoint, writes the pre-emption checkpoint and requeues itself on SIGUSR1.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import yaml
from pipeline_components import save_training_assets
from safetensors.torch import load_file
from test_configs import ParseOnlyCLI
from test_lit_diffusion import UNET_CONFIG

from layergen.data.shapes import ShapeScenes
from layergen.data.shards import write_shards

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
TIMEOUT = 900  # seconds per run: two Python processes start, load and train on a busy CPU

# a stand-in for SLURM's srun: starts SLURM_NTASKS copies of the command on this machine with
# the task variables srun sets (global, local and node rank)
FAKE_SRUN = """#!/usr/bin/env bash
while [[ $1 == -* ]]; do shift; done
pids=()
for ((i = 0; i < SLURM_NTASKS; i++)); do
    SLURM_PROCID=$i SLURM_LOCALID=$((i % SLURM_NTASKS_PER_NODE)) \\
        SLURM_NODEID=$((i / SLURM_NTASKS_PER_NODE)) "$@" &
    pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
exit $status
"""
FAKE_SCONTROL = """#!/usr/bin/env bash
echo "$@" >> "$SCONTROL_LOG"
"""
# prints the command instead of running it (the resume choice of train.sbatch)
ECHO_SRUN = """#!/usr/bin/env bash
printf '%s\\n' "$@"
"""


class RecordShards(pl.Callback):
    """Writes ``rank<global rank>.json``: the rank's cluster view and the shards it trained on.

    Used inside ``train.py`` (``class_path: test_multinode.RecordShards``, with the tests
    directory on ``PYTHONPATH``).

    Args:
        dirpath: where the JSON files go.
        signal_at_step: send this process SIGUSR1 (SLURM's pre-emption warning) after this
            global step; 0: never.
    """

    def __init__(self, dirpath: str, signal_at_step: int = 0) -> None:
        self.dirpath, self.signal_at_step = Path(dirpath), signal_at_step
        self.record: dict = {}

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.record = {
            "global_rank": trainer.global_rank, "node_rank": trainer.node_rank,
            "local_rank": trainer.local_rank, "world_size": trainer.world_size,
            "num_nodes": trainer.num_nodes,
            "environment": type(trainer.strategy.cluster_environment).__name__,
            "start_step": trainer.global_step, "shards": [], "keys": [],
        }

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.record["shards"] += [Path(m["shard"]).name for m in batch.metadata]
        self.record["keys"] += [m["key"] for m in batch.metadata]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.signal_at_step and trainer.global_step == self.signal_at_step:
            os.kill(os.getpid(), signal.SIGUSR1)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.record["end_step"] = trainer.global_step
        self.dirpath.mkdir(parents=True, exist_ok=True)
        path = self.dirpath / f"rank{trainer.global_rank}.json"
        path.write_text(json.dumps(self.record))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def records(directory: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(directory.glob("rank*.json"))]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny diffusion config (the model config the scripts compose) on 4 shards of 2 scenes."""
    root = tmp_path_factory.mktemp("multinode")
    save_training_assets(root)
    scenes = ShapeScenes(size=32, min_foregrounds=1, max_foregrounds=2, length=8)
    shards = write_shards(scenes, root / "shards", shard_size=2)
    config = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu", "devices": 1, "strategy": "ddp", "max_steps": 2,
            "limit_val_batches": 0, "enable_progress_bar": False, "enable_model_summary": False,
            "callbacks": [
                {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                 "init_args": {"save_last": True, "save_top_k": -1, "every_n_train_steps": 1}},
                {"class_path": "layergen.lit.callbacks.SavePretrained"},
            ],
        },
        "model": {"class_path": "layergen.lit.diffusion.LayeredDiffusionModule",
                  "init_args": {"autoencoder": str(root / "ae"), "text_encoder": str(root / "te"),
                                "unet_config": UNET_CONFIG, "prompt_enhancer_heads": 2,
                                "ema_decay": 0.5, "warmup_steps": 1, "lr": 1e-3}},
        # the "train" split: every rank reads shards[rank::world_size], once, in order
        "data": {"class_path": "layergen.data.LayeredDataModule",
                 "init_args": {"train_shards": shards, "image_size": 32, "max_foregrounds": 2,
                               "batch_size": 2, "shuffle_buffer": 0, "num_workers": 0}},
    }
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return root, path, [Path(s).name for s in shards]


def environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK",
                                "MASTER_", "TORCHELASTIC"))}
    # one thread per process: the same kernels, hence the same sums, in every run
    env.update(PYTHONPATH=os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", **extra)
    return env


def record_callback(directory: Path, signal_at_step: int = 0) -> str:
    spec = {"class_path": "test_multinode.RecordShards",
            "init_args": {"dirpath": str(directory), "signal_at_step": signal_at_step}}
    return "--trainer.callbacks+=" + json.dumps(spec)


def cpu_overrides(run_dir: Path) -> list[str]:
    # configs/cluster/multinode.yaml is for GPU nodes; bf16-mixed stays (CPU autocast)
    return ["--trainer.accelerator=cpu", f"--trainer.default_root_dir={run_dir}",
            f"--trainer.logger.init_args.save_dir={run_dir}"]


def check(result: subprocess.CompletedProcess | tuple[int, str]) -> None:
    code, output = (result.returncode, result.stdout + result.stderr) \
        if isinstance(result, subprocess.CompletedProcess) else result
    assert code == 0, output[-4000:]


@pytest.fixture(scope="module")
def torchrun_run(setup):
    """2 nodes x 1 process: scripts/torchrun_train.sh twice, NODE_RANK 0 and 1."""
    root, config, _ = setup
    run_dir = root / "torchrun"
    port = str(free_port())
    procs = []
    for node_rank in (0, 1):
        env = environment(NNODES="2", NODE_RANK=str(node_rank), NPROC_PER_NODE="1",
                          MASTER_ADDR="127.0.0.1", MASTER_PORT=port, RUN_DIR=str(run_dir))
        command = ["bash", str(ROOT / "scripts" / "torchrun_train.sh"), str(config),
                   *cpu_overrides(run_dir), record_callback(root / "torchrun_records")]
        procs.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    for proc in procs:
        output, _ = proc.communicate(timeout=TIMEOUT)
        check((proc.returncode, output))
    return run_dir, records(root / "torchrun_records")


@pytest.mark.slow
def test_two_nodes_read_disjoint_shards_and_export_what_one_node_does(setup, torchrun_run):
    root, config, shards = setup
    run_dir, multinode = torchrun_run
    assert [r["global_rank"] for r in multinode] == [0, 1]
    assert [r["node_rank"] for r in multinode] == [0, 1]
    assert {r["environment"] for r in multinode} == {"TorchElasticEnvironment"}
    assert {(r["world_size"], r["num_nodes"], r["end_step"]) for r in multinode} == {(2, 2, 2)}
    first, second = (set(r["shards"]) for r in multinode)
    assert first and second and not first & second and first | second == set(shards)
    assert len({k for r in multinode for k in r["keys"]}) == 8  # every sample once

    # the same world on one node: Lightning starts the second process itself
    single_dir = root / "single"
    command = [sys.executable, str(ROOT / "train.py"), "fit", "--config", str(config),
               "--config", str(ROOT / "configs" / "cluster" / "multinode.yaml"),
               "--trainer.num_nodes=1", "--trainer.devices=2", *cpu_overrides(single_dir),
               record_callback(root / "single_records")]
    check(subprocess.run(command, env=environment(), cwd=ROOT, capture_output=True, text=True,
                         timeout=TIMEOUT))
    single = records(root / "single_records")
    assert [r["node_rank"] for r in single] == [0, 0]
    assert [r["shards"] for r in single] == [r["shards"] for r in multinode]

    # the run directory's layout (docs/training_at_scale.md) and equal exports
    assert (run_dir / "checkpoints" / "last.ckpt").is_file() and (run_dir / "config.yaml").is_file()
    assert list(run_dir.glob("events.out.tfevents*"))
    exported = load_file(run_dir / "pretrained" / "unet" / "diffusion_pytorch_model.safetensors")
    reference = load_file(single_dir / "pretrained" / "unet" / "diffusion_pytorch_model.safetensors")
    assert exported.keys() == reference.keys()
    initial = torch.load(run_dir / "checkpoints" / "epoch=0-step=1.ckpt", weights_only=False)
    assert any(not torch.equal(initial["state_dict"][f"ema_unet.module.{k}"], v)
               for k, v in exported.items())  # trained for a second step
    for name, tensor in exported.items():
        torch.testing.assert_close(tensor, reference[name], rtol=1e-5, atol=1e-6, msg=name)


def slurm_environment(bin_dir: Path, run_dir: Path, **extra: str) -> dict[str, str]:
    env = environment(
        PATH=os.pathsep.join([str(bin_dir), os.environ["PATH"]]), RUN_DIR=str(run_dir),
        PYTHON=sys.executable, SLURM_SUBMIT_DIR=str(ROOT), SLURM_JOB_ID="4242",
        SLURM_JOB_NAME="layergen", SLURM_NODELIST="localhost", SLURM_JOB_NUM_NODES="2",
        SLURM_NTASKS="2", SLURM_NTASKS_PER_NODE="1", MASTER_PORT=str(free_port()), **extra,
    )
    return env


def fake_commands(bin_dir: Path, srun: str) -> None:
    bin_dir.mkdir(exist_ok=True)
    for name, text in (("srun", srun), ("scontrol", FAKE_SCONTROL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)


@pytest.mark.slow
def test_slurm_job_resumes_the_run_and_requeues_on_the_preemption_signal(setup, torchrun_run):
    root, config, _ = setup
    run_dir, _ = torchrun_run
    bin_dir, log = root / "slurm_bin", root / "scontrol.log"
    fake_commands(bin_dir, FAKE_SRUN)
    command = ["bash", str(ROOT / "scripts" / "slurm" / "train.sbatch"), str(config),
               *cpu_overrides(run_dir), "--trainer.max_steps=4",
               record_callback(root / "slurm_records", signal_at_step=3)]
    env = slurm_environment(bin_dir, run_dir, SCONTROL_LOG=str(log))
    check(subprocess.run(command, env=env, cwd=root, capture_output=True, text=True,
                         timeout=TIMEOUT))
    slurm = records(root / "slurm_records")
    assert {r["environment"] for r in slurm} == {"SLURMEnvironment"}
    assert [(r["global_rank"], r["node_rank"]) for r in slurm] == [(0, 0), (1, 1)]
    assert {(r["start_step"], r["end_step"]) for r in slurm} == {(2, 4)}  # resumed at step 2
    # SIGUSR1 after step 3: the pre-emption checkpoint, and rank 0 requeued the job once
    hpc = torch.load(run_dir / "hpc_ckpt_1.ckpt", weights_only=False)
    assert hpc["global_step"] == 3
    assert log.read_text().split("\n")[:-1] == ["requeue 4242"]


@pytest.mark.parametrize(
    "stack",
    [["ae.yaml"], ["ldm.yaml"], ["ldm.yaml", "ldm_fsdp.yaml"], ["ldm_text2layer.yaml"]],
    ids=lambda s: "+".join(s),
)
def test_cluster_config_composes_with_the_full_size_configs(stack):
    names = [stack[0], "cluster/multinode.yaml", *stack[1:]]
    args = [arg for name in names for arg in ("--config", str(ROOT / "configs" / name))]
    cli = ParseOnlyCLI(subclass_mode_model=True, subclass_mode_data=True, run=False, args=args)
    trainer = cli.config["trainer"]
    assert (trainer["num_nodes"], trainer["devices"], trainer["precision"]) == (2, 8, "bf16-mixed")
    strategy = yaml.safe_load((ROOT / "configs" / stack[-1]).read_text())["trainer"]["strategy"]
    if isinstance(strategy, dict):  # configs/ldm_fsdp.yaml
        assert trainer["strategy"]["class_path"] == strategy["class_path"]
    else:
        assert trainer["strategy"] == strategy  # the model config's
    assert trainer["logger"]["init_args"]["version"] == ""  # one directory per run


def test_slurm_script_resumes_from_the_newest_checkpoint(tmp_path):
    bin_dir, run_dir = tmp_path / "bin", tmp_path / "run"
    fake_commands(bin_dir, ECHO_SRUN)
    script = ROOT / "scripts" / "slurm" / "train.sbatch"
    env = slurm_environment(bin_dir, run_dir)

    def ckpt_path() -> str:
        result = subprocess.run(["bash", str(script), "configs/ldm.yaml", "--trainer.max_steps=9"],
                                env=env, capture_output=True, text=True, timeout=60)
        check(result)
        args = result.stdout.split("\n")
        assert args[-2] == "--trainer.max_steps=9"  # the job's own arguments come last
        assert args[args.index("--trainer.num_nodes") + 1] == "2"
        assert args[args.index("--trainer.devices") + 1] == "1"
        return args[args.index("--ckpt_path") + 1]

    assert ckpt_path() == "last"  # nothing yet: Lightning starts from scratch
    (run_dir / "checkpoints").mkdir(parents=True)
    last, hpc = run_dir / "checkpoints" / "last.ckpt", run_dir / "hpc_ckpt_1.ckpt"
    last.write_bytes(b"")
    hpc.write_bytes(b"")
    os.utime(last, (1_000, 1_000))
    os.utime(hpc, (2_000, 2_000))
    assert ckpt_path() == str(hpc)  # pre-empted after the last ModelCheckpoint save
    os.utime(last, (3_000, 3_000))
    assert ckpt_path() == str(last)  # a crash after a later save
