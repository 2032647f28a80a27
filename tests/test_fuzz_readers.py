"""Fuzzing every reader of files from outside with hypothesis (slow set).

Each harness builds inputs that are valid, nearly valid or mutated (bytes flipped, inserted,
deleted, truncated; PNG headers rewritten with correct checksums; JSON fields of the wrong
type or size) and checks one property: the reader returns a valid result, or raises the
project's error (``ShardError`` / ``LayeredImageError``, or a ``ValueError`` for the
labels and latent readers) whose message names the input. Any other exception that escapes
(``IndexError``, ``KeyError``, ``ZeroDivisionError``, ``MemoryError``, ...) fails the
harness. The whole module runs under an address-space cap, so an input that makes a reader
allocate without bound ends in ``MemoryError`` here instead of an out-of-memory kill.

The harnesses are in the slow set, deterministic (``derandomize=True``) and bounded
(``max_examples``); the inputs the fuzzer found crashing a reader are kept at the end as
plain regression tests (fast set). A longer, randomised campaign: ``LAYERGEN_FUZZ_CAMPAIGN=20 pytest -m slow
tests/test_fuzz_readers.py`` (20 times the examples, a fresh seed each run).
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
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from safetensors.torch import save as save_safetensors

from layergen.data.codec import ShardError, decode_sample, encode_sample
from layergen.data.labels import read_label_lines, read_labels
from layergen.data.latents import LATENTS_FIELD, LatentBatch, decode_latent_sample
from layergen.data.shapes import ShapeScenes
from layergen.data.shards import read_shards
from layergen.export import load_layered, save_layered
from layergen.layers import LayeredBatch, LayeredImage, LayeredImageError
from layergen.synthesis.inputs import InputShard, decode_record, iter_raw_samples

CAMPAIGN = int(os.environ.get("LAYERGEN_FUZZ_CAMPAIGN", "0"))
ADDRESS_SPACE = 3 << 30  # what the harnesses may add to the test process's address space


def fuzz(max_examples: int) -> settings:
    """Bounded, deterministic settings (or a campaign's, see the module docstring)."""
    return settings(
        max_examples=max_examples * max(CAMPAIGN, 1),
        derandomize=not CAMPAIGN,
        deadline=None,
        database=None,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def _address_space() -> int:
    with open("/proc/self/status") as status:
        return int(re.search(r"VmSize:\s+(\d+) kB", status.read()).group(1)) << 10


@pytest.fixture(scope="module", autouse=True)
def _memory_cap():
    """Cap the address space at its size now plus ``ADDRESS_SPACE`` while the module runs."""
    if not os.path.exists("/proc/self/status"):
        yield
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = _address_space() + ADDRESS_SPACE
    resource.setrlimit(
        resource.RLIMIT_AS, (cap if hard == resource.RLIM_INFINITY else min(cap, hard), hard)
    )
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """One folder for the files the harnesses write (each example overwrites its file)."""
    return tmp_path_factory.mktemp("fuzz")


# ----------------------------------------------------------------------------------------
# Strategies: images, mutations, JSON
# ----------------------------------------------------------------------------------------


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


PNG_MODES = ("RGB", "RGBA", "L", "LA", "P", "1", "I;16")
SIZES = st.integers(1, 6)


@st.composite
def valid_images(draw, modes=PNG_MODES, formats=("PNG",)) -> bytes:
    """A small valid image of any mode and format PIL writes."""
    mode = draw(st.sampled_from(modes))
    fmt = draw(st.sampled_from(formats))
    width, height = draw(SIZES), draw(SIZES)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if mode == "I;16":
        image = Image.fromarray(rng.integers(0, 65536, (height, width), dtype=np.uint16))
    else:
        channels = {"RGB": 3, "RGBA": 4, "LA": 2}.get(mode, 1)
        pixels = rng.integers(0, 256, (height, width, channels), dtype=np.uint8)
        base = {"RGB": "RGB", "RGBA": "RGBA", "LA": "LA"}.get(mode, "L")
        image = Image.fromarray(pixels[..., 0] if channels == 1 else pixels, base)
        if base != mode:
            image = image.convert(mode)
    if fmt != "PNG" and image.mode not in ("RGB", "L"):
        image = image.convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


@st.composite
def crafted_pngs(draw) -> bytes:
    """A PNG whose header fields are drawn freely (zero or huge sizes, any bit depth and
    colour type, a palette or none) with correct checksums, and random pixel data."""
    width = draw(st.one_of(st.integers(0, 8), st.integers(0, 2**31 - 1)))
    height = draw(st.one_of(st.integers(0, 8), st.integers(0, 2**31 - 1)))
    depth = draw(st.sampled_from([1, 2, 4, 8, 16, 0, 3, 32]))
    colour = draw(st.sampled_from([0, 2, 3, 4, 6, 1, 5, 7]))
    tail = draw(st.tuples(*[st.sampled_from([0, 0, 1, 2])] * 3))
    header = struct.pack(">IIBB", width, height, depth, colour) + bytes(tail)
    chunks = [_chunk(b"IHDR", header)]
    if draw(st.booleans()):
        chunks.append(_chunk(b"PLTE", draw(st.binary(max_size=48))))
    if draw(st.booleans()):
        chunks.append(_chunk(b"tRNS", draw(st.binary(max_size=16))))
    raw = draw(st.binary(max_size=256))
    chunks.append(_chunk(b"IDAT", zlib.compress(raw) if draw(st.booleans()) else raw))
    if draw(st.booleans()):
        chunks.append(_chunk(b"IEND", b""))
    return b"\x89PNG\r\n\x1a\n" + b"".join(chunks)


@st.composite
def mutated(draw, data: bytes) -> bytes:
    """``data`` with up to four edits: a byte set, bytes inserted or deleted, a truncation."""
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["set", "insert", "delete", "truncate"]))
        at = draw(st.integers(0, max(len(out) - 1, 0)))
        if op == "set" and out:
            out[at] = draw(st.integers(0, 255))
        elif op == "insert":
            out[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del out[at : at + draw(st.integers(1, 8))]
        else:
            del out[at:]
    return bytes(out)


def images(modes=PNG_MODES, formats=("PNG",)) -> st.SearchStrategy[bytes]:
    """Valid, crafted or mutated image bytes."""
    valid = valid_images(modes, formats)
    return st.one_of(valid, crafted_pngs(), valid.flatmap(mutated), st.binary(max_size=64))


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4),
    max_leaves=8,
)
"""Any JSON value (NaN and infinities included, as Python's ``json`` writes them)."""

