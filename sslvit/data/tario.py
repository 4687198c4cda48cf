"""Reading raw samples from a tar shard: group members by key, read only the members needed.

A member name splits like WebDataset's: the key is everything up to the first dot of the
basename, the extension the rest (lower-cased); with ``key_dot="last"`` the key runs up to the
last dot instead (``img.0001.jpg`` -> key ``img.0001``, extension ``jpg``). Only image, class and json members are read;
everything else (``.pyd``, ``.pickle``, ``.npy``, ...) is skipped without reading its bytes, so
nothing from a shard is ever unpickled. Each consecutive group of members with one key is one raw
sample, whether or not it has an image: sample indices (used to cut shards into parts) therefore
match the writer's counts.

A shard that cannot be opened counts as ``unreadable_shard``; one that ends early (a tar error, or
fewer samples than its manifest count) as ``truncated_tar``; the samples read before the damage
are kept and the sample being read when it happened is dropped.
"""

from __future__ import annotations

import re
import tarfile
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO

from sslvit.data.decode import IMAGE_EXTENSIONS, LABEL_EXTENSIONS

WANTED = frozenset(IMAGE_EXTENSIONS + LABEL_EXTENSIONS + ("json",))
_SPLIT = {"first": re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$"),
          "last": re.compile(r"^((?:.*/|)[^/]*[^./][^/]*?)[.]([^./]+)$")}
_READ_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error, ValueError)


@dataclass
class RawSample:
    """One sample's undecoded members (extension -> bytes) and where it came from."""

    key: str
    url: str
    index: int
    members: dict[str, bytes] = field(default_factory=dict)
    other: tuple[str, ...] = ()  # extensions present but not read


def split_name(name: str, key_dot: str = "first") -> tuple[str, str] | None:
    """Tar member name -> (key, lower-cased extension), or None for names that are not sample members."""
    if key_dot not in _SPLIT:
        raise ValueError(f"key_dot must be 'first' or 'last', not {key_dot!r}")
    match = _SPLIT[key_dot].match(name)
    basename = name.rsplit("/", 1)[-1]
    if match is None or (basename.startswith("__") and "__" in basename[2:]):
        return None
    return match.group(1), match.group(2).lower()


def sample_members(tar: tarfile.TarFile, key_dot: str = "first") -> Iterator[tuple[tarfile.TarInfo, str, str]]:
    """``(member, key, extension)`` for each regular sample member of an open tar, in tar order; the
    tar object keeps no member list behind (shards can hold millions of members)."""
    for info in tar:
        if info.isreg():
            split = split_name(info.name, key_dot)
            if split is not None:
                yield info, split[0], split[1]
        tar.members = []


def count_samples(path: str, key_dot: str = "first") -> int:
    """Samples in a local tar shard, from its member headers alone (member data is seeked over)."""
    count, last = 0, None
    with tarfile.open(path, mode="r:*") as tar:
        for _, key, _ in sample_members(tar, key_dot):
            if key != last:
                count, last = count + 1, key
    return count


def open_url(url: str) -> IO[bytes]:
    """A binary stream for a local path, ``file:`` URL, ``http(s)://`` URL or ``pipe:`` command."""
    if url.startswith("file:"):
        url = url[len("file:"):]
    if "://" not in url and not url.startswith("pipe:"):
        return open(url, "rb")  # noqa: SIM115
    from webdataset.gopen import gopen

    return gopen(url, "rb")


def _close(stream: IO[bytes] | None) -> None:
    try:
        if stream is not None:
            stream.close()
    except Exception:
        pass


def iter_shard(url: str, errors: Counter, expected: int | None = None, report: bool = True,
               wanted: frozenset[str] = WANTED, key_dot: str = "first") -> Iterator[RawSample]:
    """Yield the raw samples of one shard in tar order; damage is counted in ``errors``.

    ``expected`` is the manifest count (a shorter shard counts as truncated); ``report=False``
    reads without counting (used when several readers share one shard); ``key_dot`` says where
    a member name splits into key and extension (see the module docstring).
    """
    stream = None
    try:
        stream = open_url(url)
        tar = tarfile.open(fileobj=stream, mode="r|*")
    except _READ_ERRORS:
        _close(stream)
        if report:
            errors["unreadable_shard"] += 1
        return
    current: RawSample | None = None
    index = 0
    try:
        for info, key, ext in sample_members(tar, key_dot):
            if current is None or key != current.key:
                if current is not None:
                    yield current
                    index += 1
                current = RawSample(key, url, index)
            if ext in wanted and ext not in current.members:
                handle = tar.extractfile(info)
                current.members[ext] = handle.read() if handle is not None else b""
            elif ext not in wanted:
                current.other += (ext,)
        if current is not None:
            yield current
            index += 1
        if report and expected is not None and index < expected:
            errors["truncated_tar"] += 1
    except _READ_ERRORS:
        if report:
            errors["truncated_tar"] += 1
    finally:
        _close(stream)
