"""Fashion-MNIST: the idx reader, where the files are found, the fixed split, the shards, the CLI.

Everything but the last test runs on a tiny corpus written here in the same idx format (60 train
images, 6 per class, gzip; 20 test images, 2 per class, plain files). The last test reads the
real corpus when the Debian package ``dataset-fashion-mnist`` is installed and is skipped otherwise.
"""

from __future__ import annotations

import gzip
import json
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from data_helpers import REPO

from sslvit.data import build_loader, load_manifest
from sslvit.data import fashion_mnist as fm
from sslvit.data.digits import upscale

sys.path.insert(0, str(REPO / "data"))
import make_shards  # noqa: E402

N_TRAIN, N_TEST, VAL = 60, 20, 10


def idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    """An idx file's bytes: magic (default: unsigned bytes, array.ndim dimensions), big-endian dims, data."""
    code = {np.dtype(np.uint8): 0x08, np.dtype(np.int32): 0x0C}[array.dtype]
    magic = (code << 8 | array.ndim) if magic is None else magic
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_idx(path: Path, array: np.ndarray, magic: int | None = None, gz: bool = False) -> Path:
    data = idx_bytes(array, magic)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def known_images(count: int, offset: int) -> np.ndarray:
    """uint8 (count, 28, 28): image i is a ramp shifted by 7 * (i + offset), so every image differs."""
    ramp = np.arange(28 * 28, dtype=np.int64).reshape(28, 28)
    return np.stack([(ramp + 7 * (i + offset)) % 256 for i in range(count)]).astype(np.uint8)


@pytest.fixture
def corpus(tmp_path) -> SimpleNamespace:
    """A tiny Fashion-MNIST folder: train files gzip-compressed, test files plain (no .gz suffix)."""
    root = tmp_path / "fmnist-src"
    root.mkdir()
    train_x, test_x = known_images(N_TRAIN, 0), known_images(N_TEST, 1000)
    train_y = np.array([(3 * i) % 10 for i in range(N_TRAIN)], np.uint8)  # 6 per class, mixed order
    test_y = np.array([i % 10 for i in range(N_TEST)], np.uint8)  # 2 per class
    files = {
        "train_images": write_idx(root / "train-images-idx3-ubyte.gz", train_x, gz=True),
        "train_labels": write_idx(root / "train-labels-idx1-ubyte.gz", train_y, gz=True),
        "test_images": write_idx(root / "t10k-images-idx3-ubyte", test_x),
        "test_labels": write_idx(root / "t10k-labels-idx1-ubyte", test_y),
    }
    return SimpleNamespace(root=root, files=files, train_x=train_x, train_y=train_y, test_x=test_x, test_y=test_y)


@pytest.fixture
def no_default_source(tmp_path, monkeypatch) -> Path:
    """Neither $SSLVIT_FASHION_MNIST nor the Debian folder: both point nowhere."""
    monkeypatch.delenv(fm.ENV_VAR, raising=False)
    missing = tmp_path / "no-debian-package"
    monkeypatch.setattr(fm, "DEBIAN_DIR", missing)
    return missing


# --- the idx reader ----------------------------------------------------------------------------


def test_idx_files_parse_to_the_values_written_gzip_or_plain(corpus, tmp_path):
    images = fm.read_images(corpus.files["train_images"])
    labels = fm.read_labels(corpus.files["train_labels"])
    assert images.dtype == np.uint8 and images.shape == (N_TRAIN, 28, 28)
    assert labels.dtype == np.int64 and labels.shape == (N_TRAIN,)
    np.testing.assert_array_equal(images, corpus.train_x)
    np.testing.assert_array_equal(labels, corpus.train_y)
    assert images[0, 0, 0] == 0 and images[0, 27, 27] == (28 * 28 - 1) % 256 and images[1, 0, 0] == 7
    plain = fm.read_images(corpus.files["test_images"])
    np.testing.assert_array_equal(plain, corpus.test_x)
    # gzip is recognised by content, not by the file name
    disguised = tmp_path / "gz-without-suffix"
    disguised.write_bytes(corpus.files["train_images"].read_bytes())
    np.testing.assert_array_equal(fm.read_idx(disguised, fm.IMAGES_MAGIC), corpus.train_x)
    # other idx element types come back native-endian with their values
    ints = np.array([[1, -2, 70000], [2**31 - 1, 0, -(2**31)]], np.int32)
    parsed = fm.read_idx(write_idx(tmp_path / "ints.idx", ints))
    assert parsed.dtype == np.int32 and parsed.dtype.isnative and parsed.shape == (2, 3)
    np.testing.assert_array_equal(parsed, ints)


