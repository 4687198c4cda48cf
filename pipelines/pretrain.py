"""Pretrain a ViT encoder.

    accelerate launch pipelines/pretrain.py [--config FILE] [overrides]
    python pipelines/pretrain.py [--config FILE] [overrides]

With no arguments: MAE on the built-in handwritten-digits corpus with a small ViT
(sslvit/configs/default.yaml), a few minutes on 2 CPU cores. Overrides are
`section.key=value` or `--section.key value`, e.g. `train.steps=200 --data.batch_size 64`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sslvit import config as config_lib  # noqa: E402
from sslvit.config import ConfigError, RunConfig  # noqa: E402

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "sslvit" / "configs" / "default.yaml"


def _sections_help() -> str:
    import dataclasses

    lines = ["config keys (section.key, default):"]
    for section in dataclasses.fields(RunConfig):
        for f in dataclasses.fields(section.default_factory()):
            default = getattr(section.default_factory(), f.name)
            lines.append(f"  {section.name}.{f.name} = {default!r}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__,
        epilog=_sections_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
        usage="%(prog)s [-h] [--config FILE] [section.key=value | --section.key value ...]",
    )
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="YAML config (default: %(default)s)")
    args, overrides = parser.parse_known_args(argv)
    try:
        cfg = config_lib.load(args.config, overrides)
    except (ConfigError, FileNotFoundError) as err:
        parser.exit(2, f"pretrain.py: error: {err}\n")

    from sslvit.train import train

    result = train(cfg)
    from accelerate import PartialState

    if PartialState().is_main_process:
        print(f"\nencoder:   {result.model_path}")
        print(f"objective: {result.objective_path} (encoder + decoder, for reconstructions)")
        print(f"config:    {result.run_dir / 'config.yaml'}    metrics: {result.run_dir / 'metrics.jsonl'}")
        print("evaluate it:")
        print(f"  python pipelines/linear_probe.py --checkpoint {result.model_path}")
        print(f"  python pipelines/knn.py --checkpoint {result.model_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
