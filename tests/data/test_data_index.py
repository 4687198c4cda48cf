"""index_shards: counts, checksums, labels (.cls or a json field), dotted keys, remote shards."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from data_helpers import encode, rgb_image, write_wds_shards

from sslvit.data import build_loader, resolve
from sslvit.data.index import index_shards
from sslvit.files import sha256_file


def _json_sample(i: int) -> dict:
    return {"jpg": encode(rgb_image(i), "JPEG"), "json": json.dumps({"meta": {"label": 10 + i % 4}}).encode()}


def test_counts_checksums_and_label_range(tmp_path):
    write_wds_shards(tmp_path, 23, per_shard=10)
    manifest = index_shards(str(tmp_path))
    assert [s["count"] for s in manifest["shards"]] == [10, 10, 3] and manifest["total"] == 23
    for entry in manifest["shards"]:
        assert entry["sha256"] == sha256_file(tmp_path / entry["name"])
        assert entry["bytes"] == (tmp_path / entry["name"]).stat().st_size
    assert manifest["label_range"] == [0, 2] and manifest["num_classes"] == 3 and manifest["class_names"] is None
    assert manifest["dotted_keys"] == {"count": 0, "examples": []} and manifest["extensions"] == {"jpg": 23, "cls": 23}
    shard_set = resolve(tmp_path)  # the loader now reads the counts from the manifest
    assert shard_set.counts == [10, 10, 3] and shard_set.num_classes == 3


def test_labels_from_a_json_field(tmp_path):
    write_wds_shards(tmp_path, 12, per_shard=5, members=_json_sample)
    manifest = index_shards(str(tmp_path), label_key="meta.label")
    assert manifest["label_range"] == [10, 13] and manifest["num_classes"] == 14 and manifest["unlabeled"] == 0
    assert index_shards(str(tmp_path))["labeled"] is False  # no .cls members


def test_text_labels_become_class_names(tmp_path):
    write_wds_shards(tmp_path, 6, per_shard=6, members=lambda i: {
        "jpg": encode(rgb_image(i), "JPEG"), "cls": ["dog", "cat"][i % 2].encode()})
    manifest = index_shards(str(tmp_path))
    assert manifest["class_names"] == ["cat", "dog"] and manifest["num_classes"] == 2
    loader = build_loader(tmp_path, batch_size=3, transform=None, num_workers=0, need_labels=True, return_meta=True)
    labels = {k: int(lab) for b in loader for k, lab in zip(b["key"], b["label"], strict=True)}
    assert labels["sample000000"] == 1 and labels["sample000001"] == 0 and loader.stats == {}


def test_dotted_keys_reported_and_grouped_with_key_dot_last(tmp_path):
    write_wds_shards(tmp_path, 9, per_shard=5, key="img.{:04d}")
    with pytest.raises(RuntimeError, match="key_dot='last'"):  # no manifest yet: every sample lacks an image
        next(iter(build_loader(tmp_path, batch_size=3, transform=None, num_workers=0)))
    first = index_shards(str(tmp_path))
    assert first["dotted_keys"]["count"] == 9 and first["dotted_keys"]["examples"][0].startswith("img.0000.")
    assert first["total"] == 2  # split at the first dot, every shard is one sample "img"
    last = index_shards(str(tmp_path), key_dot="last")
    assert last["total"] == 9 and last["key_dot"] == "last" and last["label_range"] == [0, 2]
    with pytest.raises(ValueError, match="key_dot='last'"):
        build_loader(tmp_path, batch_size=3, transform=None, num_workers=0)
    loader = build_loader(tmp_path, batch_size=3, transform=None, num_workers=0, key_dot="last")
    keys = [k for b in loader for k in b["key"]]
    assert sorted(keys) == [f"img.{i:04d}" for i in range(9)]


def test_remote_shards_need_out_and_the_manifest_lists_their_urls(tmp_path, monkeypatch):
    shards = tmp_path / "shards"
    keys = write_wds_shards(shards, 14, per_shard=5)
    spec = f"pipe:cat {shards}/wds-{{000000..000002}}.tar"
    with pytest.raises(ValueError, match="out="):
        index_shards(spec)
    manifest = index_shards(spec, str(tmp_path / "index"))
    assert [s["count"] for s in manifest["shards"]] == [5, 5, 4]
    assert manifest["shards"][0]["name"] == "wds-000000.tar"
    assert manifest["shards"][0]["url"] == f"pipe:cat {shards}/wds-000000.tar"
    assert manifest["shards"][0]["sha256"] == sha256_file(shards / "wds-000000.tar")
    with pytest.raises(ValueError, match="SSLVIT_TRUSTED_MANIFESTS="):  # its commands run only once trusted
        build_loader(tmp_path / "index", batch_size=2, transform=None)
    monkeypatch.setenv("SSLVIT_TRUSTED_MANIFESTS", str(tmp_path / "index" / "manifest.json"))
    ranks = [build_loader(tmp_path / "index", batch_size=2, transform=None, num_workers=1, rank=r, world_size=2,
                          return_meta=True) for r in range(2)]
    seen = Counter(k for loader in ranks for b in loader for k, v in zip(b["key"], b["valid"], strict=True) if v)
    assert sorted(seen) == sorted(keys) and set(seen.values()) == {1}


def test_a_writer_manifest_is_not_replaced_without_overwrite(clean_shards):
    before = (clean_shards.dir / "manifest.json").read_text()
    with pytest.raises(FileExistsError, match="overwrite=True"):
        index_shards(str(clean_shards.dir))
    assert (clean_shards.dir / "manifest.json").read_text() == before
    manifest = index_shards(str(clean_shards.dir), overwrite=True)
    assert [s["count"] for s in manifest["shards"]] == [8, 8, 8, 8, 5] and manifest["label_range"] == [0, 2]
    assert [s["sha256"] for s in manifest["shards"]] == [s["sha256"] for s in clean_shards.manifest["shards"]]
