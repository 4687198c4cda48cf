"""The second built-in corpus: Fashion-MNIST (Zalando, 70,000 28x28 grayscale clothing images).

The four idx files (``train-images-idx3-ubyte.gz``, ``train-labels-idx1-ubyte.gz``,
``t10k-images-idx3-ubyte.gz``, ``t10k-labels-idx1-ubyte.gz``; gzip or plain, with or without the
``.gz`` suffix) are looked for in, in this order: the ``source`` argument, the folder named by the
environment variable ``SSLVIT_FASHION_MNIST``, and ``/usr/share/datasets/fashion-mnist`` (Debian's
package ``dataset-fashion-mnist``). They are parsed here with numpy (:func:`read_idx`): magic number
(2051 images, 2049 labels), big-endian dimensions, 28x28 images, the data length the header
promises and equal image/label counts are checked, and any mismatch raises :class:`IdxError`
naming the file.

Splits: ``train`` is the official 60,000 training images minus ``val``, a fixed stratified 5,000
(500 per class; ``train_test_split(random_state=0)``) held out for model selection; ``test`` is the
official 10,000, for reporting. Each split keeps the official order. Images are upscaled (bicubic)
to ``image_size`` (default 32, as digits) and stored as grayscale PNG; a sample's name (the stem of
its key) gives its official file and index, e.g. ``00000007_fashion_mnist-train-00012``. Every
manifest carries the train split's mean/std (three equal channels), ``corpus: "fashion_mnist"``,
the split and the source file paths.

:func:`ensure_fashion_mnist_shards` builds once and reuses the result, under a lock and through a
temporary directory renamed into place (:func:`sslvit.data.digits.build_once`), like digits.
"""

from __future__ import annotations

import gzip
import json
import os
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from sslvit.data.digits import announce, build_once, png_items, upscale
from sslvit.data.shards import write_shards
from sslvit.errors import InputError
from sslvit.files import MANIFEST_FILE
from sslvit.progress import progress as progress_bar

FASHION_MNIST_VERSION = 1
ENV_VAR = "SSLVIT_FASHION_MNIST"
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
INSTALL_HINT = (f"install them with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu; they land in "
                f"{DEBIAN_DIR}), or set {ENV_VAR} to a folder holding the four files")
FILES = {"train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
         "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte"}
CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
               "Ankle boot"]
IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension
IMAGE_SHAPE = (28, 28)
VAL_SIZE = 5000
VAL_SEED = 0
SHARD_SIZE = 1000
SPLITS = ("train", "val", "test")
_MARKER = "fashion_mnist.json"
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class IdxError(InputError):
    """An idx file that is not what it should be (the message names the file)."""


class FashionMNISTNotFound(FileNotFoundError):
    """The four Fashion-MNIST files are not where they were looked for (the message says how to get them)."""


