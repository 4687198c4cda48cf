"""Linear probing of frozen features: BatchNorm without affine parameters, then a linear layer.

Two protocols. ``fast`` (the default, for quick looks; not a paper's protocol): features of the
centre crops are extracted once and cached, and a sweep of SGD heads is trained over them. ``mae``:
MAE's own ``main_linprobe.py`` (LARS, batch 16384, 90 epochs, new crops through the frozen encoder
every epoch), whose numbers stand beside the paper's; see :mod:`sslvit.evaluate.probe_mae`.

In the fast protocol, every (learning rate, weight decay) pair of the sweep is its own linear head; all heads are stacked
into one weight tensor and trained together in one pass over the cached features. The pair is
chosen on a held-out part of the *training* split (:func:`fit_probe` never sees the validation
split), then, by default, refit on the whole training split. Only the chosen head is evaluated on
the validation split.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from accelerate import PartialState
from torch import nn

from sslvit.config import ConfigError, check_tree
from sslvit.evaluate.common import EvalConfig, opt, output_dir, topk_accuracy, write_metrics
from sslvit.evaluate.features import features_for_config
from sslvit.evaluate.probe_mae import MaeProbeOptions, run_mae_probe
from sslvit.progress import progress, say


@dataclass
class ProbeConfig(EvalConfig):
    """Options of ``sslvit probe``: the shared ones, the fast protocol's, and the ``mae`` section."""

    protocol: Literal["fast", "mae"] = opt("fast", "fast: cached centre-crop features and an SGD sweep (quick; "
                                                   "not a paper's protocol); mae: MAE's linear probe (LARS, "
                                                   "batch 16384, 90 epochs, new crops every epoch; mae.* keys)")
    lrs: tuple[float, ...] = opt((0.01, 0.03, 0.1, 0.3, 1.0, 3.0), "base learning rates swept (SGD, "
                                                                    "scaled by probe_batch_size / 256)", gt=0)
    weight_decays: tuple[float, ...] = opt((0.0, 1e-4, 1e-3), "weight decays swept", ge=0)
    epochs: int = opt(100, "passes over the cached training features", ge=1)
    warmup_epochs: int = opt(10, "linear learning-rate warmup, then cosine decay to 0", ge=0)
    probe_batch_size: int = opt(256, "features per SGD step", ge=1)
    momentum: float = opt(0.9, "SGD momentum", ge=0, lt=1)
    holdout_fraction: float = opt(0.1, "share of each training class held out to choose the sweep point; "
                                       "0 = none: the sweep's first lr and weight decay are used", ge=0, lt=1)
    refit: bool = opt(True, "retrain the chosen head on the whole training split before validation")
    mae: MaeProbeOptions = field(default_factory=MaeProbeOptions)


FAST_ONLY = ("lrs", "weight_decays", "epochs", "warmup_epochs", "probe_batch_size", "momentum",
             "holdout_fraction", "refit")
FAST_NOTE = ("fast protocol: cached centre-crop features and an SGD sweep; quick, and not a paper's protocol "
             "(for a number beside MAE's: --protocol mae)")


def check_protocol(cfg: ProbeConfig) -> None:
    """Refuse options of the protocol that does not run (a key that would be ignored), naming it."""
    default = ProbeConfig()
    if cfg.protocol == "fast":
        changed = [f.name for f in dataclasses.fields(MaeProbeOptions)
                   if getattr(cfg.mae, f.name) != getattr(default.mae, f.name)]
        if changed:
            raise ConfigError(f"mae.{changed[0]}: an option of --protocol mae; add --protocol mae or leave it out")
        return
    changed = [k for k in FAST_ONLY if getattr(cfg, k) != getattr(default, k)]
    if changed:
        raise ConfigError(f"{changed[0]}: an option of --protocol fast, which does not run; --protocol "
                          f"mae takes mae.* ({', '.join(f.name for f in dataclasses.fields(MaeProbeOptions))})")


