"""Pretrain a ViT encoder: the same as `sslvit pretrain` (see `sslvit pretrain --help`).

    python pipelines/pretrain.py [ARGS ...]
    accelerate launch pipelines/pretrain.py [ARGS ...]
"""

from sslvit.cli.pretrain import main

__all__ = ["main"]

if __name__ == "__main__":
    raise SystemExit(main())