def read_idx(path: str | Path, magic: int | None = None) -> np.ndarray:
    """Parse an idx file (gzip or plain, told apart by content) into a native-endian numpy array.

    Checks the magic number (``magic`` when given, else a valid idx header), and that the data
    holds exactly the elements the big-endian dimensions promise.
    """
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exn:
            raise IdxError(f"{path}: broken or truncated gzip data ({exn})") from None
    if len(raw) < 4:
        raise IdxError(f"{path}: {len(raw)} bytes, too short for an idx header")
    found = int.from_bytes(raw[:4], "big")
    if magic is not None and found != magic:
        raise IdxError(f"{path}: magic number {found} (0x{found:08x}), expected {magic} (0x{magic:08x})")
    code, ndim = raw[2], raw[3]
    if raw[:2] != b"\0\0" or code not in _IDX_DTYPES or ndim == 0:
        raise IdxError(f"{path}: not an idx file (magic number 0x{found:08x})")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise IdxError(f"{path}: truncated header ({len(raw)} bytes, {ndim} dimensions need {header})")
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[code])
    need = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    have = len(raw) - header
    if have != need:
        what = "truncated" if have < need else "trailing data"
        raise IdxError(f"{path}: {what}: dimensions {'x'.join(map(str, dims))} need {need} data bytes, "
                       f"the file has {have}")
    return np.frombuffer(raw, dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def read_images(path: str | Path) -> np.ndarray:
    """An idx3 image file -> uint8 (N, 28, 28)."""
    images = read_idx(path, IMAGES_MAGIC)
    if images.shape[1:] != IMAGE_SHAPE:
        raise IdxError(f"{path}: images of {images.shape[1]}x{images.shape[2]} pixels, expected 28x28")
    return images


def read_labels(path: str | Path, num_classes: int = len(CLASS_NAMES)) -> np.ndarray:
    """An idx1 label file -> int64 (N,), every value in 0..num_classes-1."""
    labels = read_idx(path, LABELS_MAGIC).astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        bad = labels[(labels < 0) | (labels >= num_classes)]
        raise IdxError(f"{path}: {bad.size} labels outside 0..{num_classes - 1} (e.g. {int(bad[0])})")
    return labels


def read_pair(images_path: str | Path, labels_path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 28, 28), labels int64 (N,)) from an image file and its label file."""
    images, labels = read_images(images_path), read_labels(labels_path)
    if len(images) != len(labels):
        raise IdxError(f"count mismatch: {images_path} has {len(images)} images, {labels_path} has "
                       f"{len(labels)} labels")
    return images, labels


def find_fashion_mnist(source: str | Path | None = None) -> dict[str, Path]:
    """The four files: ``source``, else ``$SSLVIT_FASHION_MNIST``, else the Debian package's folder.

    Returns {"train_images", "train_labels", "test_images", "test_labels"} -> path; raises
    :class:`FashionMNISTNotFound` saying where it looked and how to install the files.
    """
    if source is not None:
        folder, origin = Path(source), "the source argument"
    elif os.environ.get(ENV_VAR):
        folder, origin = Path(os.environ[ENV_VAR]), f"${ENV_VAR}"
    else:
        folder, origin = DEBIAN_DIR, "the default (Debian package dataset-fashion-mnist)"
    found, missing = {}, []
    for key, name in FILES.items():
        path = next((p for p in (folder / f"{name}.gz", folder / name) if p.is_file()), None)
        if path is None:
            missing.append(f"{name}[.gz]")
        else:
            found[key] = path
    if missing:
        where = "does not exist" if not folder.is_dir() else f"lacks {', '.join(missing)}"
        raise FashionMNISTNotFound(
            f"Fashion-MNIST not found: {folder} (from {origin}) {where}. The corpus needs "
            f"{', '.join(f'{n}.gz' for n in FILES.values())} (gzip or plain); {INSTALL_HINT} "
            f"(or pass it as source= / sslvit shards fashion-mnist --source DIR).")
    return found


def load_fashion_mnist(source: str | Path | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The official splits at 28x28: {"train": (60000 images, labels), "test": (10000, ...)}."""
    return _read_official(find_fashion_mnist(source))


