"""The reference weights shipped in weights/demo-reference load, generate, and keep their figures."""

import json
import runpy
import sys
from pathlib import Path

import pytest

from layergen.export import load_layered

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "weights" / "demo-reference"
ATTRIBUTES = ("shape_acc", "color_acc", "size_acc", "bg_family_acc", "bg_color_acc")
TOLERANCE = 0.07  # one or two of the check set's ~24 layers, for float differences across CPUs


def test_shipped_folder_is_small_safetensors_with_its_record():
    files = [p for p in REFERENCE.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 50 * 2**20
    assert not [p for p in files if p.suffix in (".bin", ".ckpt", ".pt", ".pth")]
    assert {"unet", "autoencoder", "text_encoder"} <= {p.parent.name for p in files if p.suffix == ".safetensors"}
    record = json.loads((REFERENCE / "reference.json").read_text())
    assert {"config", "seed", "steps", "batch_size", "figures"} <= set(record)
    assert (ROOT / record["config"]).is_file()
    card = (REFERENCE / "README.md").read_text()
    assert f"{record['figures']['shape_acc']:.3f}" in card


def test_generate_with_the_shipped_weights(tmp_path, monkeypatch):
    out = tmp_path / "star.psd"
    prompt = "a large red star on the left on a blue plain background"
    monkeypatch.setattr(sys, "argv", ["generate.py", "--model", str(REFERENCE), prompt, "--out", str(out)])
    runpy.run_path(str(ROOT / "generate.py"), run_name="__main__")
    layered = load_layered(out)
    assert layered.prompt == prompt and layered.num_layers >= 2


@pytest.mark.slow
def test_shipped_weights_reach_their_figures():
    sys.path.insert(0, str(ROOT / "scripts"))
    from ship_reference import benchmark

    written = json.loads((REFERENCE / "check.json").read_text())
    measured = benchmark(REFERENCE, written["setting"]["num_samples"])
    assert measured["setting"] == written["setting"]
    for name in ATTRIBUTES:
        got, want = measured["summary"]["all"][name], written["summary"]["all"][name]
        assert got >= want - TOLERANCE, f"{name}: {got:.3f} < {want:.3f} written in check.json"


def test_demo_prints_its_benchmark_beside_the_reference(monkeypatch, capsys):
    sys.path.insert(0, str(ROOT))
    import demo

    ours = {key: 0.5 for key in demo.FIGURES}
    monkeypatch.setattr(demo, "benchmark", lambda model, num_samples: ours)
    demo.print_benchmark(Path("pipe"), Path("ae"), 32)
    lines = capsys.readouterr().out.splitlines()
    record = json.loads((REFERENCE / "reference.json").read_text())
    shape = next(line for line in lines if line.strip().startswith("layer shape"))
    assert shape.split()[-2:] == ["0.500", f"{record['figures']['shape_acc']:.3f}"]
    psnr = next(line for line in lines if "composite PSNR" in line)
    assert psnr.split()[-1] == f"{record['autoencoder_figures']['psnr_composite']:.3f}"