ODD_INTS = st.one_of(
    st.integers(-3, 70), st.just(10**9), st.just(2**63), st.booleans(), st.floats(), st.text(max_size=3)
)


def _json(value: Any) -> bytes:
    return json.dumps(value).encode()


# ----------------------------------------------------------------------------------------
# decode_sample: the members of one layered-shard sample
# ----------------------------------------------------------------------------------------

SCENES = ShapeScenes(size=32, min_foregrounds=1, max_foregrounds=2, length=4)
GOOD_SAMPLES = [encode_sample(SCENES[i], f"s{i}") for i in range(len(SCENES))]
GOOD_SAMPLES.append(encode_sample(SCENES[1], "s16", mask_bits=16))


@st.composite
def layered_members(draw) -> dict[str, Any]:
    """The members of a good sample with members dropped, replaced, added and its JSON
    edited or mutated."""
    members = dict(draw(st.sampled_from(GOOD_SAMPLES)))
    pngs = sorted(name for name in members if name.endswith(".png"))
    for name in draw(st.lists(st.sampled_from([*pngs, "json"]), max_size=2, unique=True)):
        del members[name]
    for name in draw(st.lists(st.sampled_from(pngs), max_size=3, unique=True)):
        members[name] = draw(images())
    for name in draw(st.lists(st.sampled_from(["image.png", "fg_2.png", "mask_2.png"]), max_size=2)):
        members[name] = draw(images())
    if "json" in members:
        record = json.loads(members["json"])
        for field in draw(st.lists(st.sampled_from(sorted(record) + ["extra"]), max_size=3)):
            record[field] = draw(
                ODD_INTS if field in ("K", "mask_bits") else st.one_of(JSON_VALUES, ODD_INTS)
            )
        choice = draw(st.sampled_from(["edited", "mutated", "any"]))
        if choice == "edited":
            members["json"] = _json(record)
        elif choice == "mutated":
            members["json"] = draw(mutated(members["json"]))
        else:
            members["json"] = _json(draw(JSON_VALUES))
    return members


