"""Hostile sizes in every reader: a clear error under a memory limit, before the work they claim.

Each case runs in one spawned worker process whose address space is capped
(``resource.RLIMIT_AS``) at its size before the case plus ``BUDGET``. Every hostile value
asks for more than the budget (a list of two billion member names, a 5000x5000 image, a
1 GiB line, a 30000x30000 canvas, ...), so a reader that acted on it before checking it
would end in ``MemoryError``; a bounded reader answers with its own error naming the file
and the field.
"""

from __future__ import annotations

import io
import json
import os
import re
import resource
import struct
import tarfile
import zipfile
import zlib
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from layergen import limits
from layergen.data.codec import ShardError, decode_sample, encode_sample
from layergen.data.labels import read_label_lines
from layergen.data.shapes import ShapeScenes
from layergen.data.shards import read_image_shards
from layergen.data.skips import SkipCounter
from layergen.export import load_layer_dir, load_ora, load_psd, save_layered
from layergen.layers import LayeredImage
from layergen.metrics.samples import SampleStore
from layergen.synthesis.inputs import InputShard, decode_record, iter_raw_samples
from layergen.synthesis.runner import pending_shards, summarize

if not os.path.exists("/proc/self/status"):
    pytest.skip("the memory limit is measured through /proc", allow_module_level=True)

BUDGET = 32 << 20  # address space a case may add to the worker's
GIB = 1 << 30


# ----------------------------------------------------------------------------------------
# The memory-limited worker
# ----------------------------------------------------------------------------------------


class Outcome(NamedTuple):
    """What a case did: ``error`` is the exception's class name ("" when none)."""

    error: str
    message: str
    reason: str | None = None


def _address_space() -> int:
    with open("/proc/self/status") as status:
        return int(re.search(r"VmSize:\s+(\d+) kB", status.read()).group(1)) << 10


def _import_readers() -> None:
    """Worker start-up: the imports are not charged to the first case."""
    import layergen.export  # noqa: F401
    import layergen.metrics.samples  # noqa: F401
    import layergen.synthesis.runner  # noqa: F401

    torch.set_num_threads(1)


def _call_limited(function, *args) -> Outcome:
    """In the worker: ``function(*args)`` with the address space capped at now + ``BUDGET``."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = _address_space() + BUDGET
    resource.setrlimit(
        resource.RLIMIT_AS, (cap if hard == resource.RLIM_INFINITY else min(cap, hard), hard)
    )
    try:
        result = function(*args)
    except MemoryError:
        return Outcome("MemoryError", "")
    except Exception as error:  # the test checks which
        return Outcome(type(error).__name__, str(error), getattr(error, "reason", None))
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    return Outcome("", str(result))


@pytest.fixture(scope="module")
def limited():
    """``limited(function, *args) -> Outcome``: run a case in the memory-limited worker."""
    with ProcessPoolExecutor(
        1, mp_context=get_context("spawn"), initializer=_import_readers
    ) as pool:
        yield lambda function, *args: pool.submit(_call_limited, function, *args).result(
            timeout=300
        )


# ----------------------------------------------------------------------------------------
# Hostile inputs
# ----------------------------------------------------------------------------------------


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _png_header(width: int, height: int) -> bytes:
    """An RGB PNG that claims ``width x height`` pixels and holds none."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )


def _sparse(path: Path, size: int = GIB) -> Path:
    """A file of ``size`` zero bytes that takes no disk space."""
    with open(path, "wb") as handle:
        handle.truncate(size)
    return path


def _members(**record: Any) -> dict[str, Any]:
    """The members of a good two-foreground 32x32 sample ``bad``, its JSON updated with ``record``."""
    scene = ShapeScenes(size=32, min_foregrounds=2, max_foregrounds=2, length=1)[0]
    members = encode_sample(scene, "bad")
    members["json"] = json.dumps({**json.loads(members["json"]), **record}).encode()
    return members


def _layered(k: int = 1, size: int = 8) -> LayeredImage:
    return LayeredImage(
        torch.zeros(3, size, size),
        torch.zeros(k, 3, size, size),
        torch.full((k, 1, size, size), 0.5 / k),
        "a scene",
        ["the background"] + [f"layer {i}" for i in range(1, k + 1)],
    )