def _read_official(files: dict[str, Path]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {"train": read_pair(files["train_images"], files["train_labels"]),
            "test": read_pair(files["test_images"], files["test_labels"])}


def split_train_val(labels: np.ndarray, val_size: int = VAL_SIZE, seed: int = VAL_SEED
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train, val) indices into the official training split: val stratified by class."""
    from sklearn.model_selection import train_test_split

    classes = len(np.unique(labels))
    if not classes <= val_size <= len(labels) - classes:
        raise ValueError(f"val_size {val_size} must lie in {classes}..{len(labels) - classes} for a stratified "
                         f"split of {len(labels)} images in {classes} classes")
    train_idx, val_idx = train_test_split(np.arange(len(labels)), test_size=val_size, stratify=labels,
                                          random_state=seed)
    return np.sort(train_idx), np.sort(val_idx)


def fashion_mnist_arrays(source: str | Path | None = None, image_size: int = 32, val_size: int = VAL_SIZE,
                         progress: bool = False) -> dict[str, dict[str, Any]]:
    """split -> {"images": uint8 (N, S, S), "labels": int64 (N,), "index": int64 (N,) position in
    the official file, "official": "train" | "t10k", "files": {"images": path, "labels": path}}."""
    if image_size < 1:
        raise ValueError(f"image_size must be positive, not {image_size}")
    files = find_fashion_mnist(source)
    official = _read_official(files)
    train_idx, val_idx = split_train_val(official["train"][1], val_size)
    plan = {"train": ("train", train_idx), "val": ("train", val_idx),
            "test": ("test", np.arange(len(official["test"][1])))}
    out = {}
    for split, (part, idx) in plan.items():
        pixels, labels = official[part]
        images = np.empty((len(idx), image_size, image_size), np.uint8)
        for j, i in enumerate(progress_bar(idx, desc=f"fashion_mnist-{split} resize", unit="img", enabled=progress)):
            images[j] = upscale(pixels[i], image_size)
        out[split] = {"images": images, "labels": labels[idx], "index": idx.astype(np.int64),
                      "official": "t10k" if part == "test" else "train",
                      "files": {"images": str(files[f"{part}_images"]), "labels": str(files[f"{part}_labels"])}}
    return out


def gray_mean_std(images: np.ndarray) -> tuple[float, float]:
    """Exact mean/std of uint8 pixels scaled to [0, 1] (from a 256-bin histogram: no float copy)."""
    hist = np.bincount(images.reshape(-1), minlength=256).astype(np.float64)
    values = np.arange(256) / 255.0
    mean = float((hist * values).sum() / hist.sum())
    var = float((hist * (values - mean) ** 2).sum() / hist.sum())
    return round(mean, 6), round(var ** 0.5, 6)


def build_fashion_mnist(out_root: str | Path, image_size: int = 32, source: str | Path | None = None,
                        progress: bool = False, val_size: int = VAL_SIZE,
                        shard_size: int = SHARD_SIZE) -> dict[str, Path]:
    """Write ``out_root/{train,val,test}/`` shards + manifests (not atomic; see ensure_fashion_mnist_shards)."""
    out_root = Path(out_root)
    arrays = fashion_mnist_arrays(source, image_size, val_size, progress)
    mean, std = gray_mean_std(arrays["train"]["images"])
    dirs = {}
    for split, a in arrays.items():
        extra = {"corpus": "fashion_mnist", "split": split, "image_size": image_size, "mean": [mean] * 3,
                 "std": [std] * 3, "stats_from": "train", "source": a["files"], "source_split": a["official"],
                 "val_size": val_size, "val_seed": VAL_SEED}
        items = png_items(a["images"], a["labels"], f"fashion_mnist-{a['official']}", width=5, ids=a["index"])
        items = progress_bar(items, total=len(a["labels"]), desc=f"fashion_mnist-{split} shards", unit="img",
                             enabled=progress)
        write_shards(items, out_root / split, prefix=f"fashion_mnist-{split}", max_count=shard_size,
                     class_names=CLASS_NAMES, verify=False, compute_stats=False, total=len(a["labels"]),
                     progress=False, extra=extra)
        dirs[split] = out_root / split
    marker = {"version": FASHION_MNIST_VERSION, "image_size": image_size, "val_size": val_size,
              "shard_size": shard_size,
              "source": {k: str(v) for k, v in find_fashion_mnist(source).items()}}
    (out_root / _MARKER).write_text(json.dumps(marker))
    return dirs


def _is_complete(root: Path, image_size: int, val_size: int, shard_size: int) -> bool:
    try:
        marker = json.loads((root / _MARKER).read_text())
    except (OSError, ValueError):
        return False
    return (marker.get("version") == FASHION_MNIST_VERSION and marker.get("image_size") == image_size
            and marker.get("val_size") == val_size and marker.get("shard_size") == shard_size
            and all((root / s / MANIFEST_FILE).exists() for s in SPLITS))


def ensure_fashion_mnist_shards(root: str | Path = "data/shards/fashion_mnist", image_size: int = 32,
                                source: str | Path | None = None, progress: bool = True, *,
                                val_size: int = VAL_SIZE, shard_size: int = SHARD_SIZE) -> dict[str, Path]:
    """Build the Fashion-MNIST shards under ``root`` once and reuse them: {"train", "val", "test"} ->
    directory holding ``manifest.json``. A build at ``root`` for another ``image_size``, ``val_size``
    or ``shard_size`` is replaced; a complete one is reused without looking for the source files.
    Raises :class:`FashionMNISTNotFound` (before creating anything) when a build is needed and the
    files are missing. A build prints one line and shows its progress unless ``progress`` is False."""
    root = Path(root)

    def complete(r: Path) -> bool:
        return _is_complete(r, image_size, val_size, shard_size)

    if not complete(root):
        find_fashion_mnist(source)  # fail early, with the install hint, before any lock or temp dir
    def build(tmp: Path) -> None:
        if progress:
            announce(f"building the Fashion-MNIST shards ({image_size} px) in {root}, once; later runs reuse them")
        build_fashion_mnist(tmp, image_size, source, progress, val_size, shard_size)

    build_once(root, complete, build)
    return {s: root / s for s in SPLITS}
