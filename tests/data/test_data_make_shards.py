"""make_shards CLI: image folders, unreadable files, interruption, HF sources, the digits corpus."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
from data_helpers import REPO

from sslvit.data import build_loader, eval_transform, load_manifest
from sslvit.data.tario import iter_shard

sys.path.insert(0, str(REPO / "data"))
import make_shards  # noqa: E402


@pytest.fixture
def folder(tmp_path, images):
    root = tmp_path / "folder"
    for c, name in enumerate(["cat", "dog", "eel"]):
        (root / name / "sub").mkdir(parents=True)
        for i in range(4):
            (root / name / f"{name}.{i}.jpg").write_bytes(images.jpeg(10 * c + i))
        (root / name / "sub" / "deep.png").write_bytes(images.png(99 + c))
    (root / "dog" / "notes.jpg").write_text("not an image")
    (root / "dog" / "empty.jpg").write_bytes(b"")
    (root / "eel" / "broken.jpg").write_bytes(images.jpeg(5)[:300])
    (root / "eel" / ".hidden.jpg").write_bytes(images.jpeg(6))
    (root / "README.txt").write_text("loose file")
    return root


def test_folder_with_classes(folder, tmp_path):
    out = tmp_path / "out"
    summary = make_shards.main([str(folder), "--out", str(out), "--max-count", "4", "--quiet", "--json"])
    manifest = load_manifest(out)
    assert summary["total"] == manifest["total"] == 15 and manifest["class_names"] == ["cat", "dog", "eel"]
    assert [s["count"] for s in manifest["shards"]] == [4, 4, 4, 3]
    assert manifest["shards"][0]["name"] == "out-000000.tar"
    skipped = {s["source"]: s["reason"] for s in manifest["skipped"]}
    assert skipped == {"README.txt": "outside_class_folder", "dog/notes.jpg": "undecodable_image",
                       "dog/empty.jpg": "empty_image", "eel/broken.jpg": "undecodable_image"}
    assert manifest["num_skipped"] == 4 and len(manifest["mean"]) == 3
    labels: Counter = Counter()
    for entry in manifest["shards"]:
        for raw in iter_shard(f"{out}/{entry['name']}", Counter()):
            source = json.loads(raw.members["json"])["source"]
            label = int(raw.members["cls"])
            assert source.split("/")[0] == manifest["class_names"][label]
            labels[label] += 1
    assert labels == {0: 5, 1: 5, 2: 5}


def test_flat_folder_is_unlabeled_and_reencode_limits_size(tmp_path, images):
    root = tmp_path / "flat"
    root.mkdir()
    for i in range(3):
        (root / f"{i}.png").write_bytes(images.png(i, (80, 40)))
    out = tmp_path / "flatout"
    make_shards.main([str(root), "--out", str(out), "--max-side", "32", "--format", "jpg", "--quiet"])
    manifest = load_manifest(out)
    assert manifest["class_names"] is None and manifest["labeled"] is False and manifest["total"] == 3
    with tarfile.open(out / manifest["shards"][0]["name"]) as tar:
        assert all(n.endswith(".jpg") for n in tar.getnames())
    batch = next(iter(build_loader(out, batch_size=3, transform=None, num_workers=0)))
    assert batch["image"].shape == (3, 3, 16, 32) and (batch["label"] == -1).all()


def test_interrupted_cli_leaves_no_final_named_partial_shard(folder, tmp_path):
    out = tmp_path / "killed"
    script = f"""
import os, runpy, signal, sys
sys.path.insert(0, {str(REPO)!r})
import sslvit.data.shards as shards
original, calls = shards.prepare_image, [0]
def dying(*args, **kwargs):
    calls[0] += 1
    if calls[0] == 7:
        os.kill(os.getpid(), signal.SIGKILL)
    return original(*args, **kwargs)
