"""The synthesis job as a resumable Lightning ``predict`` run.

* :class:`SynthesisDataModule` lists the input shards (:mod:`.inputs`) and serves, per
  rank and data-loader worker, a disjoint subset of the shards not yet done, as batches of
  decoded records (:class:`SynthesisBatch`). A truncated or unreadable input tar ends its
  shard early: the samples read so far are processed, the sample being read is rejected
  (reason ``truncated_tar``) and the manifest entry records the shard's ``failure``.
* :class:`SynthesisModule`'s ``predict_step`` runs a :class:`SynthesisChain` on a batch.
* :class:`ShardPredictionWriter` streams the kept samples of input shard ``i`` into
  ``shard-{i:06d}.tar`` (layered shard format) and the rejects into
  ``rejects/shard-{i:06d}.tar``, both through temporary files renamed when the shard is
  complete, then writes ``manifest/shard-{i:06d}.json``, which records the input the
  shard was made from (:meth:`~.inputs.InputShard.identity`). A shard with a manifest entry
  is skipped on a re-run, a shard without one is redone from the start, so a killed job
  re-run neither loses nor duplicates a sample; a re-run first removes the temporary files
  a killed run left, and refuses to resume when the inputs no longer match the manifest.
  At the end rank 0 writes ``summary.json``: per-stage time, samples/s, kept and rejected
  counts by reason, failed shards.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import lightning.pytorch as pl
import torch
import torch.distributed as dist
import webdataset as wds
from lightning.pytorch.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from layergen import limits
from layergen.data.codec import ShardError, png_bytes
from layergen.layers import chw_to_hwc, to_unit, unit_to_uint8
from layergen.synthesis.base import SynthesisChain, SynthesisRecord, SynthesisStats
from layergen.synthesis.inputs import InputShard, decode_record, iter_raw_samples, list_input_shards

logger = logging.getLogger(__name__)

MANIFEST_DIR = "manifest"
REJECTS_DIR = "rejects"
SUMMARY_FILE = "summary.json"
TEMPORARY = re.compile(r"\.tmp\d+$")  # suffix of the files written before os.replace


def manifest_path(output_dir: str, shard: InputShard) -> str:
    """Where the manifest entry of ``shard`` lives."""
    return os.path.join(output_dir, MANIFEST_DIR, f"{shard.name}.json")


def write_json_atomic(path: str, data: Any) -> None:
    """Write JSON through a temporary file and ``os.replace``."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as handle:
        json.dump(data, handle, indent=1)
    os.replace(tmp, path)


def read_manifest_entry(path: str) -> dict[str, Any]:
    """One manifest entry, a JSON object of at most ``layergen.limits.MAX_JSON_BYTES``.

    Raises:
        ValueError: naming the file.
    """
    entry = limits.read_json_file(path)
    if not isinstance(entry, dict):
        raise ValueError(f"{path}: a manifest entry must be a JSON object")
    return entry


def stale_temporaries(output_dir: str) -> list[str]:
    """The temporary files in ``output_dir``, its rejects and its manifest (left by a kill)."""
    folders = [output_dir] + [
        os.path.join(output_dir, name) for name in (REJECTS_DIR, MANIFEST_DIR)
    ]
    return [
        os.path.join(folder, name)
        for folder in folders
        if os.path.isdir(folder)
        for name in sorted(os.listdir(folder))
        if TEMPORARY.search(name)
    ]


def pending_shards(shards: Sequence[InputShard], output_dir: str) -> list[InputShard]:
    """The shards without a manifest entry in ``output_dir``.

    Raises:
        ValueError: naming ``output_dir`` and each finished shard whose recorded input is not
            the input now at its index (input files added, removed or changed since).
    """
    current = {shard.name: shard for shard in shards}
    directory = os.path.join(output_dir, MANIFEST_DIR)
    done, mismatches = set(), []
    for file_name in sorted(os.listdir(directory)) if os.path.isdir(directory) else []:
        if not file_name.endswith(".json"):
            continue
        name = file_name.removesuffix(".json")
        recorded = read_manifest_entry(os.path.join(directory, file_name)).get("input")
        now = current[name].identity() if name in current else None
        if recorded != now:
            mismatches.append(f"{name} was made from {recorded}, its input is now {now}")
        done.add(name)
    if mismatches:
        raise ValueError(
            f"cannot resume {output_dir}: the inputs differ from those its finished shards were "
            "made from (use a new output dir, or delete those shards' manifest entries to redo "
            "them): " + "; ".join(mismatches)
        )
    return [shard for shard in shards if shard.name not in done]


