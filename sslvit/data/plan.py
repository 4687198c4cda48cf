"""Shard specs and the per-epoch plan: which logical stream reads which shard (part).

Resolution (:func:`resolve`): a spec is a brace pattern (``shards-{000000..000099}.tar``), a glob, a
list of specs (a Python list, or one string with top-level commas: ``a,b``), a manifest
(``manifest.json`` path or URL), or a directory (its ``manifest.json``, else its ``*.tar`` files);
a brace pattern or glob over directories (``corpus{1,2}``) resolves each directory with its own
manifest. Several manifests combine: counts are concatenated, mean/std are count-weighted (None
unless every part carries them and its counts), and class names must agree (else ValueError
naming both folders). ``http(s)://`` URLs and ``pipe:`` commands (run through a shell, for object
stores: ``pipe:aws s3 cp s3://bucket/shard-{000..009}.tar -``) are read with webdataset's ``gopen``. Shard names inside a manifest are relative files; only a
manifest read from a local file may instead list each shard's ``url`` (an ``http(s)://`` URL or a
``pipe:`` command, as :func:`sslvit.data.index.index_shards` writes for remote shards). A ``pipe:``
url from a manifest runs only when the user names that manifest in ``$SSLVIT_TRUSTED_MANIFESTS``:
a command comes from what the user typed, never from a file that came with the data.
A built-in corpus split (``digits:val``, ``fashion-mnist:test``; :mod:`sslvit.data.builtin`) is
built once and stands for its folder.

Finite plan (:func:`choose_streams`, :func:`split_streams`): an epoch is ``S`` logical streams,
``S`` the largest divisor of the global micro-batch ``G`` (batch size x world size) not above the
number of shards; stream ``k`` fills positions ``k*c .. k*c+c-1`` (``c = G / S``) of every global
micro-batch. The shards are concatenated in an order shuffled with (seed, epoch) and the sample
sequence is cut into S contiguous ranges whose sizes differ by at most one, so every stream's
load (and hence the batch count) is the same in every epoch while shards move between streams.
A range boundary inside a shard makes two streams read it (one stops early), so every shard is
read about once (``S <= shards``). Without counts, whole shards are dealt round-robin in the
shuffled order (:func:`deal_shards`). Nothing here depends on the world size or the number of
workers, only on G.
"""

from __future__ import annotations

import glob
import hashlib
import math
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import braceexpand

from sslvit.data.builtin import builtin_dir
from sslvit.data.shards import load_manifest
from sslvit.errors import InputError
from sslvit.files import MANIFEST_FILE

ShardSpec = str | os.PathLike | list | tuple


TRUSTED_MANIFESTS_ENV = "SSLVIT_TRUSTED_MANIFESTS"


def mix_seed(*parts: Any) -> int:
    """A stable 63-bit seed from any tuple of ints/strings (same on every machine and run)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


@dataclass
class ShardSet:
    """Resolved shards: URLs, per-shard sample counts (None where unknown), manifest metadata.

    ``counts`` is None when no count is known, else one entry per URL (None for a shard whose
    folder had no manifest); ``sources`` names the folder / spec of each URL (for messages).
    """

    urls: list[str]
    counts: list[int | None] | None = None
    class_names: list[str] | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    sources: list[str] | None = None
    num_classes: int | None = None
    key_dot: str | None = None  # how the manifest's counts split member names, when it says

    @property
    def num_samples(self) -> int | None:
        return None if self.counts is None or None in self.counts else sum(self.counts)  # type: ignore[arg-type]

    @property
    def complete(self) -> bool:
        """Every shard's count is known."""
        return self.counts is not None and None not in self.counts


def trusted_manifests() -> set[Path]:
    """The manifests (files, or the folders holding them) whose ``pipe:`` shard urls may run: the
    ones named in ``$SSLVIT_TRUSTED_MANIFESTS`` (paths separated by ``os.pathsep``)."""
    named = os.environ.get(TRUSTED_MANIFESTS_ENV, "").split(os.pathsep)
    return {Path(p).expanduser().resolve() for p in named if p.strip()}


def _check_command(spec: str, name: str, url: str) -> None:
    """Refuse a shard ``url`` that is a shell command, unless the user trusts its manifest by name."""
    if not url.startswith("pipe:"):
        return
    path = Path(spec)
    manifest = (path / MANIFEST_FILE if path.is_dir() else path).resolve()
    trusted = trusted_manifests()
    if manifest in trusted or manifest.parent in trusted:
        return
    raise InputError(
        f"{manifest}: shard {name!r} is to be read by running the shell command {url!r}, which came with "
        f"the data, not from you; it runs only from a manifest you trust by name: "
        f"{TRUSTED_MANIFESTS_ENV}={manifest} (or give the pipe: spec yourself)")


