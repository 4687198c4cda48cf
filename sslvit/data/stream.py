"""Streaming loader over tar shards: rank/worker splitting, epochs, shuffling, bad samples.

How an epoch is laid out
------------------------
Each rank runs W = max(1, num_workers) *logical streams*. The rank's batches are numbered
0..L-1 and batch b comes from stream b % W, which is exactly the order in which a torch
DataLoader returns batches when each worker yields its batches in turn. L (``len(loader)``) is
the same on every rank, so no rank waits at a collective for a batch that never comes.

* ``finite``: shards (cut into interleaved parts when there are too few for R x W slots) are
  assigned to the (rank, stream) slots by their manifest counts (see :mod:`sslvit.data.plan`).
  L is the smallest count that lets every slot emit all of its samples, so every sample is seen
  exactly once per epoch across all ranks and workers; a stream that runs out first pads its
  batches by repeating its own first samples with ``valid=False``. With ``drop_last=True``, L is
  instead the largest count every slot can fill and the remainder is dropped. Without manifest
  counts, finite mode needs ``samples_per_epoch`` (L = ceil(samples_per_epoch / (R * B)); a
  stream's surplus is dropped and counted as ``dropped_extra``), else it raises ValueError.
* ``resampled``: every stream draws shards at random (with replacement, weighted by manifest
  counts when known) without end; L = ceil(samples_per_epoch / (R * B)) (floor with drop_last).

Every batch holds exactly ``batch_size`` samples. Batch boundaries depend only on the order of
raw tar members, never on decoding: a sample that cannot be used (undecodable or empty image,
too many pixels, no image, missing/bad label when ``need_labels``) keeps its slot, is replaced by
a copy of a usable sample of the same batch flagged ``valid=False``, and is counted by reason.
This is what lets ``iterate(epoch, start_batch)`` skip batches by reading tar members without
decoding them and still reproduce the batches an uninterrupted run yields from ``start_batch``.

Determinism: the shard-to-slot assignment is seeded by (seed, epoch); shard order and the sample
shuffle buffer by (seed, epoch, rank, stream); each sample's augmentation by (seed, epoch, shard
name, key) through torch's default generator (reseeded per sample in the worker); the masker by
(seed, epoch, rank, batch index). Batches depend on W, so resume with the same ``num_workers``.

Skip counts travel with the batches to the main process, which logs the first occurrence of a
reason at once and then a summary at most once a minute, and publishes the totals as ``.stats``
when the epoch completes. The loader is a plain iterable: keep it out of ``accelerate.prepare()``
and move batches to the device in the training loop (images stay uint8 until then).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader

from sslvit.data.decode import DEFAULT_MAX_PIXELS
from sslvit.data.plan import (
    ShardSet,
    ShardSpec,
    assign_parts,
    choose_num_parts,
    make_parts,
    mix_seed,
    resolve,
    resolve_shards,
)
from sslvit.data.shards import load_manifest
from sslvit.data.worker import EpochPlan, EpochStream, StreamConfig

__all__ = ["StreamLoader", "build_loader", "default_rank_world", "load_manifest", "resolve_shards"]

logger = logging.getLogger("sslvit.data")
_WARN_EVERY_S = 60.0


def default_rank_world() -> tuple[int, int]:
    """(rank, world_size) from torch.distributed when initialised, else env RANK/WORLD_SIZE, else (0, 1)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


