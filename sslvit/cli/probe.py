"""``sslvit probe``: linear probe of a frozen encoder (a fast cached sweep, or MAE's protocol)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sslvit.cli.common import quoted
from sslvit.cli.evaluator import run_evaluator
from sslvit.evaluate.linear_probe import FAST_NOTE, ProbeConfig, run_linear_probe

DESCRIPTION = """\
Linear probe of a frozen encoder: BatchNorm without affine parameters, then a linear layer.

    sslvit probe --checkpoint runs/NAME/model.safetensors [--train SPEC] [--val SPEC]
    sslvit probe --protocol mae --checkpoint PATH --train SPEC --val SPEC
    accelerate launch -m sslvit probe [--protocol mae] --checkpoint PATH    (split over the processes)

--protocol fast (default; quick, not a paper's protocol): features of centre crops are extracted once
and cached; a sweep of learning rates x weight decays is trained in one pass, the point is chosen on
a held-out part of the training split; top-1 / top-5 on the validation split go to
<out_dir>/linear_probe.json.
--protocol mae: MAE's main_linprobe.py, the protocol of its paper's 68.0% (ViT-B): LARS, batch
16384 over all processes, blr 0.1, 90 epochs (10 warmup), new RandomResizedCrop + flip crops every
epoch through the frozen encoder, BatchNorm + a linear layer initialised with std 0.01; the mae.*
keys; <out_dir>/linear_probe_mae.json. A split smaller than mae.batch_size is refused.
Default data: the built-in digits corpus.
"""


def report(cfg: Any, metrics: dict[str, Any]) -> None:
    """Print the chosen point, the accuracies and where the metrics are."""
    protocol = metrics["protocol"]
    print(f"linear probe of {metrics['checkpoint']['path']}")
    if protocol["name"] == "fast":
        print(f"  {FAST_NOTE}")
        chosen = metrics["chosen"]
        print(f"  chosen on {protocol['holdout_size']} held-out training samples: "
              f"lr {chosen['lr']:g}, weight decay {chosen['weight_decay']:g}")
    else:
        print(f"  MAE protocol: {protocol['epochs']} epochs, {protocol['steps']} LARS steps of "
              f"{protocol['batch_size']} images, peak lr {protocol['lr']:g}, final train loss "
              f"{metrics['history'][-1]['loss']:.4f}, {metrics['seconds']:.0f} s")
    print(f"  val top-1 {metrics['val_top1']:.2f}%  top-5 {metrics['val_top5']:.2f}%  "
          f"({metrics['num_val']} images, {metrics['num_classes']} classes)")
    print(f"metrics: {quoted(metrics['metrics_path'])}")
    if Path(cfg.checkpoint).is_file():
        print(f"publish with it: sslvit publish --checkpoint {quoted(cfg.checkpoint)} --repo-id ORG/NAME "
              f"--metrics {quoted(metrics['metrics_path'])}")


def main(argv: Sequence[str] | None = None, prog: str = "sslvit probe") -> int:
    """Run ``sslvit probe``; returns the exit status."""
    return run_evaluator(argv, prog, DESCRIPTION, ProbeConfig, run_linear_probe, report)