def check_decode_sample(members: dict[str, Any]) -> None:
    """A valid ``LayeredImage``, or a ``ShardError`` naming the shard and the key."""
    key = members["__key__"]
    try:
        sample = decode_sample(members, "fuzz.tar")
    except ShardError as error:
        assert f"shard fuzz.tar, key {key}: " in str(error), error
        return
    sample.validate()
    LayeredBatch.collate([sample], num_layers=sample.num_layers)


@pytest.mark.slow
@fuzz(1500)
@given(layered_members())
def test_decode_sample(members):
    check_decode_sample(members)


# ----------------------------------------------------------------------------------------
# The synthesis input reader: img2dataset-style tar shards and image folders
# ----------------------------------------------------------------------------------------

INPUT_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF")


@st.composite
def raw_inputs(draw) -> dict[str, bytes]:
    """An input sample's files: an image of any format, a caption and a JSON (or not)."""
    files = {}
    if draw(st.integers(0, 9)):
        files["image"] = draw(images(formats=INPUT_FORMATS))
    if draw(st.booleans()):
        files["txt"] = draw(st.one_of(st.text(max_size=20).map(str.encode), st.binary(max_size=20)))
    if draw(st.booleans()):
        files["json"] = draw(st.one_of(JSON_VALUES.map(_json), st.binary(max_size=20)))
    return files


@pytest.mark.slow
@fuzz(1000)
@given(raw_inputs(), st.sampled_from([None, 1, 4, 7]))
def test_decode_record(files, resolution):
    """Nothing escapes: a record with an image, or a rejected one carrying its key."""
    record = decode_record("k", files, resolution, InputShard(0, "fuzz.tar"))
    assert record.key == "k"
    if record.image is None:
        assert record.rejection.startswith("decode_error: "), record.rejection
        return
    assert record.image.ndim == 3 and record.image.shape[0] == 3
    if resolution is not None:
        assert tuple(record.image.shape[1:]) == (resolution, resolution)
    assert torch.isfinite(record.image).all() and record.image.abs().max() <= 1.0