def _from_manifest(spec: str) -> ShardSet:
    manifest = load_manifest(spec)
    base = manifest["base"]
    local = not spec.startswith(("http://", "https://"))
    urls, counts = [], []
    for entry in manifest["shards"]:
        name = str(entry["name"])
        url = entry.get("url")
        if url is not None:
            if not local:
                raise InputError(f"{spec}: a manifest read over http may not list shard urls ({url!r})")
            _check_command(spec, name, str(url))
            urls.append(str(url))
        else:
            if name.startswith("pipe:") or "://" in name or os.path.isabs(name) or ".." in Path(name).parts:
                raise InputError(f"{spec}: shard name {name!r} must be a relative file name")
            urls.append(f"{base}/{name}")
        counts.append(int(entry["count"]))
    return ShardSet(urls, counts, manifest.get("class_names"), manifest.get("mean"), manifest.get("std"),
                    [spec] * len(urls), manifest.get("num_classes"), manifest.get("key_dot"))


def split_specs(spec: str) -> list[str]:
    """Split a spec string at its top-level commas (commas inside ``{...}`` belong to brace patterns)."""
    parts, depth, current = [], 0, ""
    for char in spec:
        if char == "{":
            depth += 1
        elif char == "}":
            depth = max(0, depth - 1)
        if char == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += char
    parts.append(current.strip())
    return [p for p in parts if p]


def _local_dir(path: Path, spec: str) -> ShardSet:
    if (path / MANIFEST_FILE).exists():
        return _from_manifest(str(path))
    tars = sorted(str(p) for p in path.iterdir()
                  if p.name.endswith((".tar", ".tar.gz", ".tgz")) and not p.name.startswith("."))
    if not tars:
        raise FileNotFoundError(f"{spec}: directory holds neither {MANIFEST_FILE} nor *.tar shards")
    return ShardSet(tars, None, sources=[str(path)] * len(tars))


def _resolve_one(spec: str) -> ShardSet:
    builtin = builtin_dir(spec)
    if builtin is not None:
        return _local_dir(builtin, spec)
    if spec.startswith("pipe:"):
        urls = list(braceexpand.braceexpand(spec))
        return ShardSet(urls, sources=[spec] * len(urls))
    if spec.startswith(("http://", "https://")):
        if spec.endswith(".json"):
            return _from_manifest(spec)
        urls = list(braceexpand.braceexpand(spec))
        return ShardSet(urls, sources=[spec] * len(urls))
    if spec.startswith("file:"):
        spec = spec[len("file:"):]
    path = Path(spec)
    if path.is_dir():
        return _local_dir(path, spec)
    if spec.endswith(".json") and path.exists():
        return _from_manifest(spec)
    if any(c in spec for c in "*?["):
        urls = sorted(glob.glob(spec))
    else:
        urls = list(braceexpand.braceexpand(spec))
    missing = [u for u in urls if not os.path.exists(u)]
    if not urls or missing:
        raise FileNotFoundError(f"{spec}: no such shard(s): {missing[:3] or spec}")
    if any(os.path.isdir(u) or u.endswith(".json") for u in urls):
        if len(urls) == 1:
            return _resolve_one(urls[0])
        return combine([_resolve_one(u) for u in urls], urls)
    return ShardSet(urls, sources=[spec] * len(urls))


def _combined_stats(sets: list[ShardSet]) -> tuple[list[float] | None, list[float] | None]:
    """Count-weighted mean and pooled std over sets that all carry mean, std and counts."""
    if any(s.mean is None or s.std is None or s.num_samples is None for s in sets):
        return None, None
    total = sum(s.num_samples or 0 for s in sets)
    if total == 0:
        return None, None
    mean = [sum((s.num_samples or 0) * s.mean[c] for s in sets) / total for c in range(3)]  # type: ignore[index]
    second = [sum((s.num_samples or 0) * (s.std[c] ** 2 + s.mean[c] ** 2) for s in sets) / total  # type: ignore[index]
              for c in range(3)]
    std = [math.sqrt(max(second[c] - mean[c] ** 2, 0.0)) for c in range(3)]
    return [round(v, 6) for v in mean], [round(v, 6) for v in std]


def combine(sets: list[ShardSet], names: list[str]) -> ShardSet:
    """Concatenate resolved shard sets (``names``: their specs, for messages).

    Raises ValueError when two sets carry different class names.
    """
    if not sets:
        raise ValueError("empty shard list")
    class_names, owner = None, ""
    for shard_set, name in zip(sets, names, strict=True):
        if shard_set.class_names:
            if class_names is not None and list(shard_set.class_names) != list(class_names):
                raise ValueError(f"class names disagree: {owner} has {class_names[:5]}... "
                                 f"({len(class_names)}), {name} has {shard_set.class_names[:5]}... "
                                 f"({len(shard_set.class_names)})")
            class_names, owner = list(shard_set.class_names), name
    counts = None
    if any(s.counts is not None for s in sets):
        counts = [c for s in sets for c in (s.counts if s.counts is not None else [None] * len(s.urls))]
    sources = [src for s, name in zip(sets, names, strict=True) for src in (s.sources or [name] * len(s.urls))]
    mean, std = _combined_stats(sets)
    key_dots = {(s.key_dot, name) for s, name in zip(sets, names, strict=True) if s.key_dot}
    if len({k for k, _ in key_dots}) > 1:
        raise ValueError(f"manifests were indexed with different key_dot: {sorted(key_dots)}")
    num_classes = max((s.num_classes for s in sets if s.num_classes), default=None)
    return ShardSet([u for s in sets for u in s.urls], counts, class_names, mean, std, sources, num_classes,
                    next(iter(key_dots))[0] if key_dots else None)


