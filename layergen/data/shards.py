"""WebDataset tar shards of layered images: atomic resumable writing and reading.

The members of one sample are described in ``layergen.data.codec`` (PNG layers and masks,
a JSON record). Shard files are named ``{prefix}-{index:06d}.tar`` and sample n goes to
shard n // shard_size with key ``{n:09d}``. Each shard is written to ``.{name}.tmp`` in the
same directory and renamed when complete, so a shard file that exists holds everything that
was written to it. Writing again into the same directory resumes: a shard that exists and
holds the expected number of samples is kept (not regenerated); a missing one, or the last
partial one of a smaller earlier run, is (re)written.

Readers are webdataset pipelines (shard lists with brace expansion, ``pipe:`` URLs, shards
divided over DDP ranks and workers as ``layergen.data.sharding`` describes, a shuffle buffer).
Bad input raises ``ShardError`` naming the shard and key or, with ``on_error="skip"``, is
dropped, logged and counted in a ``SkipCounter``.
"""

from __future__ import annotations

import os
import re
import tarfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import webdataset as wds
from PIL import Image

from layergen import limits
from layergen.data.codec import (
    ShardError,
    check_text,
    decode_json,
    decode_sample,
    decode_text,
    encode_sample,
    open_image,
)
from layergen.data.sharding import shard_stages
from layergen.data.skips import SkipCounter
from layergen.layers import LayeredImage

__all__ = [
    "ON_ERROR",
    "ShardError",
    "ShardWriter",
    "decode_sample",
    "encode_sample",
    "layered_pipeline",
    "read_image_shards",
    "read_shards",
    "write_shards",
]

ON_ERROR = ("raise", "skip")
IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "webp")
KEY_EXT = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")  # webdataset's key / extension split

# ----------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------


def shard_name(prefix: str, index: int) -> str:
    """``{prefix}-{index:06d}.tar``."""
    return f"{prefix}-{index:06d}.tar"