def _decode(members: dict[str, Any], *max_foregrounds: int) -> None:
    decode_sample(members, "hostile.tar", 1e-3, *max_foregrounds)


# ----------------------------------------------------------------------------------------
# Layered shards: decode_sample
# ----------------------------------------------------------------------------------------


def test_a_billion_foregrounds_are_refused_before_any_member_is_looked_up(limited):
    outcome = limited(_decode, _members(K=1_000_000_000))
    assert outcome.error == "ShardError" and outcome.reason == "too_many_layers"
    assert outcome.message.startswith("shard hostile.tar, key bad: 1000000000 foregrounds exceed")
    assert "(json K)" in outcome.message


def test_k_over_the_data_modules_max_foregrounds_is_refused_before_decoding(limited):
    members = _members()
    members["fg_0.png"] = _png_header(4096, 4096)  # never decoded
    outcome = limited(_decode, members, 1)
    assert outcome.reason == "too_many_layers" and "max_foregrounds = 1" in outcome.message


def test_an_image_over_the_pixel_limit_is_refused_by_its_header(limited):
    members = _members()
    members["background.png"] = _png_header(5000, 5000)
    outcome = limited(_decode, members)
    assert outcome.error == "ShardError" and outcome.reason == "decompression_bomb"
    assert (
        "key bad: background.png: 5000x5000 pixels exceed layergen.limits.MAX_IMAGE_PIXELS"
        in outcome.message
    )


def test_a_layer_larger_than_the_background_is_refused_before_decoding(limited):
    members = _members()
    members["fg_1.png"] = _png_header(4096, 4096)
    outcome = limited(_decode, members)
    assert outcome.reason == "bad_image"
    assert "fg_1.png: size 4096x4096 differs from the background's 32x32" in outcome.message


def test_many_layers_of_a_large_size_are_refused_before_the_foregrounds(limited):
    members = _members(K=64, layer_prompts=[""] * 65)
    big = _png(Image.new("RGB", (1448, 1448)))  # 65 layers of it exceed MAX_LAYERED_PIXELS
    members.update({f"{p}_{i}.png": big for i in range(64) for p in ("fg", "mask")})
    members["background.png"] = big
    outcome = limited(_decode, members)
    assert outcome.reason == "too_many_layers"
    assert (
        "65 layers of 1448x1448 pixels exceed layergen.limits.MAX_LAYERED_PIXELS" in outcome.message
    )


@pytest.mark.parametrize(
    ("json_bytes", "detail"),
    [
        (b"[" * 200_000 + b"]" * 200_000, "json: JSON nested too deeply"),
        (
            b'{"prompt": "' + b"x" * (limits.MAX_JSON_BYTES + 1) + b'"}',
            "json: over layergen.limits.MAX_JSON_BYTES",
        ),
    ],
    ids=["nested", "large"],
)
def test_hostile_json_is_a_bad_text_error(limited, json_bytes, detail):
    members = _members()
    members["json"] = json_bytes
    outcome = limited(_decode, members)
    assert outcome.error == "ShardError" and outcome.reason == "bad_text"
    assert f"key bad: {detail}" in outcome.message


@pytest.mark.parametrize("field", ["prompt", "layer_prompts"])
def test_a_prompt_over_the_text_limit_is_refused(limited, field):
    long = "x" * (limits.MAX_TEXT_CHARS + 1)
    record = {"prompt": long} if field == "prompt" else {"layer_prompts": ["a", long, "c"]}
    outcome = limited(_decode, _members(**record))
    assert outcome.reason == "invalid_sample"
    name = "prompt" if field == "prompt" else "layer_prompts[1]"
    assert f"json: {name}: {limits.MAX_TEXT_CHARS + 1} characters exceed" in outcome.message


