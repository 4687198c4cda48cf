"""Streaming loader over tar shards: an elastic sample order, epochs, shuffling, bad samples.

How an epoch is laid out
------------------------
The order of an epoch is a function of (seed, epoch, the shard set, and the global micro-batch
size G = batch_size x world_size) only, never of the world size or the number of workers:

* Global micro-batch g of an epoch has G positions. They are filled by S logical streams
  (:func:`sslvit.data.plan.choose_streams`: the largest divisor of G not above the number of
  shards); stream k fills positions ``k*c .. k*c+c-1`` (c = G / S) with its samples
  ``g*c .. g*c+c-1``. A stream reads its contiguous range of the epoch's shard sequence (the
  shards concatenated in an order shuffled by (seed, epoch)) through a shuffle buffer seeded by
  (seed, epoch, k).
* Rank r's batch g is positions ``r*B .. r*B+B-1`` of global micro-batch g; the concatenation of
  every rank's batch g in rank order is global micro-batch g, for any world size dividing G.
  ``len(loader)`` is the number of global micro-batches, the same on every rank.
* A rank's readers (``min(num_workers, batch_size)`` DataLoader workers, or the main process with
  ``num_workers=0``) each fill a contiguous chunk of the rank's positions, reading the streams
  that chunk touches; the main process concatenates their partial batches in worker order (a
  torch DataLoader returns worker outputs round-robin). A stream shared by several readers
  (``c`` larger than a reader's chunk) is read by each of them, which decode only their own
  positions.
* ``iterate(epoch, start_batch=g)`` starts at global micro-batch g: readers skip the earlier
  samples of their streams without decoding them, so a run stopped after micro-batch g on W
  ranks resumes on W' ranks (same G) at g with no sample repeated or skipped.

Per-sample randomness (crop, flip through torch's default generator, reseeded per sample; the
masker's generator, one sample at a time) is seeded by (seed, epoch, g * G + position), never by
rank or worker ids, so a rank's batches are bitwise the same for any ``num_workers``.

* ``finite``: the epoch's sample sequence is cut into S ranges whose sizes differ by at most one
  (see :mod:`sslvit.data.plan`). ``len`` is the smallest count that lets every stream emit all
  of its samples, so every sample is seen exactly once per epoch across all ranks and workers; a
  stream that runs out first pads its positions with its own first samples (``valid=False``,
  key ``""``). With ``drop_last=True``, ``len`` is instead the
  largest count every stream can fill and the remainder is dropped and counted as
  ``dropped_last``. Counts come from the manifests; local shards without one are counted from
  their tar headers when the loader is built (said once, with the time it took). Remote shards
  without a manifest need ``samples_per_epoch`` (``len = ceil(samples_per_epoch / G)``; whole shards
  are dealt round-robin, a stream's surplus is dropped and counted as ``dropped_extra``, and
  exactly-once does not hold), else ValueError naming the index command that writes their counts.
* ``resampled``: every stream draws shards at random (with replacement, weighted by manifest
  counts when known) from a generator seeded by (seed, epoch, stream) without end;
  ``len = ceil(samples_per_epoch / G)`` (floor with drop_last). The elastic order holds here too.

Every batch holds exactly ``batch_size`` samples. Batch boundaries depend only on the order of
raw tar members, never on decoding: a sample that cannot be used (undecodable or empty image,
too many pixels, no image, missing/bad/out-of-range label when ``need_labels``) keeps its
position (and key), is replaced by its stream's first usable sample flagged ``valid=False``, and
is counted by reason. Whatever is dropped is counted in the stats of the epoch it belongs to, and
``.stats`` holds the epoch's totals before its last batch is yielded.

Repeated views
--------------
With ``repeats = k > 1`` every sample a stream reads fills k consecutive positions of that stream
(so its k views usually sit side by side in one batch, or straddle two consecutive batches), and
is decoded once, at full size, for all of them; each view has its own position, hence its own
crop, flip and mask seeds, and its own key (the sample's key, repeated). The objectives' losses
are means of per-sample losses, so k views of one image in a batch weigh exactly as k samples
and do not bias the loss (only the batch's diversity drops, as in repeated sampling for MAE-ST
and data2vec 2.0's multi-mask). An epoch still reads every sample once and so holds k x N
positions (``len`` grows k-fold; ``samples_per_epoch`` counts samples, not views): divide the
number of epochs by k to keep the optimizer steps. Order, resume and elasticity are unchanged:
they are defined over positions.

Held in memory
--------------
``in_memory=True`` (or ``None`` when every shard is a local file and together they hold at most
``in_memory_mb``) keeps each shard's samples and each decoded image (not JPEGs, whose decode
follows the crop) in the process that reads them, after its first pass
(:mod:`sslvit.data.resident`): later epochs neither read nor decode, and give the same batches.

Workers
-------
With ``num_workers > 0`` the DataLoader workers persist from one pass to the next: the epoch and
the start batch reach them through a shared ``[epoch, start_batch, pass]`` tensor that every pass
writes before it asks them to start (``reader_pids`` lists their process ids), so the start-up
and cold first batch are paid once per run. With several readers, each writes its chunk's images
straight into one shared-memory tensor per batch that the main process allocated
(:mod:`sslvit.data.slabs`), so the main process neither copies nor touches image bytes; those
tensors are reused only once nothing holds them. Batches come in pinned memory when CUDA is present
(``pin_memory``), so the training loop's ``.to(device, non_blocking=True)`` overlaps the copy.
One pass runs at a time (a new ``iterate`` ends the
previous one; ``persistent_workers=False`` restores a loader per pass).

Skip counts travel with the batches to the main process, which logs the first occurrence of a
reason at once and then a summary at most once a minute. The loader is a plain iterable: keep it
out of ``accelerate.prepare()`` and move batches to the device in the training loop (images stay
uint8 until then).
"""

