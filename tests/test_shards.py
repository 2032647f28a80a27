"""Tests of the shard format, writer and readers (layergen/data/codec.py, shards.py)."""

import io
import json
import os
from dataclasses import replace

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from layergen.data.codec import decode_sample, encode_sample, quantize_masks
from layergen.data.shapes import ShapeScenes
from layergen.data.shards import (
    ShardWriter,
    layered_pipeline,
    read_image_shards,
    read_shards,
    write_shards,
)
from layergen.layers import LayeredImage, from_unit, to_unit, unit_to_uint8


def _scenes(n: int = 6, size: int = 32) -> ShapeScenes:
    return ShapeScenes(size=size, min_foregrounds=1, max_foregrounds=3, length=n)


def _png_array(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def test_png_members_round_trip_bit_exact():
    sample = _scenes()[1]
    members = encode_sample(sample, "000000001")
    k = sample.num_foregrounds
    assert set(members) == {"__key__", "composite.png", "background.png", "json"} | {
        f"{p}_{i}.png" for i in range(k) for p in ("fg", "mask")
    }
    decoded = decode_sample(members, shard="s.tar")
    # The stored uint8 values are exactly the quantised originals ...
    assert np.array_equal(
        _png_array(members["background.png"]),
        unit_to_uint8(to_unit(sample.background).permute(1, 2, 0)),
    )
    # ... and decoding then re-encoding gives the same layer pixels, member by member (the
    # composite is derived from the quantised layers, so it may move by a level).
    again = encode_sample(decoded, "000000001")
    for name in members:
        if name.endswith(".png") and name != "composite.png":
            assert np.array_equal(_png_array(members[name]), _png_array(again[name])), name
    assert torch.allclose(decoded.masks, sample.masks, atol=1 / 255)
    assert torch.allclose(decoded.composite(), sample.composite(), atol=3 / 255)
    assert decoded.prompt == sample.prompt and decoded.layer_prompts == sample.layer_prompts
    assert decoded.metadata["foregrounds"] == sample.metadata["foregrounds"]
    assert decoded.metadata["key"] == "000000001" and decoded.metadata["shard"] == "s.tar"
    record = json.loads(members["json"])
    assert (
        record["K"] == k
        and record["source"] == "shapes"
        and record["depth"] == list(range(1, k + 1))
    )


def test_source_image_member_round_trips_and_is_optional():
    scene = _scenes()[1]
    photo = replace(scene, image=from_unit(torch.rand(3, 32, 32)))
    members = encode_sample(photo, "000000001")
    assert set(members) - set(encode_sample(scene, "000000001")) == {"image.png"}
    decoded = decode_sample(members, shard="s.tar")
    assert torch.equal(
        torch.from_numpy(unit_to_uint8(to_unit(decoded.image))),
        torch.from_numpy(unit_to_uint8(to_unit(photo.image))),
    )
    assert decode_sample(encode_sample(scene, "000000001"), shard="s.tar").image is None


def test_sixteen_bit_masks():
    sample = _scenes()[2]
    members = encode_sample(sample, "k", mask_bits=16)
    assert Image.open(io.BytesIO(members["mask_0.png"])).mode in ("I;16", "I")
    decoded = decode_sample(members)
    assert torch.allclose(decoded.masks, sample.masks, atol=1 / 65535)
    assert np.array_equal(
        _png_array(encode_sample(decoded, "k", mask_bits=16)["mask_0.png"]),
        _png_array(members["mask_0.png"]),
    )


@pytest.mark.parametrize("bits", [8, 16])
def test_quantized_masks_keep_their_sum_at_most_one(bits):
    alphas = torch.rand(4, 1, 16, 16)
    masks = alphas / alphas.sum(0, keepdim=True)  # sum exactly 1 everywhere
    q = quantize_masks(masks, bits).astype(np.int64)
    scale = 2**bits - 1
    assert q.sum(0).max() <= scale
    assert np.abs(q / scale - masks[:, 0].numpy()).max() <= 1 / scale + 1e-9


def test_write_then_read_shards_in_order_atomically(tmp_path):
    scenes = _scenes(7)
    paths = write_shards(scenes, tmp_path, shard_size=3)
    assert [os.path.basename(p) for p in paths] == [
        "shard-000000.tar",
        "shard-000001.tar",
        "shard-000002.tar",
    ]
    assert sorted(os.listdir(tmp_path)) == [os.path.basename(p) for p in paths]  # no temp files
    samples = list(read_shards(str(tmp_path / "shard-{000000..000002}.tar")))
    assert [s.metadata["key"] for s in samples] == [f"{i:09d}" for i in range(7)]
    assert samples[4].metadata["shard"].endswith("shard-000001.tar")
    for i, s in enumerate(samples):
        assert torch.allclose(s.masks, scenes[i].masks, atol=1 / 255)
        assert s.prompt == scenes[i].prompt
    piped = list(read_shards(f"pipe:cat {tmp_path / 'shard-000001.tar'}"))
    assert [s.metadata["key"] for s in piped] == ["000000003", "000000004", "000000005"]


def test_write_shards_resumes(tmp_path):
    write_shards(_scenes(4), tmp_path, shard_size=3)
    first = os.stat(tmp_path / "shard-000000.tar").st_mtime_ns
    partial = os.stat(tmp_path / "shard-000001.tar").st_size

    class Counting(ShapeScenes):
        produced: list[int] = []

        def __getitem__(self, index: int) -> LayeredImage:
            self.produced.append(index)
            return super().__getitem__(index)

    scenes = Counting(size=32, max_foregrounds=3, length=6)
    write_shards(scenes, tmp_path, shard_size=3)
    assert os.stat(tmp_path / "shard-000000.tar").st_mtime_ns == first  # kept
    assert scenes.produced == [3, 4, 5]  # only the incomplete shard was regenerated
    assert os.stat(tmp_path / "shard-000001.tar").st_size > partial
    assert len(list(read_shards(str(tmp_path / "shard-{000000..000001}.tar")))) == 6


def test_writer_leaves_no_partial_shard_on_error(tmp_path):
    scenes = _scenes(2)
    with pytest.raises(ValueError, match="key"):
        with ShardWriter(tmp_path, shard_size=10) as writer:
            writer.write(scenes[0], "good")
            writer.write(scenes[1], "bad.key")
    assert os.listdir(tmp_path) == []


def test_pipeline_shuffles_and_splits_over_nodes(tmp_path, monkeypatch):
    write_shards(_scenes(8), tmp_path, shard_size=2)
    urls = str(tmp_path / "shard-{000000..000003}.tar")
    keys = [s.metadata["key"] for s in layered_pipeline(urls, shuffle_buffer=8, seed=1)]
    assert sorted(keys) == [f"{i:09d}" for i in range(8)] and keys != sorted(keys)
    per_rank = []
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        per_rank.append({s.metadata["key"] for s in layered_pipeline(urls, split="train")})
    assert per_rank[0].isdisjoint(per_rank[1])
    assert len(per_rank[0] | per_rank[1]) == 8


def test_read_image_shards(tmp_path):
    path = str(tmp_path / "images-000000.tar")
    with wds.TarWriter(path) as sink:
        for i, ext in enumerate(("jpg", "png")):
            buffer = io.BytesIO()
            Image.new("RGB", (20, 10), (i * 100, 50, 50)).save(
                buffer, format=ext.replace("jpg", "jpeg")
            )
            sink.write(
                {
                    "__key__": f"im{i}",
                    ext: buffer.getvalue(),
                    "txt": f"caption {i} é".encode(),
                    "json": json.dumps({"n": i}).encode(),
                }
            )
    items = list(read_image_shards(path))
    assert [(k, c, r) for k, _, c, r in items] == [
        ("im0", "caption 0 é", {"n": 0}),
        ("im1", "caption 1 é", {"n": 1}),
    ]
    assert all(im.mode == "RGB" and im.size == (20, 10) for _, im, _, _ in items)


def test_write_scenes_command(tmp_path):
    from layergen.data.write_scenes import main

    paths = main(
        [
            "--out",
            str(tmp_path),
            "--num",
            "5",
            "--size",
            "32",
            "--max-foregrounds",
            "3",
            "--split",
            "val",
            "--shard-size",
            "2",
            "--mask-bits",
            "16",
        ]
    )
    assert len(paths) == 3
    samples = list(read_shards(paths))
    expected = ShapeScenes(size=32, max_foregrounds=3, split="val", length=5)
    assert [s.prompt for s in samples] == [expected[i].prompt for i in range(5)]
    assert all(s.metadata["split"] == "val" for s in samples)
    assert torch.allclose(samples[0].masks, expected[0].masks, atol=1 / 65535)