class StackedProbe(nn.Module):
    """``H`` linear heads over one shared ``BatchNorm1d(affine=False)``.

    forward: x (N, D) -> logits (H, N, C).
    """

    def __init__(self, dim: int, num_classes: int, num_heads: int, generator: torch.Generator | None = None):
        super().__init__()
        self.bn = nn.BatchNorm1d(dim, affine=False, eps=1e-6)
        weight = torch.randn(num_heads, dim, num_classes, generator=generator) * 0.01
        self.weight = nn.Parameter(weight)
        self.bias = nn.Parameter(torch.zeros(num_heads, 1, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("nd,hdc->hnc", self.bn(x), self.weight) + self.bias

    def head(self, index: int) -> StackedProbe:
        """A single-head probe holding head ``index`` and the shared BatchNorm statistics."""
        one = StackedProbe(self.weight.shape[1], self.weight.shape[2], 1)
        one.bn.load_state_dict(self.bn.state_dict())
        with torch.no_grad():
            one.weight.copy_(self.weight[index : index + 1])
            one.bias.copy_(self.bias[index : index + 1])
        return one.eval()


def train_heads(
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    lrs: torch.Tensor,
    wds: torch.Tensor,
    cfg: ProbeConfig,
    desc: str = "probe",
) -> StackedProbe:
    """Train one head per (lrs[h], wds[h]) pair together with SGD + momentum and a cosine schedule.

    x: (N, D) float features, y: (N,) int64, lrs / wds: (H,). Returns the probe in eval mode.
    A progress bar labelled ``desc`` counts the epochs on the main process.
    """
    probe = StackedProbe(x.shape[1], num_classes, lrs.numel(), torch.Generator().manual_seed(cfg.seed))
    probe = probe.to(x.device).train()
    gen = torch.Generator().manual_seed(cfg.seed + 1)  # batch order, the same for any number of heads
    lrs = lrs.to(x.device).view(-1, 1, 1) * cfg.probe_batch_size / 256
    wds = wds.to(x.device).view(-1, 1, 1)
    params = [probe.weight, probe.bias]
    buffers = [torch.zeros_like(p) for p in params]
    steps_per_epoch = max(1, math.ceil(x.shape[0] / cfg.probe_batch_size))
    total, warmup = cfg.epochs * steps_per_epoch, cfg.warmup_epochs * steps_per_epoch
    step = 0
    for _ in progress(range(cfg.epochs), desc=desc, unit="epoch", leave=False):
        order = torch.randperm(x.shape[0], generator=gen).to(x.device)
        for start in range(0, x.shape[0], cfg.probe_batch_size):
            idx = order[start : start + cfg.probe_batch_size]
            if idx.numel() < 2:  # BatchNorm needs two samples
                continue
            logits = probe(x[idx])  # (H, n, C)
            # Sum of per-head mean losses: each head's gradient is its own.
            loss = F.cross_entropy(logits.flatten(0, 1), y[idx].repeat(lrs.shape[0]), reduction="sum")
            grads = torch.autograd.grad(loss / idx.numel(), params)
            if step < warmup:
                scale = (step + 1) / warmup
            else:
                scale = 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))
            with torch.no_grad():
                for p, g, buf, decay in zip(params, grads, buffers, (wds, 0.0), strict=True):
                    buf.mul_(cfg.momentum).add_(g + decay * p)
                    p.sub_(lrs * scale * buf)
            step += 1
    return probe.eval()