from __future__ import annotations

import logging
import math
import os
import tarfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import torch
from torch.utils.data import DataLoader

import sslvit.data.jpeg_crop as jpeg_crop
from sslvit.data.decode import DEFAULT_MAX_PIXELS, jpeg_decoder
from sslvit.data.device_decode import decode_batch, unsupported_ops
from sslvit.data.plan import (
    ShardSet,
    ShardSpec,
    choose_streams,
    deal_shards,
    epoch_batches,
    mix_seed,
    resolve,
    resolve_shards,
    split_streams,
    whole_shards,
)
from sslvit.data.resident import ResidentCache
from sslvit.data.shards import load_manifest
from sslvit.data.slabs import SlabChannel
from sslvit.data.tario import LOST_SAMPLES, count_samples
from sslvit.data.transforms import ImageTransform
from sslvit.data.worker import EpochPlan, EpochStream, StreamConfig, as_tensors
from sslvit.errors import InputError

__all__ = ["StreamLoader", "build_loader", "default_rank_world", "load_manifest", "resolve_shards"]

logger = logging.getLogger("sslvit.data")
_WARN_EVERY_S = 60.0
_said_decoder = False


def default_rank_world() -> tuple[int, int]:
    """(rank, world_size) from torch.distributed when initialised, else env RANK/WORLD_SIZE, else (0, 1)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def _is_local(url: str) -> bool:
    return not url.startswith("pipe:") and "://" not in url


def count_unknown(shards: ShardSet, key_dot: str, announce: bool, samples_per_epoch: int | None) -> ShardSet:
    """Fill in the counts a finite epoch needs: local shards without a manifest are counted from
    their tar headers (said once when ``announce``); remote ones need ``samples_per_epoch``."""
    counts = list(shards.counts) if shards.counts is not None else [None] * len(shards.urls)
    missing = [i for i, c in enumerate(counts) if c is None]
    if not missing:
        return shards
    remote = [shards.urls[i] for i in missing if not _is_local(shards.urls[i])]
    if remote:
        if samples_per_epoch is not None:
            if announce:
                logger.warning("finite mode over %d remote shard(s) without a manifest (e.g. %s): epochs hold "
                               "ceil(samples_per_epoch / G) batches and every sample once is not guaranteed; "
                               "`sslvit shards index SPEC --out DIR` writes their counts", len(remote), remote[0])
            return shards
        raise InputError(f"finite mode needs sample counts, and {len(remote)} remote shard(s) have no manifest "
                         f"(e.g. {remote[0]}): run `sslvit shards index '{remote[0]}' --out DIR` (or "
                         f"sslvit.data.index.index_shards) and use DIR/manifest.json as the shards, or pass "
                         f"samples_per_epoch")
    started = time.monotonic()
    unreadable: dict[int, str] = {}
    for i in missing:
        try:
            counts[i] = count_samples(shards.urls[i], key_dot)
        except (tarfile.TarError, OSError) as exn:  # not a tar, truncated, unreadable: skipped, and said
            unreadable[i] = str(exn) or type(exn).__name__
    if unreadable and announce:
        logger.warning("skipping %d shard(s) that are not readable tar files: %s", len(unreadable),
                       "; ".join(f"{shards.urls[i]} ({why})" for i, why in list(unreadable.items())[:5]))
    empty = [shards.urls[i] for i in missing if counts[i] == 0]
    if empty and announce:
        logger.warning("%d shard(s) hold no sample: %s", len(empty), ", ".join(empty[:5]))
    if announce:
        folders = sorted({(shards.sources or shards.urls)[i] for i in missing})
        logger.warning("counted the samples of %d shard(s) without a manifest from their tar headers in %.1f s "
                       "(%d samples); `sslvit shards index %s` writes a manifest.json that avoids this",
                       len(missing), time.monotonic() - started, sum(counts[i] or 0 for i in missing),
                       folders[0] if len(folders) == 1 else "FOLDER")
    keep = [i for i in range(len(shards.urls)) if i not in unreadable]
    if not keep:
        raise InputError(f"no readable shard among {len(shards.urls)}: "
                         + "; ".join(f"{shards.urls[i]} ({why})" for i, why in list(unreadable.items())[:5]))
    sources = [shards.sources[i] for i in keep] if shards.sources is not None else None
    return replace(shards, urls=[shards.urls[i] for i in keep], counts=[counts[i] for i in keep], sources=sources)


class EpochPlanner:
    """epoch -> :class:`EpochPlan` (a plain picklable object, so worker processes can plan epochs)."""

    def __init__(self, shards: ShardSet, cfg: StreamConfig, num_batches: int) -> None:
        self.shards, self.cfg, self.num_batches = shards, cfg, num_batches

    def __call__(self, epoch: int) -> EpochPlan:
        cfg, shards = self.cfg, self.shards
        parts = whole_shards(shards)
        if cfg.mode == "resampled":
            counts = shards.counts if shards.complete else None
            weights = [float(c or 0) for c in counts] if counts and sum(c or 0 for c in counts) > 0 else None
            return EpochPlan(epoch, self.num_batches, [], parts, weights)
        order_seed = mix_seed(cfg.seed, epoch, "order") if cfg.shuffle else None
        split = split_streams if shards.complete else deal_shards
        return EpochPlan(epoch, self.num_batches, split(shards, cfg.num_streams, order_seed), parts, None)


class StreamLoader:
    """Iterable over batch dicts; ``len()`` batches per epoch, equal on every rank.

    Batches: "image" uint8 (B, 3, H, W), "label" int64 (B,) (-1 when unlabeled), "valid" bool (B,),
    "key" list of B sample keys ("" at padding positions), plus the masker's tensors (leading dim
    B) and, with ``return_meta``, "meta" (the parsed ``.json`` members).
    """

    def __init__(self, shards: ShardSet, cfg: StreamConfig, num_workers: int, samples_per_epoch: int | None,
                 pin_memory: bool = False, prefetch_factor: int = 2, persistent_workers: bool = True,
                 resident: ResidentCache | None = None) -> None:
        self.shards, self.cfg, self.num_workers = shards, cfg, num_workers
        self.pin_memory, self.prefetch_factor = pin_memory, prefetch_factor
        self.persistent_workers = persistent_workers
        # [epoch, start_batch, pass] for the readers
        self._control = torch.zeros(3, dtype=torch.int64).share_memory_()
        self._loader: DataLoader | None = None
        self._passes = 0
        self.reader_pids: list[int] = []  # process id of every reader in the last pass (reader order)
        self.epoch = 0
        self.stats: dict[str, int] = {}
        self._said_routine = False  # an epoch's dropped_last / dropped_extra counts are said once
        self.class_names = shards.class_names
        self.mean, self.std = shards.mean, shards.std
        G, c = cfg.global_batch, cfg.per_stream
        if cfg.mode == "finite" and shards.complete:
            self.num_samples = shards.num_samples or 0
            loads = [cfg.repeats * sum(p.count or 0 for p in stream)
                     for stream in split_streams(shards, cfg.num_streams, None)]
            self.num_batches = epoch_batches(loads, c, cfg.drop_last)
        else:
            if samples_per_epoch is None and shards.complete:
                samples_per_epoch = shards.num_samples
            if samples_per_epoch is None:
                raise InputError(f"{cfg.mode} mode without manifest counts needs samples_per_epoch "
                                 f"(no manifest found for {shards.urls[:2]}...)")
            self.num_samples = int(samples_per_epoch)
            views = self.num_samples * cfg.repeats
            self.num_batches = views // G if cfg.drop_last else math.ceil(views / G)
        self.resident = resident
        self._slabs = None
        if cfg.num_readers > 1 and isinstance(cfg.transform, ImageTransform) and cfg.decode_on is None:
            self._slabs = SlabChannel(cfg.num_readers, (cfg.batch_size, 3, *cfg.transform.size), prefetch_factor + 2)
        self._dataset = EpochStream(cfg, EpochPlanner(shards, cfg, self.num_batches), 0, self._control, resident,
                                    self._slabs)
        if self.num_batches <= 0:
            where = sorted(set(shards.sources or shards.urls))
            raise InputError(f"no full batch: {self.num_samples} samples in {', '.join(where[:3])}, global "
                             f"micro-batch {G} (batch_size {cfg.batch_size} x world_size {cfg.world_size}), "
                             f"drop_last={cfg.drop_last}")

    def __len__(self) -> int:
        return self.num_batches

    @property
    def global_batch(self) -> int:
        """G = batch_size x world_size: the epoch's order depends on it (and on seed, epoch, shards) only."""
        return self.cfg.global_batch

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch the next ``iter(loader)`` runs (shuffling and augmentation depend on it)."""
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self.iterate(self.epoch)

    def plan(self, epoch: int) -> EpochPlan:
        """Which parts every logical stream reads in ``epoch`` (same computation on every rank)."""
        return EpochPlanner(self.shards, self.cfg, self.num_batches)(epoch)

    def close(self) -> None:
        """Stop the reader processes now (a later pass starts new ones)."""
        loader, self._loader = self._loader, None
        iterator = getattr(loader, "_iterator", None)
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()

    def _batches(self, epoch: int, start_batch: int) -> Iterator[dict[str, Any]]:
        """The readers' partial batches of one pass; persistent workers are started once and told
        the pass through the shared ``[epoch, start_batch, pass]`` they read at every ``iter()``."""
        if self.num_workers == 0:
            return iter(EpochStream(self.cfg, self.plan(epoch), start_batch, resident=self.resident))
        self._control.copy_(torch.tensor([epoch, start_batch, self._passes]))
        if self._slabs is not None:
            self._slabs.begin(self._passes, start_batch, self.num_batches)
        if self._loader is None or not self.persistent_workers:
            self._loader = DataLoader(self._dataset, batch_size=None, num_workers=self.cfg.num_readers,
                                      pin_memory=self.pin_memory, prefetch_factor=self.prefetch_factor,
                                      persistent_workers=self.persistent_workers)
        return iter(self._loader)

    @staticmethod
    def _concat(partials: list[dict[str, Any]]) -> dict[str, Any]:
        """Workers' partial batches (in worker order, i.e. position order) -> one batch."""
        if len(partials) == 1:
            return partials[0]
        batch: dict[str, Any] = {}
        for name, value in partials[0].items():
            if isinstance(value, torch.Tensor):
                try:
                    batch[name] = torch.cat([p[name] for p in partials])
                except RuntimeError as exn:
                    raise RuntimeError(f"batch field {name!r}: workers' parts do not match: {exn}") from None
            else:
                batch[name] = [v for p in partials for v in p[name]]
        return batch

    def _check_pass(self, this_pass: int, epoch: int) -> None:
        if self._passes != this_pass and self.num_workers > 0 and self.persistent_workers:
            raise RuntimeError(f"epoch {epoch}: another pass of this loader started before this one ended; "
                               "persistent workers run one pass at a time (build_loader(..., "
                               "persistent_workers=False) lets passes interleave)")

    def iterate(self, epoch: int, start_batch: int = 0) -> Iterator[dict[str, Any]]:
        """Yield batches ``start_batch .. len(self) - 1`` of ``epoch``; identical to the same batches
        of an uninterrupted iteration (resume), on any world size with the same global micro-batch.
        ``.stats`` holds the epoch's skip counts before its last batch is yielded."""
        if not 0 <= start_batch <= self.num_batches:
            raise ValueError(f"start_batch {start_batch} outside [0, {self.num_batches}]")
        counts: Counter = Counter()
        examples: dict[str, str] = {}
        last_warn = time.monotonic()
        expected = start_batch
        partials: list[dict[str, Any]] = []
        pids: list[int] = []
        self._passes += 1
        this_pass = self._passes
        for partial in self._batches(epoch, start_batch):
            self._check_pass(this_pass, epoch)
            index, worker, skips = partial.pop("_index"), partial.pop("_worker"), partial.pop("_skips")
            pid = partial.pop("_pid")
            if len(pids) < self.cfg.num_readers:
                pids.append(pid)
                if len(pids) == self.cfg.num_readers:
                    self.reader_pids = pids
            if (index, worker) != (expected, len(partials)):
                raise RuntimeError(f"batch order broken: got batch {index} from reader {worker}, "
                                   f"expected batch {expected} from reader {len(partials)}")
            counts.update(skips["counts"])
            for reason, example in skips["examples"].items():
                if reason not in examples:
                    examples[reason] = example
                    if self.cfg.rank == 0 or reason not in ("dropped_extra", "dropped_last"):
                        logger.warning("rank %d epoch %d: skipping bad sample (%s)", self.cfg.rank, epoch, example)
            partials.append(partial)
            if len(partials) < self.cfg.num_readers:
                continue
            batch, partials = as_tensors(self._concat(partials)), []
            if self.cfg.decode_on is not None:
                batch["image"] = decode_batch(batch.pop("encoded"), self.cfg.transform.size, self.cfg.decode_on)
            if self._slabs is not None:
                batch["image"] = self._slabs.take(index)
                if self.pin_memory:
                    batch["image"] = batch["image"].pin_memory()
            if self.pin_memory and self.num_workers == 0:
                batch = {k: v.pin_memory() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            if skips["counts"] and time.monotonic() - last_warn > _WARN_EVERY_S:
                last_warn = time.monotonic()
                logger.warning("rank %d epoch %d: skipped so far %s", self.cfg.rank, epoch, dict(counts))
            expected += 1
            if expected == self.num_batches:
                self.stats = dict(counts)
                routine = set(counts) <= {"dropped_extra", "dropped_last"}
                if counts and not (routine and self._said_routine):
                    self._said_routine = self._said_routine or routine
                    lost = sum(n for reason, n in counts.items() if reason not in LOST_SAMPLES)
                    logger.warning("rank %d epoch %d done: skipped %d samples by reason %s%s", self.cfg.rank,
                                   epoch, lost, self.stats,
                                   " (the same every epoch; said once)" if routine else "")
            yield batch
        self._check_pass(this_pass, epoch)
        if expected != self.num_batches:
            raise RuntimeError(f"epoch {epoch} ended after {expected} of {self.num_batches} batches")
        self.stats = dict(counts)


def build_loader(shards: ShardSpec, *, batch_size: int, transform: Callable | None,
                 num_workers: int = 2, mode: str = "finite", samples_per_epoch: int | None = None,
                 seed: int = 0, rank: int | None = None, world_size: int | None = None,
                 need_labels: bool = False, masker: Callable | None = None, shuffle_buffer: int = 1000,
                 shuffle: bool = True, max_pixels: int = DEFAULT_MAX_PIXELS, drop_last: bool = False,
                 pin_memory: bool | None = None, prefetch_factor: int = 2, return_meta: bool = False,
                 label_key: str = "", key_dot: str = "first", num_classes: int | None = None,
                 repeats: int = 1, persistent_workers: bool = True, in_memory: bool | None = False,
                 in_memory_mb: float = 1024, decode_on: torch.device | str | None = None) -> StreamLoader:
    """Build a :class:`StreamLoader` over ``shards`` (any spec :func:`resolve` accepts).

    ``transform`` maps uint8 (3, H, W) to uint8 (3, h, w) (an :class:`ImageTransform` also gets
    reduced-scale JPEG decoding); ``masker(batch_size, generator)`` returns extra batch tensors
    (called once per sample, with that sample's generator). ``rank``/``world_size`` default to
    :func:`default_rank_world`. ``shuffle_buffer`` raw samples are buffered over the S logical
    streams (each stream buffers ``min(shuffle_buffer, max(16, ceil(shuffle_buffer / S)))``). ``label_key`` takes labels from that (dotted) field of the
    ``.json`` member instead of ``.cls``; ``key_dot`` ("first" | "last") is where member names split
    into key and extension; a label outside [0, ``num_classes``) (default: the number of class
    names, when known) is skipped and counted as ``label_out_of_range``. ``pin_memory`` (default:
    when CUDA is available) pins batches so the loop can copy them with ``non_blocking=True``;
    ``persistent_workers`` keeps the worker processes from one epoch to the next (one pass at a
    time). ``repeats`` = k views per decoded sample (see "Repeated views" in the module docstring).
    ``in_memory``: hold the corpus in memory after its first pass (True), never (False), or when
    its local shards hold at most ``in_memory_mb`` (None); see "Held in memory". ``decode_on``: a
    device on which the main process decodes the JPEGs of every batch (readers send the bytes, the
    crop box and the flip; :mod:`sslvit.data.device_decode`), else None (readers decode).
    See the module docstring.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1 (views per decoded sample), not {repeats}")
    if decode_on is not None:
        unsupported = unsupported_ops(transform)
        if unsupported or repeats > 1:
            raise InputError(f"decode_on={decode_on}: the device decode takes a crop box and flips, one view per "
                             f"image; this loader has {', '.join(unsupported) or f'repeats={repeats}'}")
        decode_on = torch.device(decode_on)
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    global _said_decoder
    if not _said_decoder and rank in (None, 0):
        _said_decoder = True
        if jpeg_decoder() != "simplejpeg":
            logger.warning("simplejpeg is not installed: JPEGs decode through torchvision.io / PIL, about 1.3x "
                           "slower per image (pip install simplejpeg)")
        if isinstance(transform, ImageTransform) and not jpeg_crop.enabled():
            logger.warning("JPEGs are decoded whole, not only their crop box (about 1.3x the decoding time): %s",
                           jpeg_crop.unavailable_reason())
    if mode not in ("finite", "resampled"):
        raise ValueError(f"mode must be 'finite' or 'resampled', not {mode!r}")
    if key_dot not in ("first", "last"):
        raise ValueError(f"key_dot must be 'first' or 'last', not {key_dot!r}")
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
    if shard_set.key_dot and shard_set.key_dot != key_dot:
        raise ValueError(f"the manifest of {shards!r} was indexed with key_dot={shard_set.key_dot!r}; "
                         f"pass key_dot={shard_set.key_dot!r} (data.key_dot={shard_set.key_dot}), not {key_dot!r}")
    if mode == "finite":
        shard_set = count_unknown(shard_set, key_dot, rank == 0, samples_per_epoch)
    global_batch = batch_size * world_size
    num_streams = choose_streams(global_batch, len(shard_set.urls))
    if num_classes is None:
        num_classes = len(shard_set.class_names) if shard_set.class_names else shard_set.num_classes
    readers = min(max(1, num_workers), batch_size)
    if num_workers > batch_size and rank == 0:
        logger.warning("num_workers %d > batch_size %d: %d workers fill a batch's positions", num_workers,
                       batch_size, readers)
    cfg = StreamConfig(batch_size=batch_size, transform=transform, mode=mode, seed=seed, rank=rank,
                       world_size=world_size, num_streams=num_streams, num_readers=readers,
                       need_labels=need_labels, masker=masker,
                       shuffle_buffer=min(shuffle_buffer, max(16, math.ceil(shuffle_buffer / num_streams))),
                       shuffle=shuffle, max_pixels=max_pixels, drop_last=drop_last, num_classes=num_classes,
                       return_meta=return_meta, class_names=shard_set.class_names, label_key=label_key,
                       key_dot=key_dot, counted=shard_set.complete, repeats=repeats, decode_on=decode_on)
    resident = None
    if in_memory is not False:
        budget = int(in_memory_mb * 2**20)
        size = local_bytes(shard_set)
        if in_memory is None and size is not None and size <= budget:
            in_memory = True
        if in_memory:
            resident = ResidentCache(budget)
    return StreamLoader(shard_set, cfg, num_workers, samples_per_epoch, pin_memory, prefetch_factor,
                        persistent_workers, resident)


def local_bytes(shards: ShardSet) -> int | None:
    """Total size of the shard files when every shard is a readable local file, else None."""
    total = 0
    for url in shards.urls:
        if not _is_local(url):
            return None
        try:
            total += os.path.getsize(url[len("file:"):] if url.startswith("file:") else url)
        except OSError:
            return None
    return total
