"""Security pass: unpickling, remote code, pickled weights, the labelling server, file imports."""

from __future__ import annotations

import ast
import http.client
import inspect
import json
import re
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from layergen.data.labels import read_label_lines
from layergen.data.shapes import ShapeScenes
from layergen.data.shards import write_shards
from layergen.export import load_layer_dir, save_layered
from layergen.labelling import LabellingSession, make_server
from layergen.labelling.server import MAX_BODY_BYTES, PAGE
from layergen.layers import LayeredImageError

ROOT = Path(__file__).resolve().parents[1]
# the project's code; tests may load their own fresh checkpoints and check that remote code
# is refused unless asked for
SOURCES = sorted(
    path
    for path in ROOT.rglob("*.py")
    if not any(
        part.startswith(".") or part in ("build", "tests") for part in path.relative_to(ROOT).parts
    )
)

# from_pretrained calls in code owned elsewhere that still accept pickled weights (issue 16,
# item 4): the strict xfail below fails once they pass ``use_safetensors``, so that this list
# is then emptied.
NO_WEIGHTS = re.compile(r"(Processor|Tokenizer|Scheduler|Config)$")  # from_pretrained of no weights


def _calls(path: Path) -> list[ast.Call]:
    return [node for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.Call)]


def _keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is(node: ast.expr | None, value: bool) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


