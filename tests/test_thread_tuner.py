"""Who uses the cores (/proc readings) and the tuner that gives the model what is free."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import sslvit.training.threads as threads_mod
from sslvit.training.config import load
from sslvit.training.cpu_load import (
    CLOCK_TICKS,
    Load,
    LoadSample,
    child_pids,
    load_between,
    machine_busy_seconds,
    process_cpu_seconds,
    sample_load,
)
from sslvit.training.threads import ThreadPlan, ThreadTuner, fit_threads


def _fake_proc(root: Path, cpu_lines: list[str], procs: dict[int, tuple[str, int, int, int]]) -> Path:
    """/proc/stat with ``cpu_lines`` and /proc/<pid>/stat for pid -> (comm, ppid, utime, stime) in ticks."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "stat").write_text("cpu  9 9 9 9 9 9 9 9 0 0\n" + "".join(line + "\n" for line in cpu_lines)
                               + "intr 1 2 3\nctxt 5\n")
    for pid, (comm, ppid, utime, stime) in procs.items():
        (root / str(pid)).mkdir(exist_ok=True)
        rest = ["S", str(ppid)] + ["0"] * 9 + [str(utime), str(stime)] + ["0"] * 30
        (root / str(pid) / "stat").write_text(f"{pid} ({comm}) " + " ".join(rest) + "\n")
    return root


def test_proc_readings_of_a_fake_proc(tmp_path: Path):
    t = CLOCK_TICKS
    proc = _fake_proc(tmp_path, [f"cpu0 {t} 0 {t} 50 7 0 0 0 0 0", f"cpu1 {3 * t} 0 0 10 0 0 0 {t} 0 0"],
                      {10: ("python (x) y", 1, 2 * t, t), 11: ("pt_data_worker", 10, t, 0), 12: ("other", 2, 5, 5),
                       13: ("python", 1, t, t), 14: ("pt_data_worker", 13, t, 0)})  # 13: a sibling rank
    assert machine_busy_seconds(None, proc) == pytest.approx(6.0)  # 2 s on cpu0 + 4 s on cpu1, idle/iowait left out
    assert machine_busy_seconds([1], proc) == pytest.approx(4.0)
    assert machine_busy_seconds([5], proc) is None
    assert process_cpu_seconds(10, proc) == pytest.approx(3.0)  # a command name with spaces and ')' parses
    assert process_cpu_seconds(99, proc) is None
    assert child_pids(10, proc) == [11]
    sample = sample_load(None, pid=10, proc=proc)
    assert sample is not None and sample.own == pytest.approx(3.0) and sample.children == {11: pytest.approx(1.0)}
    assert sample.siblings == {}
    assert sample_load(None, pid=10, siblings=True, proc=proc).siblings == {13: pytest.approx(3.0)}  # with its worker


def test_load_between_splits_others_own_children_and_siblings():
    a = LoadSample(wall=0.0, machine=10.0, own=4.0, children={7: 1.0, 8: 1.0}, siblings={20: 1.0})
    b = LoadSample(wall=10.0, machine=40.0, own=14.0, children={7: 3.0, 9: 5.0}, siblings={20: 11.0})  # 8 ended, 9 new
    load = load_between(a, b)
    # 30 busy core-seconds: 10 ours, 2 of worker 7, 10 of sibling rank 20, 8 of others (9's 5 s: it is new)
    assert load == Load(others=pytest.approx(0.8), own=pytest.approx(1.0), children=pytest.approx(0.2),
                        siblings=pytest.approx(1.0))
    assert load_between(b, b) is None


def test_a_busy_child_shows_in_the_real_proc():
    if sample_load() is None:
        pytest.skip("no /proc on this system")
    child = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 3: pass"])
    try:
        time.sleep(0.3)
        a = sample_load()
        time.sleep(1.0)
        b = sample_load()
    finally:
        child.kill()
        child.wait()
    assert child.pid in a.children and child.pid in b.children
    load = load_between(a, b)
    # one busy loop: up to a core, less when the machine is shared; counted as ours, not as others'
    assert 0.1 < load.children <= 1.2
    assert load.children == pytest.approx((b.children[child.pid] - a.children[child.pid]) / (b.wall - a.wall))
    assert load.own < 0.3  # this process slept


class _Fake:
    """A clock and a load sampler that replays given average loads per window."""

    def __init__(self, loads: list[tuple[float, float]]):
        self.now, self.loads, self.threads = 0.0, list(loads), 1
        self.samples = 0
        self.machine = self.own = self.child = 0.0

    def clock(self) -> float:
        return self.now

    def sample(self) -> LoadSample:
        if self.samples:  # the window just ended had loads[0] (others, workers) and 1 core of ours
            others, workers = self.loads.pop(0)
            self.machine += (others + workers + 1.0) * 10
            self.own += 10.0
            self.child += workers * 10
        self.samples += 1
        return LoadSample(wall=self.now, machine=self.machine, own=self.own, children={5: self.child})

    def set(self, n: int) -> None:
        self.threads = n


