"""Who uses the cores: CPU seconds of the machine (per core, from ``/proc/stat``), of this process,
of its child processes (the loader workers) and, for a rank of a launched job, of its sibling
ranks (the other children of its launcher, with their workers), from ``/proc/<pid>/stat``. Linux
only; elsewhere every reading is None and callers keep their static choice."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

try:
    CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
except (AttributeError, ValueError, OSError):  # not a POSIX system
    CLOCK_TICKS = 100


def machine_busy_seconds(cpus: Iterable[int] | None = None, proc: Path = Path("/proc")) -> float | None:
    """Busy CPU seconds since boot summed over ``cpus`` (core numbers; None = all cores):
    user + nice + system + irq + softirq + steal of each ``cpuN`` line of ``/proc/stat``."""
    try:
        lines = (proc / "stat").read_text().splitlines()
    except OSError:
        return None
    wanted = None if cpus is None else {f"cpu{c}" for c in cpus}
    busy, found = 0, False
    for line in lines:
        fields = line.split()
        if not fields or not fields[0].startswith("cpu") or fields[0] == "cpu":
            continue
        if wanted is not None and fields[0] not in wanted:
            continue
        values = [int(v) for v in fields[1:9]] + [0] * max(0, 8 - len(fields[1:9]))
        user, nice, system, _idle, _iowait, irq, softirq, steal = values[:8]
        busy += user + nice + system + irq + softirq + steal
        found = True
    return busy / CLOCK_TICKS if found else None


def _stat_fields(pid: int, proc: Path) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name (field 3, the state, comes first)."""
    try:
        text = (proc / str(pid) / "stat").read_text()
    except OSError:
        return None
    return text[text.rfind(")") + 2 :].split()


def process_cpu_seconds(pid: int, proc: Path = Path("/proc")) -> float | None:
    """User + system CPU seconds of process ``pid`` (all its threads) since it started."""
    fields = _stat_fields(pid, proc)
    if fields is None or len(fields) < 13:
        return None
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime: fields 14 and 15


def parent_pid(pid: int, proc: Path = Path("/proc")) -> int | None:
    """The parent of process ``pid`` (field 4 of its stat), None when unreadable."""
    fields = _stat_fields(pid, proc)
    return int(fields[1]) if fields is not None and len(fields) > 1 else None


def child_pids(pid: int, proc: Path = Path("/proc")) -> list[int]:
    """Live processes whose parent is ``pid`` (a scan of ``/proc``)."""
    children = []
    try:
        entries = [e for e in os.listdir(proc) if e.isdigit()]
    except OSError:
        return []
    for entry in entries:
        fields = _stat_fields(int(entry), proc)
        if fields is not None and len(fields) > 1 and fields[1] == str(pid):  # field 4: the parent
            children.append(int(entry))
    return sorted(children)


@dataclass(frozen=True)
class LoadSample:
    """Cumulative CPU seconds at one moment: the machine's cores, this process, each child, each
    sibling rank (with its own children)."""

    wall: float
    machine: float
    own: float
    children: dict[int, float]
    siblings: dict[int, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Load:
    """Cores in use on average between two samples: by other processes, by this process, by its
    children (the loader workers), by its sibling ranks."""

    others: float
    own: float
    children: float
    siblings: float = 0.0


def _tree_seconds(pid: int, proc: Path) -> float | None:
    """CPU seconds of ``pid`` and its children."""
    own = process_cpu_seconds(pid, proc)
    if own is None:
        return None
    return own + sum(s for c in child_pids(pid, proc) if (s := process_cpu_seconds(c, proc)) is not None)


def sample_load(cpus: Iterable[int] | None = None, pid: int | None = None, siblings: bool = False,
                proc: Path = Path("/proc")) -> LoadSample | None:
    """A :class:`LoadSample` of ``cpus`` (None = all) and process ``pid`` (default: this one), with
    its sibling processes when ``siblings`` (the other ranks a launcher started); None when
    ``/proc`` cannot tell."""
    pid = os.getpid() if pid is None else pid
    machine = machine_busy_seconds(cpus, proc)
    own = process_cpu_seconds(pid, proc)
    if machine is None or own is None:
        return None
    children = {c: s for c in child_pids(pid, proc) if (s := process_cpu_seconds(c, proc)) is not None}
    ranks: dict[int, float] = {}
    parent = parent_pid(pid, proc) if siblings else None
    if parent:
        ranks = {c: s for c in child_pids(parent, proc) if c != pid and (s := _tree_seconds(c, proc)) is not None}
    return LoadSample(wall=time.monotonic(), machine=machine, own=own, children=children, siblings=ranks)


def load_between(a: LoadSample, b: LoadSample) -> Load | None:
    """Average cores used between samples ``a`` and ``b``; children present in both samples count
    (a worker that started or ended in between is left out). None when no time passed."""
    wall = b.wall - a.wall
    if wall <= 0:
        return None
    children = sum(max(0.0, b.children[c] - a.children[c]) for c in b.children if c in a.children)
    siblings = sum(max(0.0, b.siblings[c] - a.siblings[c]) for c in b.siblings if c in a.siblings)
    own = max(0.0, b.own - a.own)
    others = max(0.0, (b.machine - a.machine) - own - children - siblings)
    return Load(others=others / wall, own=own / wall, children=children / wall, siblings=siblings / wall)
