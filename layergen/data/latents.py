"""Cached latents: layered shards encoded once, read back to train the diffusion model.

Encoding every batch with the frozen autoencoder and text encoder is the largest avoidable
cost of latent-diffusion training. ``python -m layergen.apps.cache_latents``
(:func:`layergen.apps.cache_latents.cache_latents`) encodes each sample once and writes
WebDataset latent shards (:func:`write_latent_shards`), one tar member per field of a key:

- ``{key}.latents.safetensors``: ``latents`` ``(L', C, h, w)`` (the posterior mode,
  *unscaled*: the diffusion module multiplies by ``scaling_factor``), ``prompt_embeds``
  ``(S, D)`` and ``layer_prompt_embeds`` ``(L, S, D)`` (``T(y)``, ``T(p_i)``), and for
  composite- and box-conditioned training ``composite_latents`` ``(C, h, w)`` (the composite
  encoded as one layer, unscaled: :func:`encode_composites`) and ``layer_boxes`` ``(L, 4)``
  (:func:`layer_boxes`); caches written before these fields existed still load (the batch
  then has none);
- ``{key}.json``: prompt, layer prompts, key;

and ``T("")`` beside them (:data:`EMPTY_PROMPT_FILE`, :func:`load_empty_embedding`), so
that reading the cache loads no model. :class:`LatentDataModule` reads the shards back as
:class:`LatentBatch` es padded to ``L`` layers.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import webdataset as wds
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from layergen import limits
from layergen.data.sharding import samples_per_worker, shard_stages
from layergen.latent_layout import PACKINGS, LatentLayout
from layergen.layers import composite_layers, mask_boxes

logger = logging.getLogger(__name__)

LATENTS_FIELD = "latents.safetensors"
# 2: composite_latents and layer_boxes; a cache of another version is encoded again
CACHE_FIELDS_VERSION = 2


@dataclass
class LatentBatch:
    """A batch of cached latents and text embeddings.

    Attributes:
        latents: ``(B, L', C, h, w)`` unscaled autoencoder latents.
        prompt_embeds: ``(B, S, D)`` global-prompt embeddings.
        layer_prompt_embeds: ``(B, L, S, D)`` layer-prompt embeddings (padded layers: "").
        layer_valid: ``(B, L)`` bool.
        composite_latents: ``(B, C, h, w)`` unscaled latents of the composites, or None.
        layer_boxes: ``(B, L, 4)`` layer boxes in [0, 1] (padded layers and empty masks NaN),
            or None.
        prompts: global prompts.
        layer_prompts: per sample ``L`` layer prompts, padded with "".
        keys: sample keys.
    """

    latents: Tensor
    prompt_embeds: Tensor
    layer_prompt_embeds: Tensor
    layer_valid: Tensor
    composite_latents: Tensor | None = None
    layer_boxes: Tensor | None = None
    prompts: list[str] = field(default_factory=list)
    layer_prompts: list[list[str]] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return self.latents.shape[0]

    def to(self, *args: Any, **kwargs: Any) -> LatentBatch:
        """Move the tensors (``Tensor.to`` arguments; ``layer_valid`` keeps its dtype)."""
        latents = self.latents.to(*args, **kwargs)
        return replace(
            self,
            latents=latents,
            prompt_embeds=self.prompt_embeds.to(*args, **kwargs),
            layer_prompt_embeds=self.layer_prompt_embeds.to(*args, **kwargs),
            layer_valid=self.layer_valid.to(latents.device),
            composite_latents=None if self.composite_latents is None
            else self.composite_latents.to(*args, **kwargs),
            layer_boxes=None if self.layer_boxes is None else self.layer_boxes.to(latents.device),
        )

    @classmethod
    def collate(
        cls, samples: Sequence[dict[str, Any]], num_layers: int, empty_embedding: Tensor
    ) -> LatentBatch:
        """Stack decoded samples, padding to ``num_layers`` layers (layer prompts "")."""
        latents, layer_embeds, valid = [], [], []
        for s in samples:
            n = s["layer_prompt_embeds"].shape[0]
            if n > num_layers:
                raise ValueError(f"sample {s['key']}: {n} layers exceed num_layers = {num_layers}")
            layout = LatentLayout.infer(n, s["latents"].shape[0])
            latents.append(layout.pad(s["latents"], n, num_layers))
            pad = empty_embedding.to(s["layer_prompt_embeds"].dtype).expand(num_layers - n, -1, -1)
            layer_embeds.append(torch.cat([s["layer_prompt_embeds"], pad]))
            valid.append(torch.arange(num_layers) < n)
        composite, boxes = None, None
        if all("composite_latents" in s for s in samples):
            composite = torch.stack([s["composite_latents"] for s in samples]).float()
        if all("layer_boxes" in s for s in samples):
            nan = torch.full((num_layers, 4), float("nan"))
            boxes = torch.stack(
                [torch.cat([s["layer_boxes"].float(), nan[len(s["layer_boxes"]):]]) for s in samples]
            )
        return cls(
            latents=torch.stack(latents).float(),
            prompt_embeds=torch.stack([s["prompt_embeds"] for s in samples]).float(),
            layer_prompt_embeds=torch.stack(layer_embeds).float(),
            layer_valid=torch.stack(valid),
            composite_latents=composite,
            layer_boxes=boxes,
            prompts=[s["prompt"] for s in samples],
            layer_prompts=[
                s["layer_prompts"] + [""] * (num_layers - len(s["layer_prompts"])) for s in samples
            ],
            keys=[s["key"] for s in samples],
        )


def decode_latent_sample(sample: dict[str, Any]) -> dict[str, Any]:
    """WebDataset sample (raw bytes) -> tensors and metadata (see the module docstring).

    Returns:
        ``{"key", "prompt", "layer_prompts" (L strings), "latents" (L', C, h, w) with
        ``L'`` in ``(1, L, 2L - 1)``, "prompt_embeds" (S, D), "layer_prompt_embeds"
        (L, S, D)}``, ``L <= layergen.limits.MAX_FOREGROUNDS + 1``.

    Raises:
        ValueError: ``"latent shard {url}, key {key}: ..."``: a member is missing or
            unreadable, or a field has the wrong type or shape.
    """
    key = str(sample.get("__key__", "?"))
    where = f"latent shard {sample.get('__url__', '?')}, key {key}"
    try:
        tensors = load_safetensors(sample[LATENTS_FIELD])
        meta = limits.parse_json(sample["json"], "json")
    except KeyError as exn:
        raise ValueError(f"{where}: missing member {exn}") from None
    except (ValueError, SafetensorError) as exn:
        raise ValueError(f"{where}: {exn}") from None
    try:
        decoded = _check_latent_sample(meta, tensors)
    except ValueError as exn:
        raise ValueError(f"{where}: {exn}") from None
    return {"key": key, **decoded}


def _check_latent_sample(meta: Any, tensors: dict[str, Tensor]) -> dict[str, Any]:
    """The fields of a cached sample, checked against each other and ``layergen.limits``."""
    if not isinstance(meta, dict):
        raise ValueError("json: expected a JSON object")
    prompt, layer_prompts = meta.get("prompt"), meta.get("layer_prompts")
    if not isinstance(prompt, str) or len(prompt) > limits.MAX_TEXT_CHARS:
        raise ValueError(f"json: prompt must be a string of at most {limits.MAX_TEXT_CHARS}")
    if not (
        isinstance(layer_prompts, list)
        and 1 <= len(layer_prompts) <= limits.MAX_FOREGROUNDS + 1
        and all(isinstance(p, str) and len(p) <= limits.MAX_TEXT_CHARS for p in layer_prompts)
    ):
        raise ValueError(
            f"json: layer_prompts must be 1 to {limits.MAX_FOREGROUNDS + 1} strings of at most "
            f"{limits.MAX_TEXT_CHARS}"
        )
    missing = {"latents", "prompt_embeds", "layer_prompt_embeds"} - set(tensors)
    if missing:
        raise ValueError(f"{LATENTS_FIELD}: missing tensor(s) {', '.join(sorted(missing))}")
    n = len(layer_prompts)
    latents, embeds, layer_embeds = (
        tensors[name] for name in ("latents", "prompt_embeds", "layer_prompt_embeds")
    )
    if (
        latents.ndim != 4
        or latents.shape[0] not in {LatentLayout(p).latent_layers(n) for p in PACKINGS}
        or embeds.ndim != 2
        or tuple(layer_embeds.shape) != (n, *embeds.shape)
    ):
        raise ValueError(
            f"{LATENTS_FIELD}: for {n} layer prompts expected latents (1 | {n} | {2 * n - 1}, "
            f"C, h, w), prompt_embeds (S, D) and layer_prompt_embeds ({n}, S, D), got "
            f"{tuple(latents.shape)}, {tuple(embeds.shape)}, {tuple(layer_embeds.shape)}"
        )
    out = {
        "prompt": prompt,
        "layer_prompts": layer_prompts,
        "latents": latents,
        "prompt_embeds": embeds,
        "layer_prompt_embeds": layer_embeds,
    }
    composite, boxes = tensors.get("composite_latents"), tensors.get("layer_boxes")
    if composite is not None:
        if tuple(composite.shape) != tuple(latents.shape[1:]):
            raise ValueError(f"{LATENTS_FIELD}: composite_latents must be {tuple(latents.shape[1:])}, "
                             f"got {tuple(composite.shape)}")
        out["composite_latents"] = composite
    if boxes is not None:
        if tuple(boxes.shape) != (n, 4):
            raise ValueError(f"{LATENTS_FIELD}: layer_boxes must be ({n}, 4), got {tuple(boxes.shape)}")
        out["layer_boxes"] = boxes
    return out


@torch.no_grad()
def encode_composites(autoencoder: Any, images: Tensor, masks: Tensor) -> Tensor:
    """The composites of a padded layered batch, each encoded as a one-layer image.

    Args:
        images: ``(B, L, 3, H, W)`` in [-1, 1]; masks: ``(B, L, 1, H, W)`` in [0, 1].

    Returns:
        ``(B, C, h, w)`` unscaled posterior modes (the composite condition's latents).
    """
    composite = composite_layers(images, masks)[:, None]  # (B, 1, 3, H, W)
    ones = torch.ones_like(composite[:, :, :1])
    return autoencoder.encode(composite, ones).latent_dist.mode()[:, 0]


def layer_boxes(masks: Tensor, layer_valid: Tensor) -> Tensor:
    """``(B, L, 4)`` boxes of a padded batch's layers: the background's the whole frame, a
    foreground's that of its mask (:func:`~layergen.layers.mask_boxes`), padded layers NaN."""
    boxes = mask_boxes(masks)
    boxes[:, 0] = torch.tensor([0.0, 0.0, 1.0, 1.0])
    return torch.where(layer_valid[..., None], boxes, float("nan"))


def write_latent_shards(
    samples: Iterable[dict[str, Any]],
    out_dir: str | Path,
    samples_per_shard: int = 1000,
    prefix: str = "latents",
    first_shard: int = 0,
    on_shard_written: Callable[[int], None] | None = None,
) -> list[Path]:
    """Write encoded samples to ``out_dir/{prefix}-{i:06d}.tar`` from ``i = first_shard`` on,
    each written atomically (a temporary file renamed when the shard is complete), then
    ``on_shard_written(i + 1)``; returns the shards written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    writer, tmp = None, None

    def close() -> None:
        writer.close()
        os.replace(tmp, paths[-1])
        if on_shard_written is not None:
            on_shard_written(first_shard + len(paths))

    for count, s in enumerate(samples):
        if count % samples_per_shard == 0:
            if writer is not None:
                close()
            paths.append(out_dir / f"{prefix}-{first_shard + len(paths):06d}.tar")
            tmp = paths[-1].with_suffix(".tar.tmp")
            writer = wds.TarWriter(str(tmp))
        names = ("latents", "prompt_embeds", "layer_prompt_embeds", "composite_latents", "layer_boxes")
        tensors = {k: s[k] for k in names if k in s}
        meta = {"prompt": s["prompt"], "layer_prompts": s["layer_prompts"], "key": s["key"]}
        writer.write(
            {
                "__key__": s["key"],
                LATENTS_FIELD: save_safetensors(tensors),
                "json": json.dumps(meta),
            }
        )
    if writer is not None:
        close()
    return paths


EMPTY_PROMPT_FILE = "empty_prompt.safetensors"
SHARD_PREFIX = "latents"


def empty_embedding_path(shards: str | list[str]) -> Path:
    """Where caching writes ``T("")``: :data:`EMPTY_PROMPT_FILE` beside the first shard."""
    first = shards if isinstance(shards, str) else shards[0]
    return Path(first).parent / EMPTY_PROMPT_FILE


def load_empty_embedding(shards: str | list[str], path: str | Path | None = None) -> Tensor:
    """``T("")`` ``(S, D)`` from ``path``, by default the file caching wrote beside local
    latent shards (:func:`empty_embedding_path`)."""
    path = empty_embedding_path(shards) if path is None else Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no empty-prompt embedding (the {EMPTY_PROMPT_FILE} that "
            "python -m layergen.apps.cache_latents writes beside the latent shards); re-run it, "
            "or give the data module's empty_embedding"
        )
    return load_safetensors(path.read_bytes())["empty_prompt_embeds"]


class LatentCollate:
    """``collate_fn`` for :class:`LatentBatch` (picklable for worker processes)."""

    def __init__(self, num_layers: int, empty_embedding: Tensor) -> None:
        self.num_layers = num_layers
        self.empty_embedding = empty_embedding

    def __call__(self, samples: Sequence[dict[str, Any]]) -> LatentBatch:
        return LatentBatch.collate(samples, self.num_layers, self.empty_embedding)


class InMemoryLatents(Dataset):
    """Every cached sample of some latent shards, padded and stacked once.

    Indexed by a *list* of indices, it returns a whole :class:`LatentBatch` by tensor
    indexing: no Python work per sample in the training loop (small datasets, e.g. the demo's
    4096 synthetic scenes: ~50 MB).
    """

    def __init__(self, samples: Sequence[dict[str, Any]], num_layers: int, empty_embedding: Tensor) -> None:
        if not samples:
            raise ValueError("InMemoryLatents: no samples (empty latent shards?)")
        self.batch = LatentBatch.collate(samples, num_layers, empty_embedding)

    def __len__(self) -> int:
        return len(self.batch)

    def __getitem__(self, indices: list[int]) -> LatentBatch:
        b, index = self.batch, torch.as_tensor(indices)
        return LatentBatch(
            latents=b.latents[index],
            prompt_embeds=b.prompt_embeds[index],
            layer_prompt_embeds=b.layer_prompt_embeds[index],
            layer_valid=b.layer_valid[index],
            composite_latents=None if b.composite_latents is None else b.composite_latents[index],
            layer_boxes=None if b.layer_boxes is None else b.layer_boxes[index],
            prompts=[b.prompts[i] for i in indices],
            layer_prompts=[b.layer_prompts[i] for i in indices],
            keys=[b.keys[i] for i in indices],
        )


class ShuffledBatches(Sampler):
    """Index batches of a random permutation per epoch (seed, epoch), last partial batch dropped."""

    def __init__(self, length: int, batch_size: int, seed: int = 0, shuffle: bool = True) -> None:
        if batch_size > length:
            raise ValueError(f"ShuffledBatches: batch_size {batch_size} > {length} samples")
        self.length, self.batch_size, self.seed, self.shuffle = length, batch_size, seed, shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length // self.batch_size

    def __iter__(self) -> Iterator[list[int]]:
        if self.shuffle:
            order = torch.randperm(self.length, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        else:
            order = torch.arange(self.length)
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            yield order[start : start + self.batch_size].tolist()


def _unbatched(batch: LatentBatch) -> LatentBatch:
    return batch


class LatentDataModule(pl.LightningDataModule):
    """Train/val :class:`LatentBatch` es from cached latent shards (``layergen.apps.cache_latents``).

    Args:
        train_shards, val_shards: shard URLs (brace pattern or list).
        empty_embedding: the ``T("")`` of padded layers: the empty-prompt safetensors caching
            writes (:data:`EMPTY_PROMPT_FILE`); None: the one beside the first (local) train
            shard.
        max_foregrounds: batches are padded to ``L = max_foregrounds + 1`` layers.
        batch_size, num_workers, shuffle_buffer, seed: loading.
        train_samples_per_epoch: resample training shards into epochs of this many samples
            over all ranks (equal on every rank, as DDP needs; see
            ``LayeredDataModule``); None: split the shards over ranks and workers.
        in_memory: read every shard once into :class:`InMemoryLatents` and draw whole
            batches by tensor indexing (single process; small caches such as the demo's).
    """

    def __init__(
        self,
        train_shards: str | list[str],
        empty_embedding: str | None = None,
        val_shards: str | list[str] | None = None,
        max_foregrounds: int = 2,
        batch_size: int = 32,
        num_workers: int = 0,
        shuffle_buffer: int = 1000,
        seed: int = 0,
        train_samples_per_epoch: int | None = None,
        in_memory: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.collate: LatentCollate | None = None
        self._in_memory: dict[bool, InMemoryLatents] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.collate is None:
            empty = load_empty_embedding(self.hparams.train_shards, self.hparams.empty_embedding)
            self.collate = LatentCollate(self.hparams.max_foregrounds + 1, empty)

    def _in_memory_loader(self, urls: str | list[str], train: bool) -> DataLoader:
        if self.trainer is not None and self.trainer.world_size > 1:
            raise ValueError("LatentDataModule: in_memory is single-process; stream the shards under DDP")
        if train not in self._in_memory:
            pipeline = wds.DataPipeline(
                *shard_stages(urls, "eval", self.hparams.seed), wds.tarfile_to_samples(),
                wds.map(decode_latent_sample),
            )
            self._in_memory[train] = InMemoryLatents(
                list(pipeline), self.collate.num_layers, self.collate.empty_embedding
            )
        data = self._in_memory[train]
        sampler = ShuffledBatches(len(data), min(self.hparams.batch_size, len(data)), self.hparams.seed, train)
        return DataLoader(data, sampler=sampler, batch_size=None, collate_fn=_unbatched)

    def _loader(self, urls: str | list[str], train: bool) -> DataLoader:
        if self.hparams.in_memory:
            return self._in_memory_loader(urls, train)
        per_worker = None
        if not train:
            split = "eval"
        elif self.hparams.train_samples_per_epoch:
            split = "resample"
            world_size = self.trainer.world_size if self.trainer is not None else 1
            per_worker = samples_per_worker(
                self.hparams.train_samples_per_epoch, world_size, self.hparams.num_workers
            )
        else:
            split = "train"
        stages = shard_stages(urls, split, self.hparams.seed)
        stages += [wds.tarfile_to_samples()]
        if train and self.hparams.shuffle_buffer:
            stages.append(wds.shuffle(self.hparams.shuffle_buffer))
        stages.append(wds.map(decode_latent_sample))
        pipeline = wds.DataPipeline(*stages)
        return DataLoader(
            pipeline.with_epoch(per_worker) if per_worker else pipeline,
            batch_size=self.hparams.batch_size,
            num_workers=self.hparams.num_workers,
            collate_fn=self.collate,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.hparams.train_shards, train=True)

    def val_dataloader(self) -> DataLoader:
        if self.hparams.val_shards is None:
            return []
        return self._loader(self.hparams.val_shards, train=False)
