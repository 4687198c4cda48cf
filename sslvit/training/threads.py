"""Threads that fit the machine: intra-op threads plus loader workers within the cores this process
may use (CPU affinity and the cgroup quota, shared among the local ranks), and, unless the count is
fixed, a :class:`ThreadTuner` that follows what the cores are free for while the run goes on."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from sslvit.config import ConfigError
from sslvit.training.config import RunConfig
from sslvit.training.cpu_load import Load, LoadSample, load_between, sample_load

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
    adaptive: bool = False  # intra-op follows the free cores (ThreadTuner); False = fixed by the user

    @property
    def share(self) -> int:
        """This rank's cores: the usable cores over the local ranks, at least one."""
        return max(1, self.cores // self.local_world_size)

    def describe(self) -> str:
        """One line, e.g. ``threads: 1 intra-op + 1 loader worker on 2 usable cores``."""
        share = f" ({self.cores} usable cores / {self.local_world_size} local ranks)" if self.local_world_size > 1 \
            else f" on {self.cores} usable core{'s' if self.cores != 1 else ''}"
        worker = f"{self.workers} loader worker{'s' if self.workers != 1 else ''}"
        line = f"threads: {self.intra_op} intra-op + {worker}{share}"
        notes = list(self.notes)
        if self.adaptive:
            notes.append(f"intra-op follows the free cores (checked every {TUNE_INTERVAL_S:g} s; train.threads=N fixes it)")
        return line + ("; " + "; ".join(notes) if notes else "")


def fit_threads(cfg: RunConfig, local_world_size: int | None = None, env: Mapping[str, str] | None = None,
                cores: int | None = None) -> ThreadPlan:
    """Choose intra-op threads so that intra-op threads + loader workers fit this rank's cores.

    A rank's share is ``usable_cores() // local_world_size`` (at least 1; ``local_world_size``
    defaults to env LOCAL_WORLD_SIZE, else 1). The loader keeps ``data.num_workers`` (the config's
    choice); the model starts with the rest of the share, at least one thread, and one inter-op
    thread, and the plan is adaptive: a :class:`ThreadTuner` then gives the model what the workers
    and other processes leave free. ``train.threads=N`` (N > 0), else OMP_NUM_THREADS (or
    MKL_NUM_THREADS) in ``env``, fixes the intra-op count instead. When the user's choices exceed
    the share, the plan keeps them and its notes say so. Apply it with :func:`apply_threads`.
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
    if cfg.train.threads > 0:
        asked = ("train.threads", str(cfg.train.threads))
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
                      local_world_size=local_world_size, notes=tuple(notes), adaptive=asked is None)


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


TUNE_INTERVAL_S = 10.0


def _affinity() -> list[int] | None:
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None


class ThreadTuner:
    """Intra-op threads that follow the free cores of an adaptive :class:`ThreadPlan`.

    Every ``interval`` seconds (call :meth:`update` after each optimizer step; it only reads the
    clock in between) it measures, from ``/proc``, the cores other processes and this rank's loader
    workers used since the last reading, and proposes ``round(share - others / local ranks -
    workers)`` intra-op threads, at least 1 (the share: the usable cores over the local ranks;
    sibling ranks, the other children of the launcher, do not count as others). A proposal that
    differs from the current count is applied when the next reading proposes it again (no
    flapping on one noisy window). Each rank decides for itself; the main process says its own
    changes. On an idle
    machine a cheap loader's worker leaves most of its core to the model; beside busy processes
    the model drops to what is free instead of spinning threads against them. Where the cgroup
    quota (not the affinity) limits the cores, others may use the cores beyond the quota first.

    The thread count can change the rounding of torch's reductions: a run whose thread count
    changes is not bitwise equal to one whose count did not. ``train.threads=N`` fixes it.
    """

    def __init__(self, plan: ThreadPlan, interval: float | None = None,
                 sample: Callable[[], LoadSample | None] | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 set_threads: Callable[[int], None] = torch.set_num_threads,
                 get_threads: Callable[[], int] = torch.get_num_threads) -> None:
        self.plan, self.clock = plan, clock
        self.interval = TUNE_INTERVAL_S if interval is None else interval
        cpus = _affinity()
        ranks = plan.local_world_size > 1
        self._sample = sample if sample is not None else (lambda: sample_load(cpus, siblings=ranks))
        # cores others may take without touching ours: those of the affinity set beyond the quota
        self.slack = max(0, len(cpus) - plan.cores) if cpus is not None and sample is None else 0
        self._set, self._get = set_threads, get_threads
        self._pending: int | None = None
        self._last = self._sample() if plan.adaptive else None
        self._last_time = clock()

    def propose(self, load: Load) -> int:
        """Intra-op threads for ``load``: this rank's share less its part of what other processes
        use (shared among the local ranks; sibling ranks are not others) and its loader workers'."""
        others = max(0.0, load.others - self.slack) / self.plan.local_world_size
        free = self.plan.share - others - load.children
        return max(1, min(self.plan.share, math.floor(free + 0.5)))

    def update(self) -> str | None:
        """Re-check when the interval has passed; returns a line when the count changed."""
        if self._last is None or self.clock() - self._last_time < self.interval:
            return None
        now = self._sample()
        self._last_time = self.clock()
        if now is None:
            return None
        load, self._last = load_between(self._last, now), now
        if load is None:
            return None
        target, current = self.propose(load), self._get()
        if target == current:
            self._pending = None
            return None
        if self._pending != target:
            self._pending = target
            return None
        self._set(target)
        self._pending = None
        return (f"threads: intra-op {current} -> {target} (other processes use {load.others:.1f} cores, "
                f"loader workers {load.children:.1f}, of {self.plan.cores} usable)")