def _tuner(fake: _Fake, cores: int = 2, ranks: int = 1, adaptive: bool = True) -> ThreadTuner:
    plan = ThreadPlan(intra_op=1, inter_op=1, workers=1, cores=cores, local_world_size=ranks, adaptive=adaptive)
    return ThreadTuner(plan, interval=10.0, sample=fake.sample, clock=fake.clock, set_threads=fake.set,
                       get_threads=lambda: fake.threads)


def _windows(tuner: ThreadTuner, fake: _Fake, n: int) -> list[str | None]:
    lines = []
    for _ in range(n):
        fake.now += 5.0
        assert tuner.update() is None  # half a window: nothing read
        fake.now += 5.0
        lines.append(tuner.update())
    return lines


def test_idle_machine_gives_the_cheap_workers_core_to_the_model_after_two_readings():
    fake = _Fake([(0.0, 0.25), (0.0, 0.2), (0.0, 0.25)])
    tuner = _tuner(fake)
    lines = _windows(tuner, fake, 3)
    assert lines[0] is None  # one reading proposes, the next confirms
    assert lines[1] == "threads: intra-op 1 -> 2 (other processes use 0.0 cores, loader workers 0.2, of 2 usable)"
    assert fake.threads == 2 and lines[2] is None


def test_busy_neighbours_and_a_busy_loader_keep_one_thread_and_one_noisy_window_does_not_switch():
    fake = _Fake([(1.0, 0.1), (1.1, 0.1), (0.0, 0.9), (0.0, 0.1), (1.0, 0.1), (1.2, 0.1)])
    tuner = _tuner(fake)
    assert _windows(tuner, fake, 6) == [None] * 6 and fake.threads == 1
    assert tuner.propose(Load(others=0.0, own=1.0, children=0.1)) == 2
    assert tuner.propose(Load(others=7.0, own=1.0, children=3.0)) == 1  # never below one


def test_the_share_of_a_rank_caps_and_contention_brings_the_count_down():
    fake = _Fake([(0.0, 0.0)] * 2 + [(3.0, 0.5)] * 2)
    tuner = _tuner(fake, cores=8, ranks=2)
    lines = _windows(tuner, fake, 4)
    # a share of 4, less this rank's half of the 3 cores others use and its worker's 0.5: 2 free
    assert fake.threads == 2 and lines[3].startswith("threads: intra-op 4 -> 2 ")
    assert lines[1].startswith("threads: intra-op 1 -> 4 ")  # the share of 8 cores / 2 ranks, not 8


def test_a_fixed_plan_never_changes():
    fake = _Fake([(0.0, 0.0)] * 3)
    tuner = _tuner(fake, adaptive=False)
    assert _windows(tuner, fake, 3) == [None] * 3 and fake.threads == 1 and fake.samples == 0


def test_train_threads_or_omp_fix_the_count_and_auto_says_it_follows():
    auto = fit_threads(load(None, ["data.num_workers=1"]), 1, env={}, cores=2)
    assert auto.adaptive and "intra-op follows the free cores" in auto.describe()
    fixed = fit_threads(load(None, ["data.num_workers=1", "train.threads=2"]), 1, env={"OMP_NUM_THREADS": "1"}, cores=2)
    assert not fixed.adaptive and fixed.intra_op == 2 and "intra-op from train.threads=2" in fixed.describe()
    omp = fit_threads(load(None, ["data.num_workers=1"]), 1, env={"OMP_NUM_THREADS": "1"}, cores=2)
    assert not omp.adaptive and "follows" not in omp.describe()


def test_training_follows_the_tuner_and_says_so(tmp_path: Path, monkeypatch, capsys, fresh_accelerate):
    """An in-process run with a fake reading of busy neighbours: 4 usable cores, 3 taken -> 1 thread."""
    from sslvit.training import train
    from tests.run_helpers import TINY

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads_mod, "usable_cores", lambda *a: 4)
    monkeypatch.setattr(threads_mod, "TUNE_INTERVAL_S", 0.0)
    readings = iter(range(1, 10_000))

    def busy(cpus=None, siblings=False):  # others use 3 cores, no worker load, 0.1 s between readings
        i = next(readings)
        return LoadSample(wall=0.1 * i, machine=0.4 * i, own=0.1 * i, children={})

    monkeypatch.setattr(threads_mod, "sample_load", busy)
    before = torch.get_num_threads()
    try:
        cfg = load(None, [*TINY, "train.trackers=[]", "train.steps=4", f"train.out_dir={tmp_path}",
                          "train.name=tuned"])
        train(cfg)
        out = capsys.readouterr().out
        assert "threads: 4 intra-op + 0 loader workers on 4 usable cores; intra-op follows the free cores" in out
        assert "threads: intra-op 4 -> 1 (other processes use 3.0 cores, loader workers 0.0, of 4 usable)" in out
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    assert os.path.isfile(tmp_path / "tuned" / "model.safetensors")