@dataclass
class SynthesisBatch:
    """Consecutive records of one input shard; ``last`` marks the shard's final batch.

    ``failure`` (final batch only) says why the input shard could not be read to its end.
    """

    shard: InputShard
    records: list[SynthesisRecord]
    last: bool
    stats: SynthesisStats = field(default_factory=SynthesisStats)
    failure: str | None = None


class SynthesisDataset(IterableDataset):
    """Batches of decoded records over the input shards to do.

    Shards are divided among DDP ranks and data-loader workers (shard ``j`` of the list
    goes to global worker ``j mod (world_size * num_workers)``); each shard is read by
    exactly one worker, in order, so its batches reach the writer in order. Every rank must
    be given the same list (see :meth:`SynthesisDataModule.setup`).

    Args:
        shards: the input shards to do.
        batch_size: records per batch.
        resolution: square size of the decoded images (``None``: keep the size).
    """

    def __init__(
        self, shards: Sequence[InputShard], batch_size: int, resolution: int | None
    ) -> None:
        self.shards = list(shards)
        self.batch_size = batch_size
        self.resolution = resolution

    def __iter__(self) -> Iterator[SynthesisBatch]:
        rank, world_size = (
            (dist.get_rank(), dist.get_world_size())
            if dist.is_available() and dist.is_initialized()
            else (0, 1)
        )
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        slot, slots = rank * num_workers + worker, world_size * num_workers
        for shard in self.shards[slot::slots]:
            yield from self._batches(shard)

    def _batches(self, shard: InputShard) -> Iterator[SynthesisBatch]:
        records: list[SynthesisRecord] = []
        failure = None
        try:
            for key, files in iter_raw_samples(shard):
                if len(records) == self.batch_size:
                    yield SynthesisBatch(shard, records, last=False)
                    records = []
                records.append(decode_record(key, files, self.resolution, shard))
        except ShardError as error:
            failure = f"{error.reason}: {error.detail}"
            logger.warning("%s (%s) ends early: %s", shard.name, shard.url, error)
            if error.key:  # the sample being read when the shard broke off
                record = SynthesisRecord(
                    error.key, None, source={"key": error.key, "shard": shard.url}
                )
                record.reject(failure)
                records.append(record)
        yield SynthesisBatch(shard, records, last=True, failure=failure)


def _identity(batch: SynthesisBatch) -> SynthesisBatch:
    return batch


class SynthesisDataModule(pl.LightningDataModule):
    """Serves the input shards of a synthesis job.

    Args:
        inputs: tar files, globs, brace patterns or folders of images (``.txt`` captions).
        output_dir: the job's output folder (shared with the model; done shards skipped).
        batch_size: records per ``predict_step``.
        resolution: square size the images are resized and centre-cropped to (paper: 512).
        num_workers: data-loader workers decoding images.
        shard_size: images per input shard for folders.
    """

    def __init__(
        self,
        inputs: str | list[str],
        output_dir: str,
        batch_size: int = 8,
        resolution: int | None = 512,
        num_workers: int = 0,
        shard_size: int = 1000,
    ) -> None:
        super().__init__()
        self.inputs = inputs
        self.output_dir = output_dir
        self.batch_size = batch_size
        self.resolution = resolution
        self.num_workers = num_workers
        self.shard_size = shard_size
        self.pending: list[InputShard] = []

    def setup(self, stage: str) -> None:
        """Remove stale temporaries (rank 0), check the manifest and list the shards to do.

        Lightning runs ``setup`` on every rank between two barriers, before any rank writes a
        shard, so all ranks divide the same list.

        Raises:
            ValueError: if the inputs differ from those of the finished shards.
        """
        shards = list_input_shards(self.inputs, self.shard_size)
        if self.trainer is None or self.trainer.is_global_zero:
            for path in stale_temporaries(self.output_dir):
                logger.info("removing %s, left by an interrupted run", path)
                os.remove(path)
        self.pending = pending_shards(shards, self.output_dir)

    def predict_dataloader(self) -> DataLoader:
        dataset = SynthesisDataset(self.pending, self.batch_size, self.resolution)
        return DataLoader(
            dataset, batch_size=None, num_workers=self.num_workers, collate_fn=_identity
        )


