"""Elastic resume: a run stopped mid-epoch on 1 process x 2 loader workers and resumed on 2 processes
x 1 worker (same global batch) sees every sample of that epoch exactly once and ends at the same step;
and metrics logged over 2 ranks are means over every rank's valid samples."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from sslvit.training import config as config_lib
from tests.run_helpers import DEFAULT_CONFIG, ROOT, TINY_MAE

TINY = [*TINY_MAE, "train.trackers=[]"]

# Runs train() with taps: every consumed micro-batch's sample keys (TAP_KEYS), each rank's own loss
# per step (TAP_LOSSES), rank 0's batches turned into padding (PAD_RANK0), a SIGKILL after step KILL_AT.
TAPPED = """
import json, os, signal, sys
import torch
import sslvit.training.loop as loop
import sslvit.training.run as run
from sslvit.training import config

cfg = config.load(sys.argv[1], sys.argv[2:])
rank = int(os.environ.get("RANK", "0"))
real_batches, real_build = loop.batches, run.build_objective

def batches(loader, start):
    for epoch, index, batch in real_batches(loader, start):
        if os.environ.get("TAP_KEYS"):
            keys = [k for k, ok in zip(batch["key"], batch["valid"].tolist()) if ok]
            with open(f"{os.environ['TAP_KEYS']}-{rank}.jsonl", "a") as f:
                f.write(json.dumps({"epoch": epoch, "index": index, "keys": keys}) + "\\n")
        yield epoch, index, batch

def build(*args, **kwargs):
    objective = real_build(*args, **kwargs)
    forward = objective.forward
    def tapped(batch):
        if os.environ.get("PAD_RANK0") and rank == 0:
            batch["valid"].fill_(False)
        loss, metrics = forward(batch)
        if os.environ.get("TAP_LOSSES"):
            with open(f"{os.environ['TAP_LOSSES']}-{rank}.jsonl", "a") as f:
                f.write(json.dumps({"loss": loss.item(), "valid": int(batch["valid"].sum())}) + "\\n")
        return loss, metrics
    objective.forward = tapped
    return objective

def kill(step):
    if step == int(os.environ.get("KILL_AT", "0")):
        os.kill(os.getpid(), signal.SIGKILL)

loop.batches = batches
run.build_objective = build
loop.train(cfg, on_step_end=kill)
"""


def _env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "RANK", "WORLD_SIZE", "LOCAL_RANK"))}
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", **extra)
    return env


def _run(tmp_path: Path, ranks: int, overrides: list[str], port: int, **env: str) -> subprocess.CompletedProcess:
    script = tmp_path / "tapped.py"
    script.write_text(TAPPED)
    launcher = [sys.executable]
    if ranks > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks),
                    "--master_port", str(port)]
    cmd = [*launcher, str(script), str(DEFAULT_CONFIG), *TINY, *overrides]
    return subprocess.run(cmd, cwd=tmp_path, env=_env(**env), capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    from sslvit.data import ensure_digits_shards

    return str(ensure_digits_shards(tmp_path_factory.mktemp("digits") / "digits", image_size=32)["train"])


def _keys(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def test_resume_on_two_ranks_sees_each_sample_of_the_epoch_once(shards, tmp_path):
    # 1,437 training digits at a global micro-batch of 128: 12 micro-batches an epoch, 12 steps
    common = [f"data.train_shards={shards}", "train.steps=12", "train.ckpt_every=5", "train.name=elastic",
              f"train.out_dir={tmp_path / 'runs'}"]
    taps = str(tmp_path / "keys-first")
    first = _run(tmp_path, 1, [*common, "data.batch_size=128", "data.num_workers=2"], 0, TAP_KEYS=taps, KILL_AT="7")
    assert first.returncode == -9, first.stderr[-3000:]
    taps_resumed = str(tmp_path / "keys-resumed")
    resumed = _run(tmp_path, 2, [*common, "data.batch_size=64", "data.num_workers=1", "train.resume=latest"], 29561,
                   TAP_KEYS=taps_resumed)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    out = resumed.stdout + resumed.stderr
    assert "resuming 1 process x 2 workers as 2 processes x 1 worker; global batch 128 unchanged" in out

    before = [r for r in _keys(Path(f"{taps}-0.jsonl")) if r["index"] < 5]
    after = _keys(Path(f"{taps_resumed}-0.jsonl")) + _keys(Path(f"{taps_resumed}-1.jsonl"))
    assert sorted({r["index"] for r in before}) == [0, 1, 2, 3, 4]
    assert sorted({r["index"] for r in after}) == list(range(5, 12))
    assert {r["epoch"] for r in before + after} == {0}
    seen = Counter(k for r in before + after for k in r["keys"])
    assert len(seen) == 1437 and set(seen.values()) == {1}, [k for k, n in seen.items() if n != 1][:5]

    run = tmp_path / "runs" / "elastic"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 12 and summary["steps_per_rank"] == [12, 12]
    assert (run / "config.resume-0000005.yaml").is_file()
    first_config = config_lib.load(run / "config.yaml")
    assert (first_config.data.batch_size, first_config.data.num_workers) == (128, 2)
    resume_config = config_lib.load(run / "config.resume-0000005.yaml")
    assert (resume_config.data.batch_size, resume_config.data.num_workers) == (64, 1)


def test_logged_loss_is_the_mean_over_every_ranks_valid_samples(shards, tmp_path):
    overrides = [f"data.train_shards={shards}", "train.steps=2", "data.batch_size=32", "data.num_workers=0",
                 "train.name=padded", f"train.out_dir={tmp_path / 'runs'}"]
    losses = str(tmp_path / "losses")
    done = _run(tmp_path, 2, overrides, 29563, PAD_RANK0="1", TAP_LOSSES=losses)
    assert done.returncode == 0, done.stderr[-3000:]
    rank0, rank1 = _keys(Path(f"{losses}-0.jsonl")), _keys(Path(f"{losses}-1.jsonl"))
    assert [r["valid"] for r in rank0] == [0, 0] and [r["loss"] for r in rank0] == [0.0, 0.0]
    assert all(r["valid"] > 0 and r["loss"] > 0.1 for r in rank1)
    logged = [json.loads(x) for x in (tmp_path / "runs" / "padded" / "metrics.jsonl").read_text().splitlines()]
    logged = [r["loss"] for r in logged if "loss" in r]
    assert logged == pytest.approx([r["loss"] for r in rank1], rel=1e-5)
