"""Linear probe of a frozen encoder: the same as `sslvit probe` (see `sslvit probe --help`).

    python pipelines/linear_probe.py [ARGS ...]
    accelerate launch pipelines/linear_probe.py [ARGS ...]
"""

from sslvit.cli.probe import main

__all__ = ["main"]

if __name__ == "__main__":
    raise SystemExit(main())
