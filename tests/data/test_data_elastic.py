"""Elastic order: global micro-batches are the same for any world size and worker count with the
same global batch G, and a run resumes at micro-batch g on another world size without repeats."""

from __future__ import annotations

import pytest
import torch
from data_helpers import make_items

from sslvit.data import build_loader, pretrain_transform
from sslvit.data.shards import write_shards

G = 8


def _masker(batch_size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    return {"mask": torch.rand(batch_size, 6, generator=generator) > 0.5}


def global_batches(spec, world: int, workers: int, epoch: int = 1, start: int = 0, **kw) -> list[dict]:
    """Every rank's batches of one epoch, concatenated in rank order per micro-batch."""
    ranks = [build_loader(spec, batch_size=G // world, transform=pretrain_transform(16), num_workers=workers,
                          rank=r, world_size=world, seed=3, masker=_masker, **kw) for r in range(world)]
    assert len({len(loader) for loader in ranks}) == 1
    per_rank = [list(loader.iterate(epoch, start)) for loader in ranks]
    out = []
    for batches in zip(*per_rank, strict=True):
        out.append({"key": [k for b in batches for k in b["key"]],
                    "image": torch.cat([b["image"] for b in batches]),
                    "mask": torch.cat([b["mask"] for b in batches]),
                    "valid": torch.cat([b["valid"] for b in batches]),
                    "label": torch.cat([b["label"] for b in batches])})
    return out


@pytest.fixture(params=[8, 4], ids=["5-shards", "10-shards"])
def elastic_shards(request, tmp_path):
    """37 samples in 5 shards (S=4 streams of 2 positions) or 10 shards (S=8, one position each)."""
    write_shards(make_items(37), tmp_path, prefix="e", max_count=request.param, progress=False)
    return tmp_path


def test_global_micro_batches_do_not_depend_on_world_or_workers(elastic_shards):
    runs = {(w, n): global_batches(elastic_shards, w, n) for w, n in ((1, 2), (2, 1), (4, 0))}
    reference = runs[(1, 2)]
    assert len(reference) == 5  # ceil(37 / 8)
    keys = [k for b in reference for k, v in zip(b["key"], b["valid"].tolist(), strict=True) if v]
    assert len(keys) == 37 == len(set(keys))
    for config, batches in runs.items():
        assert len(batches) == len(reference), config
        for g, (a, b) in enumerate(zip(batches, reference, strict=True)):
            assert a["key"] == b["key"], (config, g)
            assert torch.equal(a["image"], b["image"]), (config, g)
            assert torch.equal(a["mask"], b["mask"]) and torch.equal(a["valid"], b["valid"])
            assert torch.equal(a["label"], b["label"])
    assert global_batches(elastic_shards, 2, 1, epoch=2)[0]["key"] != reference[0]["key"]  # epochs differ


def test_resume_at_g_on_another_world_size_continues_exactly(elastic_shards):
    full = global_batches(elastic_shards, 2, 1)
    resumed = global_batches(elastic_shards, 4, 2, start=3)
    assert len(resumed) == len(full) - 3
    for a, b in zip(resumed, full[3:], strict=True):
        assert a["key"] == b["key"] and torch.equal(a["image"], b["image"])
    before = [k for b in full[:3] for k, v in zip(b["key"], b["valid"].tolist(), strict=True) if v]
    after = [k for b in resumed for k, v in zip(b["key"], b["valid"].tolist(), strict=True) if v]
    assert not set(before) & set(after) and len(before) + len(after) == 37 == len(set(before + after))


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
def test_a_rank_is_bitwise_the_same_for_any_worker_count(elastic_shards):
    runs = []
    for workers in (0, 1, 3):
        loader = build_loader(elastic_shards, batch_size=4, transform=pretrain_transform(16), num_workers=workers,
                              rank=1, world_size=2, seed=3, masker=_masker)
        runs.append(list(loader.iterate(0)))
    for batches in runs[1:]:
        for a, b in zip(batches, runs[0], strict=True):
            assert a["key"] == b["key"] and torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])


def test_resampled_mode_is_elastic_too(elastic_shards):
    one = global_batches(elastic_shards, 1, 2, mode="resampled", samples_per_epoch=40)
    four = global_batches(elastic_shards, 4, 0, mode="resampled", samples_per_epoch=40)
    assert len(one) == len(four) == 5
    assert [b["key"] for b in one] == [b["key"] for b in four]
    assert all(torch.equal(a["image"], b["image"]) for a, b in zip(one, four, strict=True))