def _input_tar(samples: list[dict[str, bytes]], compression: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=f"w:{compression}") as tar:
        for i, files in enumerate(samples):
            for ext, data in files.items():
                info = tarfile.TarInfo(f"{i:04d}.{'png' if ext == 'image' else ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.mark.slow
@fuzz(800)
@given(
    st.lists(raw_inputs(), min_size=1, max_size=3),
    st.sampled_from(["", "gz", "bz2", "xz"]),
    st.data(),
)
def test_iter_raw_samples_of_a_tar(workdir, samples, compression, data):
    """A mutated tar shard: samples, or a ``ShardError`` naming the shard."""
    path = workdir / "input.tar"
    raw = _input_tar(samples, compression)
    path.write_bytes(data.draw(st.one_of(st.just(raw), mutated(raw))))
    shard = InputShard(0, str(path))
    try:
        for key, files in iter_raw_samples(shard):
            decode_record(key, files, 4, shard)
    except ShardError as error:
        assert f"shard {path}, key " in str(error), error


@pytest.mark.slow
@fuzz(300)
@given(st.lists(raw_inputs().filter(lambda files: "image" in files), min_size=1, max_size=3))
def test_iter_raw_samples_of_a_folder(workdir, samples):
    folder = workdir / "inputs"
    folder.mkdir(exist_ok=True)
    for old in folder.iterdir():
        old.unlink()
    paths = []
    for i, files in enumerate(samples):
        for ext, data in files.items():
            (folder / f"{i}.{'png' if ext == 'image' else ext}").write_bytes(data)
        if "image" in files:
            paths.append(str(folder / f"{i}.png"))
    shard = InputShard(0, str(folder), tuple(paths))
    for key, files in iter_raw_samples(shard):
        assert decode_record(key, files, None, shard).key == key


# ----------------------------------------------------------------------------------------
# load_layered: PSD, OpenRaster and PNG folders
# ----------------------------------------------------------------------------------------


def _tiny_layered(k: int) -> LayeredImage:
    return ShapeScenes(size=32, min_foregrounds=k, max_foregrounds=k, length=1)[0]


def _written(fmt: str, k: int, root: Path) -> dict[str, bytes]:
    """The files ``save_layered`` writes for a tiny image: ``{relative path: bytes}``."""
    target = root / f"good-{fmt}-{k}"
    path = save_layered(_tiny_layered(k), target.with_suffix(f".{fmt}") if fmt else target)
    files = [path] if path.is_file() else sorted(path.iterdir())
    if fmt == "psd":
        files.append(path.with_suffix(".json"))
    return {f.relative_to(path.parent if path.is_file() else path).as_posix(): f.read_bytes() for f in files}


class Written(dict):
    """``{(format, K): {relative path: bytes}}``, shown short in hypothesis' reports."""

    def __repr__(self) -> str:
        return "Written(...)"


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> Written:
    root = tmp_path_factory.mktemp("written")
    return Written({(fmt, k): _written(fmt, k, root) for fmt in ("psd", "ora", "") for k in (1, 2)})


def check_load_layered(path: Path) -> None:
    """A valid ``LayeredImage``, or a ``LayeredImageError`` naming the file or folder."""
    try:
        image = load_layered(path)
    except LayeredImageError as error:  # names the file, or the PSD's manifest beside it
        assert str(path) in str(error) or str(path.with_suffix(".json")) in str(error), error
        return
    image.validate()
    assert image.num_layers >= 2


@pytest.mark.slow
@fuzz(1000)
@given(st.sampled_from([1, 2]), st.data())
def test_load_psd(workdir, written, k, data):
    files = written[("psd", k)]
    psd = files[f"good-psd-{k}.psd"]
    path = workdir / "fuzz.psd"
    path.write_bytes(data.draw(st.one_of(mutated(psd), _psd_with_header(psd)), label="psd"))
    sidecar = path.with_suffix(".json")
    sidecar.unlink(missing_ok=True)
    if data.draw(st.booleans(), label="with manifest"):
        sidecar.write_bytes(data.draw(_manifests(files[f"good-psd-{k}.json"]), label="manifest"))
    check_load_layered(path)


@st.composite
def _psd_with_header(draw, psd: bytes) -> bytes:
    """A PSD whose header (channels, height, width, depth, colour mode) is drawn freely."""
    channels = draw(st.integers(0, 60))
    height, width = draw(st.integers(0, 2**31)), draw(st.integers(0, 2**31))
    depth = draw(st.sampled_from([1, 8, 16, 32, 0, 7]))
    mode = draw(st.integers(0, 12))
    header = struct.pack(">4sH6sHIIHH", b"8BPS", 1, b"\0" * 6, channels, height, width, depth, mode)
    return header + psd[len(header) :]


def _manifests(good: bytes) -> st.SearchStrategy[bytes]:
    record = json.loads(good)
    edited = st.fixed_dictionaries(
        {}, optional={name: JSON_VALUES for name in [*record, "layer_files"]}
    ).map(lambda edits: _json({**record, **edits}))
    return st.one_of(edited, mutated(good), JSON_VALUES.map(_json))


@st.composite
def _stack_xml(draw, good: bytes) -> bytes:
    """``stack.xml`` with its attributes and structure edited, or its bytes mutated."""
    text = good.decode()
    for attribute in draw(st.lists(st.sampled_from(["w", "h", "x", "y", "opacity", "src",
                                                   "visibility", "name", "composite-op"]),
                                   max_size=3)):
        value = draw(st.one_of(
            st.integers(-(2**40), 2**40).map(str), st.sampled_from(["nan", "inf", "-1", "", "hidden"]),
            st.text(alphabet="ab/.<>&\"'", max_size=6),
        ))
        escaped = value.replace("&", "&amp;").replace("<", "&lt;").replace('"', "&quot;")
        text = re.sub(rf'{attribute}="[^"]*"', f'{attribute}="{escaped}"', text, count=1)
    if draw(st.booleans()):
        text = text.replace("<stack>", "<stack><stack>", 1).replace("</stack>", "</stack></stack>", 1)
    data = text.encode()
    return draw(mutated(data)) if draw(st.booleans()) else data


@pytest.mark.slow
@fuzz(1000)
@given(st.sampled_from([1, 2]), st.data())
def test_load_ora(workdir, written, k, data):
    good = zipfile.ZipFile(io.BytesIO(written[("ora", k)][f"good-ora-{k}.ora"]))
    members = {name: good.read(name) for name in good.namelist()}
    path = workdir / "fuzz.ora"
    if data.draw(st.booleans(), label="mutate the zip bytes"):
        path.write_bytes(data.draw(mutated(written[("ora", k)][f"good-ora-{k}.ora"])))
        check_load_layered(path)
        return
    names = sorted(members)
    for name in data.draw(st.lists(st.sampled_from(names), max_size=2, unique=True)):
        del members[name]
    if "stack.xml" in members:
        members["stack.xml"] = data.draw(_stack_xml(members["stack.xml"]))
    for name in data.draw(st.lists(st.sampled_from([n for n in names if n.endswith(".png")]),
                                   max_size=2, unique=True)):
        members[name] = data.draw(images())
    if "layergen.json" in members and data.draw(st.booleans()):
        members["layergen.json"] = data.draw(_manifests(members["layergen.json"]))
    method = data.draw(st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2]))
    with zipfile.ZipFile(path, "w", method) as archive:
        for name, payload in members.items():
            archive.writestr(name, payload)
    check_load_layered(path)


