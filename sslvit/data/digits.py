"""The built-in corpus: scikit-learn's 1,797 real handwritten digits as PNG shards.

``sklearn.datasets.load_digits`` ships with scikit-learn (no download): 8x8 grayscale images with
values 0..16 in 10 classes. Each is scaled to 0..255 and upscaled (bicubic) to ``image_size``
square pixels, stored losslessly as grayscale PNG. The split is fixed: stratified by class,
``random_state=0``, 360 validation images (1,437 train / 360 val). The manifest carries the
training split's per-channel mean/std (the loader sees RGB with three equal channels).

:func:`ensure_digits_shards` builds once and then reuses the result. The build runs under an
exclusive file lock next to ``root`` and is written to a unique temporary directory that is
renamed into place only when complete, so several ranks can call it at once. A build says so in
one line and shows its progress (:func:`sslvit.progress.progress`) unless ``progress=False``.
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from sslvit.data.shards import SourceItem, write_shards
from sslvit.files import MANIFEST_FILE
from sslvit.progress import progress as progress_bar
from sslvit.progress import say

DIGITS_VERSION = 1
VAL_SIZE = 360
SHARD_SIZE = 256
CLASS_NAMES = [str(i) for i in range(10)]
_MARKER = "digits.json"


def digits_arrays(image_size: int = 32, progress: bool = False) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """split -> (images uint8 (N, image_size, image_size), labels int64 (N,)), fixed split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    pixels = np.clip(np.round(digits.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    labels = digits.target.astype(np.int64)
    index = np.arange(len(labels))
    train_idx, val_idx = train_test_split(index, test_size=VAL_SIZE, stratify=labels, random_state=0)
    out = {}
    for split, idx in (("train", np.sort(train_idx)), ("val", np.sort(val_idx))):
        bar = progress_bar(idx, desc=f"digits-{split} resize", unit="img", enabled=progress, leave=False)
        images = np.stack([upscale(pixels[i], image_size) for i in bar])
        out[split] = (images, labels[idx])
    return out


def upscale(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 (h, w) grayscale -> uint8 (size, size), bicubic (also used by fashion_mnist)."""
    if image.shape == (size, size):
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BICUBIC))


def png_items(images: np.ndarray, labels: np.ndarray, prefix: str, width: int = 4,
              ids: np.ndarray | None = None) -> Iterator[SourceItem]:
    """Grayscale uint8 images -> PNG SourceItems named ``{prefix}-{id:0{width}d}`` (id: ``ids[i]``,
    default the position ``i``), encoded lazily."""
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, "PNG", optimize=False)
        n = i if ids is None else int(ids[i])
        yield SourceItem(name=f"{prefix}-{n:0{width}d}", data=buf.getvalue(), label=int(label))


def build_digits(out_root: str | Path, image_size: int = 32, progress: bool = False) -> dict[str, Path]:
    """Write ``out_root/{train,val}/`` shards + manifests (not atomic; see ensure_digits_shards)."""
    out_root = Path(out_root)
    arrays = digits_arrays(image_size, progress)
    train_images = arrays["train"][0].astype(np.float64) / 255.0
    mean = [round(float(train_images.mean()), 6)] * 3
    std = [round(float(train_images.std()), 6)] * 3
    dirs = {}
    for split, (images, labels) in arrays.items():
        extra = {"corpus": "digits", "split": split, "image_size": image_size, "mean": mean, "std": std,
                 "stats_from": "train", "source": "sklearn.datasets.load_digits"}
        items = progress_bar(png_items(images, labels, f"digits-{split}"), total=len(labels),
                             desc=f"digits-{split} shards", unit="img", enabled=progress)
        write_shards(items, out_root / split, prefix=f"digits-{split}", max_count=SHARD_SIZE,
                     class_names=CLASS_NAMES, verify=False, compute_stats=False, total=len(labels),
                     progress=False, extra=extra)
        dirs[split] = out_root / split
    (out_root / _MARKER).write_text(json.dumps({"version": DIGITS_VERSION, "image_size": image_size}))
    return dirs


def announce(message: str) -> None:
    """Print ``message`` once (on the main process) as a build starts."""
    say(message)


def _is_complete(root: Path, image_size: int) -> bool:
    try:
        marker = json.loads((root / _MARKER).read_text())
    except (OSError, ValueError):
        return False
    return (marker.get("version") == DIGITS_VERSION and marker.get("image_size") == image_size
            and all((root / s / MANIFEST_FILE).exists() for s in ("train", "val")))


def build_once(root: Path, is_complete: Callable[[Path], bool], build: Callable[[Path], object]) -> None:
    """Unless ``is_complete(root)``, run ``build(tmp)`` into a unique temporary directory next to
    ``root`` and rename it into place (replacing an incomplete or outdated ``root``), all under an
    exclusive lock ``root.parent/.{root.name}.lock``, so concurrent callers build it once."""
    if is_complete(root):
        return
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f".{root.name}.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if is_complete(root):
                return
            tmp = root.parent / f".{root.name}.tmp-{uuid.uuid4().hex[:12]}"
            try:
                build(tmp)
                if root.exists():
                    trash = root.parent / f".{root.name}.old-{uuid.uuid4().hex[:12]}"
                    os.replace(root, trash)
                    shutil.rmtree(trash, ignore_errors=True)
                os.replace(tmp, root)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def ensure_digits_shards(root: str | Path = "data/shards/digits", image_size: int = 32,
                         progress: bool = True) -> dict[str, Path]:
    """Build the digits shards under ``root`` once and reuse them: split -> directory holding
    ``manifest.json``. A build for another ``image_size`` at the same root is replaced. A build
    prints one line and shows its progress unless ``progress`` is False."""
    root = Path(root)

    def build(tmp: Path) -> None:
        if progress:
            announce(f"building the built-in digits shards ({image_size} px) in {root}, once; later runs reuse them")
        build_digits(tmp, image_size, progress)

    build_once(root, lambda r: _is_complete(r, image_size), build)
    return {s: root / s for s in ("train", "val")}