def test_bad_magic_names_the_file(corpus, tmp_path):
    with pytest.raises(fm.IdxError, match=r"train-labels-idx1-ubyte\.gz: magic number 2049 .*expected 2051"):
        fm.read_images(corpus.files["train_labels"])
    with pytest.raises(fm.IdxError, match=r"t10k-images-idx3-ubyte: magic number 2051 .*expected 2049"):
        fm.read_labels(corpus.files["test_images"])
    junk = tmp_path / "junk.idx"
    junk.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    with pytest.raises(fm.IdxError, match=r"junk\.idx: not an idx file"):
        fm.read_idx(junk)
    tiny = tmp_path / "tiny.idx"
    tiny.write_bytes(b"\0\0")
    with pytest.raises(fm.IdxError, match=r"tiny\.idx: 2 bytes, too short"):
        fm.read_idx(tiny)


def test_truncated_or_overlong_files_name_the_file(corpus, tmp_path):
    full = idx_bytes(corpus.train_x)
    cut = tmp_path / "cut-images"
    cut.write_bytes(full[:-100])
    with pytest.raises(fm.IdxError, match=rf"cut-images: truncated: dimensions 60x28x28 need {60 * 784} data "
                                          rf"bytes, the file has {60 * 784 - 100}"):
        fm.read_images(cut)
    header_only = tmp_path / "header-cut"
    header_only.write_bytes(full[:10])
    with pytest.raises(fm.IdxError, match=r"header-cut: truncated header"):
        fm.read_images(header_only)
    long = tmp_path / "long-images"
    long.write_bytes(full + b"\0")
    with pytest.raises(fm.IdxError, match=r"long-images: trailing data"):
        fm.read_images(long)
    broken_gz = tmp_path / "broken.gz"
    broken_gz.write_bytes(corpus.files["train_images"].read_bytes()[:-50])
    with pytest.raises(fm.IdxError, match=r"broken\.gz: broken or truncated gzip data"):
        fm.read_images(broken_gz)


def test_count_dims_and_label_range_mismatches_name_the_files(corpus, tmp_path):
    short_labels = write_idx(tmp_path / "labels-59", corpus.train_y[:59])
    with pytest.raises(fm.IdxError, match=r"count mismatch: .*train-images-idx3-ubyte\.gz has 60 images, "
                                          r".*labels-59 has 59 labels"):
        fm.read_pair(corpus.files["train_images"], short_labels)
    odd = write_idx(tmp_path / "odd-images", np.zeros((3, 27, 28), np.uint8))
    with pytest.raises(fm.IdxError, match=r"odd-images: images of 27x28 pixels, expected 28x28"):
        fm.read_images(odd)
    bad = write_idx(tmp_path / "bad-labels", np.array([0, 9, 10, 3], np.uint8))
    with pytest.raises(fm.IdxError, match=r"bad-labels: 1 labels outside 0\.\.9 \(e\.g\. 10\)"):
        fm.read_labels(bad)


# --- where the files are found ------------------------------------------------------------------


