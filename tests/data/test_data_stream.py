"""Streaming loader: exactly-once finite epochs over ranks x workers, determinism, resume, modes."""

from __future__ import annotations

import math
import shutil
from collections import Counter

import pytest
import torch
from data_helpers import make_items, write_wds_shards

from sslvit.data import build_loader, pretrain_transform, resolve, resolve_shards
from sslvit.data.shards import write_shards


def run_epoch(loader, epoch: int = 0, start: int = 0) -> list[dict]:
    loader.set_epoch(epoch)
    return list(loader.iterate(epoch, start))


def valid_keys(batches: list[dict]) -> list[str]:
    return [k for b in batches for k, v in zip(b["key"], b["valid"].tolist(), strict=True) if v]


def loaders(spec, world: int = 2, workers: int = 2, **kw) -> list:
    kw = {"batch_size": 4, "transform": pretrain_transform(16), "return_meta": True, **kw}
    return [build_loader(spec, num_workers=workers, rank=r, world_size=world, **kw) for r in range(world)]


def test_finite_two_ranks_two_workers_exactly_once(clean_shards):
    ranks = loaders(clean_shards.dir, need_labels=True)
    assert len(ranks[0]) == len(ranks[1])
    epoch0 = [run_epoch(loader, 0) for loader in ranks]
    assert [len(b) for b in epoch0] == [len(ranks[0])] * 2  # equal batch counts on both ranks
    keys = valid_keys(epoch0[0]) + valid_keys(epoch0[1])
    assert len(keys) == 37 and len(set(keys)) == 37  # every sample exactly once
    for batches in epoch0:
        for b in batches:
            assert b["image"].shape == (4, 3, 16, 16) and b["image"].dtype == torch.uint8
            assert b["label"].dtype == torch.int64 and b["valid"].dtype == torch.bool
            assert set(b["label"][b["valid"]].tolist()) <= {0, 1, 2}
    # padding positions carry the key "" and are never valid
    for batches in epoch0:
        own = set(valid_keys(batches))
        assert all(k in own for b in batches for k in b["key"] if k)
        assert all(not v for b in batches for k, v in zip(b["key"], b["valid"].tolist(), strict=True) if not k)
    # same seed -> same order and same augmentations; another epoch -> another order
    again = run_epoch(ranks[0], 0)
    assert [b["key"] for b in again] == [b["key"] for b in epoch0[0]]
    assert all(torch.equal(a["image"], b["image"]) for a, b in zip(again, epoch0[0], strict=True))
    epoch1 = [run_epoch(loader, 1) for loader in ranks]
    keys1 = valid_keys(epoch1[0]) + valid_keys(epoch1[1])
    assert sorted(keys1) == sorted(keys) and keys1 != keys
    assert ranks[0].stats == {} and ranks[1].stats == {}


def test_fewer_shards_than_slots_is_balanced(tmp_path):
    write_shards(make_items(21), tmp_path, prefix="one", max_count=100, progress=False)
    ranks = loaders(tmp_path, world=2, workers=2, batch_size=3)
    batches = [run_epoch(loader) for loader in ranks]
    keys = valid_keys(batches[0]) + valid_keys(batches[1])
    assert len(batches[0]) == len(batches[1]) and sorted(set(keys)) == sorted(keys) and len(keys) == 21
    assert ranks[0].cfg.num_streams == 1  # one shard: one stream, every reader keeps its positions
    assert len(ranks[0]) == math.ceil(21 / 6)  # a perfect split


def test_more_ranks_than_samples_still_terminates(tmp_path):
    write_shards(make_items(3), tmp_path, prefix="tiny", max_count=100, progress=False)
    ranks = loaders(tmp_path, world=4, workers=1, batch_size=2)
    batches = [run_epoch(loader) for loader in ranks]
    assert {len(b) for b in batches} == {len(ranks[0])}
    keys = [k for b in batches for k in valid_keys(b)]
    assert sorted(keys) == sorted(set(keys)) and len(keys) == 3


