"""``sslvit finetune``: fine-tune a pretrained encoder with a new classification head."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sslvit.cli.common import quoted
from sslvit.cli.evaluator import run_evaluator
from sslvit.evaluate.finetune import FINETUNE_HELP, FinetuneConfig, run_finetune

ALIASES = {"checkpoint": "finetune.checkpoint", "model": "model.name", "train": "data.train_shards",
           "val": "data.val_shards"}

DESCRIPTION = """\
Fine-tune a pretrained encoder with a new classification head.

    sslvit finetune --checkpoint runs/NAME/model.safetensors [overrides]
    accelerate launch -m sslvit finetune --config finetune_mae_vit_base --checkpoint PATH

Layer-wise lr decay, drop path, MixUp / CutMix, label smoothing; validation after every epoch. The
run directory (train.out_dir / train.name) holds model.safetensors, config.yaml, metrics.jsonl and
finetune.json. Defaults fine-tune on the built-in digits corpus. Overrides are `section.key=value`
or `--section.key value`.
"""


def report(cfg: Any, metrics: dict[str, Any]) -> None:
    """Print the accuracies and where the model and metrics are."""
    print(f"fine-tuned {metrics['checkpoint']['path']} for {metrics['recipe']['steps']} steps")
    print(f"  val top-1 {metrics['val_top1']:.2f}% (best {metrics['best_val_top1']:.2f}%)  "
          f"top-5 {metrics['val_top5']:.2f}%")
    print(f"model:   {quoted(metrics['model_path'])}")
    print(f"metrics: {quoted(metrics['metrics_path'])}")


def main(argv: Sequence[str] | None = None, prog: str = "sslvit finetune") -> int:
    """Run ``sslvit finetune``; returns the exit status."""
    return run_evaluator(argv, prog, DESCRIPTION, FinetuneConfig, run_finetune, report,
                         aliases=ALIASES, extra_help=FINETUNE_HELP)
