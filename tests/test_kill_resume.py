"""kill -9 anywhere loses at most one checkpoint interval (slow set).

Each test runs an entry point in a subprocess, stops it with SIGKILL at a chosen moment (a
test-only probe stalls the run there and says so in a log, so that the kill lands where it
is meant to), re-runs it and checks what was kept, lost and redone:

* training (``train.py fit``, the tests' tiny autoencoder config, ``ModelCheckpoint(
  save_last=True, every_n_train_steps=K)``): killed during a step, and during the write of
  ``last.ckpt``; ``--ckpt_path last`` resumes and finishes at ``max_steps``, and the
  checkpoint on disk always loads with ``torch.load(weights_only=True)``;
* latent caching (``python -m layergen.apps.cache_latents``): killed in the middle of a shard;
* evaluation (``evaluate.py``): killed between writing a sample and renaming it.

What "resume" reproduces in training (asserted below, documented in docs/reliability.md):
the weights, optimizer and step counter of the last checkpoint, and the epoch and batch
counters; not the data order of the interrupted epoch nor the random state.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
K = 2  # checkpoint interval, in steps
TIMEOUT = 600  # seconds any one subprocess may take (minutes on a loaded machine)


# ----------------------------------------------------------------------------------------
# The probe (also imported by the subprocesses) and process helpers
# ----------------------------------------------------------------------------------------


def _log(path: str, **event: Any) -> None:
    """Append one JSON line to ``path``, synced, so that it survives a kill -9."""
    with open(path, "a") as handle:
        handle.write(json.dumps(event) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def _stall(path: str, **event: Any) -> None:
    _log(path, event="stalled", **event)
    time.sleep(TIMEOUT)  # until the test kills the process


class FaultProbe(pl.Callback):
    """Test-only callback, set by environment variables so that a re-run can turn it off.

    ``FAULT_LOG``: JSON lines of every step (its epoch, batch index, scene indices and the
    sum of the parameters after it) and every checkpoint save. ``FAULT_STALL_AT_STEP``:
    stall before the backward pass of that step. ``FAULT_BALLAST_MB``: add that many MB of
    random data to each checkpoint, so that writing it takes a while.
    """

    def __init__(self) -> None:
        self.path = os.environ["FAULT_LOG"]
        self.stall_at = int(os.environ.get("FAULT_STALL_AT_STEP", 0))
        self.ballast_mb = int(os.environ.get("FAULT_BALLAST_MB", 0))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.scenes = [m["index"] for m in batch.metadata]

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        if trainer.global_step + 1 == self.stall_at:
            _stall(self.path, step=trainer.global_step + 1)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        total = sum(float(p.detach().double().sum()) for p in pl_module.parameters())
        _log(self.path, event="step", step=trainer.global_step, epoch=trainer.current_epoch,
             batch_idx=batch_idx, scenes=self.scenes, param_sum=total)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        _log(self.path, event="saving", step=trainer.global_step)
        if self.ballast_mb:
            checkpoint["ballast"] = torch.rand(self.ballast_mb << 18)  # float32: 4 bytes each


def events(path: Path, kind: str | None = None) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [e for e in lines if kind is None or e["event"] == kind]


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    for name in ("FAULT_STALL_AT_STEP", "FAULT_BALLAST_MB"):
        env.pop(name, None)
    env.update(extra)
    return env


def launch(command: list[str], output: Path, **env: str) -> subprocess.Popen:
    """Start ``command`` in the repository root; its stdout and stderr go to ``output``."""
    with open(output, "ab") as sink:
        return subprocess.Popen(command, cwd=ROOT, env=_env(**env), stdout=sink, stderr=sink)


def run(command: list[str], output: Path, **env: str) -> str:
    """Run ``command`` to its end; returns its output (the test fails on a non-zero exit)."""
    process = launch(command, output, **env)
    code = process.wait(timeout=TIMEOUT)
    text = output.read_text(errors="replace")
    assert code == 0, text[-4000:]
    return text


def kill_when(process: subprocess.Popen, condition: Callable[[], bool], output: Path) -> None:
    """SIGKILL ``process`` as soon as ``condition()`` holds (polled every 5 ms)."""
    deadline = time.monotonic() + TIMEOUT
    try:
        while not condition():
            if process.poll() is not None:
                pytest.fail(f"exited ({process.returncode}) first:\n{output.read_text()[-4000:]}")
            if time.monotonic() > deadline:
                pytest.fail("timed out waiting for the moment to kill")
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == -signal.SIGKILL


def load_checkpoint(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


# ----------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------

BATCHES_PER_EPOCH = 3  # 6 scenes, batch 2


def _train_config(root: Path, max_steps: int) -> Path:
    config = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu",
            "devices": 1,
            "max_steps": max_steps,
            "limit_val_batches": 0,
            "logger": False,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "default_root_dir": str(root / "run"),
            "callbacks": [
                {
                    "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                    "init_args": {"dirpath": str(root / "ckpt"), "save_last": True,
                                  "save_top_k": 0, "every_n_train_steps": K},
                },
                {"class_path": "test_kill_resume.FaultProbe"},
            ],
        },
        "model": {
            "class_path": "layergen.lit.autoencoder.LayeredAutoencoderModule",
            "init_args": {
                "autoencoder": {
                    "class_path": "layergen.models.PerLayerAutoencoder",
                    "init_args": {"latent_channels": 4, "block_out_channels": [8, 16],
                                  "layers_per_block": 1, "norm_num_groups": 4,
                                  "mid_block_add_attention": False},
                },
                "learning_rate": 1e-3,
                "lpips_weight": 0.0,
                "discriminator_weight": 0.0,
            },
        },
        "data": {
            "class_path": "layergen.data.datamodule.LayeredDataModule",
            "init_args": {"image_size": 32, "max_foregrounds": 2, "num_train": 2 * BATCHES_PER_EPOCH,
                          "num_val": 2, "num_test": 2, "batch_size": 2, "num_workers": 0},
        },
    }
    root.mkdir(parents=True, exist_ok=True)
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def train(config: Path, *args: str) -> list[str]:
    return [sys.executable, str(ROOT / "train.py"), "fit", "--config", str(config), *args]


@pytest.mark.slow
def test_kill_during_a_step_resumes_from_the_last_checkpoint(tmp_path):
    max_steps, stall = 8, 6  # killed in step 6: last.ckpt holds step 4, step 5 is lost
    reference_log, killed_log = tmp_path / "reference.jsonl", tmp_path / "killed.jsonl"
    run(train(_train_config(tmp_path / "reference", max_steps)), tmp_path / "reference.out",
        FAULT_LOG=str(reference_log))
    config = _train_config(tmp_path / "killed", max_steps)
    output = tmp_path / "killed.out"
    process = launch(train(config), output, FAULT_LOG=str(killed_log),
                     FAULT_STALL_AT_STEP=str(stall))
    kill_when(process, lambda: bool(events(killed_log, "stalled")), output)
    last = tmp_path / "killed" / "ckpt" / "last.ckpt"
    assert load_checkpoint(last)["global_step"] == 4
    before = events(killed_log, "step")
    assert [e["step"] for e in before] == [1, 2, 3, 4, 5]

    resumed_log = tmp_path / "resumed.jsonl"
    text = run(train(config, "--ckpt_path", "last"), tmp_path / "resumed.out",
               FAULT_LOG=str(resumed_log))
    assert "dataloader is not resumable" in text  # Lightning's own warning, see below
    after = events(resumed_log, "step")
    assert [e["step"] for e in after] == [5, 6, 7, 8]  # step 5 is redone: one step lost
    assert load_checkpoint(last)["global_step"] == max_steps
    assert not list(last.parent.glob(".*.tmp"))

    reference = {e["step"]: e for e in events(reference_log, "step")}
    # up to the kill the run is the reference run
    for e in before:
        assert e["scenes"] == reference[e["step"]]["scenes"]
        assert e["param_sum"] == pytest.approx(reference[e["step"]]["param_sum"], rel=1e-6)
    # the epoch and batch counters continue: step 5 is batch 1 of epoch 1 again ...
    assert [(e["epoch"], e["batch_idx"]) for e in after] == [
        (reference[s]["epoch"], reference[s]["batch_idx"]) for s in range(5, 9)
    ]
    # ... but the interrupted epoch's data restarts: its remaining 2 batches are the first
    # two of a fresh shuffle (the one epoch 0 drew: the RNG is seeded anew), so 2 scenes of
    # epoch 1 are seen twice and 2 not at all
    epoch_0 = [reference[s]["scenes"] for s in (1, 2)]
    assert [e["scenes"] for e in after[:2]] == epoch_0
    assert [e["scenes"] for e in after[:2]] != [reference[s]["scenes"] for s in (5, 6)]
    # and the weights part from the reference run's from the first resumed step on
    assert after[-1]["param_sum"] != pytest.approx(reference[8]["param_sum"], rel=1e-6)


@pytest.mark.slow
def test_kill_during_a_checkpoint_write_leaves_the_previous_checkpoint_whole(tmp_path):
    max_steps = 6
    config = _train_config(tmp_path / "killed", max_steps)
    last = tmp_path / "killed" / "ckpt" / "last.ckpt"
    temporary = last.with_name(".last.ckpt.tmp")  # layergen.lit.checkpoint_io
    log, output = tmp_path / "killed.jsonl", tmp_path / "killed.out"
    system_tmp = tmp_path / "system_tmp"  # where Lightning's own writer puts its temporary
    system_tmp.mkdir()
    process = launch(train(config), output, FAULT_LOG=str(log), FAULT_BALLAST_MB="128",
                     TMPDIR=str(system_tmp))

    def writing_the_second_checkpoint() -> bool:
        return any(e["step"] == 2 * K for e in events(log, "saving")) and temporary.exists()

    kill_when(process, writing_the_second_checkpoint, output)
    assert load_checkpoint(last)["global_step"] == K  # the first checkpoint, whole
    assert not list(system_tmp.iterdir())

    run(train(config, "--ckpt_path", "last"), tmp_path / "resumed.out", FAULT_LOG=str(log))
    checkpoint = load_checkpoint(last)
    assert checkpoint["global_step"] == max_steps and "ballast" not in checkpoint
    assert not temporary.exists()  # the next write of last.ckpt replaced the partial one
    assert [e["step"] for e in events(log, "step")][-(max_steps - K):] == list(
        range(K + 1, max_steps + 1)
    )


# ----------------------------------------------------------------------------------------
# Latent caching and evaluation
# ----------------------------------------------------------------------------------------


def stalled_main(kind: str, stall_at: str, log: str, *args: str) -> None:
    """Subprocess entry point: ``cache_latents`` (``kind = "cache"``) stalled before encoding
    its ``stall_at``-th batch, or ``evaluate.py`` (``"evaluate"``) stalled after writing its
    ``stall_at``-th sample to its temporary file, before the rename."""
    calls, stall = 0, int(stall_at)

    def stalling(function: Callable, before: bool) -> Callable:
        def wrapper(*a: Any, **kw: Any) -> Any:
            nonlocal calls
            calls += 1
            if before and calls == stall:
                _stall(log, call=calls)
            result = function(*a, **kw)
            if not before and calls == stall:
                _stall(log, call=calls)
            return result

        return wrapper

    if kind == "cache":
        from layergen.apps import cache_latents

        cache_latents.encode_latent_samples = stalling(cache_latents.encode_latent_samples, before=True)
        cache_latents.main(list(args))
    else:
        from layergen.metrics import samples

        samples.save_file = stalling(samples.save_file, before=False)
        import evaluate

        sys.exit(evaluate.main(list(args)))


def stalled(kind: str, stall_at: int, log: Path, *args: str) -> list[str]:
    code = "import sys, test_kill_resume as t; t.stalled_main(*sys.argv[1:])"
    return [sys.executable, "-c", code, kind, str(stall_at), str(log), *args]


def _unchanged(path: Path) -> tuple[int, int, int]:
    stat = path.stat()
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    """A tiny autoencoder and text encoder, saved."""
    from layergen.data.shapes import vocabulary
    from layergen.models import PerLayerAutoencoder
    from layergen.models.text_encoder import build_tiny_text_encoder

    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    PerLayerAutoencoder(latent_channels=4, block_out_channels=(8, 16), layers_per_block=1,
                        norm_num_groups=4, mid_block_add_attention=False).save_pretrained(root / "ae")
    build_tiny_text_encoder(root / "te", vocabulary(), hidden_size=16, num_layers=1, max_length=16)
    return root


def _latent_samples(directory: Path) -> list[dict[str, Any]]:
    import webdataset as wds

    from layergen.data.latents import decode_latent_sample

    shards = sorted(str(p) for p in directory.glob("latents-*.tar"))
    return [decode_latent_sample(s) for s in wds.DataPipeline(wds.SimpleShardList(shards),
                                                              wds.tarfile_to_samples())]


@pytest.mark.slow
def test_kill_during_latent_caching_redoes_only_the_shard_being_written(models, tmp_path):
    from layergen.apps import cache_latents

    def arguments(out: Path) -> list[str]:
        return ["--scenes", "12", "--size", "32", "--split", "val", "--out", str(out),
                "--autoencoder", str(models / "ae"), "--text-encoder", str(models / "te"),
                "--batch-size", "2", "--samples-per-shard", "4"]

    cache_latents.main(arguments(tmp_path / "reference"))
    out, log, output = tmp_path / "latents", tmp_path / "cache.jsonl", tmp_path / "cache.out"
    # batches 1-2 are shard 0 (complete, renamed); batch 3 is half of shard 1; stall in 4
    process = launch(stalled("cache", 4, log, *arguments(out)), output)
    kill_when(process, lambda: bool(events(log, "stalled")), output)
    first = out / "latents-000000.tar"
    assert first.is_file() and (out / "latents-000001.tar.tmp").is_file()
    assert not (out / "latents-000001.tar").exists() and not (out / "empty_prompt.safetensors").exists()
    kept = _unchanged(first)

    text = run([sys.executable, "-m", "layergen.apps.cache_latents", *arguments(out)], output)
    assert "resuming: 1 shards of" in text
    assert _unchanged(first) == kept  # not encoded again
    assert sorted(p.name for p in out.iterdir()) == [
        "cache_progress.json", "empty_prompt.safetensors",
        "latents-000000.tar", "latents-000001.tar", "latents-000002.tar",
    ]
    resumed, reference = _latent_samples(out), _latent_samples(tmp_path / "reference")
    assert [s["key"] for s in resumed] == [s["key"] for s in reference] and len(resumed) == 12
    for ours, theirs in zip(resumed, reference):
        for name in ("latents", "prompt_embeds", "layer_prompt_embeds"):
            torch.testing.assert_close(ours[name], theirs[name], rtol=0, atol=1e-6)
    # a finished cache is left alone
    again = run([sys.executable, "-m", "layergen.apps.cache_latents", *arguments(out)], output)
    assert "the cache is complete (3 shards)" in again and _unchanged(first) == kept


@pytest.mark.slow
def test_kill_during_evaluation_regenerates_only_the_unwritten_samples(tmp_path):
    from pipeline_components import tiny_pipeline

    import evaluate
    from layergen.metrics.samples import SampleStore, sample_key

    model = tmp_path / "pipe"
    tiny_pipeline(tmp_path / "models").save_pretrained(model)

    def arguments(out: Path) -> list[str]:
        return ["--model", str(model), "--num-samples", "6", "--steps", "1", "--guidance", "1",
                "--batch-size", "1", "--out", str(out), "--no-clip", "--saliency", "contrast",
                "--no-fid"]

    assert evaluate.main(arguments(tmp_path / "reference")) == 0
    out, log, output = tmp_path / "eval", tmp_path / "eval.jsonl", tmp_path / "eval.out"
    # samples 0 and 1 written; sample 2 written to its temporary file, not yet renamed
    process = launch(stalled("evaluate", 3, log, *arguments(out)), output)
    kill_when(process, lambda: bool(events(log, "stalled")), output)
    store = SampleStore(out / "samples")
    assert store.done() == {sample_key(0), sample_key(1)}
    assert (out / "samples" / f".{sample_key(2)}.safetensors.tmp").is_file()
    kept = {key: _unchanged(store.path(key)) for key in store.done()}

    text = run([sys.executable, str(ROOT / "evaluate.py"), *arguments(out)], output)
    assert "resuming: 2 of 6 samples already generated" in text
    assert {key: _unchanged(store.path(key)) for key in kept} == kept  # not generated again
    assert store.done() == {sample_key(i) for i in range(6)}
    assert not list((out / "samples").glob(".*.tmp"))
    reference = SampleStore(tmp_path / "reference" / "samples")
    for i in range(6):
        ours, theirs = store.load(sample_key(i)), reference.load(sample_key(i))
        for name in ("background", "foregrounds", "masks"):
            torch.testing.assert_close(getattr(ours, name), getattr(theirs, name))
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    expected = json.loads((tmp_path / "reference" / "metrics.json").read_text())["metrics"]
    assert metrics["all"]["num_samples"] == 6
    assert metrics["all"] == pytest.approx(expected["all"])
