"""Fine-tune a pretrained encoder with a new classification head.

    accelerate launch pipelines/finetune.py --checkpoint runs/NAME/model.safetensors [overrides]
    accelerate launch pipelines/finetune.py --config sslvit/configs/finetune_mae_vit_base.yaml --checkpoint PATH

Layer-wise lr decay, drop path, MixUp / CutMix, label smoothing; validation after every epoch. The
run directory (train.out_dir / train.name) holds model.safetensors, config.yaml, metrics.jsonl and
finetune.json. Defaults fine-tune on the built-in digits corpus. Overrides are `section.key=value`
or `--section.key value`; --checkpoint, --model, --train, --val are short for finetune.checkpoint,
model.name, data.train_shards, data.val_shards.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sslvit.checkpoint import CheckpointError  # noqa: E402
from sslvit.config import ConfigError  # noqa: E402
from sslvit.evaluate.common import parse_cli  # noqa: E402
from sslvit.evaluate.finetune import FINETUNE_HELP, FinetuneConfig, run_finetune  # noqa: E402

ALIASES = {"checkpoint": "finetune.checkpoint", "model": "model.name", "train": "data.train_shards",
           "val": "data.val_shards"}


def main(argv: list[str] | None = None) -> int:
    cfg = parse_cli(FinetuneConfig, argv, __doc__, aliases=ALIASES, extra_help=FINETUNE_HELP)
    try:
        metrics = run_finetune(cfg)
    except (CheckpointError, ConfigError, FileNotFoundError, KeyError, ValueError) as err:
        print(f"finetune.py: error: {err}", file=sys.stderr)
        return 2
    if "metrics_path" in metrics:  # the main process
        print(f"fine-tuned {metrics['checkpoint']['path']} for {metrics['recipe']['steps']} steps")
        print(f"  val top-1 {metrics['val_top1']:.2f}% (best {metrics['best_val_top1']:.2f}%)  "
              f"top-5 {metrics['val_top5']:.2f}%")
        print(f"model:   {metrics['model_path']}")
        print(f"metrics: {metrics['metrics_path']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