def test_source_argument_then_env_then_debian_folder(corpus, tmp_path, monkeypatch, no_default_source):
    other = tmp_path / "other"
    other.mkdir()
    for path in corpus.files.values():
        (other / path.name).write_bytes(path.read_bytes())
    assert fm.find_fashion_mnist(corpus.root) == corpus.files
    monkeypatch.setenv(fm.ENV_VAR, str(other))
    assert fm.find_fashion_mnist()["test_labels"] == other / "t10k-labels-idx1-ubyte"
    assert fm.find_fashion_mnist(corpus.root)["test_labels"] == corpus.files["test_labels"]  # argument wins
    monkeypatch.delenv(fm.ENV_VAR)
    monkeypatch.setattr(fm, "DEBIAN_DIR", other)
    assert fm.find_fashion_mnist()["train_images"] == other / "train-images-idx3-ubyte.gz"


def test_missing_files_error_says_how_to_install_them(corpus, tmp_path, monkeypatch, no_default_source):
    with pytest.raises(fm.FashionMNISTNotFound) as info:
        fm.find_fashion_mnist()
    text = str(info.value)
    assert f"{no_default_source} (from the default (Debian package dataset-fashion-mnist)) does not exist" in text
    assert "apt-get install dataset-fashion-mnist" in text
    assert "set SSLVIT_FASHION_MNIST to a folder holding the four files" in text
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
                 "t10k-labels-idx1-ubyte.gz"):
        assert name in text
    assert isinstance(info.value, FileNotFoundError)
    corpus.files["test_labels"].unlink()
    monkeypatch.setenv(fm.ENV_VAR, str(corpus.root))
    with pytest.raises(fm.FashionMNISTNotFound, match=rf"{corpus.root} \(from \$SSLVIT_FASHION_MNIST\) lacks "
                                                      r"t10k-labels-idx1-ubyte\[\.gz\]\. "):
        fm.find_fashion_mnist()
    # a build that cannot start leaves nothing behind, not even a lock or the parent folder
    out = tmp_path / "shards" / "fashion_mnist"
    with pytest.raises(fm.FashionMNISTNotFound, match="apt-get install dataset-fashion-mnist"):
        fm.ensure_fashion_mnist_shards(out, val_size=VAL)
    assert not out.parent.exists()


# --- the split ----------------------------------------------------------------------------------


def test_fixed_stratified_validation_split(corpus):
    labels = corpus.train_y.astype(np.int64)
    train_idx, val_idx = fm.split_train_val(labels, val_size=VAL)
    assert len(train_idx) == N_TRAIN - VAL and len(val_idx) == VAL
    assert list(train_idx) == sorted(train_idx) and list(val_idx) == sorted(val_idx)
    assert set(train_idx).isdisjoint(val_idx) and set(train_idx) | set(val_idx) == set(range(N_TRAIN))
    assert Counter(labels[val_idx].tolist()) == dict.fromkeys(range(10), 1)  # stratified: one per class
    assert Counter(labels[train_idx].tolist()) == dict.fromkeys(range(10), 5)
    again = fm.split_train_val(labels, val_size=VAL)
    np.testing.assert_array_equal(again[1], val_idx)  # fixed (seed 0)
    twenty = fm.split_train_val(labels, val_size=20)[1]
    assert Counter(labels[twenty].tolist()) == dict.fromkeys(range(10), 2)
    for bad in (0, 9, 51, N_TRAIN):
        with pytest.raises(ValueError, match=rf"val_size {bad} must lie in 10\.\.50"):
            fm.split_train_val(labels, val_size=bad)


def test_arrays_keep_official_order_and_pixels(corpus):
    arrays = fm.fashion_mnist_arrays(corpus.root, image_size=28, val_size=VAL)
    train_idx, val_idx = fm.split_train_val(corpus.train_y.astype(np.int64), VAL)
    for split, idx, x, y in (("train", train_idx, corpus.train_x, corpus.train_y),
                             ("val", val_idx, corpus.train_x, corpus.train_y),
                             ("test", np.arange(N_TEST), corpus.test_x, corpus.test_y)):
        a = arrays[split]
        np.testing.assert_array_equal(a["index"], idx)
        np.testing.assert_array_equal(a["images"], x[idx])  # 28 px: stored as read
        np.testing.assert_array_equal(a["labels"], y[idx])
    assert arrays["test"]["official"] == "t10k" and arrays["val"]["official"] == "train"
    big = fm.fashion_mnist_arrays(corpus.root, image_size=32, val_size=VAL)["test"]["images"]
    assert big.shape == (N_TEST, 32, 32) and big.dtype == np.uint8
    np.testing.assert_array_equal(big[3], upscale(corpus.test_x[3], 32))