class SynthesisModule(pl.LightningModule):
    """Runs a stage chain in ``predict_step``; the writer callback stores the results.

    Args:
        chain: the stage chain (e.g. :class:`~layergen.synthesis.text2layer.Text2LayerChain`).
        output_dir: the job's output folder.
        write_rejects: also write a shard of rejected samples with their reasons.
    """

    def __init__(self, chain: SynthesisChain, output_dir: str, write_rejects: bool = True) -> None:
        super().__init__()
        self.chain = chain
        self.output_dir = output_dir
        self.write_rejects = write_rejects

    def configure_callbacks(self) -> list[pl.Callback]:
        return [ShardPredictionWriter(self.output_dir, self.write_rejects, self.chain.describe())]

    def on_predict_start(self) -> None:
        self.chain.to(self.device)

    def transfer_batch_to_device(
        self, batch: SynthesisBatch, device: torch.device, dataloader_idx: int
    ) -> SynthesisBatch:
        for record in batch.records:
            if record.image is not None:
                record.image = record.image.to(device)
        return batch

    def predict_step(self, batch: SynthesisBatch, batch_idx: int) -> SynthesisBatch:
        self.chain.stats = SynthesisStats()
        self.chain(batch.records)
        batch.stats = self.chain.stats
        return batch


class ShardPredictionWriter(BasePredictionWriter):
    """Writes output shard ``i`` for input shard ``i`` atomically, then its manifest entry.

    Args:
        output_dir: the job's output folder.
        write_rejects: also write ``rejects/shard-{i:06d}.tar``.
        provenance: the chain's description, stored in the manifest.
    """

    def __init__(
        self, output_dir: str, write_rejects: bool = True, provenance: dict[str, Any] | None = None
    ) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = output_dir
        self.write_rejects = write_rejects
        self.provenance = provenance or {}
        self._open: dict[str, dict[str, Any]] = {}
        self.run_stats = SynthesisStats()
        self._start = 0.0

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        os.makedirs(os.path.join(self.output_dir, MANIFEST_DIR), exist_ok=True)
        self.run_stats = SynthesisStats()
        self._start = time.perf_counter()

    def write_on_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        prediction: SynthesisBatch,
        batch_indices: Sequence[int] | None,
        batch: SynthesisBatch,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        state = self._open.get(prediction.shard.name) or self._begin(prediction.shard)
        for record in prediction.records:
            if record.kept:
                state["writer"].write(_encode_kept(record))
                state["keys"].append(record.key)
            else:
                if state["rejects"] is not None:
                    state["rejects"].write(_encode_reject(record))
                state["rejected"][record.key] = record.rejection
        state["stats"].merge(prediction.stats)
        state["failure"] = prediction.failure
        if prediction.last:
            self._finish(prediction.shard)

    def _begin(self, shard: InputShard) -> dict[str, Any]:
        final = os.path.join(self.output_dir, f"{shard.name}.tar")
        state: dict[str, Any] = {
            "final": final,
            "tmp": f"{final}.tmp{os.getpid()}",
            "keys": [],
            "rejected": {},
            "stats": SynthesisStats(),
            "rejects": None,
            "failure": None,
        }
        state["writer"] = wds.TarWriter(state["tmp"])
        if self.write_rejects:
            rejects = os.path.join(self.output_dir, REJECTS_DIR, f"{shard.name}.tar")
            os.makedirs(os.path.dirname(rejects), exist_ok=True)
            state["rejects_final"], state["rejects_tmp"] = rejects, f"{rejects}.tmp{os.getpid()}"
            state["rejects"] = wds.TarWriter(state["rejects_tmp"])
        self._open[shard.name] = state
        return state

    def _finish(self, shard: InputShard) -> None:
        state = self._open.pop(shard.name)
        state["writer"].close()
        os.replace(state["tmp"], state["final"])
        if state["rejects"] is not None:
            state["rejects"].close()
            os.replace(state["rejects_tmp"], state["rejects_final"])
        stats: SynthesisStats = state["stats"]
        entry = {
            "input": shard.identity(),
            "failure": state["failure"],
            "output": os.path.basename(state["final"]),
            "kept_keys": state["keys"],
            "rejected": state["rejected"],
            "stats": stats.to_dict(),
            "provenance": self.provenance,
        }
        write_json_atomic(manifest_path(self.output_dir, shard), entry)
        self.run_stats.merge(stats)
        logger.info(
            "%s: kept %d, rejected %d", shard.name, stats.kept, sum(stats.rejected.values())
        )

    def _discard_open(self) -> None:
        """Close and delete the temporary files of the shards not finished."""
        for name, state in self._open.items():
            logger.warning("%s: not finished in this run; it will be redone", name)
            state["writer"].close()
            os.remove(state["tmp"])
            if state["rejects"] is not None:
                state["rejects"].close()
                os.remove(state["rejects_tmp"])
        self._open.clear()

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._discard_open()

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._discard_open()
        elapsed = time.perf_counter() - self._start
        stage_names = sorted(self.provenance)
        local = torch.tensor(
            [float(self.run_stats.total), elapsed]
            + [self.run_stats.seconds.get(name, 0.0) for name in stage_names],
            dtype=torch.float64,
        )
        gathered = pl_module.all_gather(local).reshape(-1, local.numel()).cpu()
        if trainer.is_global_zero:
            samples = float(gathered[:, 0].sum())
            wall = float(gathered[:, 1].max())
            run = {
                "samples": int(samples),
                "seconds": wall,
                "samples_per_second": samples / wall if wall > 0 else 0.0,
                "world_size": int(gathered.shape[0]),
                "stage_seconds": {
                    name: float(gathered[:, 2 + i].sum()) for i, name in enumerate(stage_names)
                },
            }
            summary = {"run": run, "total": summarize(self.output_dir)}
            write_json_atomic(os.path.join(self.output_dir, SUMMARY_FILE), summary)
            logger.info("synthesis summary: %s", json.dumps(summary))
        trainer.strategy.barrier("synthesis summary")  # every rank may read it afterwards


