"""Evaluation results for the model card: read metrics JSON files and check they measured this checkpoint.

A metrics file is a JSON object with at least the task (``task`` or the evaluators' ``evaluator``:
``linear_probe``, ``knn`` or ``finetune``) and the top-1 accuracy (``top1`` or ``val_top1``); optionally
``top5`` / ``val_top5``, the dataset (``dataset``, else derived from ``data.val``) and the checkpoint
it measured (``checkpoint: {"path", "sha256"}``, as the sslvit evaluators write it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sslvit.checkpoint import checkpoint_sha256 as weights_sha256
from sslvit.files import MANIFEST_FILE
from sslvit.hub.common import PublishError

TASKS = {
    "linear_probe": "Linear probe (frozen features)",
    "knn": "k-NN classification (frozen features)",
    "finetune": "Fine-tuning",
}
SPLITS = ("train", "val", "validation", "test")
PROTOCOLS = {"fast": "sslvit's fast sweep, not a paper's protocol", "mae": "MAE's protocol"}


@dataclass
class EvalResult:
    """One evaluation: task key, dataset name and split, accuracies in the units the file used."""

    task: str
    dataset: str
    split: str
    top1: float
    top5: float | None
    source: str
    protocol: str = ""  # a linear probe's protocol: "fast" (sslvit's quick sweep) or "mae"

    @property
    def task_name(self) -> str:
        if self.protocol:
            return f"{TASKS[self.task][:-1]}; {PROTOCOLS.get(self.protocol, self.protocol + ' protocol')})"
        return TASKS[self.task]


def _dataset(record: dict[str, Any]) -> tuple[str, str]:
    """(name, split) of the evaluation dataset: ``dataset``/``split`` keys, else parsed from ``data.val``."""
    split = str(record.get("split") or "val")
    if isinstance(record.get("dataset"), str) and record["dataset"]:
        return record["dataset"], split
    spec = str(((record.get("data") or {}).get("val")) or "")
    if not spec:
        return "digits", split  # the evaluators' default validation split
    if spec.startswith("hf:"):
        parts = spec[3:].split(":")
        return parts[0], parts[1] if len(parts) > 1 else split
    path = Path(spec.split(",")[0])
    if path.name == MANIFEST_FILE or "{" in path.name or path.suffix == ".tar":
        path = path.parent
    if path.name in SPLITS:
        return path.parent.name or path.name, path.name
    return path.name or spec, split


def _checkpoint_ref(record: dict[str, Any]) -> tuple[str | None, str | None]:
    ref = record.get("checkpoint")
    if isinstance(ref, dict):
        return ref.get("path"), ref.get("sha256")
    return (ref if isinstance(ref, str) else None), record.get("checkpoint_sha256")


def read_metrics(
    path: str | Path, checkpoint: str | Path, checkpoint_sha256: str | None = None
) -> EvalResult:
    """Parse one metrics file and check it measured ``checkpoint``; raise :class:`PublishError` otherwise.

    The file must name its checkpoint: by sha256 (compared with the checkpoint file's bytes) or, when it
    carries no hash, by path (compared after resolving both).
    """
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise PublishError(f"metrics file {path}: cannot be read as JSON ({err})") from None
    if not isinstance(record, dict):
        raise PublishError(f"metrics file {path}: expected a JSON object")
    task = record.get("task") or record.get("evaluator")
    if task not in TASKS:
        raise PublishError(f"metrics file {path}: task {task!r} is not one of {', '.join(TASKS)}")
    top1 = record.get("top1", record.get("val_top1"))
    top5 = record.get("top5", record.get("val_top5"))
    for name, value in (("top1", top1), ("top5", top5)):
        if (value is not None or name == "top1") and (
            isinstance(value, bool) or not isinstance(value, (int, float))
        ):
            raise PublishError(f"metrics file {path}: {name} must be a number, got {value!r}")
    ref_path, ref_sha = _checkpoint_ref(record)
    checkpoint = Path(checkpoint)
    if ref_sha is not None:
        actual = checkpoint_sha256 or weights_sha256(checkpoint)
        if ref_sha != actual:
            raise PublishError(
                f"metrics file {path} measured a different checkpoint: its sha256 is "
                f"{ref_sha[:16]}..., {checkpoint} has {actual[:16]}..."
            )
    elif ref_path is not None:
        if Path(ref_path).expanduser().resolve() != checkpoint.resolve():
            raise PublishError(f"metrics file {path} measured {ref_path}, not {checkpoint}")
    else:
        raise PublishError(
            f"metrics file {path} does not say which checkpoint it measured "
            '(expected "checkpoint": {"path": ..., "sha256": ...})'
        )
    dataset, split = _dataset(record)
    protocol = record.get("protocol")
    name = str(protocol.get("name", "")) if isinstance(protocol, dict) and task == "linear_probe" else ""
    return EvalResult(task, dataset, split, float(top1), None if top5 is None else float(top5), path.name, name)
