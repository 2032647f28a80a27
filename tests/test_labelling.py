"""The labelling server's logic, without a browser."""

from __future__ import annotations

import io
import json
import threading
import urllib.request

import pytest
from PIL import Image

from layergen.data.labels import read_label_lines, read_labels
from layergen.data.shapes import ShapeScenes
from layergen.data.shards import write_shards
from layergen.labelling import GUIDES, LabellingSession, make_server


@pytest.fixture
def shards(tmp_path):
    return write_shards(ShapeScenes(size=32, length=4, seed=1), tmp_path / "shards", shard_size=2)


def _post(session, key, answer):
    return session.handle("POST", "/label", json.dumps({"key": key, "answer": answer}).encode())


def test_page_shows_the_guide_and_the_sample(shards, tmp_path):
    session = LabellingSession(shards, "mask", str(tmp_path / "labels.jsonl"))
    status, content_type, page = session.handle("GET", "/")
    assert status == 200 and content_type.startswith("text/html")
    for condition in GUIDES["mask"][1]:
        assert condition in page.decode()
    status, content_type, png = session.handle("GET", "/sample.png")
    assert status == 200 and content_type == "image/png"
    width, height = Image.open(io.BytesIO(png)).size
    assert (width, height) == (96, 32)  # three 32x32 panels
    inpaint = LabellingSession(shards, "inpaint", str(tmp_path / "labels.jsonl"))
    assert "inpainted region" in inpaint.handle("GET", "/")[2].decode()
    assert inpaint.handle("GET", "/nothing")[0] == 404


def test_answers_are_recorded_once_and_the_session_resumes(shards, tmp_path):
    out = str(tmp_path / "labels.jsonl")
    session = LabellingSession(shards, "mask", out)
    first = session.state()["key"]
    assert _post(session, first, "g")[0] == 200
    assert _post(session, first, "b")[0] == 409  # a repeated submission is refused
    second = session.state()["key"]
    assert _post(session, second, "x")[0] == 409
    assert json.loads(_post(session, second, "s")[2])["counts"] == {"g": 1, "b": 0, "s": 1}
    lines = read_label_lines(out)
    assert [(line["key"], line["label"]) for line in lines] == [(first, 1), (second, None)]
    assert all(line["split"] in ("train", "val") for line in lines)

    resumed = LabellingSession(shards, "mask", out)  # stop and restart
    assert resumed.state()["key"] not in (first, second)
    for _ in range(2):
        _post(resumed, resumed.state()["key"], "b")
    assert resumed.state()["finished"]
    assert resumed.handle("GET", "/sample.png")[0] == 404
    assert sorted(read_labels(out, "mask").values(), key=lambda label: label.key)[0].label == 1
    assert len(read_labels(out, "mask")) == 3  # the skipped key has no label
    assert (
        LabellingSession(shards, "inpaint", out).state()["key"] == first
    )  # other kind: own progress


def test_http_server_round_trip(shards, tmp_path):
    session = LabellingSession(shards, "mask", str(tmp_path / "labels.jsonl"))
    server = make_server(session, port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_port}"
        state = json.load(urllib.request.urlopen(f"{base}/state", timeout=10))
        request = urllib.request.Request(
            f"{base}/label",
            data=json.dumps({"key": state["key"], "answer": "g"}).encode(),
            method="POST",
        )
        assert json.load(urllib.request.urlopen(request, timeout=10))["counts"]["g"] == 1
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
