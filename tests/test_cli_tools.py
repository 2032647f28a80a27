"""generate.py and decompose.py as command-line tools: help with examples, --num-images,
one stdout line per file written, exit statuses, --device and --dtype."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from pipeline_components import tiny_pipeline
from skimage import data

from layergen.devices import resolve_device
from layergen.export import load_layered

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "a large red star on the left on a blue plain background"


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_script", ROOT / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    tiny_pipeline(tmp).save_pretrained(tmp / "pipe")
    return tmp / "pipe"


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    path = tmp_path_factory.mktemp("photo") / "coffee.png"
    Image.fromarray(data.coffee()).resize((120, 90), Image.LANCZOS).save(path)
    return path


def test_help_shows_examples_and_exit_statuses(capsys):
    for name in ("generate", "decompose"):
        with pytest.raises(SystemExit) as exited:
            load_script(name).parse_args(["--help"])
        assert exited.value.code == 0
        text = capsys.readouterr().out
        assert "\nexamples:\n" in text and f"\n  python {name}.py " in text
        assert "exit status: 0" in text and "2 bad command line" in text
        for option in ("--device {auto,cpu,cuda,mps}", "--dtype {float32,float16,bfloat16}"):
            assert option in text
        assert ("--num-images N" in text) == (name == "generate")


def test_generate_num_images_numbers_outputs_and_seeds(model_dir, tmp_path, capfd):
    common = ["--model", str(model_dir), "--steps", "2", "--guidance", "2", "--layers", "auto"]
    status = load_script("generate").main(
        [PROMPT, *common, "--seed", "5", "--num-images", "3", "--out", str(tmp_path / "a.psd")]
    )
    out, err = capfd.readouterr()
    names = [tmp_path / f"a_{i}.psd" for i in range(3)]
    assert status == 0
    assert out.splitlines() == [f"wrote {path}" for path in names]  # one line per file
    seeds = [json.loads(path.with_suffix(".json").read_text())["seed"] for path in names]
    assert seeds == [5, 6, 7]
    images = [load_layered(path).composite() for path in names]
    assert not torch.equal(images[0], images[1])  # different seeds, different images
    # the file of seed 6 is what a single image with --seed 6 gives
    load_script("generate").main([PROMPT, *common, "--seed", "6", "--out", str(tmp_path / "b.psd")])
    assert torch.equal(load_layered(tmp_path / "b.psd").composite(), images[1])
    for noise in ("accelerate", "it/s", "Traceback"):  # no warning, no progress bar in a file
        assert noise not in err


def test_generate_exit_statuses(model_dir, tmp_path, capsys):
    generate = load_script("generate")
    with pytest.raises(SystemExit) as exited:  # usage error: argparse's status 2
        generate.main([PROMPT, "--model", str(model_dir), "--num-images", "0", "--out", "x.psd"])
    assert exited.value.code == 2
    assert "--num-images must be at least 1" in capsys.readouterr().err
    missing = tmp_path / "no_such_model"
    assert generate.main([PROMPT, "--model", str(missing), "--out", str(tmp_path / "x.psd")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: --model {missing}: no such")
    edit = ["--model", str(model_dir), "--edit", str(tmp_path / "none.psd"), "--keep", "0"]
    assert generate.main([*edit, "--out", str(tmp_path / "y.psd")]) == 1
    assert capsys.readouterr().err == f"error: {tmp_path / 'none.psd'}: no such file or folder\n"


def test_generate_process_exit_status_without_traceback(tmp_path):
    """The real process: status 1 and one line on stderr for a missing model directory."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "generate.py"), PROMPT, "--model", str(tmp_path / "none"),
         "--out", str(tmp_path / "x.psd")],
        capture_output=True, text=True, timeout=300, env=dict(os.environ, HF_HUB_OFFLINE="1"),
    )
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.splitlines() == [
        f"error: --model {tmp_path / 'none'}: no such pipeline directory or checkpoint "
        "(nor a hub id owner/name)"
    ]


def test_resolve_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu") == resolve_device("cpu")
    for name in ("cuda", "mps"):
        with pytest.raises(ValueError, match=f"--device {name}: not available"):
            resolve_device(name)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda") == resolve_device("cuda")


def test_generate_device_and_dtype(model_dir, tmp_path, monkeypatch, capsys):
    generate = load_script("generate")
    loaded = []
    load = generate.load_pipeline
    monkeypatch.setattr(generate, "load_pipeline", lambda *a: loaded.append(load(*a)) or loaded[-1])
    common = [PROMPT, "--model", str(model_dir), "--steps", "2", "--layers", "auto"]
    out = tmp_path / "bf16.ora"
    assert generate.main([*common, "--device", "cpu", "--dtype", "bfloat16", "--out", str(out)]) == 0
    pipe = loaded[-1]
    assert pipe.device == torch.device("cpu")
    assert pipe.unet.dtype == pipe.autoencoder.dtype == pipe.text_encoder.dtype == torch.bfloat16
    assert load_layered(out).num_layers == 2
    assert generate.main([*common, "--out", str(tmp_path / "f32.ora")]) == 0  # default: no cast
    assert loaded[-1].unet.dtype == torch.float32
    assert "should be kept in float32" not in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert generate.main([*common, "--device", "cuda", "--out", str(tmp_path / "c.psd")]) == 1
        assert "--device cuda: not available" in capsys.readouterr().err


def test_decompose_stdout_and_exit_statuses(photo, tmp_path, capsys):
    decompose = load_script("decompose")
    out = tmp_path / "coffee.psd"
    assert decompose.main([str(photo), "--out", str(out), "--caption", "a cup on a saucer"]) == 0
    assert capsys.readouterr().out == f"wrote {out}\n"
    assert decompose.main([str(tmp_path / "none.jpg")]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == f"error: {tmp_path / 'none.jpg'}: no such image file or folder\n"
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.png").write_bytes(photo.read_bytes())
    (folder / "b.jpg").write_bytes(b"not a jpeg")
    assert decompose.main([str(folder), "--out", str(tmp_path / "layers"), "--format", "png"]) == 1
    captured = capsys.readouterr()
    assert captured.out == f"wrote {tmp_path / 'layers' / 'a'}\n"
    assert "skipped" in captured.err and captured.err.endswith("error: skipped 1 of 2 images\n")
    with pytest.raises(SystemExit) as exited:
        decompose.main([str(photo), "--format", "gif"])
    assert exited.value.code == 2


def test_decompose_device_and_dtype(photo, tmp_path, monkeypatch):
    from layergen.synthesis.backends.depth import build_tiny_depth

    decompose = load_script("decompose")
    chains = []
    build = decompose.build_decompose_chain
    monkeypatch.setattr(decompose, "build_decompose_chain",
                        lambda **kw: chains.append(build(**kw)) or chains[-1])
    depth = str(build_tiny_depth(tmp_path / "dpt"))
    args = [str(photo), "--out", str(tmp_path / "c.ora"), "--caption", "a cup", "--depth-model", depth]
    assert decompose.main([*args, "--device", "cpu", "--dtype", "bfloat16"]) == 0
    (backend,) = [stage.backend for stage in chains[-1].stages if stage.name == "depth"]
    parameter = next(backend.model.parameters())
    assert parameter.dtype == torch.bfloat16 and parameter.device == torch.device("cpu")
    assert load_layered(tmp_path / "c.ora").num_layers >= 2
