"""Shard writer: exact round trip, safe keys, limits, checksums, atomic completion."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from collections import Counter
from pathlib import Path

import pytest
from data_helpers import REPO, make_items

from sslvit.data.shards import ShardWriter, load_manifest, write_shards
from sslvit.data.tario import iter_shard
from sslvit.files import sha256_file


def read_all(directory: Path) -> dict[str, dict[str, bytes]]:
    manifest = load_manifest(directory)
    samples = {}
    for entry in manifest["shards"]:
        for raw in iter_shard(str(directory / entry["name"]), Counter()):
            samples[raw.key] = raw.members
    return samples


def test_round_trip_bytes_and_labels_exact(clean_shards):
    samples = read_all(clean_shards.dir)
    assert len(samples) == len(clean_shards.items) == 37
    by_index = {int(key.split("_")[0]): members for key, members in samples.items()}
    for i, item in enumerate(clean_shards.items):
        members = by_index[i]
        ext = "jpg" if i % 2 == 0 else "png"
        assert members[ext] == item.data  # original bytes, untouched
        assert int(members["cls"]) == item.label


def test_manifest_counts_checksums_and_keys(clean_shards):
    manifest = clean_shards.manifest
    assert [s["count"] for s in manifest["shards"]] == [8, 8, 8, 8, 5]
    assert manifest["total"] == 37 and manifest["class_names"] == ["a", "b", "c"]
    assert manifest["num_classes"] == 3 and manifest["num_skipped"] == 0
    assert len(manifest["mean"]) == 3 and all(0.3 < m < 0.7 for m in manifest["mean"])
    assert all(0.2 < s < 0.4 for s in manifest["std"])  # uniform noise: std ~ 0.29
    names = sorted(p.name for p in clean_shards.dir.iterdir())
    assert names == ["clean-000000.tar", "clean-000001.tar", "clean-000002.tar", "clean-000003.tar",
                     "clean-000004.tar", "manifest.json"]
    for entry in manifest["shards"]:
        digest, size = sha256_file(clean_shards.dir / entry["name"]), (clean_shards.dir / entry["name"]).stat().st_size
        assert (digest, size) == (entry["sha256"], entry["bytes"])
        with tarfile.open(clean_shards.dir / entry["name"]) as tar:
            for name in tar.getnames():
                key, ext = name.split(".", 1)  # exactly one dot: the extension
                assert ext in ("jpg", "png", "cls") and "." not in key


def test_webdataset_reads_our_keys(clean_shards):
    import webdataset as wds

    url = str(clean_shards.dir / "clean-000000.tar")
    samples = list(wds.WebDataset(url, shardshuffle=False, nodesplitter=None))
    assert len(samples) == 8
    assert all(("jpg" in s) != ("png" in s) and "cls" in s for s in samples)


def test_byte_limit_rolls_over(tmp_path):
    items = make_items(10)
    manifest = write_shards(items, tmp_path, prefix="b", max_bytes=6 * 1024, progress=False,
                            compute_stats=False)
    assert manifest["total"] == 10 and len(manifest["shards"]) > 2
    for entry in manifest["shards"]:
        assert entry["bytes"] <= 6 * 1024 or entry["count"] == 1


def test_exception_mid_write_leaves_only_complete_shards(tmp_path):
    def items():
        for i, item in enumerate(make_items(30)):
            if i == 13:
                raise KeyboardInterrupt
            yield item

    with pytest.raises(KeyboardInterrupt):
        write_shards(items(), tmp_path, prefix="p", max_count=5, progress=False)
    assert sorted(os.listdir(tmp_path)) == ["p-000000.tar", "p-000001.tar"]  # no temp, no manifest
    for name in ("p-000000.tar", "p-000001.tar"):
        with tarfile.open(tmp_path / name) as tar:
            assert len(tar.getnames()) == 10


def test_killed_writer_leaves_no_final_named_partial_shard(tmp_path):
    script = f"""
import os, signal, sys
sys.path.insert(0, {str(REPO)!r}); sys.path.insert(0, {str(Path(__file__).parent)!r})
from data_helpers import make_items
from sslvit.data.shards import write_shards
def items():
    for i, item in enumerate(make_items(30)):
        if i == 13:
            os.kill(os.getpid(), signal.SIGKILL)
        yield item
write_shards(items(), {str(tmp_path)!r}, prefix="k", max_count=5, progress=False)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    visible = sorted(p for p in os.listdir(tmp_path) if not p.startswith("."))
    assert visible == ["k-000000.tar", "k-000001.tar"]
    hidden = [p for p in os.listdir(tmp_path) if p.startswith(".")]
    assert len(hidden) == 1 and hidden[0].startswith(".k-000002.tar.tmp-")
    for name in visible:
        with tarfile.open(tmp_path / name) as tar:
            assert len(tar.getnames()) == 10


def test_writer_rejects_unsafe_keys(tmp_path):
    with ShardWriter(tmp_path, "x") as writer, pytest.raises(ValueError):
        writer.write("a.b", {"jpg": b"x"})


def test_manifest_written_atomically_and_loadable(clean_shards):
    manifest = json.loads((clean_shards.dir / "manifest.json").read_text())
    loaded = load_manifest(clean_shards.dir / "manifest.json")
    assert loaded["base"] == str(clean_shards.dir)
    assert {k: v for k, v in loaded.items() if k != "base"} == manifest
