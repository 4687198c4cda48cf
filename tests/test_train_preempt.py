"""Preemption: SIGTERM / SIGINT stop a run after its step with that step's checkpoint, exit 75,
leave no loader worker behind, and the resumed run ends bitwise where an uninterrupted one does;
a step that outlasts train.preempt_grace_s ends without a checkpoint of it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file

from sslvit.errors import EXIT_PREEMPTED, Preempted
from sslvit.training.checkpoints import list_checkpoints, validate_checkpoint
from tests.run_helpers import DEFAULT_CONFIG, TINY, bar_shards

ROOT = Path(__file__).resolve().parents[1]

DRIVER = """
import json, os, signal, sys, time
import psutil
from sslvit.errors import EXIT_PREEMPTED, Preempted
from sslvit.training import config, train

cfg = config.load(sys.argv[1], sys.argv[2:])
at = int(os.environ.get("SIGNAL_AT", "0"))

def on_step_end(step):
    if step == at:
        pids = [p.pid for p in psutil.Process().children(recursive=True)]
        with open(os.environ["PIDS_FILE"], "w") as f:
            json.dump(pids, f)
        for _ in range(int(os.environ.get("TIMES", "1"))):
            os.kill(os.getpid(), getattr(signal, os.environ["SIGNAL"]))
        time.sleep(float(os.environ.get("HANG_S", "0")))

try:
    train(cfg, on_step_end=on_step_end)
except Preempted as stopped:
    print(stopped, flush=True)
    sys.exit(EXIT_PREEMPTED)
"""


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    return bar_shards(tmp_path_factory.mktemp("bars"), train=160, val=20)["train"]


def _run(tmp_path: Path, shards: str, name: str, *overrides: str, **env: str) -> subprocess.CompletedProcess:
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "RANK", "WORLD_SIZE"))}
    environ.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", PIDS_FILE=str(tmp_path / f"{name}.pids"), **env)
    cmd = [sys.executable, str(script), str(DEFAULT_CONFIG), *TINY, f"data.train_shards={shards}",
           "train.steps=6", "data.num_workers=2", "train.trackers=[]", f"train.out_dir={tmp_path / 'runs'}",
           f"train.name={name}", *overrides]
    return subprocess.run(cmd, cwd=tmp_path, env=environ, capture_output=True, text=True, timeout=300)


def _alive(pids: list[int]) -> list[int]:
    alive = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.NoSuchProcess:
            pass
    return alive


@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGINT"])
def test_a_signal_stops_after_the_step_with_its_checkpoint_and_resumes_bitwise(signal_name, shards, tmp_path):
    stopped = _run(tmp_path, shards, "stopped", SIGNAL=signal_name, SIGNAL_AT="3")
    assert stopped.returncode == EXIT_PREEMPTED, stopped.stderr[-3000:]
    assert f"stopped on {signal_name} after step 3 of 6" in stopped.stdout
    assert "continue with train.name=stopped train.resume=latest" in stopped.stdout
    assert stopped.stderr.count(f"{signal_name} received: finishing this step") == 1
    run = tmp_path / "runs" / "stopped"
    assert [c.name for c in list_checkpoints(run)] == ["step_0000003"]
    assert validate_checkpoint(run / "checkpoints" / "step_0000003").state.step == 3
    assert not (run / "model.safetensors").exists()
    workers = json.loads((tmp_path / "stopped.pids").read_text())
    assert len(workers) == 2 and _alive(workers) == [], "the loader workers end with the run"

    resumed = _run(tmp_path, shards, "stopped", "train.resume=latest")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    plain = _run(tmp_path, shards, "plain")
    assert plain.returncode == 0, plain.stderr[-3000:]
    a, b = load_file(str(run / "model.safetensors")), load_file(str(tmp_path / "runs" / "plain" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_step_that_outlasts_the_grace_ends_without_its_checkpoint(shards, tmp_path):
    start = time.monotonic()
    late = _run(tmp_path, shards, "late", "train.preempt_grace_s=1", SIGNAL="SIGTERM", SIGNAL_AT="2", HANG_S="60")
    assert late.returncode == EXIT_PREEMPTED and time.monotonic() - start < 45, late.stderr[-3000:]
    assert "did not finish within train.preempt_grace_s=1 s" in late.stderr
    assert list_checkpoints(tmp_path / "runs" / "late") == []
    assert _alive(json.loads((tmp_path / "late.pids").read_text())) == []


def test_a_second_sigint_stops_at_once_without_a_checkpoint(shards, tmp_path):
    twice = _run(tmp_path, shards, "twice", SIGNAL="SIGINT", SIGNAL_AT="3", TIMES="2")
    assert twice.returncode not in (0, EXIT_PREEMPTED)
    assert "KeyboardInterrupt: a second SIGINT: stopped without a checkpoint of this step" in twice.stderr
    assert list_checkpoints(tmp_path / "runs" / "twice") == []
    assert _alive(json.loads((tmp_path / "twice.pids").read_text())) == []


def test_the_command_says_where_the_checkpoint_is_and_exits_75(monkeypatch, capsys):
    from sslvit.cli import main

    def preempted(cfg, **kwargs):
        raise Preempted("stopped on SIGTERM after step 3 of 6 (0.1 s after the signal): checkpoint X")

    monkeypatch.setattr("sslvit.training.loop.train", preempted)
    assert main(["pretrain", "train.steps=6"]) == EXIT_PREEMPTED
    assert "sslvit pretrain: stopped on SIGTERM after step 3 of 6" in capsys.readouterr().err


def test_an_interrupt_is_one_line_and_exit_130(monkeypatch, capsys):
    from sslvit.cli import main

    def interrupted(cfg, **kwargs):
        raise KeyboardInterrupt("a second SIGINT: stopped without a checkpoint of this step")

    monkeypatch.setattr("sslvit.training.loop.train", interrupted)
    assert main(["pretrain", "train.steps=6"]) == 130
    assert capsys.readouterr().err == ("sslvit pretrain: interrupted (a second SIGINT: stopped without a "
                                       "checkpoint of this step)\n")