@pytest.mark.slow
@fuzz(800)
@given(st.sampled_from([1, 2]), st.data())
def test_load_layer_folder(workdir, written, k, data):
    folder = workdir / "layers"
    folder.mkdir(exist_ok=True)
    for old in folder.iterdir():
        old.unlink()
    files = dict(written[("", k)])
    names = sorted(files)
    for name in data.draw(st.lists(st.sampled_from(names), max_size=2, unique=True)):
        del files[name]
    for name in data.draw(st.lists(st.sampled_from([n for n in names if n.endswith(".png")]),
                                   max_size=2, unique=True)):
        files[name] = data.draw(images())
    if "manifest.json" in files:
        files["manifest.json"] = data.draw(_manifests(files["manifest.json"]))
    for name, payload in files.items():
        (folder / name).write_bytes(payload)
    check_load_layered(folder)


# ----------------------------------------------------------------------------------------
# The labels reader
# ----------------------------------------------------------------------------------------

GOOD_LABEL = {"key": st.text(max_size=4), "kind": st.sampled_from(["mask", "inpaint"]),
              "label": st.sampled_from([0, 1, None]), "split": st.sampled_from(["train", "val"])}
LABEL_LINES = st.one_of(
    st.tuples(
        st.fixed_dictionaries(GOOD_LABEL),
        st.dictionaries(st.sampled_from([*GOOD_LABEL, "extra"]), st.one_of(JSON_VALUES, ODD_INTS),
                        max_size=2),
    ).map(lambda entry: _json({**entry[0], **entry[1]})),
    JSON_VALUES.map(_json),
    st.binary(max_size=16),
    st.just(b""),
)


@pytest.mark.slow
@fuzz(1000)
@given(st.lists(LABEL_LINES, max_size=6), st.sampled_from([b"\n", b"\r\n", b"\r"]), st.data())
def test_read_label_lines(workdir, lines, newline, data):
    """Every line valid, or a ``ValueError`` naming the file and line."""
    path = workdir / "labels.jsonl"
    content = newline.join(lines)
    path.write_bytes(data.draw(st.one_of(st.just(content), mutated(content + b"\n"))))
    try:
        entries = read_label_lines(path)
    except ValueError as error:
        assert str(error).startswith(f"{path}:"), error
        return
    for kind in ("mask", "inpaint"):
        for label in read_labels(path, kind).values():
            assert label.label in (0, 1) and label.split in ("train", "val")
    assert all(isinstance(entry["key"], str) for entry in entries)


# ----------------------------------------------------------------------------------------
# The latent-cache reader
# ----------------------------------------------------------------------------------------

DTYPES = st.sampled_from([torch.float16, torch.float32, torch.bfloat16, torch.int64, torch.bool])


@st.composite
def tensors(draw) -> torch.Tensor:
    shape = draw(st.lists(st.integers(0, 4), max_size=5))
    return torch.zeros(shape, dtype=draw(DTYPES))


