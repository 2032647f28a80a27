"""Bad input: each is an error naming the shard and key, or a counted, logged skip."""

import io
import json
import logging
import os
import re
import tarfile

import pytest
import webdataset as wds
from PIL import Image

from layergen.data.codec import ShardError, encode_sample
from layergen.data.shapes import ShapeScenes
from layergen.data.shards import read_image_shards, read_shards
from layergen.data.skips import SkipCounter

GOOD_KEYS = ["good0", "good1"]


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _write_shard(path, mutate) -> None:
    """good0, bad (members changed by ``mutate``), good1."""
    scenes = ShapeScenes(size=32, min_foregrounds=2, max_foregrounds=2, length=3)
    with wds.TarWriter(str(path)) as sink:
        for i, key in enumerate(["good0", "bad", "good1"]):
            members = encode_sample(scenes[i], key)
            if key == "bad":
                mutate(members)
            sink.write(members)


def _set(name, value):
    return lambda members: members.__setitem__(name, value)


CASES = {
    "corrupt_image": (_set("fg_0.png", b"\x89PNG\r\n\x1a\n this is not an image"), "corrupt_image"),
    "truncated_image": (
        lambda m: m.__setitem__(
            "background.png", m["background.png"][: len(m["background.png"]) // 2]
        ),
        "corrupt_image",
    ),
    "missing_mask": (lambda m: m.pop("mask_1.png"), "missing_member"),
    "mask_wrong_mode": (_set("mask_0.png", _png(Image.new("RGB", (32, 32)))), "bad_mask"),
    "mask_wrong_size": (_set("mask_0.png", _png(Image.new("L", (16, 32)))), "bad_mask"),
    "sixteen_bit_declared_eight_stored": (
        lambda m: m.__setitem__("json", m["json"].replace(b'"mask_bits": 8', b'"mask_bits": 16')),
        "bad_mask",
    ),
    "masks_sum_over_one": (
        lambda m: [
            m.__setitem__(f"mask_{i}.png", _png(Image.new("L", (32, 32), 200))) for i in (0, 1)
        ],
        "invalid_sample",
    ),
    "wrong_layer_prompts": (
        lambda m: m.__setitem__(
            "json",
            re.sub(rb'"layer_prompts": \["[^"]*", ', b'"layer_prompts": [', m["json"]),
        ),
        "invalid_sample",
    ),
    "corrupt_source_image": (_set("image.png", b"\x89PNG\r\n\x1a\n not an image"), "corrupt_image"),
    "source_image_wrong_mode": (_set("image.png", _png(Image.new("L", (32, 32)))), "bad_image"),
    "source_image_wrong_size": (_set("image.png", _png(Image.new("RGB", (16, 32)))), "bad_image"),
    "non_utf8_json": (_set("json", b'{"prompt": "caf\xe9", "K": 2}'), "bad_text"),
    "invalid_json": (_set("json", b'{"prompt": '), "bad_text"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_member_raises_naming_shard_and_key(tmp_path, case):
    path = tmp_path / "shard-000000.tar"
    _write_shard(path, CASES[case][0])
    with pytest.raises(ShardError, match=rf"shard {path}, key bad:") as info:
        list(read_shards(str(path)))
    assert info.value.reason == CASES[case][1]


@pytest.mark.parametrize("case", list(CASES))
def test_bad_member_is_a_counted_logged_skip(tmp_path, case, caplog):
    path = tmp_path / "shard-000000.tar"
    _write_shard(path, CASES[case][0])
    counter = SkipCounter()
    with caplog.at_level(logging.WARNING):
        keys = [s.metadata["key"] for s in read_shards(str(path), "skip", counter)]
    assert keys == GOOD_KEYS
    assert counter.counts()[CASES[case][1]] == 1 and counter.total() == 1
    assert "key bad" in caplog.text and str(path) in caplog.text


def test_image_over_decompression_bomb_limit(tmp_path, monkeypatch):
    path = tmp_path / "shard-000000.tar"
    _write_shard(path, _set("fg_1.png", _png(Image.new("RGB", (64, 64)))))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1500)  # 32x32 passes, 64x64 is a "bomb"
    with pytest.raises(ShardError, match=rf"shard {path}, key bad: fg_1.png") as info:
        list(read_shards(str(path)))
    assert info.value.reason == "decompression_bomb"
    counter = SkipCounter()
    assert [s.metadata["key"] for s in read_shards(str(path), "skip", counter)] == GOOD_KEYS
    assert counter.counts()["decompression_bomb"] == 1


def test_image_just_over_the_limit_is_rejected_too(tmp_path, monkeypatch):
    path = tmp_path / "shard-000000.tar"
    _write_shard(path, _set("fg_1.png", _png(Image.new("RGB", (40, 40)))))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1500)  # 1600 pixels: PIL only warns
    with pytest.raises(ShardError, match="key bad") as info:
        list(read_shards(str(path)))
    assert info.value.reason == "decompression_bomb"


def test_truncated_tar(tmp_path):
    path = tmp_path / "shard-000000.tar"
    _write_shard(path, lambda m: None)
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(int(size * 0.6))
    with pytest.raises(ShardError, match=rf"shard {path}, key .*truncated") as info:
        list(read_shards(str(path)))
    assert info.value.reason == "truncated_tar"
    counter = SkipCounter()
    keys = [s.metadata["key"] for s in read_shards(str(path), "skip", counter)]
    assert keys == ["good0"]  # complete samples before the cut; the cut one is dropped
    assert counter.counts()["truncated_tar"] == 1 and counter.total() == 1



def test_duplicate_member_drops_the_whole_sample(tmp_path):
    path = tmp_path / "shard-000000.tar"
    scenes = ShapeScenes(size=32, min_foregrounds=2, max_foregrounds=2, length=3)
    with tarfile.open(path, "w") as tar:
        for i, key in enumerate(["good0", "bad", "good1"]):
            members = encode_sample(scenes[i], key)
            names = [n for n in members if n != "__key__"]
            if key == "bad":
                names.append("fg_0.png")  # a second copy: which one is right is unknowable
            for name in names:
                data = members[name] if isinstance(members[name], bytes) else members[name].encode()
                info = tarfile.TarInfo(f"{key}.{name}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    with pytest.raises(ShardError, match=rf"shard {path}, key bad: duplicate member fg_0.png"):
        list(read_shards(str(path)))
    counter = SkipCounter()
    assert [s.metadata["key"] for s in read_shards(str(path), "skip", counter)] == GOOD_KEYS
    assert counter.counts()["invalid_sample"] == 1 and counter.total() == 1

def _image_shard(path, bad: dict) -> None:
    with wds.TarWriter(str(path)) as sink:
        for key in ("a", "bad", "b"):
            members = {
                "__key__": key,
                "png": _png(Image.new("RGB", (8, 8))),
                "txt": b"a caption",
                "json": json.dumps({"k": key}).encode(),
            }
            if key == "bad":
                members.update(bad)
            sink.write(members)


@pytest.mark.parametrize(
    ("bad", "reason"),
    [({"txt": b"caf\xe9"}, "bad_text"), ({"png": b"garbage"}, "corrupt_image")],
)
def test_bad_input_shards_for_synthesis(tmp_path, bad, reason):
    path = tmp_path / "images-000000.tar"
    _image_shard(path, bad)
    with pytest.raises(ShardError, match=rf"shard {path}, key bad:"):
        list(read_image_shards(str(path)))
    counter = SkipCounter()
    assert [k for k, *_ in read_image_shards(str(path), "skip", counter)] == ["a", "b"]
    assert counter.counts()[reason] == 1


def test_unknown_on_error_mode():
    with pytest.raises(ValueError, match="on_error"):
        read_shards("x.tar", on_error="ignore")
    assert SkipCounter().counts()["corrupt_image"] == 0
