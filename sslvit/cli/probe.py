"""``sslvit probe``: linear probe of a frozen encoder (MAE protocol)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sslvit.cli.common import quoted
from sslvit.cli.evaluator import run_evaluator
from sslvit.evaluate.linear_probe import ProbeConfig, run_linear_probe

DESCRIPTION = """\
Linear probe of a frozen encoder (MAE protocol: BatchNorm without affine, then a linear layer).

    sslvit probe --checkpoint runs/NAME/model.safetensors [--train SPEC] [--val SPEC]
    accelerate launch -m sslvit probe --checkpoint PATH    (feature extraction split over ranks)

Features are extracted once and cached; a sweep of learning rates x weight decays is trained in one
pass, the point is chosen on a held-out part of the training split, and top-1 / top-5 on the
validation split are written to <out_dir>/linear_probe.json. Default data: the built-in digits corpus.
"""


def report(cfg: Any, metrics: dict[str, Any]) -> None:
    """Print the chosen point, the accuracies and where the metrics are."""
    chosen = metrics["chosen"]
    print(f"linear probe of {metrics['checkpoint']['path']}")
    print(f"  chosen on {metrics['protocol']['holdout_size']} held-out training samples: "
          f"lr {chosen['lr']:g}, weight decay {chosen['weight_decay']:g}")
    print(f"  val top-1 {metrics['val_top1']:.2f}%  top-5 {metrics['val_top5']:.2f}%  "
          f"({metrics['num_val']} images, {metrics['num_classes']} classes)")
    print(f"metrics: {quoted(metrics['metrics_path'])}")
    if Path(cfg.checkpoint).is_file():
        print(f"publish with it: sslvit publish --checkpoint {quoted(cfg.checkpoint)} --repo-id ORG/NAME "
              f"--metrics {quoted(metrics['metrics_path'])}")


def main(argv: Sequence[str] | None = None, prog: str = "sslvit probe") -> int:
    """Run ``sslvit probe``; returns the exit status."""
    return run_evaluator(argv, prog, DESCRIPTION, ProbeConfig, run_linear_probe, report)