@st.composite
def latent_members(draw) -> dict[str, Any]:
    """A cached sample (``write_latent_shards``' members) with fields of any shape, dtype and
    type, missing or mutated."""
    layers = draw(st.integers(1, 3))
    fields = {
        "latents": torch.zeros(draw(st.sampled_from([layers, 2 * layers - 1, 1])), 4, 2, 2),
        "prompt_embeds": torch.zeros(3, 8, dtype=torch.float16),
        "layer_prompt_embeds": torch.zeros(layers, 3, 8, dtype=torch.float16),
    }
    for name in draw(st.lists(st.sampled_from(sorted(fields)), max_size=2, unique=True)):
        if draw(st.booleans()):
            del fields[name]
        else:
            fields[name] = draw(tensors())
    if draw(st.booleans()):
        fields["extra"] = draw(tensors())
    meta = {"prompt": "a scene", "layer_prompts": ["the background"] + ["a"] * (layers - 1), "key": "z"}
    for name in draw(st.lists(st.sampled_from(sorted(meta)), max_size=2)):
        meta[name] = draw(JSON_VALUES)
    members = {"__key__": "z", "__url__": "fuzz.tar"}
    packed = save_safetensors(fields)
    members[LATENTS_FIELD] = draw(st.one_of(st.just(packed), mutated(packed)))
    members["json"] = draw(st.one_of(st.just(_json(meta)), mutated(_json(meta)), JSON_VALUES.map(_json)))
    for name in draw(st.lists(st.sampled_from([LATENTS_FIELD, "json"]), max_size=1)):
        del members[name]
    return members


@pytest.mark.slow
@fuzz(1000)
@given(latent_members())
def test_decode_latent_sample(members):
    """A sample ``LatentBatch.collate`` takes, or a ``ValueError`` naming the shard and key."""
    try:
        sample = decode_latent_sample(members)
    except ValueError as error:
        assert str(error).startswith("latent shard fuzz.tar, key z: "), error
        return
    empty = sample["layer_prompt_embeds"][0]
    LatentBatch.collate([sample], sample["layer_prompt_embeds"].shape[0] + 1, empty)


# ----------------------------------------------------------------------------------------
# Regressions: inputs the fuzzer found crashing a reader
# ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def good_ora(tmp_path_factory) -> bytes:
    return save_layered(_tiny_layered(1), tmp_path_factory.mktemp("ora") / "good.ora").read_bytes()


@pytest.mark.parametrize(
    ("edit", "detail"),
    [
        (lambda data: data[1:], "member 'mimetype' is corrupt ([Errno 22] Invalid argument)"),
        (lambda data: b"\0" + data[1:], "member 'mimetype' is corrupt (Bad magic number"),
    ],
    ids=["offsets-before-the-start", "bad-magic"],
)
def test_a_corrupt_zip_member_is_a_layered_image_error(tmp_path, good_ora, edit, detail):
    # were OSError and zipfile.BadZipFile from ZipFile.read
    path = tmp_path / "bad.ora"
    path.write_bytes(edit(good_ora))
    with pytest.raises(LayeredImageError, match=re.escape(f"{path}: {detail}")):
        load_layered(path)


def test_an_unknown_xml_encoding_is_a_layered_image_error(tmp_path, good_ora):
    # was LookupError from ElementTree.fromstring
    members = {}
    with zipfile.ZipFile(io.BytesIO(good_ora)) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    members["stack.xml"] = members["stack.xml"].replace(b"encoding='utf-8'", b"encoding='tf-8'")
    path = tmp_path / "bad.ora"
    with zipfile.ZipFile(path, "w") as archive:
        for name, payload in members.items():
            archive.writestr(name, payload)
    with pytest.raises(LayeredImageError, match="stack.xml: invalid XML .unknown encoding: tf-8"):
        load_layered(path)


TRUNCATED_PNGS = {
    "IHDR": b"\x89PNG\r\n\x1a\n\x00\x00\x00\x00IHDR",
    "tRNS": b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", bytes.fromhex("00000000000000000100000000"))
    + b"\x00\x00\x00\x00tRNS",
}
"""PNGs the fuzzer found that PIL refuses with ``ValueError`` ("Truncated ... chunk")."""


