"""Feature extraction split over two CPU ranks gathers exactly the single-process features."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from sslvit.checkpoint import load_checkpoint
from sslvit.evaluate.features import extract_features, make_eval_loader, resolve_normalization

ROOT = Path(__file__).resolve().parents[2]


def _canonical(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Features with their labels as rows (N, F + 1), in a fixed order."""
    rows = torch.cat([x, y[:, None].float()], dim=1)
    return rows[torch.argsort(rows[:, 0])]


def test_two_ranks_gather_the_same_features(pico_checkpoint, digits, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "RANK", "WORLD_SIZE", "LOCAL_RANK"))}
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
           str(ROOT / "pipelines" / "knn.py"), "--checkpoint", str(pico_checkpoint), "--train", digits["val"],
           "--val", digits["val"], "--num_workers", "0", "--batch_size", "50", "--out_dir", str(tmp_path)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("metrics:") == 1, "only the main process prints"
    assert "(360 queries, 360 in the bank)" in done.stdout
    cached = list((tmp_path / "features").glob("features-*.safetensors"))
    assert len(cached) == 1, "the same split as train and val is extracted once"
    two = load_file(str(cached[0]))

    encoder = load_checkpoint(pico_checkpoint)
    mean, std = resolve_normalization(str(pico_checkpoint), None, None, digits["train"])
    loader = make_eval_loader(digits["val"], 32, 90, 0, None)
    x, y = extract_features(encoder, loader, mean, std)
    assert x.shape == (360, 32) and two["x"].shape == (360, 32)
    torch.testing.assert_close(_canonical(two["x"], two["y"]), _canonical(x, y), rtol=1e-5, atol=1e-5)


def test_the_mae_protocol_on_two_ranks_splits_each_step(pico_checkpoint, digits, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "RANK", "WORLD_SIZE", "LOCAL_RANK"))}
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29534",
           str(ROOT / "pipelines" / "linear_probe.py"), "--protocol", "mae", "--checkpoint", str(pico_checkpoint),
           "--train", digits["train"], "--val", digits["val"], "--mae.batch_size", "256", "--mae.epochs", "2",
           "--mae.warmup_epochs", "1", "--num_workers", "0", "--out_dir", str(tmp_path)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("metrics:") == 1 and done.stdout.count("MAE protocol: 2 epochs, 10 LARS steps") == 1
    metrics = json.loads((tmp_path / "linear_probe_mae.json").read_text())
    protocol = metrics["protocol"]
    assert (protocol["num_processes"], protocol["batch_per_process"], protocol["steps"]) == (2, 128, 10)
    assert metrics["num_val"] == 360, "the validation features of both ranks are gathered"
