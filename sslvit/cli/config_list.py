"""``sslvit configs``: the configs shipped with the package, each with the first line of its header."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import yaml

from sslvit.cli.common import CONFIG_DIR, header_line, shipped_configs

RUN_SECTIONS = {"data", "model", "objective", "optim", "train", "finetune"}


def main(argv: Sequence[str] | None = None, prog: str = "sslvit configs") -> int:
    """List the shipped configs; accelerate configs (not run configs) are marked as such."""
    parser = argparse.ArgumentParser(
        prog=prog, allow_abbrev=False,
        description="List the configs shipped with sslvit. A run config is used as "
                    "`--config NAME`; an accelerate config as `accelerate launch --config_file PATH`.")
    parser.add_argument("--paths", action="store_true", help="print the file path of each config too")
    args = parser.parse_args(argv)
    configs = shipped_configs()
    width = max(len(name) for name in configs)
    for name, path in configs.items():
        keys = set(yaml.safe_load(path.read_text()) or {})
        kind = "" if keys <= RUN_SECTIONS else "[accelerate config] "
        line = f"{name.ljust(width)}  {kind}{header_line(path)}"
        print(f"{line}\n{' ' * (width + 2)}{path}" if args.paths else line)
    print(f"\n{len(configs)} configs in {CONFIG_DIR}; show one resolved: sslvit config --config NAME")
    return 0