@torch.no_grad()
def predict(probe: StackedProbe, x: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """Logits (H, N, C) of every head for features x (N, D), in eval mode."""
    probe.eval()
    return torch.cat([probe(x[i : i + chunk]) for i in range(0, x.shape[0], chunk)], dim=1)


def holdout_split(y: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (fit, held out) that hold out ``fraction`` of each class (at least one sample of a
    class with two or more). y: (N,) int64."""
    gen = torch.Generator().manual_seed(seed)
    fit, held = [], []
    for c in torch.unique(y).tolist():
        idx = (y == c).nonzero().flatten()
        idx = idx[torch.randperm(idx.numel(), generator=gen)]
        n_held = min(idx.numel() - 1, max(1, round(fraction * idx.numel()))) if fraction > 0 else 0
        held.append(idx[:n_held])
        fit.append(idx[n_held:])
    return torch.cat(fit).sort().values, torch.cat(held).sort().values


def fit_probe(x: torch.Tensor, y: torch.Tensor, num_classes: int, cfg: ProbeConfig) -> dict[str, Any]:
    """Sweep, choose on held-out training features, optionally refit; only ever sees the training split.

    x: (N, D) training features, y: (N,) training labels. Returns ``{"probe": single-head StackedProbe,
    "lr", "weight_decay", "sweep": [{lr, weight_decay, holdout_top1, holdout_loss}], "holdout_size"}``.
    """
    grid = [(lr, wd) for lr in cfg.lrs for wd in cfg.weight_decays]
    lrs = torch.tensor([g[0] for g in grid], dtype=torch.float32)
    wds = torch.tensor([g[1] for g in grid], dtype=torch.float32)
    fit_idx, held_idx = holdout_split(y.cpu(), cfg.holdout_fraction, cfg.seed)
    fit_idx, held_idx = fit_idx.to(x.device), held_idx.to(x.device)
    probe = train_heads(x[fit_idx], y[fit_idx], num_classes, lrs, wds, cfg, f"probe sweep ({len(grid)} heads)")
    sweep = []
    if held_idx.numel() > 0:
        logits = predict(probe, x[held_idx])  # (H, n, C)
        target = y[held_idx]
        for h, (lr, wd) in enumerate(grid):
            loss = F.cross_entropy(logits[h], target).item()
            top1 = topk_accuracy(logits[h], target, ks=(1,))["top1"]
            sweep.append({"lr": lr, "weight_decay": wd, "holdout_top1": top1, "holdout_loss": loss})
        best = max(range(len(grid)), key=lambda h: (sweep[h]["holdout_top1"], -sweep[h]["holdout_loss"]))
    else:
        best = 0
        if len(grid) > 1:
            say(f"probe: no held-out training features (holdout_fraction={cfg.holdout_fraction}), so the "
                f"sweep's first point is used unchosen: lr {grid[0][0]}, weight decay {grid[0][1]}")
    lr, wd = grid[best]
    if cfg.refit:
        chosen = train_heads(x, y, num_classes, lrs[best : best + 1], wds[best : best + 1], cfg, "probe refit").head(0)
    else:
        chosen = probe.head(best)
    return {"probe": chosen, "lr": lr, "weight_decay": wd, "sweep": sweep, "holdout_size": int(held_idx.numel())}


def evaluate_probe(probe: StackedProbe, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Top-1 / top-5 (percent) of a single-head probe on features x (N, D) with labels y (N,)."""
    return topk_accuracy(predict(probe, x)[0], y)


def run_linear_probe(cfg: ProbeConfig) -> dict[str, Any]:
    """Extract (or reuse) features, fit the probe on the training split, report the validation split.

    Writes ``<out_dir>/linear_probe.json`` (``linear_probe_mae.json`` for ``protocol="mae"``) from
    the main process and returns the metrics dict. Values out of their ranges, and options of the
    other protocol, are refused (``ConfigError``) before any work.
    """
    check_tree(cfg)
    check_protocol(cfg)
    if cfg.protocol != "fast":
        return run_mae_probe(cfg, cfg.mae)
    start = time.time()
    feats = features_for_config(cfg)
    device = PartialState().device  # the accelerator's device: train / search on the GPU when there is one
    train_x, train_y = feats["train"]["x"].to(device), feats["train"]["y"].to(device)
    val_x, val_y = feats["val"]["x"].to(device), feats["val"]["y"].to(device)
    num_classes = int(max(train_y.max().item(), val_y.max().item())) + 1
    fitted = fit_probe(train_x, train_y, num_classes, cfg)
    accuracy = evaluate_probe(fitted["probe"], val_x, val_y)
    metrics = {
        "evaluator": "linear_probe",
        **feats["describe"],
        "chosen": {"lr": fitted["lr"], "weight_decay": fitted["weight_decay"]},
        "protocol": {
            "name": "fast", "note": FAST_NOTE, "epochs": cfg.epochs, "warmup_epochs": cfg.warmup_epochs, "batch_size": cfg.probe_batch_size,
            "momentum": cfg.momentum, "holdout_fraction": cfg.holdout_fraction, "refit": cfg.refit,
            "holdout_size": fitted["holdout_size"],
        },
        "num_classes": num_classes,
        "num_train": int(train_x.shape[0]),
        "num_val": int(val_x.shape[0]),
        "val_top1": accuracy["top1"],
        "val_top5": accuracy["top5"],
        "sweep": fitted["sweep"],
        "seconds": round(time.time() - start, 2),
    }
    if feats["is_main"]:
        metrics["metrics_path"] = str(write_metrics(output_dir(cfg) / "linear_probe.json", metrics))
    return metrics