def test_resume_mid_epoch_reproduces_batches(clean_shards):
    loader = build_loader(clean_shards.dir, batch_size=3, transform=pretrain_transform(16), num_workers=2,
                          seed=5, rank=0, world_size=1, return_meta=True,
                          masker=lambda b, g: {"mask": torch.rand(b, 4, generator=g) > 0.5})
    full = run_epoch(loader, 2)
    for start in (1, 4, 7):
        resumed = run_epoch(loader, 2, start)
        assert len(resumed) == len(full) - start
        for a, b in zip(resumed, full[start:], strict=True):
            assert a["key"] == b["key"]
            assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
    masks = torch.stack([b["mask"] for b in full])
    assert not all(torch.equal(masks[0], m) for m in masks[1:])  # a fresh mask per batch


def test_in_process_loader_keeps_the_global_rng(clean_shards):
    loader = build_loader(clean_shards.dir, batch_size=4, transform=pretrain_transform(16), num_workers=0)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    first = next(iter(loader))
    assert torch.equal(torch.rand(3), expected)
    assert first["image"].shape == (4, 3, 16, 16)


def test_resampled_mode_sizes_epochs_by_samples(clean_shards):
    ranks = loaders(clean_shards.dir, mode="resampled", samples_per_epoch=50, batch_size=4)
    assert len(ranks[0]) == len(ranks[1]) == math.ceil(50 / 8)
    batches = [run_epoch(loader, 3) for loader in ranks]
    assert [len(b) for b in batches] == [7, 7]
    assert all(b["valid"].all() for bs in batches for b in bs)
    again = run_epoch(ranks[1], 3)
    assert [b["key"] for b in again] == [b["key"] for b in batches[1]]
    assert [b["key"] for b in run_epoch(ranks[1], 4)] != [b["key"] for b in batches[1]]


def test_without_manifest_local_shards_are_counted_remote_need_samples_per_epoch(clean_shards, tmp_path, caplog):
    bare = tmp_path / "bare"
    shutil.copytree(clean_shards.dir, bare)
    (bare / "manifest.json").unlink()
    with caplog.at_level("WARNING", logger="sslvit.data"):
        loader = build_loader(bare, batch_size=4, transform=None, num_workers=2, return_meta=True)
    assert "from their tar headers" in caplog.text and "sslvit shards index" in caplog.text
    batches = run_epoch(loader)
    assert len(batches) == 10 and sorted(valid_keys(batches)) == sorted(set(valid_keys(batches)))
    assert len(valid_keys(batches)) == 37 and loader.stats == {}
    assert batches[0]["image"].shape == (4, 3, 20, 24)  # transform=None: decoded size
    remote = f"pipe:cat {bare}/clean-{{000000..000004}}.tar"
    with pytest.raises(ValueError, match="sslvit shards index"):
        build_loader(remote, batch_size=4, transform=None, num_workers=0)


def test_shard_specs(clean_shards):
    d = clean_shards.dir
    names = [str(d / f"clean-{i:06d}.tar") for i in range(5)]
    assert resolve_shards(d) == names
    assert resolve_shards(d / "manifest.json") == names
    assert resolve_shards(str(d / "clean-{000000..000004}.tar")) == names
    assert resolve_shards([names[0], str(d / "clean-00000[1-2].tar")]) == names[:3]
    with pytest.raises(FileNotFoundError):
        resolve_shards(str(d / "missing-{0..3}.tar"))


def test_pipe_urls_stream_through_a_shell(clean_shards):
    spec = [f"pipe:cat {clean_shards.dir}/clean-{{000000..000004}}.tar"]
    assert len(resolve_shards(spec)) == 5
    loader = build_loader(spec, batch_size=5, transform=None, num_workers=0, samples_per_epoch=37,
                          return_meta=True, shuffle=False)
    keys = valid_keys(run_epoch(loader))
    assert len(keys) == 37 == len(set(keys))


