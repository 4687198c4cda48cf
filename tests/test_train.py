"""The pretraining loop end to end on tiny CPU configs."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sslvit import load_checkpoint
from sslvit.checkpoint import read_metadata
from sslvit.training import config as config_lib
from sslvit.training.checkpoints import ResumeError, list_checkpoints, validate_checkpoint
from tests.run_helpers import DEFAULT_CONFIG, ROOT, TINY_MAE, poison_loss

TINY = [*TINY_MAE, "data.batch_size=64", "data.num_workers=1"]


def _env(tmp_path: Path) -> dict:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ACCELERATE_", "RANK", "WORLD_SIZE", "LOCAL_RANK"))
    }
    env["PYTHONPATH"] = str(ROOT)
    env["OMP_NUM_THREADS"] = "1"
    return env


def _pretrain(tmp_path: Path, *overrides: str, launcher: tuple[str, ...] = (sys.executable,), env_extra=None):
    env = _env(tmp_path)
    env.update(env_extra or {})
    cmd = [*launcher, str(ROOT / "pipelines" / "pretrain.py"), *TINY, *overrides]
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A working directory in which the built-in digits shards are built once for these tests."""
    return tmp_path_factory.mktemp("train")


def test_default_run_writes_a_self_describing_encoder(workdir):
    out = _pretrain(workdir, "train.steps=3", "train.name=default")
    assert out.returncode == 0, out.stderr[-3000:]
    run = workdir / "runs" / "default"
    meta = read_metadata(run / "model.safetensors")
    assert meta["kind"] == "encoder"
    assert meta["model"]["arch"] == "vit_pico_patch4"
    assert meta["config"]["train"]["steps"] == 3
    manifest = json.loads((workdir / "data" / "shards" / "digits" / "train" / "manifest.json").read_text())
    assert meta["normalization"] == {"mean": manifest["mean"], "std": manifest["std"]}
    assert (run / "model.safetensors").stat().st_mode & 0o044, "the checkpoint is readable by others"
    model = load_checkpoint(run / "model.safetensors")
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 32)
    assert read_metadata(run / "objective.safetensors")["kind"] == "objective"
    assert config_lib.load(run / "config.yaml").train.steps == 3
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if "loss" in r] == [1, 2, 3]
    assert all(r["images_per_s"] > 0 for r in lines if "loss" in r)
    assert list((run / "logs").rglob("events.out.tfevents*")), "TensorBoard logs are written"
    assert "runs/default/model.safetensors" in out.stdout and "sslvit probe --checkpoint /" in out.stdout
    assert (workdir / "data" / "shards" / "digits" / "train" / "manifest.json").is_file()


KILLER = """
import os, signal, sys
from sslvit.training import config
from sslvit.training import train
cfg = config.load(sys.argv[2], sys.argv[3:])
def kill(step):
    if step == int(sys.argv[1]):
        os.kill(os.getpid(), signal.SIGKILL)
train(cfg, on_step_end=kill)
"""


def test_resume_after_sigkill_is_bitwise_identical(workdir):
    common = ["train.steps=6", "train.ckpt_every=2", "train.keep_last=5", "train.trackers=[]"]
    full = _pretrain(workdir, *common, "train.name=full")
    assert full.returncode == 0, full.stderr[-3000:]

    killed = subprocess.run(
        [sys.executable, "-c", KILLER, "3", str(DEFAULT_CONFIG), *TINY, *common, "train.name=killed"],
        cwd=workdir,
        env=_env(workdir),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    run = workdir / "runs" / "killed"
    assert not (run / "model.safetensors").exists()
    assert [p.name for p in list_checkpoints(run)] == ["step_0000002"]

    resumed = _pretrain(workdir, *common, "train.name=killed", "train.resume=latest")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout + resumed.stderr
    a = load_file(str(workdir / "runs" / "full" / "model.safetensors"))
    b = load_file(str(run / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    first = load_file(str(workdir / "runs" / "full" / "checkpoints" / "step_0000002" / "model.safetensors"))
    assert any(
        not torch.equal(first[k], a[f"{k.removeprefix('encoder.')}"])
        for k in first
        if k.startswith("encoder.")
    )


def test_resume_refuses_missing_and_partial_checkpoints(tmp_path):
    with pytest.raises(ResumeError, match="does not exist"):
        validate_checkpoint(tmp_path / "checkpoints" / "step_0000009")
    partial = tmp_path / "checkpoints" / ".tmp-step_0000004"
    partial.mkdir(parents=True)
    with pytest.raises(ResumeError, match="partial"):
        validate_checkpoint(partial)
    half = tmp_path / "checkpoints" / "step_0000004"
    half.mkdir()
    with pytest.raises(ResumeError, match="trainer_state.json"):
        validate_checkpoint(half)


def test_two_cpu_processes_through_accelerate_launch(workdir):
    launcher = (
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        "29517",
    )
    out = _pretrain(
        workdir,
        "train.steps=4",
        "train.name=ddp",
        "train.trackers=[]",
        launcher=launcher,
        env_extra={"ACCELERATE_USE_CPU": "1"},
    )
    assert out.returncode == 0, out.stderr[-4000:]
    summary = json.loads((workdir / "runs" / "ddp" / "summary.json").read_text())
    assert summary["world_size"] == 2
    assert summary["steps_per_rank"] == [4, 4]
    logged = [
        json.loads(x)["step"]
        for x in (workdir / "runs" / "ddp" / "metrics.jsonl").read_text().splitlines()
        if "loss" in json.loads(x)
    ]
    assert logged == [1, 2, 3, 4], "one log line per step, from the main process only"


def test_cpu_flag_with_two_processes_fails_loudly(workdir):
    launcher = (
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--cpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
    )
    out = _pretrain(workdir, "train.steps=2", "train.name=cpu2", launcher=launcher)
    assert out.returncode != 0
    assert "asked for 2 processes but started 1" in out.stderr
    assert not (workdir / "runs" / "cpu2" / "model.safetensors").exists()


def test_nonfinite_loss_stops_and_keeps_last_checkpoint(workdir, monkeypatch):
    from sslvit.training import NonFiniteLossError, train

    poison_loss(monkeypatch, lambda n: n >= 5)
    monkeypatch.chdir(workdir)
    cfg = config_lib.load(
        DEFAULT_CONFIG,
        [
            *TINY,
            "data.num_workers=0",
            "train.steps=10",
            "train.ckpt_every=2",
            "train.name=nan",
            "train.trackers=[]",
        ],
    )
    with pytest.raises(NonFiniteLossError, match="at step 5") as err:
        train(cfg)
    run = workdir / "runs" / "nan"
    assert "step_0000004" in str(err.value)
    state = validate_checkpoint(run / "checkpoints" / "step_0000004").state
    assert state.step == 4
    weights = load_file(str(run / "checkpoints" / "step_0000004" / "model.safetensors"))
    assert all(torch.isfinite(v).all() for v in weights.values())
    assert not (run / "model.safetensors").exists()


def test_bad_paths_are_named(workdir):
    out = _pretrain(workdir, "train.steps=1", "data.train_shards=/nonexistent/shard-{000000..000003}.tar")
    assert out.returncode != 0
    assert "/nonexistent/shard-" in out.stderr
    out = _pretrain(workdir, "train.steps=1", "train.out_dir=/proc/forbidden")
    assert out.returncode != 0
    assert "/proc/forbidden" in out.stderr
    out = _pretrain(workdir, "train.steps=1", "data.batch_sise=3")
    assert out.returncode == 2 and "data.batch_sise" in out.stderr
