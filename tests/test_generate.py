"""generate.py on a tiny saved pipeline: text -> PSD/ORA/PNGs, edit and restyle modes."""

import json
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from pipeline_components import tiny_pipeline

from layergen.export import load_layered

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "a large red star on the left on a blue plain background"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gen")
    tiny_pipeline(tmp).save_pretrained(tmp / "pipe")
    return tmp / "pipe"


def generate(monkeypatch, *args):
    monkeypatch.setattr(sys, "argv", ["generate.py", *map(str, args)])
    runpy.run_path(str(ROOT / "generate.py"), run_name="__main__")


def test_generate_psd_ora_and_folder(model_dir, tmp_path, monkeypatch):
    common = ["--model", model_dir, "--seed", 3, "--steps", 2, "--guidance", 2.0]
    generate(monkeypatch, PROMPT, "--layers", "auto", *common, "--out", tmp_path / "a.psd")
    generate(monkeypatch, PROMPT, "--layers", "auto", *common, "--out", tmp_path / "a.ora")
    generate(
        monkeypatch,
        PROMPT,
        "--layer-prompts",
        "the background",
        "a large red star",
        "a small blue circle",
        *common,
        "--out",
        tmp_path / "dir",
    )
    psd, ora, folder = (load_layered(tmp_path / n) for n in ("a.psd", "a.ora", "dir"))
    assert psd.layer_prompts == ora.layer_prompts == ["a blue plain background", "a large red star"]
    assert folder.num_layers == 3 and folder.prompt == PROMPT
    # same seed -> same image, whatever the format
    assert (psd.composite() - ora.composite()).abs().max() <= 2 / 255
    manifest = json.loads((tmp_path / "a.json").read_text())
    assert manifest["seed"] == 3 and manifest["steps"] == 2 and manifest["guidance"] == 2.0
    assert manifest["model"] == str(model_dir) and manifest["prompt"] == PROMPT


def test_generate_num_layers(model_dir, tmp_path, monkeypatch, capsys):
    """--num-layers is L = K + 1, the background included."""
    common = ["--model", model_dir, "--steps", 2, "--guidance", 2.0]
    generate(monkeypatch, PROMPT, "--num-layers", 4, *common, "--out", tmp_path / "a")
    image = load_layered(tmp_path / "a")
    assert image.num_layers == 4 and image.num_foregrounds == 3
    with pytest.raises(SystemExit) as failed:
        generate(
            monkeypatch,
            PROMPT,
            "--num-layers",
            3,
            "--layers",
            "auto",
            *common,
            "--out",
            tmp_path / "b",
        )
    assert failed.value.code == 1
    assert "num_layers=3 needs 3 layer prompts" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        generate(monkeypatch, "--help")
    assert "number of layers including the background, L = K + 1" in " ".join(
        capsys.readouterr().out.split()
    )


def test_generate_edit_and_restyle(model_dir, tmp_path, monkeypatch):
    common = ["--model", model_dir, "--steps", 2, "--guidance", 2.0]
    generate(monkeypatch, PROMPT, "--layers", "auto", *common, "--out", tmp_path / "a.ora")
    source = load_layered(tmp_path / "a.ora")
    generate(
        monkeypatch,
        "--edit",
        tmp_path / "a.ora",
        "--keep",
        0,
        "--layer-prompts",
        "the background",
        "a small green heart",
        *common,
        "--out",
        tmp_path / "b.ora",
    )
    edited = load_layered(tmp_path / "b.ora")
    assert edited.layer_prompts[1] == "a small green heart"
    # the kept background survives the PNG round trip exactly (8-bit in, 8-bit out)
    assert torch.equal(edited.background, source.background)
    generate(
        monkeypatch,
        "--edit",
        tmp_path / "a.ora",
        "--restyle",
        0,
        "--strength",
        0.5,
        "--layer-prompts",
        "a pink striped background",
        *common,
        "--out",
        tmp_path / "c",
    )
    restyled = load_layered(tmp_path / "c")
    assert torch.equal(restyled.foregrounds, source.foregrounds)
    assert json.loads((tmp_path / "c" / "manifest.json").read_text())["edit"]["restyle"] == 0


