"""``sslvit knn``: weighted k-nearest-neighbour classification on frozen features (DINO protocol)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sslvit.cli.common import quoted
from sslvit.cli.evaluator import run_evaluator
from sslvit.evaluate.knn import KnnConfig, run_knn

DESCRIPTION = """\
Weighted k-nearest-neighbour classification on normalised frozen features (DINO protocol).

    sslvit knn --checkpoint runs/NAME/model.safetensors [--k 20] [--temperature 0.07]
    accelerate launch -m sslvit knn --checkpoint PATH    (feature extraction split over ranks)

The training split is the memory bank; each validation image takes its k most cosine-similar
training features, weighted by exp(similarity / T). Top-1 / top-5 go to <out_dir>/knn.json.
Default data: the built-in digits corpus.
"""


def report(cfg: Any, metrics: dict[str, Any]) -> None:
    """Print the accuracies and where the metrics are."""
    print(f"kNN (k={cfg.k}, T={cfg.temperature}) of {metrics['checkpoint']['path']}")
    print(f"  val top-1 {metrics['val_top1']:.2f}%  top-5 {metrics['val_top5']:.2f}%  "
          f"({metrics['num_val']} queries, {metrics['num_train']} in the bank)")
    print(f"metrics: {quoted(metrics['metrics_path'])}")


def main(argv: Sequence[str] | None = None, prog: str = "sslvit knn") -> int:
    """Run ``sslvit knn``; returns the exit status."""
    return run_evaluator(argv, prog, DESCRIPTION, KnnConfig, run_knn, report)
