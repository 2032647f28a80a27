"""The web app's logic through ``AppSession.handle`` (no browser), on a tiny pipeline:
generate, replace, restyle, a new background, show / hide / reorder, downloads re-opened
with psd-tools and the project's readers, uploads; and its hardening (issue 16.4): bound to
127.0.0.1, no path outside its routes, upload sizes limited, every string escaped."""

import http.client
import inspect
import io
import json
import runpy
import threading
import zipfile
from pathlib import Path

import pytest
import torch
from PIL import Image
from pipeline_components import SIZE, tiny_pipeline
from psd_tools import PSDImage

from layergen.app import AppSession, Document, make_app_server, restack
from layergen.app.page import PAGE
from layergen.export import load_layered, save_psd
from layergen.layers import LayeredImage

PROMPTS = ["the background", "a large red star", "a small blue circle"]
SAMPLING = {"seed": 3, "steps": 2, "guidance": 1.0}
ROOT = Path(__file__).resolve().parents[1]
HOSTILE_PROMPT = '<script>alert("prompt")</script> a red star'
HOSTILE_LAYER = '<img src=x onerror=alert("layer")>'


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    return tiny_pipeline(tmp_path_factory.mktemp("webapp"))


@pytest.fixture
def session(pipe, tmp_path):
    session = AppSession(pipe, model_name="tiny", workdir=tmp_path / "work")
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "secret.txt").write_text("not to be served")
    yield session
    session.close()


def post(session, route, request=None, raw=None):
    body = raw if raw is not None else json.dumps(request or {}).encode()
    status, content_type, reply = session.handle("POST", route, body)[:3]
    assert content_type == "application/json"
    return status, json.loads(reply)


def generate(session, prompt="a large red star and a small blue circle on a plain background"):
    status, state = post(
        session, "/generate", {"prompt": prompt, "layer_prompts": PROMPTS, **SAMPLING}
    )
    assert status == 200, state
    return state


def png(session, path) -> Image.Image:
    status, content_type, data = session.handle("GET", path)[:3]
    assert status == 200 and content_type == "image/png", path
    return Image.open(io.BytesIO(data))


# ----------------------------------------------------------------------------------------
# What it does
# ----------------------------------------------------------------------------------------


def test_generate_shows_each_layer_its_mask_and_the_composite(session):
    assert session.state()["document"] is None
    assert session.handle("GET", "/composite.png")[0] == 404  # nothing yet
    state = generate(session)
    document = state["document"]
    assert document["layer_prompts"] == PROMPTS and document["visible"] == [True] * 3
    assert document["size"] == [SIZE, SIZE] and state["last"]["steps"] == 2
    assert png(session, "/composite.png").mode == "RGB"
    for i in range(3):
        assert png(session, f"/layer/{i}.png").mode == "RGBA"
        assert png(session, f"/mask/{i}.png").size == (SIZE, SIZE)
    assert session.handle("GET", "/layer/3.png")[0] == 404
    # the same seed gives the same image
    before = session.document.image.composite()
    generate(session)
    assert torch.equal(session.document.image.composite(), before)


def test_replace_one_layer_keeps_the_others_bit_identical(session):
    generate(session)
    before = session.document.image
    status, state = post(
        session, "/replace", {"layer": 2, "prompt": "a small green heart", **SAMPLING, "seed": 5}
    )
    assert status == 200, state
    after = session.document.image
    assert state["document"]["layer_prompts"] == [*PROMPTS[:2], "a small green heart"]
    assert torch.equal(after.background, before.background)
    assert torch.equal(after.foregrounds[0], before.foregrounds[0])
    assert torch.equal(after.masks[0], before.masks[0])
    assert not torch.equal(after.foregrounds[1], before.foregrounds[1])
    assert state["last"] == {
        "action": "replace",
        "layer": 2,
        "seed": 5,
        "steps": 2,
        "guidance": 1.0,
    }