def _dotted(node: ast.expr) -> str:
    """``torch.load`` for ``torch.load(...)``'s function, ``""`` for anything but names."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        inner = _dotted(node.value)
        return f"{inner}.{node.attr}" if inner else f"?.{node.attr}"
    return ""


def _where(path: Path, call: ast.Call) -> str:
    return f"{path.relative_to(ROOT)}:{call.lineno}"


# ----------------------------------------------------------------------------------------
# Unpickling and remote code
# ----------------------------------------------------------------------------------------


def test_every_torch_load_is_weights_only():
    unsafe = [
        _where(path, call)
        for path in SOURCES
        for call in _calls(path)
        if _dotted(call.func) == "torch.load" and not _is(_keyword(call, "weights_only"), True)
    ]
    assert not unsafe, f"torch.load without weights_only=True: {unsafe}"


def test_nothing_is_unpickled():
    unsafe = [
        _where(path, call)
        for path in SOURCES
        for call in _calls(path)
        if _dotted(call.func) in ("pickle.load", "pickle.loads", "torch.jit.load", "dill.load")
        or (
            _dotted(call.func) in ("np.load", "numpy.load")
            and _is(_keyword(call, "allow_pickle"), True)
        )
    ]
    assert not unsafe, f"pickle loads: {unsafe}"


def test_remote_code_is_never_trusted_by_default():
    trusted = []
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and _is(_keyword(node, "trust_remote_code"), True):
                trusted.append(_where(path, node))
            if isinstance(node, ast.FunctionDef):
                positional, keyword_only = node.args.args, node.args.kwonlyargs
                padding = [None] * (len(positional) - len(node.args.defaults))
                defaults = padding + node.args.defaults + node.args.kw_defaults
                for argument, default in zip(positional + keyword_only, defaults):
                    if argument.arg == "trust_remote_code" and not _is(default, False):
                        trusted.append(f"{path.relative_to(ROOT)}:{node.lineno} ({node.name})")
    assert not trusted, f"trust_remote_code on by default: {trusted}"


def _pickle_weight_loads() -> list[str]:
    """``from_pretrained`` calls that load weights without ``use_safetensors``."""
    found = []
    for path in SOURCES:
        for call in _calls(path):
            function = call.func
            if not (isinstance(function, ast.Attribute) and function.attr == "from_pretrained"):
                continue
            if NO_WEIGHTS.search(_dotted(function.value)) or _keyword(call, "use_safetensors"):
                continue
            found.append(_where(path, call))
    return found


def test_weights_are_loaded_from_safetensors_only():
    unsafe = _pickle_weight_loads()
    assert not unsafe, f"from_pretrained without use_safetensors: {unsafe}"


def test_backends_default_to_safetensors():
    from layergen.metrics.clip_score import CLIPScorer
    from layergen.synthesis.backends import (
        captioning,
        depth,
        detection,
        inpainting,
        saliency,
        segmentation,
    )

    backends = [
        CLIPScorer,
        captioning.TransformersCaptioning,
        depth.TransformersDepth,
        detection.TransformersDetection,
        inpainting.DiffusersInpainting,
        saliency.TransformersSaliency,
        segmentation.SamSegmentation,
    ]
    for backend in backends:
        assert inspect.signature(backend).parameters["use_safetensors"].default is True, backend


# ----------------------------------------------------------------------------------------
# The labelling server
# ----------------------------------------------------------------------------------------

HOSTILE_PROMPT = '<script>alert("prompt")</script>'
HOSTILE_LAYER = '<img src=x onerror=alert("layer")>'


@pytest.fixture
def session(tmp_path):
    scenes = ShapeScenes(size=32, min_foregrounds=1, max_foregrounds=1, length=2, seed=2)
    samples = [
        replace(scenes[i], prompt=HOSTILE_PROMPT, layer_prompts=["the background", HOSTILE_LAYER])
        for i in range(2)
    ]
    shards = write_shards(samples, tmp_path / "shards", shard_size=2)
    (tmp_path / "secret.txt").write_text("not to be served")
    return LabellingSession(shards, "mask", str(tmp_path / "labels.jsonl"))


@pytest.fixture
def server(session):
    server = make_server(session, port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def _request(server, method: str, path: str, body: bytes = b"", headers: dict | None = None):
    connection = http.client.HTTPConnection("127.0.0.1", server.server_port, timeout=10)
    try:
        connection.putrequest(method, path, skip_host="Host" in (headers or {}))
        for name, value in {"Content-Length": str(len(body)), **(headers or {})}.items():
            connection.putheader(name, value)
        connection.endheaders(body)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def test_server_binds_to_loopback_by_default(session):
    assert inspect.signature(make_server).parameters["host"].default == "127.0.0.1"
    server = make_server(session, port=0)
    try:
        assert server.server_address[0] == "127.0.0.1"
    finally:
        server.server_close()
    calls = _calls(ROOT / "label.py")
    host = next(c for c in calls if c.args and getattr(c.args[0], "value", None) == "--host")
    assert _keyword(host, "default").value == "127.0.0.1"


@pytest.mark.parametrize(
    "path",
    [
        "/../labels.jsonl",
        "/../secret.txt",
        "/%2e%2e/%2e%2e/etc/passwd",
        "//etc/passwd",
        "/sample.png/../../secret.txt",
        "/state/..%2f..%2fsecret.txt",
        "/labels.jsonl",
    ],
)
def test_server_serves_no_files_outside_its_routes(session, server, path):
    assert session.handle("GET", path) == (404, "text/plain", b"not found")
    status, _, body = _request(server, "GET", path)
    assert status == 404 and b"not to be served" not in body


def test_server_refuses_oversized_and_unsized_bodies_unread(session, server, tmp_path):
    # the client announces a gigabyte and sends none of it: the answer comes at once
    status, _, body = _request(server, "POST", "/label", headers={"Content-Length": str(1 << 30)})
    assert status == 413 and str(MAX_BODY_BYTES).encode() in body
    status, _, _ = _request(server, "POST", "/label", headers={"Content-Length": "-1"})
    assert status == 411
    nested = b"[" * (MAX_BODY_BYTES - 1)  # under the limit, but nested too deeply to parse
    assert _request(server, "POST", "/label", nested)[0] == 409
    assert read_label_lines(tmp_path / "labels.jsonl") == []
    answer = json.dumps({"key": session.current_key, "answer": "g"}).encode()
    assert _request(server, "POST", "/label", answer)[0] == 200


def test_server_refuses_other_host_names_and_other_sites(server):
    port = server.server_port
    assert _request(server, "GET", "/state", headers={"Host": "attacker.example"})[0] == 403
    cross_site = {"Origin": "http://attacker.example"}
    assert _request(server, "POST", "/label", b"{}", cross_site)[0] == 403
    same_site = {"Host": f"localhost:{port}", "Origin": f"http://localhost:{port}"}
    assert _request(server, "GET", "/state", headers=same_site)[0] == 200


def test_server_renders_no_prompt_or_layer_name_as_html(session, server):
    status, headers, page = _request(server, "GET", "/")
    assert status == 200 and headers["X-Content-Type-Options"] == "nosniff"
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
    for text in (HOSTILE_PROMPT, HOSTILE_LAYER, "<script>alert", "onerror"):
        assert text.encode() not in page
    # the prompt reaches the page as JSON and is shown as text, never parsed as HTML
    status, headers, state = _request(server, "GET", "/state")
    assert headers["Content-Type"] == "application/json"
    assert json.loads(state)["caption"] == HOSTILE_PROMPT
    assert "textContent" in PAGE and "innerHTML" not in PAGE and "document.write" not in PAGE


# ----------------------------------------------------------------------------------------
# File imports
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../outside.png", "/etc/passwd", "sub/../../outside.png", ".."])
def test_a_layer_folder_manifest_cannot_name_files_outside_the_folder(tmp_path, name):
    scene = ShapeScenes(size=32, min_foregrounds=1, max_foregrounds=1, length=1)[0]
    folder = save_layered(scene, tmp_path / "layers")
    save_layered(scene, tmp_path / "other")
    (tmp_path / "outside.png").write_bytes((tmp_path / "other" / "layer_01.png").read_bytes())
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["layer_files"] = ["layer_00.png", name]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(LayeredImageError, match="is not a file name in the folder"):
        load_layer_dir(folder)
