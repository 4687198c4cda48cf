"""Shard specs and the per-epoch plan: which rank and worker reads which shard (part).

Resolution (:func:`resolve`): a spec is a brace pattern (``shards-{000000..000099}.tar``), a glob, a
list of specs, a manifest (``manifest.json`` path or URL), or a directory (its ``manifest.json``,
else its ``*.tar`` files); ``http(s)://`` URLs and ``pipe:`` commands (run through a shell, for
object stores: ``pipe:aws s3 cp s3://bucket/shard-{000..009}.tar -``) are read with webdataset's
``gopen``. Shard names inside a manifest are always relative files, never commands.

Finite plan (:func:`assign_parts`, :func:`finite_batches`): every (rank r, logical stream l) pair
is a slot ``s = l * world_size + r``. When there are few shards, each shard is cut into ``m``
interleaved parts (part j holds the samples whose index in the shard is j mod m) so that slots can
be balanced; ``m`` is chosen from the manifest counts. Parts go to slots by the
longest-processing-time rule (largest count first, to the least-loaded slot); ties among equal
counts are broken by an order shuffled with (seed, epoch), so shards move between slots from
epoch to epoch while every slot's load (and hence the batch count) stays the same.
"""

from __future__ import annotations

import glob
import hashlib
import heapq
import math
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import braceexpand

from sslvit.data.shards import MANIFEST_NAME, load_manifest

ShardSpec = str | os.PathLike | list | tuple


