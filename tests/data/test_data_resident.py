"""A corpus held in memory (data.in_memory) gives the batches streaming gives, reads each shard
once and decodes each non-JPEG image once per process."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

import sslvit.data.resident as resident
from sslvit.data.stream import build_loader
from sslvit.data.transforms import pretrain_transform


def _epochs(shards, epochs=3, start=(0, 0), **kw):
    loader = build_loader(str(shards), batch_size=6, transform=pretrain_transform(16, (0.3, 1.0)), mode="finite",
                          seed=3, rank=0, world_size=1, need_labels=True, **kw)
    out = []
    for epoch in range(start[0], epochs):
        for batch in loader.iterate(epoch, start[1] if epoch == start[0] else 0):
            out.append((epoch, batch["image"].clone(), batch["label"].clone(), list(batch["key"])))
        out.append((epoch, dict(loader.stats)))
    loader.close()
    return loader, out


def _assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x[0] == y[0]
        if len(x) == 2:
            assert x[1] == y[1]  # the epoch's skip counts
        else:
            assert torch.equal(x[1], y[1]) and torch.equal(x[2], y[2]) and x[3] == y[3]


@pytest.mark.parametrize("workers", [0, 1])
@pytest.mark.parametrize("repeats", [1, 2])
def test_held_batches_are_the_streamed_ones(clean_shards, workers, repeats):
    _, streamed = _epochs(clean_shards.dir, num_workers=workers, repeats=repeats, in_memory=False)
    loader, held = _epochs(clean_shards.dir, num_workers=workers, repeats=repeats, in_memory=True)
    assert loader.resident is not None
    _assert_same(streamed, held)
    # a pass that resumes mid-epoch gives the uninterrupted pass's batches from there on
    _, resumed = _epochs(clean_shards.dir, start=(1, 2), num_workers=workers, repeats=repeats, in_memory=True)
    tail = [item for item in held if item[0] >= 1 and len(item) == 4][2:]
    _assert_same(tail, [item for item in resumed if len(item) == 4])


def test_each_shard_is_read_once_and_each_png_decoded_once(clean_shards, monkeypatch):
    reads, decodes = Counter(), Counter()
    real_iter, real_decode = resident.iter_shard, resident.decode_image
    monkeypatch.setattr(resident, "iter_shard", lambda url, *a, **k: reads.update([url]) or real_iter(url, *a, **k))
    monkeypatch.setattr(resident, "decode_image", lambda data, *a: decodes.update([data]) or real_decode(data, *a))
    loader, _ = _epochs(clean_shards.dir, num_workers=0, in_memory=True)
    assert len(reads) == 5 and set(reads.values()) == {1}, "five shards, each read in the first epoch only"
    assert len(decodes) == 18 and set(decodes.values()) == {1}, "the 18 PNGs decoded once; JPEGs follow the crop"
    assert 0 < loader.resident.used < 2**20


def test_auto_holds_local_shards_under_the_budget_and_never_remote_ones(clean_shards, tmp_path):
    def held(spec, **kw):
        return build_loader(spec, batch_size=4, transform=None, num_workers=0, **kw).resident is not None

    assert held(str(clean_shards.dir), in_memory=None)
    assert not held(str(clean_shards.dir), in_memory=None, in_memory_mb=1e-3), "over the budget: streamed"
    assert not held(str(clean_shards.dir)), "off unless asked (build_loader's default)"
    tar = sorted(clean_shards.dir.glob("*.tar"))[0]
    assert not held(f"pipe:cat {tar}", in_memory=None, samples_per_epoch=8)


def test_a_damaged_shard_is_counted_every_epoch_and_read_again(clean_shards):
    tar = sorted(clean_shards.dir.glob("*.tar"))[1]
    tar.write_bytes(tar.read_bytes()[: tar.stat().st_size // 2])  # truncated mid-member
    _, streamed = _epochs(clean_shards.dir, num_workers=0, in_memory=False)
    loader, held = _epochs(clean_shards.dir, num_workers=0, in_memory=True)
    _assert_same(streamed, held)
    stats = [item[1] for item in held if len(item) == 2]
    assert all(s.get("truncated_tar") == 1 for s in stats), stats
    assert not any(key[0] == str(tar) for key in loader.resident._shards), "a damaged shard is not kept"


def test_the_budget_caps_what_is_held(clean_shards, caplog):
    cache = resident.ResidentCache(budget_bytes=4000)
    loader = build_loader(str(clean_shards.dir), batch_size=6, transform=pretrain_transform(16), num_workers=0,
                          in_memory=True)
    loader.resident = cache
    loader._dataset.resident = cache
    with caplog.at_level("WARNING", logger="sslvit.data"):
        for _ in loader.iterate(0):
            pass
    assert cache.used <= 4000
    assert "the budget (data.in_memory_mb) is reached" in caplog.text
