"""Fine-tune a pretrained encoder with a new classification head: the same as `sslvit finetune` (see `sslvit finetune --help`).

    python pipelines/finetune.py [ARGS ...]
    accelerate launch pipelines/finetune.py [ARGS ...]
"""

from sslvit.cli.finetune import ALIASES, main

__all__ = ["ALIASES", "main"]

if __name__ == "__main__":
    raise SystemExit(main())
