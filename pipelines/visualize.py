"""Pictures of a trained encoder: the same as `sslvit visualize` (see `sslvit visualize --help`).

    python pipelines/visualize.py [ARGS ...]
    accelerate launch pipelines/visualize.py [ARGS ...]
"""

from sslvit.cli.visualize import main

__all__ = ["main"]

if __name__ == "__main__":
    raise SystemExit(main())