def summarize(output_dir: str) -> dict[str, Any]:
    """Totals over every finished shard of ``output_dir`` (all runs): counts, stage times and
    the failed shards with their reasons."""
    directory = os.path.join(output_dir, MANIFEST_DIR)
    total = SynthesisStats()
    shards, failed = 0, {}
    for name in sorted(os.listdir(directory)) if os.path.isdir(directory) else []:
        if name.endswith(".json"):
            entry = read_manifest_entry(os.path.join(directory, name))
            total.merge(SynthesisStats.from_dict(entry["stats"]))
            if entry.get("failure"):
                failed[name.removesuffix(".json")] = entry["failure"]
            shards += 1
    seconds = sum(total.seconds.values())
    return {
        "shards": shards,
        "samples": total.total,
        "kept": total.kept,
        "rejected": dict(total.rejected),
        "failed_shards": failed,
        "stage_seconds": total.seconds,
        "stage_share": {name: value / seconds for name, value in total.seconds.items()}
        if seconds > 0
        else {},
    }


def _encode_kept(record: SynthesisRecord) -> dict[str, Any]:
    from layergen.data.shards import encode_sample

    return encode_sample(record.to_layered_image().to("cpu"), record.key)


def _encode_reject(record: SynthesisRecord) -> dict[str, Any]:
    """A rejected sample: source image (if decoded), mask (if predicted), json with the reason."""
    sample: dict[str, Any] = {
        "__key__": record.key,
        "json": json.dumps(record.metadata()).encode(),
        "txt": record.caption,
    }
    if record.image is not None:
        sample["image.png"] = png_bytes(unit_to_uint8(chw_to_hwc(to_unit(record.image.float().cpu()))))
    if record.masks is not None:
        sample["mask.png"] = png_bytes(unit_to_uint8(record.masks[0, 0].float().cpu()))
    return sample