def test_restyle_changes_one_layer(session):
    generate(session)
    before = session.document.image
    request = {"layer": 1, "prompt": "a large red striped star", "strength": 0.5, **SAMPLING}
    status, state = post(session, "/restyle", request)
    assert status == 200, state
    after = session.document.image
    assert after.layer_prompts[1] == "a large red striped star"
    assert torch.equal(after.background, before.background)
    assert torch.equal(after.foregrounds[1], before.foregrounds[1])
    assert not torch.equal(after.foregrounds[0], before.foregrounds[0])
    assert state["last"]["strength"] == 0.5


def test_new_background_behind_the_shown_layers(session):
    generate(session)
    before = session.document.image
    assert post(session, "/visibility", {"layer": 1, "visible": False})[0] == 200
    status, state = post(
        session, "/background", {"prompt": "a green striped background", **SAMPLING, "seed": 4}
    )
    assert status == 200, state
    after = session.document.image
    # the hidden layer is dropped; the shown one is kept exactly, with its own alpha
    assert after.layer_prompts == ["a green striped background", PROMPTS[2]]
    assert torch.equal(after.foregrounds[0], before.foregrounds[1])
    assert torch.equal(after.masks[0], before.masks[1])  # the front layer: mask = alpha
    assert not torch.equal(after.background, before.background)
    assert state["document"]["visible"] == [True, True]


def test_show_hide_and_reorder_layers(session):
    generate(session)
    image = session.document.image
    composite = png(session, "/composite.png")
    assert post(session, "/visibility", {"layer": 1, "visible": False})[1]["document"][
        "visible"
    ] == [True, False, True]
    hidden = png(session, "/composite.png")
    assert hidden.tobytes() != composite.tobytes()
    expected = restack(image, [2]).composite_pil()
    assert hidden.tobytes() == expected.tobytes()
    assert session.document.image is image  # hiding keeps the layer in the document
    status, state = post(session, "/visibility", {"layer": 0, "visible": False})
    assert status == 400 and "background" in state["error"]
    # reorder: the layers swap, each keeps its pixels and straight alpha
    status, state = post(session, "/order", {"order": [2, 1]})
    assert status == 200 and state["document"]["layer_prompts"] == [
        PROMPTS[0],
        PROMPTS[2],
        PROMPTS[1],
    ]
    assert state["document"]["visible"] == [True, True, False]
    swapped = session.document.image
    assert torch.equal(swapped.foregrounds[0], image.foregrounds[1])
    old, new = image.to_rgba_tensors(), swapped.to_rgba_tensors()
    # where a layer lies behind an opaque one it has no visible pixels, so no alpha to keep
    seen = (old[2][3] < 0.999) & (new[2][3] < 0.999)  # (H, W)
    assert seen.float().mean() > 0.2  # the tiny random model often covers every pixel
    assert torch.allclose(new[2][:, seen], old[1][:, seen], atol=1e-4)
    assert torch.allclose(new[1][:, seen], old[2][:, seen], atol=1e-4)
    post(session, "/order", {"order": [2, 1]})
    masks = session.document.image.masks
    assert torch.allclose(masks[:, :, seen], image.masks[:, :, seen], atol=1e-4)
    assert post(session, "/order", {"order": [1, 1]})[0] == 400


def test_downloads_reopen_in_psd_tools_and_the_readers(session, tmp_path):
    generate(session)
    expected = session.document.image.composite()
    headers = {}
    for name in ("layered.psd", "layered.ora", "layers.zip"):
        status, _, data, headers[name] = session.handle("GET", f"/download/{name}")
        assert status == 200
        (tmp_path / name).write_bytes(data)
    assert headers["layered.psd"]["Content-Disposition"] == 'attachment; filename="layered.psd"'
    psd = PSDImage.open(tmp_path / "layered.psd")
    assert [layer.name for layer in psd] == PROMPTS
    with zipfile.ZipFile(tmp_path / "layers.zip") as archive:
        archive.extractall(tmp_path / "unzipped")
    for opened in (
        load_layered(tmp_path / "layered.psd"),
        load_layered(tmp_path / "layered.ora"),
        load_layered(tmp_path / "unzipped" / "layers"),
    ):
        assert opened.layer_prompts == PROMPTS
        assert (opened.composite() - expected).abs().max() <= 2 / 255 * 2  # [-1, 1] range
    # a hidden layer is left out of the downloads
    post(session, "/visibility", {"layer": 2, "visible": False})
    data = session.handle("GET", "/download/layered.psd")[2]
    assert [layer.name for layer in PSDImage.open(io.BytesIO(data))] == PROMPTS[:2]


