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
are kept and the sample being read when it happened is dropped. Where the manifest gives the
shard's count, the samples lost with it are counted too (``unreadable_shard_samples``,
``truncated_tar_samples``): those two reasons count shards, the others samples.

Uncompressed tars (what the shard writers make) are read by parsing their 512-byte headers
directly (ustar with its prefix field, GNU long names, pax ``path``/``size`` records; checksums
checked as tarfile does), several times faster than :mod:`tarfile`, which still reads compressed
shards and any tar holding a member type the direct parser leaves aside (sparse files).
"""

from __future__ import annotations

import re
import tarfile
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import IO

from sslvit.data.decode import IMAGE_EXTENSIONS, LABEL_EXTENSIONS

WANTED = frozenset(IMAGE_EXTENSIONS + LABEL_EXTENSIONS + ("json",))
_SPLIT = {"first": re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$"),
          "last": re.compile(r"^((?:.*/|)[^/]*[^./][^/]*?)[.]([^./]+)$")}
_READ_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error, ValueError)

# shard-level reasons -> the reason counting the samples the shards held (their manifest counts)
LOST_SAMPLES = {"unreadable_shard": "unreadable_shard_samples", "truncated_tar": "truncated_tar_samples"}


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
    """Samples in a local tar shard, from its member headers alone (member data is seeked over);
    raises tarfile.ReadError / OSError for a damaged or missing shard."""
    count, last = 0, None
    stream, members = _members(path)
    try:
        for key, _, _ in members(key_dot):
            if key != last:
                count, last = count + 1, key
        return count
    except _Unsupported:
        pass
    finally:
        _close(stream)
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


_BLOCK = 512
_COMPRESSED = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ", b"\x28\xb5\x2f\xfd")  # gzip, bzip2, xz, zstd
_REGULAR = (b"0", b"\0", b"7")
_SKIPPED = (b"1", b"2", b"3", b"4", b"5", b"6", b"V")  # links, devices, directories, fifos, volume labels


class _Prefixed:
    """A read-only stream that returns ``head`` before the rest of ``stream``."""

    def __init__(self, head: bytes, stream: IO[bytes]) -> None:
        self.head, self.stream = head, stream

    def read(self, size: int = -1) -> bytes:
        if not self.head:
            return self.stream.read(size)
        if size is None or size < 0:
            data, self.head = self.head + self.stream.read(), b""
            return data
        data, self.head = self.head[:size], self.head[size:]
        return data + (self.stream.read(size - len(data)) if len(data) < size else b"")


def _read_exact(stream: IO[bytes], size: int) -> bytes:
    data = stream.read(size)
    while 0 < len(data) < size:
        more = stream.read(size - len(data))
        if not more:
            break
        data += more
    if len(data) != size:
        raise tarfile.ReadError(f"unexpected end of data ({len(data)} of {size} bytes)")
    return data


def _number(field: bytes) -> int:
    """A tar header number: octal ASCII, or GNU base-256 (first byte 0x80 / 0xff)."""
    if field[:1] in (b"\x80", b"\xff"):
        value = int.from_bytes(field[1:], "big")
        return value - (1 << (8 * (len(field) - 1))) if field[:1] == b"\xff" else value
    text = field.split(b"\0", 1)[0].strip()
    try:
        return int(text, 8) if text else 0
    except ValueError:
        raise tarfile.ReadError(f"bad number field {field!r}") from None


def _plain_members(stream: IO[bytes], key_dot: str) -> Iterator[tuple[str, str, Callable[[], bytes]]]:
    """``(key, extension, read)`` for each regular sample member of an uncompressed tar stream, parsing
    the headers directly (ustar, GNU long names, pax ``path``/``size``); member data not read through
    ``read()`` is skipped. Raises tarfile.ReadError on a damaged header or early end."""
    long_name: str | None = None
    pax: dict[str, str] = {}
    while True:
        header = stream.read(_BLOCK)
        if not header:
            return
        if len(header) < _BLOCK:
            header += _read_exact(stream, _BLOCK - len(header))
        if header.count(0) == _BLOCK:
            return
        checksum = _number(header[148:156])
        if checksum != sum(header[:148]) + 256 + sum(header[156:]) and checksum != sum(
                b - 256 if b > 127 else b for b in header[:148] + b" " * 8 + header[156:]):  # signed, as tarfile
            raise tarfile.ReadError("bad checksum in a member header")
        kind = header[156:157]
        size = int(pax.get("size", _number(header[124:136]))) if kind not in (b"x", b"g", b"L") else \
            _number(header[124:136])
        padded = (size + _BLOCK - 1) // _BLOCK * _BLOCK
        if kind == b"L":
            long_name = _read_exact(stream, padded)[:size].rstrip(b"\0").decode("utf-8", "surrogateescape")
            continue
        if kind in (b"x", b"g"):
            records = _read_exact(stream, padded)[:size]
            if kind == b"x":
                pax = _pax_records(records)
            continue
        if long_name is not None or "path" in pax:
            name = pax.get("path", long_name or "")
        else:
            name = header[:100].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            prefix = header[345:500].split(b"\0", 1)[0] if header[257:262] == b"ustar" else b""
            if prefix:
                name = prefix.decode("utf-8", "surrogateescape") + "/" + name
        long_name, pax = None, {}
        if kind not in _REGULAR and kind not in _SKIPPED:
            raise _Unsupported(f"member type {kind!r}")
        split = split_name(name, key_dot) if kind in _REGULAR else None
        state = {"left": padded}
        if split is not None:
            def read(size: int = size, state: dict = state) -> bytes:
                data = _read_exact(stream, size)
                state["left"] -= size
                return data

            yield split[0], split[1], read
        if state["left"]:
            _read_exact(stream, state["left"]) if not _seekable(stream) else stream.seek(state["left"], 1)


def _seekable(stream: IO[bytes]) -> bool:
    try:
        return stream.seekable()
    except (AttributeError, OSError, ValueError):
        return False


def _pax_records(data: bytes) -> dict[str, str]:
    """A pax extended header's ``length key=value\\n`` records -> {key: value}."""
    out: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        space = data.index(b" ", pos)
        length = int(data[pos:space])
        key, _, value = data[space + 1:pos + length - 1].partition(b"=")
        out[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return out


class _Unsupported(tarfile.TarError):
    """A tar feature the direct header parser leaves to :mod:`tarfile` (e.g. sparse members)."""


def _tarfile_members(tar: tarfile.TarFile, key_dot: str) -> Iterator[tuple[str, str, Callable[[], bytes]]]:
    for info, key, ext in sample_members(tar, key_dot):
        def read(info: tarfile.TarInfo = info) -> bytes:
            handle = tar.extractfile(info)
            return handle.read() if handle is not None else b""

        yield key, ext, read


def _members(url: str) -> tuple[IO[bytes], Callable[[str], Iterator[tuple[str, str, Callable[[], bytes]]]]]:
    """Open ``url``: an uncompressed tar is parsed directly, a compressed one through tarfile."""
    stream = open_url(url)
    try:
        head = stream.read(6)
        if any(head.startswith(magic) for magic in _COMPRESSED):
            tar = tarfile.open(fileobj=_Prefixed(head, stream), mode="r|*")
            return stream, lambda key_dot: _tarfile_members(tar, key_dot)
        if len(head) < 6 and head:
            raise tarfile.ReadError("shard shorter than a tar header")
        source = _Prefixed(head, stream)
        if _seekable(stream):
            stream.seek(0)
            source = stream
        return stream, lambda key_dot: _plain_members(source, key_dot)
    except BaseException:
        _close(stream)
        raise


def iter_shard(url: str, errors: Counter, expected: int | None = None, report: bool = True,
               wanted: frozenset[str] = WANTED, key_dot: str = "first") -> Iterator[RawSample]:
    """Yield the raw samples of one shard in tar order; damage is counted in ``errors``.

    ``expected`` is the manifest count (a shorter shard counts as truncated); ``report=False``
    reads without counting (used when several readers share one shard); ``key_dot`` says where
    a member name splits into key and extension (see the module docstring). Uncompressed tars are
    read by parsing their headers directly (several times faster than :mod:`tarfile`); compressed
    ones, and a tar with a member type that parser leaves aside, through :mod:`tarfile`.
    """
    done = 0
    try:
        for raw in _iter_shard(url, errors, expected, report, wanted, key_dot, fast=True):
            done += 1
            yield raw
    except _Unsupported:
        for raw in _iter_shard(url, errors, expected, report, wanted, key_dot, fast=False):
            if raw.index >= done:
                yield raw


def _iter_shard(url: str, errors: Counter, expected: int | None, report: bool, wanted: frozenset[str],
                key_dot: str, fast: bool) -> Iterator[RawSample]:
    stream = None
    try:
        if fast:
            stream, members = _members(url)
        else:
            stream = open_url(url)
            tar = tarfile.open(fileobj=stream, mode="r|*")
            members = lambda key_dot: _tarfile_members(tar, key_dot)  # noqa: E731
    except _READ_ERRORS:
        _close(stream)
        if report:
            errors["unreadable_shard"] += 1
            if expected:
                errors[LOST_SAMPLES["unreadable_shard"]] += expected
        return
    current: RawSample | None = None
    index = 0
    try:
        for key, ext, read in members(key_dot):
            if current is None or key != current.key:
                if current is not None:
                    yield current
                    index += 1
                current = RawSample(key, url, index)
            if ext in wanted and ext not in current.members:
                current.members[ext] = read()
            elif ext not in wanted:
                current.other += (ext,)
        if current is not None:
            yield current
            index += 1
        if report and expected is not None and index < expected:
            errors["truncated_tar"] += 1
            errors[LOST_SAMPLES["truncated_tar"]] += expected - index
    except _Unsupported:
        raise
    except _READ_ERRORS:
        if report:
            errors["truncated_tar"] += 1
    finally:
        _close(stream)