class ShardWriter:
    """Write samples into numbered tar shards, each atomically (temporary name, then rename).

    Args:
        out_dir: output directory (created).
        shard_size: samples per shard.
        prefix: shard file prefix.
        mask_bits: 8 or 16.
        start_shard: index of the first shard written.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike,
        shard_size: int = 1000,
        prefix: str = "shard",
        mask_bits: int = 8,
        start_shard: int = 0,
    ) -> None:
        if shard_size < 1:
            raise ValueError(f"shard_size: must be >= 1, got {shard_size}")
        self.out_dir = os.fspath(out_dir)
        os.makedirs(self.out_dir, exist_ok=True)
        self.shard_size, self.prefix, self.mask_bits = shard_size, prefix, mask_bits
        self.shard_index = start_shard
        self.paths: list[str] = []
        self._writer: wds.TarWriter | None = None
        self._tmp = ""
        self._count = 0

    def _open(self) -> None:
        self._tmp = os.path.join(self.out_dir, f".{shard_name(self.prefix, self.shard_index)}.tmp")
        self._writer = wds.TarWriter(self._tmp)
        self._count = 0

    def _finish(self) -> None:
        if self._writer is None:
            return
        self._writer.close()
        final = os.path.join(self.out_dir, shard_name(self.prefix, self.shard_index))
        os.replace(self._tmp, final)
        self.paths.append(final)
        self._writer = None
        self.shard_index += 1

    def write(self, sample: LayeredImage, key: str) -> None:
        """Append one sample; starts the next shard when the current one is full."""
        if self._writer is None:
            self._open()
        self._writer.write(encode_sample(sample, key, self.mask_bits))
        self._count += 1
        if self._count == self.shard_size:
            self._finish()

    def close(self) -> None:
        """Finish (rename) the last, possibly partial, shard."""
        self._finish()

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type: Any, *args: Any) -> None:
        if exc_type is None:
            self.close()
        elif self._writer is not None:  # leave no partial shard under a final name
            self._writer.close()
            os.remove(self._tmp)
            self._writer = None


def write_shards(
    samples: Sequence[LayeredImage] | Iterable[LayeredImage],
    out_dir: str | os.PathLike,
    shard_size: int = 1000,
    prefix: str = "shard",
    mask_bits: int = 8,
    resume: bool = True,
) -> list[str]:
    """Write samples to ``out_dir/{prefix}-{index:06d}.tar``; sample n goes to shard n // size.

    Keys are the global sample index ``{n:09d}``. With ``resume``, shards that exist with the
    expected number of samples are kept; when ``samples`` is a ``Sequence`` their samples are not even produced (so
    ``ShapeScenes`` resumes without re-rendering).

    Returns:
        The paths of all shards of the data set, in order.
    """
    out_dir = os.fspath(out_dir)
    paths: list[str] = []
    sequence = isinstance(samples, Sequence) or (
        hasattr(samples, "__len__") and hasattr(samples, "__getitem__")
    )
    if sequence:
        n = len(samples)
        groups: Iterable[tuple[int, Iterable[LayeredImage]]] = (
            (s, (samples[i] for i in range(s * shard_size, min(n, (s + 1) * shard_size))))
            for s in range((n + shard_size - 1) // shard_size)
        )
    else:
        groups = _chunks(iter(samples), shard_size)
    for shard_index, group in groups:
        path = os.path.join(out_dir, shard_name(prefix, shard_index))
        paths.append(path)
        expected = min(shard_size, n - shard_index * shard_size) if sequence else len(group)
        if resume and _complete(path, expected):
            continue
        with ShardWriter(out_dir, shard_size, prefix, mask_bits, start_shard=shard_index) as writer:
            for offset, sample in enumerate(group):
                writer.write(sample, f"{shard_index * shard_size + offset:09d}")
    return paths


def _complete(path: str, expected: int) -> bool:
    """Whether a shard file exists (hence was fully written) with the expected sample count."""
    if not os.path.exists(path):
        return False
    with tarfile.open(path) as tar:
        keys = {m.group(1) for m in map(KEY_EXT.match, tar.getnames()) if m is not None}
    return len(keys) == expected


def _chunks(it: Iterator[LayeredImage], size: int) -> Iterator[tuple[int, list[LayeredImage]]]:
    index = 0
    while True:
        chunk = [x for _, x in zip(range(size), it)]
        if not chunk:
            return
        yield index, chunk
        index += 1


# ----------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------


def _check_on_error(on_error: str) -> None:
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error: expected one of {ON_ERROR}, got {on_error!r}")


def _handle(exn: ShardError, on_error: str, counter: SkipCounter | None) -> None:
    if on_error == "raise":
        raise exn
    if counter is not None:
        counter.add(exn.reason, exn.shard, exn.key, exn.detail)


def _open_tar(stream: Any) -> tarfile.TarFile:
    """``tarfile.open`` in stream mode; a gzip header cut short is a ``tarfile.ReadError``.

    (CPython's ``tarfile`` reads the gzip flag byte with ``ord()``, which raises ``TypeError``
    when the file ends right after the magic and method bytes, ``1f 8b 08``.)
    """
    try:
        return tarfile.open(fileobj=stream, mode="r|*")
    except TypeError as exn:
        raise tarfile.ReadError(f"truncated gzip header ({exn})") from exn


class TarSamples:
    """Pipeline stage: ``{"url"}`` dicts -> grouped tar members ``{"__key__", "__url__", ...}``.

    Reads each shard with ``tarfile`` in stream mode through ``webdataset.gopen`` (local
    paths, ``pipe:`` and other webdataset URLs). Members are grouped into samples by key
    (webdataset's rule: the key is the name up to the first dot of its base name; the
    extension after it is lower-cased). Consecutive members with one key form a sample. A shard
    that ends in the middle of a member (truncated) raises ``ShardError("truncated_tar")``
    naming the last key, or with ``on_error="skip"`` drops the incomplete sample, counts
    it and moves on to the next shard. A member larger than ``layergen.limits.MAX_MEMBER_BYTES``
    (by its tar header) is not read: its sample is an error (or a skip).
    """

    def __init__(self, on_error: str = "raise", skip_counter: SkipCounter | None = None) -> None:
        _check_on_error(on_error)
        self.on_error, self.skip_counter = on_error, skip_counter

    def __call__(self, source: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for item in source:
            yield from self._expand(item["url"])

    def _expand(self, url: str) -> Iterator[dict[str, Any]]:
        current: dict[str, Any] = {}
        skipped = False  # the current sample was counted as a skip: do not yield it
        stream = wds.gopen(url)
        try:
            with _open_tar(stream) as tar:
                for info in tar:
                    if not info.isreg():
                        continue
                    match = KEY_EXT.match(info.name)
                    if match is None or match.group(1).rsplit("/", 1)[-1].startswith("__"):
                        continue
                    key, ext = match.group(1), match.group(2).lower()
                    if current and current["__key__"] != key:
                        if not skipped:
                            yield current
                        current, skipped = {}, False
                    if not current:
                        current = {"__key__": key, "__url__": url}
                    if skipped:
                        continue
                    problem = None
                    if info.size > limits.MAX_MEMBER_BYTES:
                        problem = (
                            f"member {ext}: {info.size} bytes exceed "
                            f"layergen.limits.MAX_MEMBER_BYTES = {limits.MAX_MEMBER_BYTES}"
                        )
                    elif ext in current:
                        # which copy is right cannot be known: the whole sample is dropped
                        problem = f"duplicate member {ext}"
                    if problem is None:
                        current[ext] = tar.extractfile(info).read()
                    else:
                        exn = ShardError("invalid_sample", url, key, problem)
                        _handle(exn, self.on_error, self.skip_counter)
                        skipped = True
        except (tarfile.TarError, OSError, EOFError) as exn:
            key = current.get("__key__", "")
            error = ShardError("truncated_tar", url, key, f"unreadable or truncated tar: {exn}")
            _handle(error, self.on_error, self.skip_counter)
            return
        finally:
            stream.close()
        if current and not skipped:
            yield current


class DecodeLayered:
    """Pipeline stage: tar samples -> ``LayeredImage`` (errors raised or counted and skipped).

    Args:
        on_error: ``"raise"`` or ``"skip"``.
        skip_counter: where skips are counted.
        transform: applied to each decoded sample (e.g. ``LayeredTransform``).
        max_foregrounds: samples with more foregrounds are errors (or skips), found before
            they are decoded (default ``layergen.limits.MAX_FOREGROUNDS``).
        mask_sum_tolerance: see ``decode_sample``.
    """

    def __init__(
        self,
        on_error: str = "raise",
        skip_counter: SkipCounter | None = None,
        transform: Callable[[LayeredImage], LayeredImage] | None = None,
        max_foregrounds: int | None = None,
        mask_sum_tolerance: float = 1e-3,
    ) -> None:
        _check_on_error(on_error)
        self.on_error, self.skip_counter, self.transform = on_error, skip_counter, transform
        self.max_foregrounds, self.mask_sum_tolerance = max_foregrounds, mask_sum_tolerance

    def __call__(self, source: Iterable[dict[str, Any]]) -> Iterator[LayeredImage]:
        for raw in source:
            try:
                sample = decode_sample(
                    raw,
                    mask_sum_tolerance=self.mask_sum_tolerance,
                    max_foregrounds=self.max_foregrounds,
                )
            except ShardError as exn:
                _handle(exn, self.on_error, self.skip_counter)
                continue
            yield self.transform(sample) if self.transform is not None else sample


def layered_pipeline(
    urls: str | list[str],
    shuffle_buffer: int = 0,
    split: str = "none",
    on_error: str = "raise",
    skip_counter: SkipCounter | None = None,
    transform: Callable[[LayeredImage], LayeredImage] | None = None,
    max_foregrounds: int | None = None,
    mask_sum_tolerance: float = 1e-3,
    seed: int = 0,
    samples_per_worker: int | None = None,
) -> wds.DataPipeline:
    """A webdataset ``DataPipeline`` (an ``IterableDataset``) of ``LayeredImage``s.

    Args:
        urls: brace pattern, ``pipe:`` URL or list of URLs.
        shuffle_buffer: sample shuffle buffer (0: read in order).
        split: how shards are divided over DDP ranks and data-loader workers, one of
            ``layergen.data.sharding.SHARD_SPLITS`` (``"none"``: every shard, in order).
        on_error: ``"raise"`` or ``"skip"``.
        skip_counter: counts skips.
        transform: per-sample transform.
        max_foregrounds: larger samples are errors (or skips).
        mask_sum_tolerance: see ``decode_sample``.
        seed: shard shuffling / resampling seed.
        samples_per_worker: cut each worker's stream into epochs of this many samples
            (required with ``split="resample"``, whose stream never ends).
    """
    _check_on_error(on_error)
    if split == "resample" and samples_per_worker is None:
        raise ValueError("samples_per_worker: required with split='resample' (an endless stream)")
    stages = shard_stages(urls, split, seed)
    stages.append(TarSamples(on_error, skip_counter))
    if shuffle_buffer > 0:
        stages.append(wds.shuffle(shuffle_buffer, initial=min(shuffle_buffer, 100)))
    stages.append(
        DecodeLayered(on_error, skip_counter, transform, max_foregrounds, mask_sum_tolerance)
    )
    pipeline = wds.DataPipeline(*stages)
    return pipeline.with_epoch(samples_per_worker) if samples_per_worker else pipeline


def read_shards(
    urls: str | list[str], on_error: str = "raise", skip_counter: SkipCounter | None = None
) -> Iterator[LayeredImage]:
    """Iterate over the ``LayeredImage``s of shards in order (``metadata["key"]``/``["shard"]``)."""
    return iter(layered_pipeline(urls, on_error=on_error, skip_counter=skip_counter))


def read_image_shards(
    urls: str | list[str], on_error: str = "raise", skip_counter: SkipCounter | None = None
) -> Iterator[tuple[str, Image.Image, str, dict[str, Any]]]:
    """Iterate over img2dataset-style shards: ``{key}.jpg|png|webp``, ``{key}.txt``, ``{key}.json``.

    Images, captions and JSON are bounded as in ``decode_sample`` (``layergen.limits``).

    Yields:
        ``(key, RGB PIL image, caption, json dict)``; caption "" and json {} when absent.
    """
    _check_on_error(on_error)
    pipeline = wds.DataPipeline(wds.SimpleShardList(urls), TarSamples(on_error, skip_counter))
    for raw in pipeline:
        key, url = raw["__key__"], raw["__url__"]
        try:
            ext = next((e for e in IMAGE_EXTENSIONS if e in raw), None)
            if ext is None:
                raise ShardError(
                    "missing_member", url, key, f"no image member ({', '.join(IMAGE_EXTENSIONS)})"
                )
            image = open_image(raw[ext], ext, url, key).convert("RGB")
            caption = decode_text(raw["txt"], "txt", url, key) if "txt" in raw else ""
            check_text(caption, "txt", url, key)
            record = decode_json(raw["json"], "json", url, key) if "json" in raw else {}
        except ShardError as exn:
            _handle(exn, on_error, skip_counter)
            continue
        yield key, image, caption, record
