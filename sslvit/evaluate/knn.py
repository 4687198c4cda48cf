"""Weighted k-nearest-neighbour classification on frozen, L2-normalised features (DINO protocol).

Each query takes its ``k`` most cosine-similar training features; neighbour ``j`` votes for its
class with weight ``exp(sim_j / T)``; the class with the largest summed weight wins.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from accelerate import PartialState

from sslvit.config import check_tree
from sslvit.evaluate.common import EvalConfig, opt, output_dir, topk_accuracy, write_metrics
from sslvit.evaluate.features import features_for_config
from sslvit.progress import progress


@dataclass
class KnnConfig(EvalConfig):
    """Options of ``sslvit knn``."""

    k: int = opt(20, "neighbours per query", ge=1)
    temperature: float = opt(0.07, "T in the neighbour weight exp(cosine similarity / T)", gt=0)
    chunk: int = opt(1024, "queries compared with the training set at once", ge=1)


def knn_scores(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    query_x: torch.Tensor,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    chunk: int = 1024,
) -> torch.Tensor:
    """Class scores of each query from its ``k`` nearest training features.

    train_x: (N, D) features, train_y: (N,) int64 labels in [0, num_classes), query_x: (Q, D).
    Features are L2-normalised here. Returns (Q, num_classes): the summed ``exp(sim / T)`` weights
    of the neighbours of each class.
    """
    if train_x.shape[0] == 0:
        raise ValueError("kNN needs at least one training feature")
    k = min(k, train_x.shape[0])
    bank = F.normalize(train_x.float(), dim=1)
    labels = train_y.long().to(bank.device)
    out = []
    for start in progress(range(0, query_x.shape[0], chunk), desc="kNN", unit="chunk", leave=False):
        q = F.normalize(query_x[start : start + chunk].float().to(bank.device), dim=1)
        sim, idx = (q @ bank.T).topk(k, dim=1)  # (q, k)
        weights = (sim / temperature).exp()
        scores = torch.zeros(q.shape[0], num_classes, device=bank.device, dtype=weights.dtype)
        scores.scatter_add_(1, labels[idx], weights)
        out.append(scores)
    return torch.cat(out) if out else torch.zeros(0, num_classes)


def knn_evaluate(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    val_x: torch.Tensor,
    val_y: torch.Tensor,
    k: int = 20,
    temperature: float = 0.07,
    chunk: int = 1024,
    num_classes: int | None = None,
) -> dict[str, float]:
    """Top-1 / top-5 (percent) of kNN classification of ``val_x`` against the ``train_x`` bank.

    train_x: (N, D), train_y: (N,), val_x: (M, D), val_y: (M,).
    """
    if num_classes is None:
        num_classes = int(max(train_y.max().item(), val_y.max().item())) + 1
    scores = knn_scores(train_x, train_y, val_x, num_classes, k, temperature, chunk)
    return topk_accuracy(scores, val_y.to(scores.device))


def run_knn(cfg: KnnConfig) -> dict[str, Any]:
    """Extract (or reuse) features of both splits and write ``<out_dir>/knn.json``.

    Returns the metrics dict (on every process; only the main process writes the file). Values out
    of their ranges are refused (``ConfigError``) before any work.
    """
    check_tree(cfg)
    start = time.time()
    feats = features_for_config(cfg)
    device = PartialState().device  # the accelerator's device: train / search on the GPU when there is one
    train_x, train_y = feats["train"]["x"].to(device), feats["train"]["y"].to(device)
    val_x, val_y = feats["val"]["x"].to(device), feats["val"]["y"].to(device)
    num_classes = int(max(train_y.max().item(), val_y.max().item())) + 1
    accuracy = knn_evaluate(train_x, train_y, val_x, val_y, cfg.k, cfg.temperature, cfg.chunk, num_classes)
    metrics = {
        "evaluator": "knn",
        **feats["describe"],
        "options": {"k": cfg.k, "temperature": cfg.temperature},
        "num_classes": num_classes,
        "num_train": int(train_x.shape[0]),
        "num_val": int(val_x.shape[0]),
        "val_top1": accuracy["top1"],
        "val_top5": accuracy["top5"],
        "seconds": round(time.time() - start, 2),
    }
    if feats["is_main"]:
        metrics["metrics_path"] = str(write_metrics(output_dir(cfg) / "knn.json", metrics))
    return metrics