def mix_seed(*parts: Any) -> int:
    """A stable 63-bit seed from any tuple of ints/strings (same on every machine and run)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


@dataclass
class ShardSet:
    """Resolved shards: URLs, per-shard sample counts when known, manifest metadata."""

    urls: list[str]
    counts: list[int] | None = None
    class_names: list[str] | None = None
    mean: list[float] | None = None
    std: list[float] | None = None

    @property
    def num_samples(self) -> int | None:
        return None if self.counts is None else sum(self.counts)


def _from_manifest(spec: str) -> ShardSet:
    manifest = load_manifest(spec)
    base = manifest["base"]
    urls, counts = [], []
    for entry in manifest["shards"]:
        name = str(entry["name"])
        if name.startswith("pipe:") or "://" in name or os.path.isabs(name) or ".." in Path(name).parts:
            raise ValueError(f"{spec}: shard name {name!r} must be a relative file name")
        urls.append(f"{base}/{name}")
        counts.append(int(entry["count"]))
    return ShardSet(urls, counts, manifest.get("class_names"), manifest.get("mean"), manifest.get("std"))


def _resolve_one(spec: str) -> ShardSet:
    if spec.startswith("pipe:"):
        return ShardSet(list(braceexpand.braceexpand(spec)))
    if spec.startswith(("http://", "https://")):
        if spec.endswith(".json"):
            return _from_manifest(spec)
        return ShardSet(list(braceexpand.braceexpand(spec)))
    if spec.startswith("file:"):
        spec = spec[len("file:"):]
    path = Path(spec)
    if path.is_dir():
        if (path / MANIFEST_NAME).exists():
            return _from_manifest(str(path))
        tars = sorted(str(p) for p in path.iterdir()
                      if p.name.endswith((".tar", ".tar.gz", ".tgz")) and not p.name.startswith("."))
        if not tars:
            raise FileNotFoundError(f"{spec}: directory holds neither {MANIFEST_NAME} nor *.tar shards")
        return ShardSet(tars)
    if spec.endswith(".json"):
        return _from_manifest(spec)
    if any(c in spec for c in "*?["):
        urls = sorted(glob.glob(spec))
    else:
        urls = list(braceexpand.braceexpand(spec))
    missing = [u for u in urls if not os.path.exists(u)]
    if not urls or missing:
        raise FileNotFoundError(f"{spec}: no such shard(s): {missing[:3] or spec}")
    return ShardSet(urls)


def resolve(spec: ShardSpec) -> ShardSet:
    """Any shard spec (see module docstring) -> ShardSet; lists are concatenated."""
    if isinstance(spec, (list, tuple)):
        sets = [resolve(s) for s in spec]
        if not sets:
            raise ValueError("empty shard list")
        counts = None if any(s.counts is None for s in sets) else [c for s in sets for c in s.counts or []]
        first = next((s for s in sets if s.class_names), sets[0])
        return ShardSet([u for s in sets for u in s.urls], counts, first.class_names, first.mean, first.std)
    return _resolve_one(os.fspath(spec))


def resolve_shards(spec: ShardSpec) -> list[str]:
    """Any shard spec -> list of shard URLs/paths."""
    return resolve(spec).urls


@dataclass(frozen=True)
class Part:
    """Samples ``index % num_parts == part`` of one shard (``count`` of them when known)."""

    url: str
    shard: int
    part: int = 0
    num_parts: int = 1
    count: int | None = None
    shard_count: int | None = None


def make_parts(shards: ShardSet, num_parts: int) -> list[Part]:
    """Cut every shard into ``num_parts`` interleaved parts."""
    parts = []
    for i, url in enumerate(shards.urls):
        for j in range(num_parts):
            count = None if shards.counts is None else len(range(j, shards.counts[i], num_parts))
            shard_count = None if shards.counts is None else shards.counts[i]
            parts.append(Part(url, i, j, num_parts, count, shard_count))
    return parts


def assign_parts(parts: list[Part], num_slots: int, tie_seed: int | None) -> list[list[Part]]:
    """Longest-processing-time assignment of parts to slots; ties shuffled by ``tie_seed``.

    Without counts, parts are dealt round-robin in the (shuffled) order.
    """
    order = list(range(len(parts)))
    if tie_seed is not None:
        random.Random(tie_seed).shuffle(order)
    slots: list[list[Part]] = [[] for _ in range(num_slots)]
    if any(p.count is None for p in parts):
        for k, i in enumerate(order):
            slots[k % num_slots].append(parts[i])
        return slots
    rank_in_order = {i: k for k, i in enumerate(order)}
    ranked = sorted(range(len(parts)), key=lambda i: (-(parts[i].count or 0), rank_in_order[i]))
    heap = [(0, s) for s in range(num_slots)]
    for i in ranked:
        load, s = heapq.heappop(heap)
        slots[s].append(parts[i])
        heapq.heappush(heap, (load + (parts[i].count or 0), s))
    return slots


def stream_quota(total_batches: int, stream: int, num_streams: int) -> int:
    """Batches logical stream ``stream`` yields: global batches b < total with b % W == stream."""
    return max(0, math.ceil((total_batches - stream) / num_streams))


def finite_batches(slot_counts: list[int], world_size: int, num_streams: int, batch_size: int,
                   drop_last: bool) -> int:
    """Batches per rank so that every slot fits (or, with drop_last, fills) its quota.

    Slot s = l * world_size + r. Without drop_last: stream l needs ceil(n / B) batches for its
    largest slot, i.e. total >= (need - 1) * W + l + 1. With drop_last: total <= have * W + l with
    have = floor(n / B) for its smallest slot.
    """
    total = 0 if not drop_last else None
    for stream in range(num_streams):
        counts = [slot_counts[stream * world_size + r] for r in range(world_size)]
        if drop_last:
            have = min(counts) // batch_size
            bound = have * num_streams + stream
            total = bound if total is None else min(total, bound)
        else:
            need = math.ceil(max(counts) / batch_size)
            if need > 0:
                total = max(total or 0, (need - 1) * num_streams + stream + 1)
    return int(total or 0)


def choose_num_parts(shards: ShardSet, world_size: int, num_streams: int, batch_size: int,
                     drop_last: bool) -> tuple[int, int]:
    """(parts per shard, batches per rank) for a finite epoch with known counts.

    Tries a few cuts and keeps the smallest one whose batch count is within 2% of the best, so
    large corpora (many shards per slot) read every shard once and small ones are balanced.
    """
    slots = world_size * num_streams
    results: dict[int, int] = {}
    for m in (1, 2, 3, 4, 6, 8, 12, 16, 24, 32):
        if m > 1 and len(shards.urls) * m > max(16 * slots, len(shards.urls)):
            break
        loads = [sum(p.count or 0 for p in slot) for slot in assign_parts(make_parts(shards, m), slots, None)]
        results[m] = finite_batches(loads, world_size, num_streams, batch_size, drop_last)
    best = max(results.values()) if drop_last else min(results.values())
    for m, batches in results.items():
        if abs(batches - best) <= 0.02 * best:
            return m, batches
    return 1, results[1]
