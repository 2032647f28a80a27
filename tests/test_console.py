"""The scripts' console: one line per message, progress lines in a file, no Lightning noise.

``configure_console`` changes process-wide logging and warnings, so the small training runs
go to a subprocess whose stdout and stderr are a pipe (not a terminal), as in ``> log.txt``.
"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch
from lightning.pytorch.demos.boring_classes import BoringModel

from layergen.console import progress_line

ROOT = Path(__file__).resolve().parents[1]


class FrozenPartModel(BoringModel):
    """A BoringModel with a frozen part in eval mode (as the diffusion module's autoencoder)."""

    def __init__(self) -> None:
        super().__init__()
        self.frozen = torch.nn.Linear(2, 2).eval()


SCRIPT = """
import sys
from pathlib import Path

from layergen.cli import cli_main
from layergen.console import configure_console
from layergen.apps.demo import train_with_cli

root, config = Path(sys.argv[1]), Path(sys.argv[2])
configure_console()  # as train.py
cli_main(["fit", "--config", str(config), "--trainer.default_root_dir", str(root / "train")])
print("=== quiet ===", flush=True)
configure_console(quiet=True)  # as demo.py
train_with_cli(config, root / "demo", [])
"""

CONFIG = """
seed_everything: 0
trainer:
  accelerator: cpu
  devices: 1
  max_steps: 20
model:
  class_path: test_console.FrozenPartModel
data:
  class_path: lightning.pytorch.demos.boring_classes.BoringDataModule
"""


def run_small_trainings(tmp_path: Path) -> tuple[list[str], list[str]]:
    """The output lines of a train.py-style run and of a demo-style run (stdout + stderr)."""
    (tmp_path / "script.py").write_text(SCRIPT)
    (tmp_path / "config.yaml").write_text(textwrap.dedent(CONFIG))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "tests"), str(ROOT)]))
    done = subprocess.run(
        [sys.executable, str(tmp_path / "script.py"), str(tmp_path), str(tmp_path / "config.yaml")],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    split = lines.index("=== quiet ===")
    return lines[:split], lines[split + 1 :]


def assert_clean(lines: list[str]) -> None:
    text = "\n".join(lines)
    assert len(lines) == len(set(lines)), text  # no line twice
    for noise in ("Tip", "litlogger", "litmodels", "module(s) in eval mode", "accelerate", "LeafSpec",
                  "it/s", "Epoch "):  # no progress bar
        assert noise not in text, (noise, text)


def test_small_training_runs_are_quiet_and_show_progress(tmp_path):
    train, demo = run_small_trainings(tmp_path)
    assert_clean(train)
    assert_clean(demo)
    # train.py: Lightning's own lines once each, a plain progress line every 10 % (no bar)
    assert sum("Seed set to 0" in line for line in train) == 1
    progress = [line for line in train if line.startswith("[training] step ")]
    assert [line.split()[2] for line in progress] == [f"{s}/20" for s in range(2, 21, 2)]
    assert "ETA" in progress[0] and progress[-1].startswith("[training] step 20/20 (100 %)")
    # demo: no Lightning INFO lines, no model summary, progress lines still
    demo_text = "\n".join(demo)
    for noise in ("Seed set", "GPU available", "Total FLOPs", "Trainable params", "eval mode"):
        assert noise not in demo_text, (noise, demo_text)
    assert sum(line.startswith("[training] step ") for line in demo) == 10


def test_library_import_leaves_logging_alone():
    """Importing layergen (and Lightning through it) configures nothing of the user's."""
    code = ("import logging, warnings; "
            "import layergen.cli, layergen.console, layergen.apps.demo; "
            "assert not logging.getLogger().handlers; "
            "assert logging.getLogger('lightning').handlers; "
            "assert not any('LightningCLI' in str(f[1]) for f in warnings.filters)")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=300)


def test_progress_line_eta():
    line = progress_line("autoencoder", 30, 300, 60.0)
    assert line == "[autoencoder] step 30/300 (10 %), 1.0 min elapsed, ETA 9.0 min"
    # a resumed run: 30 steps done in this run's 60 s, 100 before
    assert progress_line("x", 130, 300, 60.0, first=100).endswith("ETA 5.7 min")
    assert progress_line("x", 0, 0, 0.0, unit="prompt") == (
        "[x] prompt 0/0 (0 %), 0.0 min elapsed, ETA 0.0 min"
    )
