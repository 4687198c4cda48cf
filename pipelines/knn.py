"""Weighted k-nearest-neighbour classification on frozen features: the same as `sslvit knn` (see `sslvit knn --help`).

    python pipelines/knn.py [ARGS ...]
    accelerate launch pipelines/knn.py [ARGS ...]
"""

from sslvit.cli.knn import main

__all__ = ["main"]

if __name__ == "__main__":
    raise SystemExit(main())