def test_upload_psd_ora_and_zip(session, tmp_path):
    generate(session)
    image = session.document.image
    for name in ("layered.psd", "layered.ora", "layers.zip"):
        data = session.handle("GET", f"/download/{name}")[2]
        session.document = None
        status, state = post(session, f"/upload?name=my%20{name}", raw=data)
        assert status == 200, state
        assert state["document"]["layer_prompts"] == PROMPTS
        assert (session.document.image.composite() - image.composite()).abs().max() <= 4 / 255
    status, state = post(session, "/upload?name=notes.txt", raw=b"hello")
    assert status == 400 and state["error"].startswith("name:")
    status, state = post(session, "/upload?name=broken.psd", raw=b"8BPS broken")
    assert status == 400 and "broken.psd" in state["error"]
    assert str(session.workdir) not in state["error"]
    # ZIP members are read by their plain names, never their paths
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for i, layer in enumerate(image.to_pil_layers()):
            out = io.BytesIO()
            layer.save(out, format="PNG")
            archive.writestr(f"../../escape/{i}.png", out.getvalue())
    status, state = post(session, "/upload?name=layers.zip", raw=buffer.getvalue())
    assert status == 200, state
    assert not (session.workdir.parent / "escape").exists()


def test_edits_need_an_image_and_name_bad_fields(session):
    status, state = post(session, "/replace", {"layer": 1})
    assert status == 400 and state["error"].startswith("document:")
    assert post(session, "/generate", {"prompt": 5})[1]["error"].startswith("prompt:")
    assert post(session, "/generate", {"prompt": " "})[1]["error"].startswith("prompt:")
    generate(session)
    cases = [
        ("/generate", {"prompt": "a star", "steps": 0}, "steps:"),
        ("/generate", {"prompt": "a star", "layer_prompts": "all"}, "layer_prompts:"),
        ("/generate", {"prompt": "a star", "seed": -1}, "seed:"),
        ("/replace", {"layer": "1"}, "layer:"),
        ("/replace", {"layer": 7}, "layer:"),
        ("/restyle", {"layer": 1, "strength": 0}, "strength:"),
        ("/visibility", {"layer": 1, "visible": "no"}, "visible:"),
        ("/order", {"order": "21"}, "order:"),
    ]
    for route, request, field in cases:
        status, state = post(session, route, request)
        assert status == 400 and state["error"].startswith(field), (route, request, state)
    status, state = post(session, "/generate", raw=b"[1, 2]")
    assert status == 400 and state["error"].startswith("request:")


# ----------------------------------------------------------------------------------------
# Hardening (issue 16.4)
# ----------------------------------------------------------------------------------------


def test_prompts_and_layer_names_reach_the_page_escaped(session, tmp_path):
    assert "innerHTML" not in PAGE and "{" not in PAGE.split("<script>")[0].split("<style>")[0]
    state = generate(session, HOSTILE_PROMPT)
    raw = session.handle("GET", "/state")[2]
    assert b"<" not in raw and b">" not in raw  # \u003c escapes: no tag even if sniffed
    assert json.loads(raw)["document"]["prompt"] == HOSTILE_PROMPT == state["document"]["prompt"]
    # layer names from a user's PSD
    image = session.document.image
    hostile = LayeredImage(
        background=image.background,
        foregrounds=image.foregrounds,
        masks=image.masks,
        layer_prompts=["the background", HOSTILE_LAYER, "</script><b>bold</b>"],
    )
    save_psd(hostile, tmp_path / "hostile.psd")
    status, state = post(
        session, "/upload?name=<b>hostile</b>.psd", raw=(tmp_path / "hostile.psd").read_bytes()
    )
    assert status == 200, state
    raw = session.handle("GET", "/state")[2]
    assert b"<" not in raw and json.loads(raw)["document"]["layer_prompts"][1] == HOSTILE_LAYER
    page = session.handle("GET", "/")[2]
    for text in (HOSTILE_PROMPT, HOSTILE_LAYER, "onerror", "<b>bold"):
        assert text.encode() not in page
    # errors quoting the request are JSON too
    status, _, reply = session.handle("POST", "/upload?name=<script>x</script>.txt", b"x")[:3]
    assert status == 400 and b"<" not in reply