def test_generate_argument_errors(model_dir, tmp_path, monkeypatch, capsys):
    with pytest.raises(SystemExit):
        generate(monkeypatch, "--model", model_dir, "--out", tmp_path / "x.psd")  # no prompt
    with pytest.raises(SystemExit):
        generate(
            monkeypatch, PROMPT, "--model", model_dir, "--keep", 0, "--out", tmp_path / "x.psd"
        )
    with pytest.raises(SystemExit) as failed:
        generate(
            monkeypatch,
            "--model",
            model_dir,
            "--edit",
            tmp_path / "missing.ora",
            "--out",
            tmp_path / "y",
        )
    assert failed.value.code == 1
    assert "exactly one of --keep or --restyle" in capsys.readouterr().err


def test_colour_check_on_ground_truth_scenes():
    """Real scenes have the colours their layer prompts name; recoloured ones do not."""
    from layergen.data.shapes import ShapeScenes
    from layergen.pipelines.colour_check import layer_colour_accuracy, nearest_colour

    scenes = [
        ShapeScenes(size=32, max_foregrounds=2, split="test", length=12)[i] for i in range(12)
    ]
    check = layer_colour_accuracy(scenes)
    assert check.checked == sum(s.num_foregrounds for s in scenes) and check.accuracy == 1.0
    for s in scenes:
        s.foregrounds = torch.full_like(s.foregrounds, -1.0)  # black everywhere
    assert layer_colour_accuracy(scenes).correct == sum(
        "black" in p for s in scenes for p in s.layer_prompts
    )
    assert nearest_colour(torch.tensor([0.9, 0.1, 0.1])) == "red"


def test_demo_prompt_helpers():
    from layergen.apps.demo import replace_background_phrase, replacement_prompt

    assert replacement_prompt("a small red star", {"red"}) == "a small orange circle"
    assert (
        replace_background_phrase(
            "a small red star on the left on a green plain background", ["yellow", "blue"]
        )
        == "a small red star on the left on a yellow and blue striped background"
    )


@pytest.mark.slow
def test_demo_fast(tmp_path):
    """`python demo.py --fast > log.txt 2>&1` runs every step and writes what it promises, in
    a short log: a line per stage and progress lines, no line twice, no noise (minutes)."""
    out = tmp_path / "demo"
    done = subprocess.run(
        [sys.executable, str(ROOT / "demo.py"), "--fast", "--out", str(out)],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=3600,
    )
    (tmp_path / "log.txt").write_text(done.stdout)
    assert done.returncode == 0, done.stdout
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    assert len(lines) < 60 and len(lines) == len(set(lines)), done.stdout
    for noise in ("Tip", "litlogger", "eval mode", "Total FLOPs", "accelerate", "it/s", "Epoch ",
                  "Seed set", "LightningCLI's args"):
        assert noise not in done.stdout, noise
    for progress in ("[demo] stage 3/3", "[autoencoder] step 20/20 (100 %)",
                     "[diffusion] step 10/20 (50 %)", "[sampling] prompt 3/3 (100 %)",
                     "layer-prompt colour accuracy"):
        assert progress in done.stdout, progress
    assert (out / "ldm" / "pretrained" / "model_index.json").exists()
    assert (out / "contact_sheet.png").exists()
    for name in ("sample_00.psd", "sample_00.ora", "sample_00/manifest.json"):
        assert (out / "samples" / name).exists()
    for name in ("replaced_foreground.psd", "new_background.ora", "source/composite.png"):
        assert (out / "edits" / name).exists()
    source = load_layered(out / "edits" / "source.ora")
    new_background = load_layered(out / "edits" / "new_background.ora")
    assert torch.equal(source.foregrounds, new_background.foregrounds)
    assert list((out / "tensorboard").rglob("events.out.tfevents*"))