def test_limits_are_read_at_call_time(monkeypatch):
    members = _members()
    monkeypatch.setattr(limits, "MAX_IMAGE_PIXELS", 32 * 32 - 1)
    with pytest.raises(
        ShardError, match="32x32 pixels exceed layergen.limits.MAX_IMAGE_PIXELS = 1023"
    ):
        _decode(members)
    monkeypatch.setattr(limits, "MAX_IMAGE_PIXELS", 32 * 32)
    assert decode_sample(members).num_foregrounds == 2


# ----------------------------------------------------------------------------------------
# img2dataset-style shards (read_image_shards) and the tar reader
# ----------------------------------------------------------------------------------------


def _image_shard(path: Path, bad: dict[str, bytes]) -> str:
    with wds.TarWriter(str(path)) as sink:
        for key in ("a", "bad", "b"):
            members = {"__key__": key, "png": _png(Image.new("RGB", (8, 8))), "txt": b"a caption"}
            sink.write({**members, **bad} if key == "bad" else members)
    return str(path)


def _read_image_shards(url: str, on_error: str = "raise") -> str:
    counter = SkipCounter()
    keys = [key for key, *_ in read_image_shards(url, on_error, counter)]
    return f"{keys} {counter.total()}"


@pytest.mark.parametrize(
    ("bad", "reason", "detail"),
    [
        ({"png": _png_header(5000, 5000)}, "decompression_bomb", "png: 5000x5000 pixels exceed"),
        (
            {"txt": b"x" * (limits.MAX_TEXT_CHARS + 1)},
            "invalid_sample",
            "txt: 10001 characters exceed",
        ),
        ({"json": b"[" * 200_000}, "bad_text", "json: JSON nested too deeply"),
    ],
    ids=["pixels", "caption", "json"],
)
def test_image_shards_bound_images_captions_and_json(limited, tmp_path, bad, reason, detail):
    url = _image_shard(tmp_path / "images-000000.tar", bad)
    outcome = limited(_read_image_shards, url)
    assert outcome.error == "ShardError" and outcome.reason == reason
    assert f"key bad: {detail}" in outcome.message
    assert limited(_read_image_shards, url, "skip") == Outcome("", "['a', 'b'] 1")


def test_a_tar_member_claiming_a_terabyte_is_not_read(limited, tmp_path):
    path = tmp_path / "images-000000.tar"
    info = tarfile.TarInfo("bad.png")
    info.size = 1 << 40
    path.write_bytes(info.tobuf() + b"\0" * 4096)  # the header, then the data breaks off
    outcome = limited(_read_image_shards, str(path))
    assert outcome.error == "ShardError" and outcome.reason == "invalid_sample"
    assert (
        "key bad: member png: 1099511627776 bytes exceed layergen.limits.MAX_MEMBER_BYTES"
        in outcome.message
    )


# ----------------------------------------------------------------------------------------
# Synthesis inputs and manifests
# ----------------------------------------------------------------------------------------


def _rejection(files: dict[str, bytes]) -> str | None:
    return decode_record("bad", files, 32, InputShard(0, "input.tar")).rejection


@pytest.mark.parametrize(
    ("files", "detail"),
    [
        (
            {"image": _png_header(5000, 5000)},
            "image: 5000x5000 pixels exceed layergen.limits.MAX_IMAGE_PIXELS",
        ),
        ({"image": b"", "txt": b"x" * (limits.MAX_TEXT_CHARS + 1)}, "txt: 10001 characters exceed"),
        ({"image": b"", "json": b"[" * 200_000}, "json: JSON nested too deeply"),
    ],
    ids=["pixels", "caption", "json"],
)
def test_synthesis_input_over_a_limit_is_a_rejected_record(limited, files, detail):
    outcome = limited(_rejection, files)
    assert outcome.error == "" and outcome.message.startswith("decode_error: ")
    assert detail in outcome.message


def _raw_samples(shard: InputShard) -> list[str]:
    return [key for key, _ in iter_raw_samples(shard)]


def test_an_input_file_over_the_member_limit_is_not_read(limited, tmp_path):
    path = _sparse(tmp_path / "huge.png")
    outcome = limited(_raw_samples, InputShard(0, str(tmp_path), (str(path),)))
    assert outcome.error == "ShardError" and outcome.reason == "invalid_sample"
    assert (
        f"key huge: huge.png: {GIB} bytes exceed layergen.limits.MAX_MEMBER_BYTES"
        in outcome.message
    )