@pytest.mark.parametrize("chunk", sorted(TRUNCATED_PNGS))
def test_a_truncated_png_chunk_is_a_layered_image_error(tmp_path, written, good_ora, chunk):
    # were ValueError("Truncated IHDR chunk") and ValueError("Truncated tRNS chunk") from PIL
    folder = tmp_path / "layers"
    folder.mkdir()
    for name, payload in written[("", 1)].items():
        (folder / name).write_bytes(payload)
    (folder / "layer_01.png").write_bytes(TRUNCATED_PNGS[chunk])
    with pytest.raises(LayeredImageError, match=f"{re.escape(str(folder))}: layer_01.png: cannot"):
        load_layered(folder)
    with zipfile.ZipFile(io.BytesIO(good_ora)) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    members["data/layer001.png"] = TRUNCATED_PNGS[chunk]
    path = tmp_path / "bad.ora"
    with zipfile.ZipFile(path, "w") as archive:
        for name, payload in members.items():
            archive.writestr(name, payload)
    with pytest.raises(LayeredImageError, match="layer 'data/layer001.png': cannot decode"):
        load_layered(path)


def test_a_label_line_without_a_label_is_refused(tmp_path):
    # was accepted, then KeyError in read_labels
    path = tmp_path / "labels.jsonl"
    path.write_text('{"abel": 0, "kind": "mask", "key": "", "split": "train"}\n')
    with pytest.raises(ValueError, match=f"{re.escape(str(path))}:1: bad label line .'label' must"):
        read_labels(path, "mask")


def _latent_sample(**changes: Any) -> dict[str, Any]:
    fields = {
        "latents": torch.zeros(1, 4, 2, 2),
        "prompt_embeds": torch.zeros(3, 8),
        "layer_prompt_embeds": torch.zeros(1, 3, 8),
    }
    meta = {"prompt": "a scene", "layer_prompts": ["the background"], "key": "z"}
    sample = {"__key__": "z", "__url__": "fuzz.tar", "json": _json(meta)}
    sample[LATENTS_FIELD] = save_safetensors(fields)
    return {**sample, **changes}


@pytest.mark.parametrize(
    ("changes", "detail"),
    [
        ({LATENTS_FIELD: b""}, "header too small"),  # was SafetensorError
        ({"json": b"null"}, "json: expected a JSON object"),  # was TypeError
        (  # was IndexError in LatentBatch.collate
            {LATENTS_FIELD: save_safetensors({
                "latents": torch.zeros(()), "prompt_embeds": torch.zeros(3, 8),
                "layer_prompt_embeds": torch.zeros(1, 3, 8),
            })},
            "for 1 layer prompts expected latents",
        ),
        ({"json": _json({"prompt": "a", "layer_prompts": []})}, "layer_prompts must be 1 to"),
        (
            {LATENTS_FIELD: save_safetensors({"latents": torch.zeros(1, 4, 2, 2)})},
            "missing tensor(s) layer_prompt_embeds, prompt_embeds",
        ),
    ],
    ids=["empty-safetensors", "json-null", "scalar-latents", "no-layers", "missing-tensors"],
)
def test_a_bad_latent_sample_is_a_value_error_naming_it(changes, detail):
    with pytest.raises(ValueError, match=re.escape("latent shard fuzz.tar, key z: ") + ".*"
                       + re.escape(detail)):
        decode_latent_sample(_latent_sample(**changes))
    assert decode_latent_sample(_latent_sample())["layer_prompts"] == ["the background"]


@pytest.mark.parametrize("reader", ["iter_raw_samples", "read_shards"])
def test_a_truncated_gzip_header_is_a_shard_error(tmp_path, reader):
    path = tmp_path / "shard-000000.tar"
    path.write_bytes(b"\x1f\x8b\x08")  # gzip magic and method, then nothing (was TypeError)
    read = (
        (lambda: list(iter_raw_samples(InputShard(0, str(path)))))
        if reader == "iter_raw_samples"
        else (lambda: list(read_shards(str(path))))
    )
    with pytest.raises(ShardError, match=f"shard {re.escape(str(path))}, key .: unreadable"):
        read()
