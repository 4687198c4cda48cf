"""Linear probe of a frozen encoder (MAE protocol: BatchNorm without affine, then a linear layer).

    python pipelines/linear_probe.py --checkpoint runs/NAME/model.safetensors [--train SPEC] [--val SPEC]
    accelerate launch pipelines/linear_probe.py --checkpoint PATH    (feature extraction split over ranks)

Features are extracted once and cached; a sweep of learning rates x weight decays is trained in
one pass, the point is chosen on a held-out part of the training split, and top-1 / top-5 on the
validation split are written to <out_dir>/linear_probe.json. Default data: the built-in digits corpus.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sslvit.checkpoint import CheckpointError  # noqa: E402
from sslvit.config import ConfigError  # noqa: E402
from sslvit.evaluate.common import parse_cli  # noqa: E402
from sslvit.evaluate.linear_probe import ProbeConfig, run_linear_probe  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    cfg = parse_cli(ProbeConfig, argv, __doc__)
    try:
        metrics = run_linear_probe(cfg)
    except (CheckpointError, ConfigError, FileNotFoundError, KeyError, ValueError) as err:
        print(f"linear_probe.py: error: {err}", file=sys.stderr)
        return 2
    if "metrics_path" in metrics:  # the main process
        chosen = metrics["chosen"]
        print(f"linear probe of {metrics['checkpoint']['path']}")
        print(f"  chosen on {metrics['protocol']['holdout_size']} held-out training samples: "
              f"lr {chosen['lr']:g}, weight decay {chosen['weight_decay']:g}")
        print(f"  val top-1 {metrics['val_top1']:.2f}%  top-5 {metrics['val_top5']:.2f}%  "
              f"({metrics['num_val']} images, {metrics['num_classes']} classes)")
        print(f"metrics: {metrics['metrics_path']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