@pytest.mark.parametrize("reader", ["pending_shards", "summarize"])
def test_a_huge_manifest_entry_is_refused(limited, tmp_path, reader):
    (tmp_path / "manifest").mkdir()
    entry = _sparse(tmp_path / "manifest" / "shard-000000.json")
    if reader == "pending_shards":
        outcome = limited(pending_shards, [InputShard(0, "input.tar")], str(tmp_path))
    else:
        outcome = limited(summarize, str(tmp_path))
    assert outcome.error == "LayeredImageError"
    assert (
        outcome.message
        == f"{entry}: over layergen.limits.MAX_JSON_BYTES = {limits.MAX_JSON_BYTES} bytes"
    )


# ----------------------------------------------------------------------------------------
# Labels files
# ----------------------------------------------------------------------------------------


def test_a_labels_file_without_line_breaks_is_refused_line_by_line(limited, tmp_path):
    path = tmp_path / "labels.jsonl"
    path.write_text('{"key": "a", "kind": "mask", "label": 1, "split": "train"}\n')
    with open(path, "ab") as handle:
        handle.truncate(GIB)  # line 2: a gibibyte of zeros, no line break
    outcome = limited(read_label_lines, path)
    assert outcome.error == "ValueError"
    assert outcome.message.startswith(
        f"{path}:2: bad label line (JSON: over layergen.limits.MAX_JSON_BYTES"
    )


def test_a_label_key_over_the_text_limit_is_refused(tmp_path):
    path = tmp_path / "labels.jsonl"
    entry = {"key": "k" * (limits.MAX_TEXT_CHARS + 1), "kind": "mask", "label": 1, "split": "val"}
    path.write_text(json.dumps(entry) + "\n")
    with pytest.raises(ValueError, match=r"labels.jsonl:1: bad label line \('key' is over"):
        read_label_lines(path)


# ----------------------------------------------------------------------------------------
# PSD / ORA / PNG-folder imports (generate.py --edit)
# ----------------------------------------------------------------------------------------


def test_a_psd_canvas_over_the_pixel_limit_is_refused(limited, tmp_path):
    path = save_layered(_layered(), tmp_path / "x.psd")
    data = bytearray(path.read_bytes())
    data[14:22] = struct.pack(">II", 30000, 30000)  # header: height, width
    path.write_bytes(data)
    outcome = limited(load_psd, path)
    assert outcome.error == "LayeredImageError"
    assert (
        f"{path}: canvas: 30000x30000 pixels exceed layergen.limits.MAX_IMAGE_PIXELS"
        in outcome.message
    )


def test_a_psd_with_too_many_layers_is_refused(limited, tmp_path):
    path = save_layered(_layered(k=limits.MAX_FOREGROUNDS + 1, size=2), tmp_path / "x.psd")
    outcome = limited(load_psd, path)
    assert outcome == Outcome(
        "LayeredImageError", f"{path}: 66 layers exceed layergen.limits.MAX_FOREGROUNDS + 1 = 65"
    )


def _ora(path: Path, canvas: tuple[int, int], layers: int, layer_png: bytes) -> Path:
    stack = "".join(f'<layer name="l{i}" src="data/layer.png"/>' for i in range(layers))
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("mimetype", "image/openraster")
        archive.writestr(
            "stack.xml", f'<image w="{canvas[0]}" h="{canvas[1]}"><stack>{stack}</stack></image>'
        )
        archive.writestr("data/layer.png", layer_png)
    return path


