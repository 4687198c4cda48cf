"""Index existing tar shards into a ``manifest.json`` without rewriting them.

Shards written by other tools (webdataset's ``ShardWriter``, img2dataset, hand-made tars) carry
no manifest, so a finite epoch has to count them first. :func:`index_shards` reads every shard
once (local paths, ``http(s)://`` URLs and ``pipe:`` commands, through webdataset's ``gopen`` as
the loader does) and writes the manifest :func:`sslvit.data.shards.load_manifest` reads: per-shard
counts, bytes and sha256, the total, the label range or class names, and what it saw (member
extensions, keys whose basename holds dots). Channel mean/std are not computed (that needs every
image decoded); the loader falls back to the configured or ImageNet statistics.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import time
from collections import Counter
from pathlib import Path
from typing import IO, Any

from sslvit.data.decode import IMAGE_EXTENSIONS, LABEL_EXTENSIONS
from sslvit.data.plan import resolve
from sslvit.data.shards import MANIFEST_FORMAT, write_manifest
from sslvit.data.tario import open_url, sample_members, split_name
from sslvit.files import MANIFEST_FILE

_EXAMPLES = 5


class _Hashing(io.RawIOBase):
    """A read-only stream that hashes and counts every byte read through it."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.stream, self.digest, self.size = stream, hashlib.sha256(), 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self.stream.read(len(buffer))
        n = len(data)
        buffer[:n] = data
        self.digest.update(data)
        self.size += n
        return n

    def drain(self) -> None:
        while self.read(1 << 20):
            pass


def _field(value: Any, path: str) -> Any:
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _label(members: dict[str, bytes], label_key: str) -> int | str | None:
    """A sample's label: an int, a class name (non-integer text), or None when it has none."""
    if label_key:
        if "json" not in members:
            return None
        try:
            value = _field(json.loads(members["json"]), label_key)
        except (ValueError, UnicodeDecodeError):
            return None
    else:
        raw = next((members[e] for e in LABEL_EXTENSIONS if e in members), None)
        if raw is None:
            return None
        value = raw.decode("utf-8", "replace")
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)) and float(value).is_integer():
        return int(value)
    text = str(value).strip()
    try:
        return int(text)
    except ValueError:
        return text


def _index_one(url: str, label_key: str, key_dot: str, seen: dict[str, Any]) -> dict[str, Any]:
    """Read one shard: its count, bytes and sha256; labels, extensions and dotted keys go to ``seen``."""
    stream = _Hashing(open_url(url))
    count, last, last_dotted = 0, None, None
    members: dict[str, bytes] = {}

    def finish() -> None:
        if last is None:
            return
        label = _label(members, label_key)
        if label is None:
            seen["unlabeled"] += 1
        else:
            seen["labels"][label] += 1
        if not any(e in members for e in IMAGE_EXTENSIONS):
            seen["no_image"] += 1

    try:
        with tarfile.open(fileobj=stream, mode="r|*") as tar:
            for info, key, ext in sample_members(tar, key_dot):
                if key != last:
                    finish()
                    count, last, members = count + 1, key, {}
                full_key = (split_name(info.name, "last") or (key, ext))[0]
                if "." in full_key.rsplit("/", 1)[-1] and full_key != last_dotted:
                    last_dotted = full_key
                    seen["dotted"] += 1
                    if len(seen["dotted_examples"]) < _EXAMPLES:
                        seen["dotted_examples"].append(info.name)
                if ext not in members:
                    seen["extensions"][ext] += 1
                if ext in LABEL_EXTENSIONS or ext == "json":
                    handle = tar.extractfile(info)
                    members[ext] = handle.read() if handle is not None else b""
                else:
                    members.setdefault(ext, b"")
        finish()
        stream.drain()
    except (tarfile.TarError, OSError, EOFError) as exn:
        raise ValueError(f"{url}: not a readable tar shard ({exn})") from None
    finally:
        stream.stream.close()
    return {"count": count, "bytes": stream.size, "sha256": stream.digest.hexdigest()}


def _shard_urls(spec: str) -> list[str]:
    path = Path(spec[len("file:"):] if spec.startswith("file:") else spec)
    if path.is_dir():
        tars = sorted(str(p) for p in path.iterdir()
                      if p.name.endswith((".tar", ".tar.gz", ".tgz")) and not p.name.startswith("."))
        if not tars:
            raise FileNotFoundError(f"{spec}: directory holds no *.tar shards")
        return tars
    return resolve(spec).urls


