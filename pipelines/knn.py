"""Weighted k-nearest-neighbour classification on normalised frozen features (DINO protocol).

    python pipelines/knn.py --checkpoint runs/NAME/model.safetensors [--k 20] [--temperature 0.07]
    accelerate launch pipelines/knn.py --checkpoint PATH    (feature extraction split over ranks)

The training split is the memory bank; each validation image takes its k most cosine-similar
training features, weighted by exp(similarity / T). Top-1 / top-5 go to <out_dir>/knn.json.
Default data: the built-in digits corpus.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sslvit.checkpoint import CheckpointError  # noqa: E402
from sslvit.config import ConfigError  # noqa: E402
from sslvit.evaluate.common import parse_cli  # noqa: E402
from sslvit.evaluate.knn import KnnConfig, run_knn  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    cfg = parse_cli(KnnConfig, argv, __doc__)
    try:
        metrics = run_knn(cfg)
    except (CheckpointError, ConfigError, FileNotFoundError, KeyError, ValueError) as err:
        print(f"knn.py: error: {err}", file=sys.stderr)
        return 2
    if "metrics_path" in metrics:  # the main process
        print(f"kNN (k={cfg.k}, T={cfg.temperature}) of {metrics['checkpoint']['path']}")
        print(f"  val top-1 {metrics['val_top1']:.2f}%  top-5 {metrics['val_top5']:.2f}%  "
              f"({metrics['num_val']} queries, {metrics['num_train']} in the bank)")
        print(f"metrics: {metrics['metrics_path']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