def resolve(spec: ShardSpec) -> ShardSet:
    """Any shard spec (see module docstring) -> ShardSet; lists are concatenated."""
    if isinstance(spec, (list, tuple)):
        specs = [os.fspath(s) for s in spec]
        return combine([resolve(s) for s in specs], specs)
    spec = os.fspath(spec)
    pieces = split_specs(spec)
    if len(pieces) > 1:
        return combine([_resolve_one(p) for p in pieces], pieces)
    return _resolve_one(spec)


def resolve_shards(spec: ShardSpec) -> list[str]:
    """Any shard spec -> list of shard URLs/paths."""
    return resolve(spec).urls


@dataclass(frozen=True)
class Part:
    """Samples ``start .. stop - 1`` (tar order) of shard number ``shard``; ``stop`` None: to its end."""

    url: str
    shard: int
    start: int = 0
    stop: int | None = None
    shard_count: int | None = None

    @property
    def count(self) -> int | None:
        end = self.stop if self.stop is not None else self.shard_count
        return None if end is None else end - self.start

    @property
    def reads_to_end(self) -> bool:
        """This part reads its shard to the end, so it is the one that reports the shard's damage."""
        return self.stop is None or self.shard_count is None or self.stop >= self.shard_count


def whole_shards(shards: ShardSet) -> list[Part]:
    """One part per shard, in canonical order."""
    counts = shards.counts or [None] * len(shards.urls)
    return [Part(url, i, 0, None, counts[i]) for i, url in enumerate(shards.urls)]


def shard_order(num_shards: int, seed: int | None) -> list[int]:
    """Shard indices in the order an epoch concatenates them (shuffled by ``seed`` unless None)."""
    order = list(range(num_shards))
    if seed is not None:
        random.Random(seed).shuffle(order)
    return order


def split_streams(shards: ShardSet, num_streams: int, seed: int | None) -> list[list[Part]]:
    """Cut the epoch's sample sequence into ``num_streams`` contiguous ranges of equal size (+-1).

    The shards (known counts) are concatenated in :func:`shard_order`; stream k gets samples
    ``k*N//S .. (k+1)*N//S - 1`` of that sequence: the tail of one shard, whole shards, the head
    of another. A shard shared by two streams is read by both (the head reader stops early).
    """
    counts = [int(c or 0) for c in (shards.counts or [])]
    total = sum(counts)
    bounds = [k * total // num_streams for k in range(num_streams + 1)]
    streams: list[list[Part]] = [[] for _ in range(num_streams)]
    offset, k = 0, 0
    for i in shard_order(len(shards.urls), seed):
        n, pos = counts[i], 0
        while pos < n:
            while offset >= bounds[k + 1]:
                k += 1
            take = min(n - pos, bounds[k + 1] - offset)
            streams[k].append(Part(shards.urls[i], i, pos, pos + take, n))
            pos, offset = pos + take, offset + take
    return streams


def deal_shards(shards: ShardSet, num_streams: int, seed: int | None) -> list[list[Part]]:
    """Whole shards dealt round-robin to streams in :func:`shard_order` (counts unknown)."""
    parts = whole_shards(shards)
    streams: list[list[Part]] = [[] for _ in range(num_streams)]
    for j, i in enumerate(shard_order(len(parts), seed)):
        streams[j % num_streams].append(parts[i])
    return streams


def choose_streams(global_batch: int, num_shards: int) -> int:
    """Logical streams S of an epoch: the largest divisor of ``global_batch`` not above ``num_shards``.

    With at least G shards every stream fills one position of each global micro-batch; with fewer,
    a stream fills ``G / S`` consecutive positions, so streams stay about a shard long or longer.
    """
    best = 1
    for s in range(1, global_batch + 1):
        if global_batch % s == 0 and s <= max(1, num_shards):
            best = s
    return best


def epoch_batches(loads: list[int], per_batch: int, drop_last: bool) -> int:
    """Global micro-batches of an epoch whose streams hold ``loads`` samples and fill ``per_batch``
    positions each: enough for the fullest stream, or with ``drop_last`` what the emptiest fills."""
    if drop_last:
        return min(loads) // per_batch
    return max(math.ceil(n / per_batch) for n in loads)
