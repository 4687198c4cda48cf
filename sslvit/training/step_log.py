"""What a step logs: metric means over every rank's valid samples, throughput, ``metrics.jsonl``.

Metrics are summed on the device during a step (no host sync) and reduced over ranks only at log
steps: one reduce and one host read per logged step. Time spent in hooks (online evaluation) is
not training throughput and is left out of ``images_per_s``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from torch import nn

from sslvit.files import METRICS_FILE
from sslvit.training.throughput import mfu


def write_metrics(accelerator: Accelerator, run_dir: Path, step: int, values: dict[str, float]) -> None:
    """Log ``values`` at ``step`` to the trackers and one line of ``metrics.jsonl`` (main process)."""
    if not accelerator.is_main_process:
        return
    accelerator.log(values, step=step)
    with open(run_dir / METRICS_FILE, "a") as f:
        f.write(json.dumps({"step": step, **values}) + "\n")


def _accumulate(sums: dict[str, torch.Tensor], metrics: dict[str, Any], batch: dict) -> torch.Tensor:
    """Add each metric times this rank's number of valid samples to ``sums`` (on the device, no
    host sync) and return that number: padding samples (``valid == False``) weigh nothing."""
    valid = batch.get("valid")
    n = valid.sum().float() if isinstance(valid, torch.Tensor) else torch.tensor(
        float(batch["image"].shape[0]), device=batch["image"].device
    )
    for key, value in metrics.items():
        value = torch.as_tensor(value, device=n.device).detach().float()
        sums[key] = sums[key] + value * n if key in sums else value * n
    return n


def _rank_means(accelerator: Accelerator, sums: dict[str, torch.Tensor], weight: torch.Tensor) -> dict[str, float]:
    """Each metric's mean over the valid samples of every rank (one reduce, one host sync).

    Every rank must report the same metric names (an objective's metrics are fixed by its config).
    With no valid sample anywhere the means are undefined and none is returned.
    """
    names = sorted(sums)
    packed = torch.stack([sums[k] for k in names] + [weight])  # (len(names) + 1,)
    if accelerator.num_processes > 1:
        packed = accelerator.reduce(packed, reduction="sum")
    *totals, count = packed.tolist()
    if count <= 0:
        return {}
    return {k: v / count for k, v in zip(names, totals, strict=True)}


class StepLog:
    """The current step's metric sums and the throughput window since the last logged step."""

    def __init__(self, accelerator: Accelerator, run_dir: Path, every: int, flops_per_image: float | None,
                 bar: Any) -> None:
        self.accelerator, self.run_dir, self.every, self.bar = accelerator, run_dir, every, bar
        self.flops_per_image = flops_per_image
        self.window_start, self.window_images = time.perf_counter(), 0
        self.new_step()

    def new_step(self) -> None:
        """Start the sums of a new optimizer step."""
        self.sums: dict[str, torch.Tensor] = {}
        self.weight = torch.zeros((), device=self.accelerator.device)

    def add(self, metrics: dict[str, Any], loss: torch.Tensor, batch: dict) -> None:
        """Add one micro-batch's metrics and loss, weighted by its valid samples."""
        self.weight = self.weight + _accumulate(self.sums, {**metrics, "loss": loss}, batch)
        self.window_images += batch["image"].shape[0]

    def due(self, step: int, total_steps: int) -> bool:
        """Whether optimizer step ``step`` (1-based) is logged: every ``train.log_every`` and the last."""
        return step % self.every == 0 or step == total_steps

    def write(self, step: int, lr: float, epoch: int, grad_norm: torch.Tensor | None) -> None:
        """Log step ``step``: loss and metric means, lr, images/s (all ranks), epoch, grad norm, MFU."""
        means = _rank_means(self.accelerator, self.sums, self.weight)
        loss_mean = means.pop("loss", float("nan"))
        elapsed = time.perf_counter() - self.window_start
        images_per_s = self.window_images * self.accelerator.num_processes / max(elapsed, 1e-9)
        values = {"loss": loss_mean, "lr": lr, "images_per_s": images_per_s, "epoch": epoch, **means}
        if grad_norm is not None:
            values["grad_norm"] = float(grad_norm)
        utilisation = mfu(self.flops_per_image, images_per_s, self.accelerator)
        if utilisation is not None:
            values["mfu"] = utilisation
        write_metrics(self.accelerator, self.run_dir, step, values)
        self.bar.set_postfix(loss=f"{loss_mean:.4f}", lr=f"{lr:.2e}", img_s=f"{images_per_s:.0f}")
        self.window_start, self.window_images = time.perf_counter(), 0

    def run_hooks(self, hooks: Sequence[Any], step: int, total_steps: int, encoder: nn.Module) -> None:
        """Call each step hook (``hook(step, total_steps, encoder) -> metrics or None``), log what it
        returns, and leave its time out of the throughput window."""
        for hook in hooks:
            start = time.perf_counter()
            values = hook(step, total_steps, encoder)
            if values:
                write_metrics(self.accelerator, self.run_dir, step, values)
            self.window_start += time.perf_counter() - start