shards.prepare_image = dying
sys.argv = ["make_shards.py", {str(folder)!r}, "--out", {str(out)!r}, "--max-count", "2", "--quiet"]
runpy.run_path({str(REPO / "data" / "make_shards.py")!r}, run_name="__main__")
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    visible = sorted(p for p in os.listdir(out) if not p.startswith("."))
    assert visible == ["killed-000000.tar", "killed-000001.tar"]  # 6 images done, no manifest
    for name in visible:
        with tarfile.open(out / name) as tar:
            assert len(tar.getnames()) == 4


def test_hf_parquet_source(tmp_path, images):
    datasets = pytest.importorskip("datasets")
    rows = {"img": [{"bytes": images.png(i), "path": None} for i in range(5)], "y": [0, 1, 1, 0, 1]}
    features = datasets.Features({"img": datasets.Image(), "y": datasets.ClassLabel(names=["no", "yes"])})
    datasets.Dataset.from_dict(rows, features=features).to_parquet(str(tmp_path / "d.parquet"))
    out = tmp_path / "hf"
    make_shards.main([str(tmp_path / "d.parquet"), "--out", str(out), "--image-column", "img",
                      "--label-column", "y", "--quiet"])
    manifest = load_manifest(out)
    assert manifest["class_names"] == ["no", "yes"] and manifest["total"] == 5
    raws = [r for e in manifest["shards"] for r in iter_shard(f"{out}/{e['name']}", Counter())]
    assert [int(r.members["cls"]) for r in raws] == [0, 1, 1, 0, 1]
    assert [r.members["png"] for r in raws] == [images.png(i) for i in range(5)]  # original bytes


def test_digits_corpus_builds_once_concurrently(tmp_path):
    from sslvit.data.digits import ensure_digits_shards

    root = tmp_path / "digits"
    with ThreadPoolExecutor(2) as pool:  # two callers race on an empty root (the lock serialises them)
        results = list(pool.map(lambda _: ensure_digits_shards(root, image_size=16), range(2)))
    assert results[0] == results[1] == {"train": root / "train", "val": root / "val"}
    manifests = {s: load_manifest(d) for s, d in results[0].items()}
    assert manifests["train"]["total"] == 1437 and manifests["val"]["total"] == 360
    assert manifests["train"]["total"] + manifests["val"]["total"] == 1797
    assert manifests["train"]["class_names"] == [str(i) for i in range(10)]
    assert manifests["train"]["mean"][0] == manifests["train"]["mean"][2] and 0 < manifests["train"]["std"][0]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".digits.lock", "digits"]  # no temp dirs left
    mtime = (root / "train" / "manifest.json").stat().st_mtime_ns
    assert ensure_digits_shards(root, image_size=16)["train"] == root / "train"  # reused, not rebuilt
    assert (root / "train" / "manifest.json").stat().st_mtime_ns == mtime
    loader = build_loader(root / "val", batch_size=60, transform=eval_transform(16, crop_pct=1.0),
                          num_workers=0, need_labels=True, shuffle=False)
    batches = list(loader)
    labels = Counter(int(y) for b in batches for y, v in zip(b["label"], b["valid"], strict=True) if v)
    assert sum(labels.values()) == 360 and len(labels) == 10 and min(labels.values()) >= 35
    assert batches[0]["image"].shape == (60, 3, 16, 16) and loader.stats == {}


def test_digits_cli_default_layout(tmp_path):
    out = tmp_path / "shards" / "digits"
    summary = make_shards.main(["digits", "--out", str(out), "--quiet"])
    assert summary == {"train": {"dir": str(out / "train"), "total": 1437},
                       "val": {"dir": str(out / "val"), "total": 360}}
    manifest = load_manifest(out / "train")
    assert manifest["image_size"] == 32 and all(s["name"].endswith(".tar") for s in manifest["shards"])
    with tarfile.open(out / "train" / manifest["shards"][0]["name"]) as tar:
        assert tar.getnames()[0].endswith(".png")
