"""Threads that fit the machine: intra-op threads plus loader workers within the cores this process
may use (CPU affinity and the cgroup quota, shared among the local ranks)."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from sslvit.config import ConfigError, RunConfig

_THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def cgroup_cpu_limit(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs the cgroup quota allows (quota / period) from cgroup v2 ``cpu.max`` or v1
    ``cpu/cpu.cfs_quota_us`` + ``cpu.cfs_period_us``; None when unlimited or unreadable."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    for folder in (root / "cpu", root / "cpu,cpuacct", root):
        try:
            quota_us = int((folder / "cpu.cfs_quota_us").read_text())
            period_us = int((folder / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            continue
        return None if quota_us <= 0 or period_us <= 0 else quota_us / period_us
    return None


def usable_cores(root: Path = Path("/sys/fs/cgroup")) -> int:
    """Cores this process may run on: its CPU affinity, capped by the cgroup quota (rounded up)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    limit = cgroup_cpu_limit(root)
    if limit is not None:
        cores = min(cores, max(1, math.ceil(limit - 1e-9)))
    return max(1, cores)


@dataclass(frozen=True)
class ThreadPlan:
    """How one rank uses its share of the cores: torch intra-op threads, inter-op threads, loader workers."""

    intra_op: int
    inter_op: int
    workers: int
    cores: int  # usable cores of the machine (affinity and cgroup quota)
    local_world_size: int
    notes: tuple[str, ...] = ()

    def describe(self) -> str:
        """One line, e.g. ``threads: 1 intra-op + 1 loader worker on 2 usable cores``."""
        share = f" ({self.cores} usable cores / {self.local_world_size} local ranks)" if self.local_world_size > 1 \
            else f" on {self.cores} usable core{'s' if self.cores != 1 else ''}"
        worker = f"{self.workers} loader worker{'s' if self.workers != 1 else ''}"
        line = f"threads: {self.intra_op} intra-op + {worker}{share}"
        return line + ("; " + "; ".join(self.notes) if self.notes else "")


def fit_threads(cfg: RunConfig, local_world_size: int | None = None, env: Mapping[str, str] | None = None,
                cores: int | None = None) -> ThreadPlan:
    """Choose intra-op threads so that intra-op threads + loader workers fit this rank's cores.

    A rank's share is ``usable_cores() // local_world_size`` (at least 1; ``local_world_size``
    defaults to env LOCAL_WORLD_SIZE, else 1). The loader keeps ``data.num_workers`` (the config's
    choice); the model gets the rest of the share, at least one thread, and one inter-op thread.
    OMP_NUM_THREADS (or MKL_NUM_THREADS) in ``env`` wins for the intra-op count. When the user's
    choices exceed the share, the plan keeps them and its notes say so. Apply it with
    :func:`apply_threads`.
    """
    env = os.environ if env is None else env
    if local_world_size is None:
        local_world_size = int(env.get("LOCAL_WORLD_SIZE", "1") or 1)
    if local_world_size < 1:
        raise ValueError(f"local_world_size must be >= 1, not {local_world_size}")
    cores = usable_cores() if cores is None else cores
    share = max(1, cores // local_world_size)
    workers = cfg.data.num_workers
    notes: list[str] = []
    asked = next(((name, env[name]) for name in _THREAD_ENV if env.get(name, "").strip()), None)
    if asked is not None:
        try:
            intra = int(asked[1])
        except ValueError:
            raise ConfigError(f"{asked[0]}={asked[1]!r} is not a thread count (a positive integer)") from None
        if intra < 1:
            raise ConfigError(f"{asked[0]}={asked[1]!r} is not a thread count (a positive integer)")
        notes.append(f"intra-op from {asked[0]}={intra}")
    else:
        intra = max(1, share - workers)
    if intra + workers > share:
        notes.append(f"{intra + workers} busy threads on a share of {share} core{'s' if share != 1 else ''}: "
                     f"oversubscribed as data.num_workers={workers}" + (f" and {asked[0]}" if asked else "")
                     + " ask")
    return ThreadPlan(intra_op=intra, inter_op=1, workers=workers, cores=cores,
                      local_world_size=local_world_size, notes=tuple(notes))


def apply_threads(plan: ThreadPlan) -> str:
    """Set torch's intra-op (and inter-op) thread counts to the plan's; returns the line to print.

    torch accepts an inter-op count only before its first inter-op work; after that the current
    count stays, and the returned line says so."""
    if torch.get_num_threads() != plan.intra_op:
        torch.set_num_threads(plan.intra_op)
    line = plan.describe()
    if torch.get_num_interop_threads() != plan.inter_op:
        try:
            torch.set_num_interop_threads(plan.inter_op)
        except RuntimeError:
            line += f"; inter-op threads stay {torch.get_num_interop_threads()} (torch had started its pool)"
    return line