@pytest.mark.parametrize(
    ("canvas", "layers", "layer_png", "detail"),
    [
        ((100_000, 100_000), 2, None, "stack.xml canvas: 100000x100000 pixels exceed"),
        ((8, 8), 70, None, "stack.xml: 70 layers exceed layergen.limits.MAX_FOREGROUNDS + 1"),
        ((2048, 2048), 40, None, "stack.xml canvas: 40 layers of 2048x2048 pixels exceed"),
        ((8, 8), 2, _png_header(5000, 5000), "layer 'data/layer.png': 5000x5000 pixels exceed"),
    ],
    ids=["canvas", "layers", "layers-times-canvas", "layer"],
)
def test_an_ora_over_a_limit_is_refused(limited, tmp_path, canvas, layers, layer_png, detail):
    png = layer_png or _png(Image.new("RGBA", (1, 1)))
    path = _ora(tmp_path / "x.ora", canvas, layers, png)
    outcome = limited(load_ora, path)
    assert outcome.error == "LayeredImageError" and f"{path}: {detail}" in outcome.message


def test_a_layer_folder_over_a_limit_is_refused(limited, tmp_path):
    folder = save_layered(_layered(), tmp_path / "layers")
    (folder / "layer_01.png").write_bytes(_png_header(5000, 5000))
    outcome = limited(load_layer_dir, folder)
    assert outcome.error == "LayeredImageError"
    assert f"{folder}: layer_01.png: 5000x5000 pixels exceed" in outcome.message

    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(
        json.dumps({**manifest, "layer_files": ["layer_00.png"] * 100})
    )
    outcome = limited(load_layer_dir, folder)
    assert outcome == Outcome(
        "LayeredImageError", f"{folder}: 100 layers exceed layergen.limits.MAX_FOREGROUNDS + 1 = 65"
    )

    _sparse(folder / "manifest.json")
    outcome = limited(load_layer_dir, folder)
    assert (
        outcome.message
        == f"{folder / 'manifest.json'}: over layergen.limits.MAX_JSON_BYTES = {limits.MAX_JSON_BYTES} bytes"
    )


def test_a_psd_sidecar_manifest_with_a_huge_prompt_is_refused(tmp_path):
    path = save_layered(_layered(), tmp_path / "x.psd")
    (tmp_path / "x.json").write_text(json.dumps({"prompt": "x" * (limits.MAX_TEXT_CHARS + 1)}))
    with pytest.raises(ValueError, match=r"x.json: prompt: 10001 characters exceed"):
        load_psd(path)


# ----------------------------------------------------------------------------------------
# evaluate.py sample stores
# ----------------------------------------------------------------------------------------


def _safetensors_header(path: Path, shapes: dict[str, list[int]], metadata: dict[str, str]) -> None:
    """A float32 safetensors file of these shapes, its data a sparse run of zeros."""
    header: dict[str, Any] = {"__metadata__": metadata}
    offset = 0
    for name, shape in shapes.items():
        size = 4 * int(np.prod(shape))
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(encoded)) + encoded)
        handle.truncate(8 + len(encoded) + offset)


def _load_sample(directory: Path) -> None:
    SampleStore(directory).load("sample_000000")


@pytest.mark.parametrize(
    ("shapes", "detail"),
    [
        (
            {
                "background": [3, 8192, 8192],
                "foregrounds": [1, 3, 8192, 8192],
                "masks": [1, 1, 8192, 8192],
            },
            "background: 8192x8192 pixels exceed layergen.limits.MAX_IMAGE_PIXELS",
        ),
        (
            {"background": [3, 4, 4], "foregrounds": [100, 3, 4, 4], "masks": [100, 1, 4, 4]},
            "foregrounds: K = 100 exceeds layergen.limits.MAX_FOREGROUNDS = 64",
        ),
        (
            {"background": [3, 4, 4], "foregrounds": [1, 3, 4, 4], "masks": [1, 1, 4, 100_000]},
            "shapes disagree",
        ),
    ],
    ids=["pixels", "layers", "shapes"],
)
def test_a_hostile_generated_sample_is_refused_by_its_header(limited, tmp_path, shapes, detail):
    path = tmp_path / "sample_000000.safetensors"
    _safetensors_header(path, shapes, {"prompt": "p", "layer_prompts": '["a", "b"]'})
    outcome = limited(_load_sample, tmp_path)
    assert outcome.error == "LayeredImageError"
    assert outcome.message.startswith(f"{path}: not a readable generated sample ({detail}")
