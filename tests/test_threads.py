"""Thread fitting: intra-op threads + loader workers fit the cores a rank may use."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sslvit.config import ConfigError
from sslvit.training.config import load
from sslvit.training.threads import apply_threads, cgroup_cpu_limit, fit_threads, usable_cores


def _cfg(workers: int):
    return load(None, [f"data.num_workers={workers}"])


def test_cgroup_v2_and_v1_quota(tmp_path: Path):
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_limit(tmp_path) == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_limit(tmp_path) is None
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("300000\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_limit(v1) == 3.0
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_cpu_limit(v1) is None


def test_usable_cores_takes_the_quota_under_the_affinity(tmp_path: Path):
    import os

    affinity = len(os.sched_getaffinity(0))
    (tmp_path / "cpu.max").write_text("50000 100000\n")  # half a core -> 1
    assert usable_cores(tmp_path) == 1
    (tmp_path / "cpu.max").write_text(f"{(affinity + 8) * 100000} 100000\n")
    assert usable_cores(tmp_path) == affinity


@pytest.mark.parametrize(("cores", "ranks", "workers", "intra"), [(2, 1, 1, 1), (16, 1, 4, 12), (16, 4, 1, 3),
                                                                  (2, 2, 0, 1), (8, 1, 0, 8)])
def test_intra_op_plus_workers_fit_the_rank_share(cores, ranks, workers, intra):
    plan = fit_threads(_cfg(workers), ranks, env={}, cores=cores)
    assert (plan.intra_op, plan.workers, plan.inter_op) == (intra, workers, 1)
    assert plan.intra_op + plan.workers <= max(1, cores // ranks) or workers == 0
    assert not plan.notes


def test_the_line_and_local_world_size_from_env():
    plan = fit_threads(_cfg(1), env={"LOCAL_WORLD_SIZE": "1"}, cores=2)
    assert plan.describe().split("; ")[0] == "threads: 1 intra-op + 1 loader worker on 2 usable cores"
    plan = fit_threads(_cfg(1), env={"LOCAL_WORLD_SIZE": "2"}, cores=8)
    assert (plan.intra_op, plan.local_world_size) == (3, 2)
    assert plan.describe().split("; ")[0] == "threads: 3 intra-op + 1 loader worker (8 usable cores / 2 local ranks)"


def test_user_choices_win_and_are_said():
    plan = fit_threads(_cfg(1), 1, env={"OMP_NUM_THREADS": "4"}, cores=2)
    assert plan.intra_op == 4
    assert "intra-op from OMP_NUM_THREADS=4" in plan.describe()
    assert "oversubscribed" in plan.describe()
    plan = fit_threads(_cfg(6), 1, env={}, cores=4)
    assert (plan.intra_op, plan.workers) == (1, 6)
    assert "oversubscribed as data.num_workers=6" in plan.describe()
    with pytest.raises(ConfigError, match="OMP_NUM_THREADS='two'"):
        fit_threads(_cfg(1), 1, env={"OMP_NUM_THREADS": "two"}, cores=2)


def test_apply_sets_torch_threads():
    before = torch.get_num_threads()
    try:
        line = apply_threads(fit_threads(_cfg(1), 1, env={}, cores=2))
        assert torch.get_num_threads() == 1
        assert line.startswith("threads: 1 intra-op + 1 loader worker on 2 usable cores")
    finally:
        torch.set_num_threads(before)