# --- the shards ---------------------------------------------------------------------------------


def test_shards_build_once_with_manifests_and_read_back(corpus, tmp_path):
    root = tmp_path / "shards" / "fashion_mnist"
    with ThreadPoolExecutor(2) as pool:  # two callers race on an empty root (the lock serialises them)
        results = list(pool.map(lambda _: fm.ensure_fashion_mnist_shards(root, 32, corpus.root, val_size=VAL,
                                                                          shard_size=16), range(2)))
    assert results[0] == results[1] == {"train": root / "train", "val": root / "val", "test": root / "test"}
    assert sorted(p.name for p in root.parent.iterdir()) == [".fashion_mnist.lock", "fashion_mnist"]
    manifests = {s: load_manifest(d) for s, d in results[0].items()}
    assert {s: m["total"] for s, m in manifests.items()} == {"train": 50, "val": 10, "test": 20}
    assert [s["count"] for s in manifests["train"]["shards"]] == [16, 16, 16, 2]
    upscaled_train = np.stack([upscale(corpus.train_x[i], 32) for i in fm.split_train_val(
        corpus.train_y.astype(np.int64), VAL)[0]]) / 255.0
    for split, m in manifests.items():
        assert m["corpus"] == "fashion_mnist" and m["split"] == split and m["image_size"] == 32
        assert m["class_names"] == ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                                    "Sneaker", "Bag", "Ankle boot"] and m["num_classes"] == 10
        assert m["labeled"] and m["num_skipped"] == 0 and m["stats_from"] == "train" and m["val_size"] == VAL
        assert m["mean"] == [round(float(upscaled_train.mean()), 6)] * 3  # the train split's, in every split
        assert m["std"] == pytest.approx([float(upscaled_train.std())] * 3, abs=2e-6)
        official = "test" if split == "test" else "train"
        assert m["source"] == {"images": str(corpus.files[f"{official}_images"]),
                               "labels": str(corpus.files[f"{official}_labels"])}
    mtime = (root / "train" / "manifest.json").stat().st_mtime_ns
    assert fm.ensure_fashion_mnist_shards(root, 32, corpus.root, val_size=VAL, shard_size=16)["val"] == root / "val"
    assert (root / "train" / "manifest.json").stat().st_mtime_ns == mtime  # reused, not rebuilt

    for split, x, y in (("test", corpus.test_x, corpus.test_y), ("train", corpus.train_x, corpus.train_y)):
        loader = build_loader(root / split, batch_size=8, transform=None, num_workers=0, need_labels=True,
                              shuffle=False, return_meta=True)
        assert loader.mean == manifests[split]["mean"]
        seen = []
        for batch in loader:
            for image, label, valid, key in zip(batch["image"], batch["label"], batch["valid"], batch["key"],
                                                strict=True):
                if valid:
                    official = int(key.rsplit("-", 1)[1])  # the key names the position in the official file
                    assert int(label) == y[official]
                    assert image.shape == (3, 32, 32)
                    expected = upscale(x[official], 32)
                    assert all((image[c].numpy() == expected).all() for c in range(3))  # lossless PNG
                    seen.append(official)
        assert len(seen) == manifests[split]["total"] and len(set(seen)) == len(seen)
        assert Counter(int(y[i]) for i in seen) == dict.fromkeys(range(10), 2 if split == "test" else 5)