def _is_local(url: str) -> bool:
    return not url.startswith("pipe:") and "://" not in url


def index_shards(spec: str, out: str | None = None, *, label_key: str = "", key_dot: str = "first",
                 overwrite: bool = False) -> dict:
    """Index the tar shards of ``spec`` into ``out/manifest.json`` (the shards are only read).

    ``spec``: a shard folder, brace pattern, glob, ``http(s)://`` pattern or ``pipe:`` command.
    ``out`` defaults to the folder holding local shards and is required for remote ones (their
    entries then carry the ``url`` to read, which only a local manifest may do). Labels come from
    ``.cls`` members, or with ``label_key`` from that dotted field of the ``.json`` member:
    integers give ``label_range`` and ``num_classes = max + 1``; text labels give sorted
    ``class_names``. ``key_dot`` ("first" | "last") is where member names split into key and
    extension; samples whose key basename holds dots (``img.0001.jpg``: key ``img.0001`` when split
    at the last dot) are reported under ``dotted_keys`` (count and example member names). A
    manifest already in ``out`` that this function did not write (one from
    :func:`sslvit.data.shards.write_shards` carries class names and mean/std) is replaced only
    with ``overwrite=True``. Returns the manifest written.
    """
    if key_dot not in ("first", "last"):
        raise ValueError(f"key_dot must be 'first' or 'last', not {key_dot!r}")
    urls = _shard_urls(str(spec))
    local = all(_is_local(u) for u in urls)
    if out is None:
        if not local:
            raise ValueError(f"{spec}: remote shards need out= (the folder to write manifest.json to)")
        folders = {str(Path(u).resolve().parent) for u in urls}
        if len(folders) != 1:
            raise ValueError(f"{spec}: shards lie in {len(folders)} folders ({sorted(folders)[:2]}...); pass out=")
        out = folders.pop()
    out_dir = Path(out)
    existing = out_dir / MANIFEST_FILE
    if existing.exists() and not overwrite:
        try:
            written_here = "indexed_from" in json.loads(existing.read_text())
        except ValueError:
            written_here = False
        if not written_here:
            raise FileExistsError(f"{existing} exists and was not written by the indexer (it may hold class names "
                                  f"and mean/std): pass overwrite=True to replace it, or another out=")
    out_dir.mkdir(parents=True, exist_ok=True)
    seen: dict[str, Any] = {"labels": Counter(), "unlabeled": 0, "no_image": 0, "dotted": 0,
                            "dotted_examples": [], "extensions": Counter()}
    started = time.monotonic()
    entries = []
    for url in urls:
        entry = _index_one(url, label_key, key_dot, seen)
        name = Path(url).name if local else url.rstrip(" -").split("/")[-1].split()[-1]
        if local and Path(url).resolve().parent == out_dir.resolve():
            entries.append({"name": name, **entry})
        else:
            entries.append({"name": name, "url": os.path.abspath(url) if local else url, **entry})
    ints = sorted(k for k in seen["labels"] if isinstance(k, int))
    names = sorted(k for k in seen["labels"] if isinstance(k, str))
    if ints and names:
        raise ValueError(f"{spec}: labels mix integers ({ints[:3]}) and names ({names[:3]}); "
                         f"label source: {label_key or '.cls'}")
    manifest: dict[str, Any] = {
        "format": MANIFEST_FORMAT,
        "total": sum(e["count"] for e in entries),
        "shards": entries,
        "labeled": bool(ints or names),
        "label_key": label_key,
        "key_dot": key_dot,
        "class_names": names or None,
        "num_classes": (max(ints) + 1 if ints else len(names)) if (ints or names) else None,
        "label_range": [ints[0], ints[-1]] if ints else None,
        "unlabeled": seen["unlabeled"],
        "without_image": seen["no_image"],
        "extensions": dict(seen["extensions"].most_common()),
        "dotted_keys": {"count": seen["dotted"], "examples": seen["dotted_examples"]},
        "indexed_from": str(spec),
        "index_seconds": round(time.monotonic() - started, 3),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_manifest(manifest, out_dir)
    return manifest
