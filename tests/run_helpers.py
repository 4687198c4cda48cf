"""Small labelled shards and tiny run settings for in-process training tests (no sklearn, a second to build)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sslvit.data.digits import png_items
from sslvit.data.shards import write_shards

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = ROOT / "sslvit" / "configs" / "default.yaml"
# the default run's MAE shrunk to a pico ViT and a one-block decoder (data settings left to each test)
TINY_MAE = ["model.name=vit_pico_patch4", "objective.decoder_depth=1", "objective.decoder_dim=32",
            "objective.decoder_heads=2", "train.progress=false", "train.log_every=1",
            "optim.warmup_steps=2", "optim.base_lr=1e-3"]

TINY = ["model.name=vit_pico_patch4", "objective.decoder_depth=1", "objective.decoder_dim=32",
        "objective.decoder_heads=2", "data.batch_size=16", "data.num_workers=0", "train.progress=false",
        "train.log_every=1", "optim.warmup_steps=1", "optim.base_lr=1e-3"]


def bar_images(count: int, seed: int, size: int = 32, classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (count, size, size) grayscale images whose class c is a bright horizontal bar at rows
    3c..3c+2 over noise, and their int64 labels (count,), the classes in turn."""
    rng = np.random.default_rng(seed)
    labels = np.arange(count, dtype=np.int64) % classes
    images = rng.integers(0, 60, size=(count, size, size), dtype=np.uint8)
    for i, c in enumerate(labels):
        images[i, 3 * c : 3 * c + 3, :] = 230
    return images, labels


def bar_shards(root: Path, train: int = 160, val: int = 100) -> dict[str, str]:
    """``root/{train,val}`` shard directories (32 px bar images, 10 classes): split -> directory."""
    out = {}
    for split, count, seed in (("train", train, 0), ("val", val, 1)):
        images, labels = bar_images(count, seed)
        mean, std = float(images.mean() / 255), float(images.std() / 255)
        write_shards(png_items(images, labels, f"bars-{split}"), root / split, prefix=f"bars-{split}",
                     max_count=1000, class_names=[str(i) for i in range(10)], verify=False,
                     compute_stats=False, total=count, progress=False,
                     extra={"mean": [mean] * 3, "std": [std] * 3})
        out[split] = str(root / split)
    return out


def poison_loss(monkeypatch, bad_call) -> None:
    """Make the objective's loss NaN on the forward calls ``n`` (1-based) for which ``bad_call(n)`` is true."""
    import sslvit.training.run as run

    real = run.build_objective
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        objective = real(*args, **kwargs)
        forward = objective.forward

        def forward_with_nan(batch):
            calls["n"] += 1
            loss, metrics = forward(batch)
            return (loss * float("nan") if bad_call(calls["n"]) else loss), metrics

        objective.forward = forward_with_nan
        return objective

    monkeypatch.setattr(run, "build_objective", poisoned)