class StreamLoader:
    """Iterable over batch dicts; ``len()`` batches per epoch, equal on every rank.

    Batches: "image" uint8 (B, 3, H, W), "label" int64 (B,) (-1 when unlabeled), "valid" bool (B,),
    plus the masker's tensors (leading dim B) and, with ``return_meta``, "key"/"meta" lists.
    """

    def __init__(self, shards: ShardSet, cfg: StreamConfig, num_workers: int, samples_per_epoch: int | None,
                 pin_memory: bool = False, prefetch_factor: int = 2) -> None:
        self.shards, self.cfg, self.num_workers = shards, cfg, num_workers
        self.pin_memory, self.prefetch_factor = pin_memory, prefetch_factor
        self.epoch = 0
        self.stats: dict[str, int] = {}
        self.class_names = shards.class_names
        self.mean, self.std = shards.mean, shards.std
        rb = cfg.world_size * cfg.batch_size
        self.num_parts = 1
        if cfg.mode == "finite" and shards.counts is not None:
            self.num_samples = sum(shards.counts)
            self.num_parts, self.num_batches = choose_num_parts(
                shards, cfg.world_size, cfg.num_streams, cfg.batch_size, cfg.drop_last)
        else:
            if samples_per_epoch is None and shards.counts is not None:
                samples_per_epoch = sum(shards.counts)
            if samples_per_epoch is None:
                raise ValueError(f"{cfg.mode} mode without manifest counts needs samples_per_epoch "
                                 f"(no manifest found for {shards.urls[:2]}...)")
            self.num_samples = int(samples_per_epoch)
            self.num_batches = self.num_samples // rb if cfg.drop_last else math.ceil(self.num_samples / rb)
            if cfg.mode == "finite":
                self.num_parts = max(1, math.ceil(cfg.world_size * cfg.num_streams / len(shards.urls)))
        if self.num_batches <= 0:
            raise ValueError(f"no full batch per rank: {self.num_samples} samples, batch_size "
                             f"{cfg.batch_size}, world_size {cfg.world_size}, drop_last={cfg.drop_last}")

    def __len__(self) -> int:
        return self.num_batches

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch the next ``iter(loader)`` runs (shuffling and augmentation depend on it)."""
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self.iterate(self.epoch)

    def plan(self, epoch: int) -> EpochPlan:
        """Which parts this rank's streams read in ``epoch`` (same computation on every rank)."""
        cfg = self.cfg
        parts = make_parts(self.shards, self.num_parts)
        if cfg.mode == "resampled":
            counts = self.shards.counts
            weights = [float(c) for c in counts] if counts and sum(counts) > 0 else None
            return EpochPlan(epoch, self.num_batches, [], parts, weights)
        tie_seed = mix_seed(cfg.seed, epoch, "assign") if cfg.shuffle else None
        slots = assign_parts(parts, cfg.world_size * cfg.num_streams, tie_seed)
        streams = [slots[stream * cfg.world_size + cfg.rank] for stream in range(cfg.num_streams)]
        return EpochPlan(epoch, self.num_batches, streams, parts, None)

    def _batches(self, dataset: EpochStream) -> Iterator[dict[str, Any]]:
        if self.num_workers == 0:
            return iter(dataset)
        loader = DataLoader(dataset, batch_size=None, num_workers=self.num_workers,
                            pin_memory=self.pin_memory, prefetch_factor=self.prefetch_factor,
                            persistent_workers=False)
        return iter(loader)

    def iterate(self, epoch: int, start_batch: int = 0) -> Iterator[dict[str, Any]]:
        """Yield batches ``start_batch .. len(self) - 1`` of ``epoch``; identical to the same batches
        of an uninterrupted iteration (resume). ``.stats`` is updated when the epoch completes."""
        if not 0 <= start_batch <= self.num_batches:
            raise ValueError(f"start_batch {start_batch} outside [0, {self.num_batches}]")
        dataset = EpochStream(self.cfg, self.plan(epoch), start_batch)
        counts: Counter = Counter()
        examples: dict[str, str] = {}
        last_warn = time.monotonic()
        expected = start_batch
        for batch in self._batches(dataset):
            index = batch.pop("_index")
            skips = batch.pop("_skips")
            if index != expected:
                raise RuntimeError(f"batch order broken: got batch {index}, expected {expected}")
            counts.update(skips["counts"])
            for reason, example in skips["examples"].items():
                if reason not in examples:
                    examples[reason] = example
                    logger.warning("rank %d epoch %d: skipping bad sample (%s)", self.cfg.rank, epoch, example)
            if skips["counts"] and time.monotonic() - last_warn > _WARN_EVERY_S:
                last_warn = time.monotonic()
                logger.warning("rank %d epoch %d: skipped so far %s", self.cfg.rank, epoch, dict(counts))
            expected += 1
            yield batch
        if expected != self.num_batches:
            raise RuntimeError(f"epoch {epoch} ended after {expected} of {self.num_batches} batches")
        self.stats = dict(counts)
        if counts:
            logger.warning("rank %d epoch %d done: skipped %d samples by reason %s", self.cfg.rank, epoch,
                           sum(counts.values()), self.stats)


def build_loader(shards: ShardSpec, *, batch_size: int, transform: Callable | None,
                 num_workers: int = 2, mode: str = "finite", samples_per_epoch: int | None = None,
                 seed: int = 0, rank: int | None = None, world_size: int | None = None,
                 need_labels: bool = False, masker: Callable | None = None, shuffle_buffer: int = 1000,
                 shuffle: bool = True, max_pixels: int = DEFAULT_MAX_PIXELS, drop_last: bool = False,
                 pin_memory: bool = False, prefetch_factor: int = 2,
                 return_meta: bool = False) -> StreamLoader:
    """Build a :class:`StreamLoader` over ``shards`` (any spec :func:`resolve_shards` accepts).

    ``transform`` maps uint8 (3, H, W) to uint8 (3, h, w) (an :class:`ImageTransform` also gets
    reduced-scale JPEG decoding); ``masker(batch_size, generator)`` returns extra batch tensors.
    ``rank``/``world_size`` default to :func:`default_rank_world`. See the module docstring.
    """
    if mode not in ("finite", "resampled"):
        raise ValueError(f"mode must be 'finite' or 'resampled', not {mode!r}")
    if batch_size < 1 or num_workers < 0:
        raise ValueError("batch_size must be >= 1 and num_workers >= 0")
    default_rank, default_world = default_rank_world()
    rank = default_rank if rank is None else rank
    world_size = default_world if world_size is None else world_size
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world_size {world_size}")
    shard_set = resolve(shards)
    if not shard_set.urls:
        raise ValueError(f"no shards in {shards!r}")
    cfg = StreamConfig(batch_size=batch_size, transform=transform, mode=mode, seed=seed, rank=rank,
                       world_size=world_size, num_streams=max(1, num_workers), need_labels=need_labels,
                       masker=masker, shuffle_buffer=shuffle_buffer, shuffle=shuffle, max_pixels=max_pixels,
                       drop_last=drop_last,
                       num_classes=len(shard_set.class_names) if shard_set.class_names else None,
                       return_meta=return_meta)
    return StreamLoader(shard_set, cfg, num_workers, samples_per_epoch, pin_memory, prefetch_factor)
