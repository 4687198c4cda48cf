"""Several readers write one batch tensor in shared memory: the main process copies no image."""

from __future__ import annotations

import pytest
import torch
from data_helpers import make_items

from sslvit.data import build_loader, pretrain_transform
from sslvit.data.shards import write_shards


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """40 labelled samples in 5 shards of 8."""
    path = tmp_path_factory.mktemp("slabs")
    write_shards(make_items(40), path, prefix="s", max_count=8, progress=False)
    return path


def _loader(spec, workers: int):
    return build_loader(spec, batch_size=8, transform=pretrain_transform(16), num_workers=workers, seed=3)


def _reference(spec, epochs: int) -> list[list[dict]]:
    loader = _loader(spec, 0)
    out = []
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        out.append([{k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in b.items()} for b in loader])
    return out


def test_two_readers_fill_one_shared_batch_tensor(shards):
    reference = _reference(shards, 2)
    loader = _loader(shards, 2)
    assert loader._slabs is not None
    for epoch in range(2):
        loader.set_epoch(epoch)
        batches = list(loader)
        assert len(batches) == len(reference[epoch]) == 5
        for g, (got, want) in enumerate(zip(batches, reference[epoch], strict=True)):
            assert got["image"].is_shared(), g  # the slab itself: no concatenation in this process
            assert got["key"] == want["key"]
            for name in ("image", "label", "valid"):
                assert torch.equal(got[name], want[name]), (epoch, g, name)
    loader.close()


def test_slabs_are_reused_only_when_nothing_holds_them(shards):
    reference = _reference(shards, 3)
    loader = _loader(shards, 2)
    for epoch in range(3):  # batches dropped as they come: a handful of slabs serve every batch
        loader.set_epoch(epoch)
        for got, want in zip(loader, reference[epoch], strict=True):
            assert torch.equal(got["image"], want["image"])
    assert loader._slabs.allocated <= loader._slabs.ahead + 2
    before = loader._slabs.allocated
    kept, views = [], []
    for epoch in range(2):  # kept batches and views of them stay intact while later batches arrive
        loader.set_epoch(epoch)
        for g, batch in enumerate(loader):
            (kept if g % 2 == 0 else views).append((epoch, g, batch["image"] if g % 2 == 0 else batch["image"][1:3]))
    for epoch, g, image in kept:
        assert torch.equal(image, reference[epoch][g]["image"]), (epoch, g)
    for epoch, g, image in views:
        assert torch.equal(image, reference[epoch][g]["image"][1:3]), (epoch, g)
    assert loader._slabs.allocated - before >= len(kept) + len(views) - loader._slabs.ahead - 2
    loader.close()


def test_a_pass_left_early_and_a_resumed_pass_get_their_own_slabs(shards):
    reference = _reference(shards, 2)
    loader = _loader(shards, 2)
    loader.set_epoch(0)
    first = next(iter(loader))  # leave epoch 0 after one batch: its readers stop, stale slabs dropped
    assert torch.equal(first["image"], reference[0][0]["image"])
    resumed = list(loader.iterate(1, start_batch=3))
    assert [b["key"] for b in resumed] == [b["key"] for b in reference[1][3:]]
    for got, want in zip(resumed, reference[1][3:], strict=True):
        assert torch.equal(got["image"], want["image"])
    loader.set_epoch(0)
    assert all(torch.equal(got["image"], want["image"]) for got, want in zip(loader, reference[0], strict=True))
    loader.close()
