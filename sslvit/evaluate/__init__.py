"""Evaluators of a pretrained encoder: linear probe, kNN (frozen features) and full fine-tuning.

Each evaluator is a small module with an options dataclass and one ``run_*`` function that writes a
metrics JSON (what was evaluated: checkpoint path + sha256 and data; the chosen hyper-parameters;
the numbers):

    run_linear_probe(ProbeConfig(checkpoint=...))   -> <out_dir>/linear_probe.json
    run_knn(KnnConfig(checkpoint=...))              -> <out_dir>/knn.json
    run_finetune(FinetuneConfig(...))               -> <run_dir>/finetune.json

Frozen features are extracted once per (checkpoint, data, options) and cached (``features.py``).
"""

from __future__ import annotations

from sslvit.evaluate.common import EvalConfig
from sslvit.evaluate.finetune import FinetuneConfig, run_finetune
from sslvit.evaluate.knn import KnnConfig, knn_evaluate, knn_scores, run_knn
from sslvit.evaluate.linear_probe import ProbeConfig, fit_probe, run_linear_probe

__all__ = [
    "EvalConfig",
    "KnnConfig",
    "ProbeConfig",
    "FinetuneConfig",
    "fit_probe",
    "knn_evaluate",
    "knn_scores",
    "run_finetune",
    "run_knn",
    "run_linear_probe",
]