def test_rank_and_world_from_environment(clean_shards, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    loader = build_loader(clean_shards.dir, batch_size=4, transform=None, num_workers=0)
    assert (loader.cfg.rank, loader.cfg.world_size) == (1, 2)
    assert loader.class_names == ["a", "b", "c"] and loader.num_samples == 37
    assert loader.mean is not None and len(loader.std) == 3


def test_drop_last_yields_only_full_valid_batches(clean_shards):
    ranks = loaders(clean_shards.dir, drop_last=True, batch_size=4)
    batches = [run_epoch(loader) for loader in ranks]
    assert len(batches[0]) == len(batches[1]) >= 3
    assert all(b["valid"].all() for bs in batches for b in bs)
    keys = valid_keys(batches[0]) + valid_keys(batches[1])
    assert len(keys) == len(set(keys)) == 8 * len(batches[0])
    assert Counter(keys).most_common(1)[0][1] == 1


def test_webdataset_shards_without_manifest_exactly_once_over_ranks_and_workers(tmp_path):
    keys = write_wds_shards(tmp_path, 45, per_shard=7)  # 7 shards, the last one short
    ranks = loaders(tmp_path, world=2, workers=2, batch_size=3)
    assert len(ranks[0]) == len(ranks[1]) == 8  # ceil(45 / 6)
    for epoch in (0, 1):
        seen = Counter(k for loader in ranks for k in valid_keys(run_epoch(loader, epoch)))
        assert sorted(seen) == sorted(keys) and set(seen.values()) == {1}
        assert ranks[0].stats == {} and ranks[1].stats == {}


def test_dropped_samples_are_in_the_stats_before_the_last_batch(clean_shards):
    remote = f"pipe:cat {clean_shards.dir}/clean-{{000000..000004}}.tar"  # no manifest: sized by samples_per_epoch
    loader = build_loader(remote, batch_size=4, transform=None, num_workers=2, samples_per_epoch=20, shuffle=False)
    it = loader.iterate(0)
    batches = [next(it) for _ in range(len(loader))]  # the training loop stops after the last batch
    assert len(batches) == 5 and sum(int(b["valid"].sum()) for b in batches) == 20
    assert loader.stats == {"dropped_extra": 17}
    ranks = loaders(clean_shards.dir, drop_last=True, batch_size=4)
    kept = [sum(int(b["valid"].sum()) for b in run_epoch(r)) for r in ranks]
    assert sum(kept) + ranks[0].stats["dropped_last"] + ranks[1].stats.get("dropped_last", 0) == 37


def test_comma_list_and_brace_over_folders_keep_each_manifest(tmp_path):
    a = write_shards(make_items(9), tmp_path / "part1", prefix="a", max_count=4, class_names=["x", "y", "z"],
                     progress=False)
    b = write_shards(make_items(5), tmp_path / "part2", prefix="b", max_count=4, class_names=["x", "y", "z"],
                     progress=False)
    for spec in (f"{tmp_path}/part1,{tmp_path}/part2", f"{tmp_path}/part{{1,2}}", f"{tmp_path}/part*"):
        shard_set = resolve(spec)
        assert shard_set.counts == [4, 4, 1, 4, 1] and shard_set.class_names == ["x", "y", "z"], spec
        expected = [(9 * a["mean"][c] + 5 * b["mean"][c]) / 14 for c in range(3)]
        assert shard_set.mean == pytest.approx(expected, abs=1e-5)
        second = [(9 * (a["std"][c] ** 2 + a["mean"][c] ** 2) + 5 * (b["std"][c] ** 2 + b["mean"][c] ** 2)) / 14
                  for c in range(3)]
        assert shard_set.std == pytest.approx([math.sqrt(second[c] - expected[c] ** 2) for c in range(3)], abs=1e-5)
    loader = build_loader(f"{tmp_path}/part1,{tmp_path}/part2", batch_size=4, transform=None, num_workers=0,
                          return_meta=True)
    assert loader.num_samples == 14 and len(valid_keys(run_epoch(loader))) == 14
    write_shards(make_items(3), tmp_path / "part3", prefix="c", class_names=["p", "q", "r"], progress=False)
    with pytest.raises(ValueError, match="part2.*part3|part3.*part2"):
        resolve(f"{tmp_path}/part{{2,3}}")


def test_no_usable_sample_says_what_was_found_and_needed(tmp_path):
    write_wds_shards(tmp_path, 4, per_shard=4, members=lambda i: {"txt": b"hello", "cls": b"1"})
    loader = build_loader(tmp_path, batch_size=2, transform=None, num_workers=0, need_labels=True)
    with pytest.raises(RuntimeError) as err:
        next(iter(loader))
    message = str(err.value)
    assert "'txt': 4" in message and "'cls': 4" in message and "an image member" in message and "a label" in message
    assert "missing_image" in message