def test_another_image_size_replaces_the_build(corpus, tmp_path):
    root = tmp_path / "fm"
    fm.ensure_fashion_mnist_shards(root, 16, corpus.root, val_size=VAL)
    assert load_manifest(root / "val")["image_size"] == 16
    fm.ensure_fashion_mnist_shards(root, 24, corpus.root, val_size=VAL)
    assert load_manifest(root / "val")["image_size"] == 24
    assert json.loads((root / "fashion_mnist.json").read_text())["image_size"] == 24
    assert sorted(p.name for p in tmp_path.iterdir()) == [".fm.lock", "fm", "fmnist-src"]  # no temp/old dirs


def test_cli_builds_and_prints_the_summary(corpus, tmp_path, capsys, no_default_source):
    out = tmp_path / "out" / "fashion_mnist"
    summary = make_shards.main(["fashion-mnist", "--out", str(out), "--source", str(corpus.root),
                                "--val-size", str(VAL), "--image-size", "28", "--quiet"])
    expected = {"train": {"dir": str(out / "train"), "total": 50}, "val": {"dir": str(out / "val"), "total": 10},
                "test": {"dir": str(out / "test"), "total": 20}}
    assert summary == expected
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == expected
    assert load_manifest(out / "test")["image_size"] == 28
    with pytest.raises(SystemExit, match="apt-get install dataset-fashion-mnist"):
        make_shards.main(["fashion-mnist", "--out", str(tmp_path / "never"), "--quiet"])


# --- the real corpus ----------------------------------------------------------------------------

_REAL = [fm.DEBIAN_DIR / f"{name}.gz" for name in fm.FILES.values()]


@pytest.mark.skipif(not all(p.is_file() for p in _REAL),
                    reason=f"Fashion-MNIST not installed in {fm.DEBIAN_DIR} (apt-get install dataset-fashion-mnist)")
def test_real_corpus_sizes(monkeypatch):
    monkeypatch.delenv(fm.ENV_VAR, raising=False)
    official = fm.load_fashion_mnist()
    (train_x, train_y), (test_x, test_y) = official["train"], official["test"]
    assert train_x.shape == (60_000, 28, 28) and test_x.shape == (10_000, 28, 28)
    assert Counter(train_y.tolist()) == dict.fromkeys(range(10), 6_000)
    assert Counter(test_y.tolist()) == dict.fromkeys(range(10), 1_000)
    train_idx, val_idx = fm.split_train_val(train_y)
    assert len(train_idx) == 55_000 and len(val_idx) == 5_000
    assert Counter(train_y[val_idx].tolist()) == dict.fromkeys(range(10), 500)


# --- built-in corpus specs ---------------------------------------------------------------------


def test_builtin_specs_build_once_where_sslvit_shards_would(corpus, tmp_path, monkeypatch, no_default_source):
    """``fashion-mnist:SPLIT`` builds under data/shards/fashion_mnist of the working directory and
    stands for that split's folder in every resolution path (loaders, evaluators, fine-tuning)."""
    import functools

    from sslvit.data.builtin import builtin_name
    from sslvit.data.hf import resolve_spec
    from sslvit.data.plan import resolve

    monkeypatch.chdir(tmp_path)
    with pytest.raises(fm.FashionMNISTNotFound, match="apt-get install dataset-fashion-mnist"):
        resolve("fashion-mnist:train")
    assert not (tmp_path / "data").exists()  # nothing half-built
    monkeypatch.setenv(fm.ENV_VAR, str(corpus.root))
    monkeypatch.setattr("sslvit.data.builtin.ensure_fashion_mnist_shards",
                        functools.partial(fm.ensure_fashion_mnist_shards, val_size=VAL, shard_size=16))
    shards = resolve("fashion_mnist:test")
    assert sum(shards.counts) == N_TEST and all("data/shards/fashion_mnist/test/" in u for u in shards.urls)
    assert resolve_spec("fashion-mnist:val", tmp_path / "hf") == str(Path("data/shards/fashion_mnist/val"))
    assert builtin_name("Fashion-MNIST:train") == ("fashion-mnist", "train")
    assert builtin_name("hf:fashion_mnist") is None and builtin_name("data/shards/x") is None
    with pytest.raises(ValueError, match="the built-in digits corpus has the splits train, val"):
        builtin_name("digits:test")
