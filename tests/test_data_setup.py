"""From a run config to the training data: statistics of several shard folders."""

from __future__ import annotations

from pathlib import Path

import pytest
from accelerate import PartialState

from sslvit.data import write_shards
from sslvit.training import config as config_lib
from sslvit.training.data import IMAGENET_MEAN, resolve_train_data
from tests.data.data_helpers import make_items


def test_a_comma_list_of_folders_takes_their_combined_statistics(tmp_path: Path) -> None:
    """Two folders with manifests, given as a comma list, normalise with their own (count-weighted)
    mean and std, never silently with ImageNet's."""
    a = write_shards(make_items(6), tmp_path / "a", progress=False)
    b = write_shards(make_items(10), tmp_path / "b", progress=False)
    cfg = config_lib.load(None, [f"data.train_shards={tmp_path / 'a'},{tmp_path / 'b'}", "train.out_dir=" + str(tmp_path)])
    data = resolve_train_data(cfg, PartialState(cpu=True))
    expected = [(6 * ma + 10 * mb) / 16 for ma, mb in zip(a["mean"], b["mean"], strict=True)]
    assert data.mean == pytest.approx(expected, abs=1e-6)
    assert tuple(data.mean) != pytest.approx(IMAGENET_MEAN, abs=1e-3)
    assert data.num_samples == 16
