"""Writing WebDataset tar shards and their manifest.

A shard is a plain tar: for every sample ``{key}.{jpg|png|webp}`` (the original encoded bytes
unless re-encoding was asked for), ``{key}.cls`` (ASCII class id, absent for unlabeled data) and
optionally ``{key}.json`` (metadata). Keys are ``{index:08d}_{stem}`` with every character outside
``[A-Za-z0-9_-]`` replaced, so no key contains a dot (WebDataset splits a member name at the
first dot of its basename) and keys are unique across the corpus.

A shard is written to a hidden temporary name (``.{name}.tmp-{pid}``) and appears under its final
name ``{prefix}-{NNNNNN}.tar`` only once complete (flush, fsync, ``os.replace``), so an interrupted
run never leaves a shard that looks whole. ``manifest.json`` is written the same way, last; see
data/README.md for its fields.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import tarfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from sslvit.data.decode import DEFAULT_MAX_PIXELS, SampleError, _to_rgb_array, open_image
from sslvit.errors import InputError
from sslvit.files import MANIFEST_FILE, sha256_file

MANIFEST_FORMAT = "sslvit-shards/1"
_NATIVE = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}
_PIL_FORMAT = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}
_MAX_LISTED_SKIPS = 10_000


def safe_key(index: int, stem: str = "") -> str:
    """A unique, dot-free sample key: ``{index:08d}`` plus a sanitised ``stem``."""
    clean = re.sub(r"[^A-Za-z0-9_-]", "_", stem)[:48].strip("_")
    return f"{index:08d}_{clean}" if clean else f"{index:08d}"


class ShardWriter:
    """Sequential tar shard writer with count and byte limits and atomic completion.

    Use as a context manager; on an exception the shard in progress is deleted.
    """

    def __init__(self, out_dir: str | Path, prefix: str = "shard", max_count: int = 10_000,
                 max_bytes: int = 1 << 30) -> None:
        if max_count < 1 or max_bytes < 1:
            raise ValueError("max_count and max_bytes must be positive")
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.prefix, self.max_count, self.max_bytes = prefix, max_count, max_bytes
        self.shards: list[dict[str, Any]] = []
        self._tar: tarfile.TarFile | None = None
        self._file: io.BufferedWriter | None = None
        self._tmp: Path | None = None
        self._count = 0
        self._bytes = 0

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    @staticmethod
    def _member_size(size: int) -> int:
        return 512 + 512 * math.ceil(size / 512)

    def write(self, key: str, members: dict[str, bytes]) -> None:
        """Add one sample: ``members`` maps extension (no dot) -> bytes."""
        if "." in key or "/" in key:
            raise ValueError(f"unsafe key {key!r}")
        size = sum(self._member_size(len(v)) for v in members.values())
        if self._tar is not None and (self._count >= self.max_count
                                      or self._bytes + size + 1024 > self.max_bytes):
            self._finish()
        if self._tar is None:
            self._start()
        assert self._tar is not None
        for ext, data in members.items():
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mtime, info.mode = len(data), 0, 0o444
            self._tar.addfile(info, io.BytesIO(data))
        self._count += 1
        self._bytes += size

    def _name(self, index: int) -> str:
        return f"{self.prefix}-{index:06d}.tar"

    def _start(self) -> None:
        name = self._name(len(self.shards))
        self._tmp = self.out_dir / f".{name}.tmp-{os.getpid()}"
        self._file = open(self._tmp, "wb")  # noqa: SIM115
        self._tar = tarfile.open(fileobj=self._file, mode="w", format=tarfile.PAX_FORMAT)
        self._count, self._bytes = 0, 0

    def _finish(self) -> None:
        assert self._tar is not None and self._file is not None and self._tmp is not None
        self._tar.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        name = self._name(len(self.shards))
        digest, nbytes = sha256_file(self._tmp), self._tmp.stat().st_size
        os.replace(self._tmp, self.out_dir / name)
        self.shards.append({"name": name, "count": self._count, "bytes": nbytes, "sha256": digest})
        self._tar = self._file = self._tmp = None

    def close(self) -> list[dict[str, Any]]:
        """Complete the shard in progress; returns the shard entries written so far."""
        if self._tar is not None:
            self._finish()
        return self.shards

    def abort(self) -> None:
        """Drop the shard in progress (its temporary file is removed)."""
        for obj in (self._tar, self._file):
            try:
                if obj is not None:
                    obj.close()
            except Exception:
                pass
        if self._tmp is not None and self._tmp.exists():
            self._tmp.unlink()
        self._tar = self._file = self._tmp = None


@dataclass
class SourceItem:
    """One input sample: encoded image bytes (or a path to read them from), label, metadata."""

    name: str
    data: bytes | None = None
    path: Path | None = None
    label: int | None = None
    meta: dict[str, Any] | None = None


@dataclass
class ChannelStats:
    """Running per-channel sums over RGB pixels in [0, 1]; mean/std of the corpus."""

    total: np.ndarray = field(default_factory=lambda: np.zeros(3))
    squares: np.ndarray = field(default_factory=lambda: np.zeros(3))
    pixels: int = 0

    def update(self, rgb: np.ndarray) -> None:
        """rgb: uint8 (H, W, 3)."""
        x = rgb.reshape(-1, 3).astype(np.float64) / 255.0
        self.total += x.sum(0)
        self.squares += (x * x).sum(0)
        self.pixels += x.shape[0]

    def result(self) -> tuple[list[float], list[float]] | None:
        if self.pixels == 0:
            return None
        mean = self.total / self.pixels
        std = np.sqrt(np.maximum(self.squares / self.pixels - mean**2, 0.0))
        return [round(float(v), 6) for v in mean], [round(float(v), 6) for v in std]


def prepare_image(data: bytes, image_format: str = "keep", max_side: int | None = None,
                  quality: int = 90, verify: bool = True, stats: ChannelStats | None = None,
                  max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[str, bytes]:
    """Check (and optionally re-encode) one encoded image -> (extension, bytes).

    Original bytes are kept when the format is JPEG/PNG/WebP, no ``max_side`` resize applies and
    ``image_format`` is "keep"; other formats become PNG. Raises SampleError when unreadable.
    """
    image = open_image(data, max_pixels)
    ext = _NATIVE.get(image.format or "")
    if verify or stats is not None or ext is None or max_side or image_format != "keep":
        try:
            image.load()
        except Exception as exn:
            raise SampleError("undecodable_image", str(exn)[:200]) from None
    if stats is not None:
        small = image.copy()
        small.thumbnail((64, 64))
        stats.update(_to_rgb_array(small))
    target = ext if image_format == "keep" else image_format
    resize = bool(max_side) and max(image.size) > max_side
    if target == ext and not resize:
        return ext, data
    target = target or "png"
    image = ImageOps.exif_transpose(image)
    if resize:
        assert max_side is not None
        image.thumbnail((max_side, max_side), Image.Resampling.BICUBIC, reducing_gap=3.0)
    allowed = {"jpg": ("L", "RGB", "CMYK"), "png": ("1", "L", "LA", "P", "RGB", "RGBA", "I;16"),
               "webp": ("RGB", "RGBA")}[target]
    if image.mode not in allowed:
        keep_alpha = "A" in image.mode or "transparency" in image.info
        image = image.convert("RGBA" if keep_alpha and "RGBA" in allowed else "RGB")
    out = io.BytesIO()
    image.save(out, _PIL_FORMAT[target], **({"quality": quality} if target != "png" else {}))
    return target, out.getvalue()


def write_shards(items: Iterable[SourceItem], out_dir: str | Path, prefix: str = "shard",
                 max_count: int = 10_000, max_bytes: int = 1 << 30,
                 class_names: list[str] | None = None, image_format: str = "keep",
                 max_side: int | None = None, quality: int = 90, write_json: bool = False,
                 verify: bool = True, compute_stats: bool = True, total: int | None = None,
                 progress: bool = True, extra: dict[str, Any] | None = None,
                 skipped: list[dict[str, str]] | None = None) -> dict[str, Any]:
    """Write ``items`` as shards ``{prefix}-NNNNNN.tar`` plus ``manifest.json`` in ``out_dir``.

    Unreadable images are skipped and listed in the manifest (with ``skipped``, entries found
    by the source itself). Returns the manifest dict.
    """
    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    stats = ChannelStats() if compute_stats else None
    skipped = list(skipped or [])
    labels_seen = False
    index = 0
    with ShardWriter(out_dir, prefix, max_count, max_bytes) as writer:
        for item in tqdm(items, total=total, disable=not progress, unit="img", desc=prefix):
            try:
                data = item.data if item.data is not None else Path(item.path or "").read_bytes()
                ext, payload = prepare_image(data, image_format, max_side, quality, verify, stats)
            except (SampleError, OSError) as exn:
                skipped.append({"source": item.name, "reason": getattr(exn, "reason", "unreadable"),
                                "detail": str(exn)[:200]})
                continue
            members = {ext: payload}
            if item.label is not None:
                members["cls"] = str(int(item.label)).encode()
                labels_seen = True
            if write_json:
                members["json"] = json.dumps({"source": item.name, **(item.meta or {})}).encode()
            writer.write(safe_key(index, Path(item.name).stem), members)
            index += 1
        shards = writer.close()
    manifest: dict[str, Any] = {
        "format": MANIFEST_FORMAT,
        "prefix": prefix,
        "total": sum(s["count"] for s in shards),
        "shards": shards,
        "labeled": labels_seen,
        "class_names": class_names,
        "num_classes": len(class_names) if class_names else None,
        "image_format": image_format if image_format != "keep" or max_side else "original",
        "num_skipped": len(skipped),
        "skipped": skipped[:_MAX_LISTED_SKIPS],
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if stats is not None and (result := stats.result()) is not None:
        manifest["mean"], manifest["std"] = result
    manifest.update(extra or {})
    write_manifest(manifest, out_dir)
    return manifest


def write_manifest(manifest: dict[str, Any], out_dir: str | Path) -> Path:
    """Atomically write ``manifest.json`` into ``out_dir``."""
    path = Path(out_dir) / MANIFEST_FILE
    tmp = path.with_name(f".{MANIFEST_FILE}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(manifest, indent=1) + "\n")
    os.replace(tmp, path)
    return path


def load_manifest(path_or_dir: str | Path) -> dict[str, Any]:
    """Read a shard manifest from a directory, a ``.json`` path or an http(s) URL.

    The result gets ``"base"``: the location shard names are relative to.
    A file that is not JSON, or whose shard entries lack a ``name`` or a ``count``, is an
    :class:`~sslvit.errors.InputError` naming the file and the entry.
    """
    spec = str(path_or_dir)
    if spec.startswith(("http://", "https://")):
        from webdataset.gopen import gopen  # deferred: only remote manifests need it

        where = spec if spec.endswith(".json") else spec.rstrip("/") + "/" + MANIFEST_FILE
        with gopen(where) as f:
            text = f.read()
        base = spec.rsplit("/", 1)[0] if spec.endswith(".json") else spec.rstrip("/")
    else:
        path = Path(spec)
        path = path / MANIFEST_FILE if path.is_dir() else path
        where, text, base = str(path), path.read_bytes(), str(path.parent)
    try:
        manifest = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"{where}: not a shard manifest (not JSON: {err})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("shards"), list):
        raise InputError(f"{where}: not a shard manifest (no 'shards' list)")
    for index, entry in enumerate(manifest["shards"]):
        count = entry.get("count") if isinstance(entry, dict) else None
        if (not isinstance(entry, dict) or not isinstance(entry.get("name"), str)
                or isinstance(count, bool) or not isinstance(count, int) or count < 0):
            raise InputError(f"{where}: shard entry {index} needs a 'name' (text) and a 'count' (a whole "
                             f"number >= 0); it is {str(entry)[:200]}")
    manifest["base"] = base
    return manifest

