"""Reading raw samples from a tar shard: group members by key, read only the members needed.

A member name splits like WebDataset's: the key is everything up to the first dot of the
basename, the extension the rest (lower-cased). Only image, class and json members are read;
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
_SPLIT = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")
_READ_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error, ValueError)


@dataclass
class RawSample:
    """One sample's undecoded members (extension -> bytes) and where it came from."""

    key: str
    url: str
    index: int
    members: dict[str, bytes] = field(default_factory=dict)


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
               wanted: frozenset[str] = WANTED) -> Iterator[RawSample]:
    """Yield the raw samples of one shard in tar order; damage is counted in ``errors``.

    ``expected`` is the manifest count (a shorter shard counts as truncated); ``report=False``
    reads without counting (used when several readers share one shard).
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
        for info in tar:
            if not info.isreg():
                continue
            match = _SPLIT.match(info.name)
            basename = info.name.rsplit("/", 1)[-1]
            if match is None or (basename.startswith("__") and "__" in basename[2:]):
                continue
            key, ext = match.group(1), match.group(2).lower()
            if current is None or key != current.key:
                if current is not None:
                    yield current
                    index += 1
                current = RawSample(key, url, index)
            if ext in wanted and ext not in current.members:
                handle = tar.extractfile(info)
                current.members[ext] = handle.read() if handle is not None else b""
            tar.members = []
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