@pytest.fixture
def server(session):
    server = make_app_server(session, port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def request(server, method, path, body=b"", headers=None):
    connection = http.client.HTTPConnection("127.0.0.1", server.server_port, timeout=30)
    try:
        connection.putrequest(method, path, skip_host="Host" in (headers or {}))
        for name, value in {"Content-Length": str(len(body)), **(headers or {})}.items():
            connection.putheader(name, value)
        connection.endheaders(body)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def test_bound_to_loopback_by_default(session):
    app = runpy.run_path(str(ROOT / "app.py"))  # not as __main__: nothing is served
    assert inspect.signature(make_app_server).parameters["host"].default == "127.0.0.1"
    assert app["parse_args"](["--model", str(ROOT)]).host == "127.0.0.1"
    with pytest.raises(SystemExit, match="2"):  # a missing model: a usage error, no hub look-up
        app["parse_args"](["--model", "nowhere"])
    server = make_app_server(session, port=0)
    try:
        assert server.server_address[0] == "127.0.0.1"
    finally:
        server.server_close()


@pytest.mark.parametrize(
    "path",
    [
        "/../secret.txt",
        "/%2e%2e/%2e%2e/etc/passwd",
        "//etc/passwd",
        "/download/../secret.txt",
        "/download/..%2fsecret.txt",
        "/download/layered.psd/../../secret.txt",
        "/download/secret.txt",
        "/layer/../secret.txt",
        "/layer/1.png/../../secret.txt",
        "/layer/-1.png",
        "/mask/99999999.png",
        "/secret.txt",
        "/upload/secret.txt",
    ],
)
def test_no_file_outside_its_routes(session, server, path):
    generate(session)
    assert session.handle("GET", path)[:3] == (404, "text/plain", b"not found")
    status, _, body = request(server, "GET", path)
    assert status == 404 and b"not to be served" not in body
    assert session.handle("POST", path, b"{}")[0] == 404


def test_upload_size_limited_and_other_sites_refused(pipe, tmp_path):
    session = AppSession(pipe, max_upload_bytes=1000, workdir=tmp_path)
    status, state = post(session, "/upload?name=big.psd", raw=b"x" * 1001)
    assert status == 413 and "1000 bytes" in state["error"]
    server = make_app_server(session, port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        # announced and never sent: refused at once, unread
        big = {"Content-Length": str(1 << 30)}
        assert request(server, "POST", "/upload?name=big.psd", headers=big)[0] == 413
        assert request(server, "POST", "/generate", headers={"Content-Length": "x"})[0] == 411
        port = server.server_port
        assert request(server, "GET", "/state", headers={"Host": "attacker.example"})[0] == 403
        cross_site = {"Origin": "http://attacker.example"}
        assert request(server, "POST", "/generate", b"{}", cross_site)[0] == 403
        status, headers, _ = request(
            server, "GET", "/", headers={"Origin": f"http://127.0.0.1:{port}"}
        )
        assert status == 200 and headers["X-Content-Type-Options"] == "nosniff"
        assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_document_flags_checked():
    image = tiny_image()
    with pytest.raises(ValueError, match="visible"):
        Document(image, visible=[False, True])
    document = Document(image)
    with pytest.raises(ValueError, match="visible"):
        document.set_visible(1, False)
        document.visible_image()


def tiny_image() -> LayeredImage:
    torch.manual_seed(0)
    return LayeredImage(
        background=torch.rand(3, 4, 4) * 2 - 1,
        foregrounds=torch.rand(1, 3, 4, 4) * 2 - 1,
        masks=torch.rand(1, 1, 4, 4),
    )
