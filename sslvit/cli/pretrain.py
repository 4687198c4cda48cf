"""``sslvit pretrain``: pretrain an encoder from a config file plus ``section.key=value`` overrides."""

from __future__ import annotations

import argparse
import textwrap
from collections.abc import Sequence
from pathlib import Path

from sslvit.cli.common import DEFAULT_CONFIG, CliError, error_text, fail, quoted, resolve_config
from sslvit.cli.keys import key_table
from sslvit.files import METRICS_FILE, RUN_CONFIG_FILE
from sslvit.progress import is_main_process
from sslvit.training import config as config_lib

DESCRIPTION = """\
Pretrain a ViT encoder.

    sslvit pretrain [--config FILE_OR_NAME] [section.key=value | --section.key value ...]
    accelerate launch -m sslvit pretrain [--config FILE_OR_NAME] [overrides]

With no arguments: MAE on the built-in handwritten-digits corpus with a small ViT (the shipped
config `default`), built into data/shards/digits under the working directory on first use; the run
goes to runs/NAME. --config takes a YAML file or the name of a shipped config (`sslvit configs`
lists them); overrides are YAML values, e.g. `train.steps=200 --data.batch_size 64`.
`sslvit config [same arguments]` prints the resolved config without running anything.
"""


def build_parser(prog: str) -> argparse.ArgumentParser:
    """The options besides the overrides: ``--config`` and ``--help``."""
    parser = argparse.ArgumentParser(prog=prog, add_help=False, allow_abbrev=False)
    parser.add_argument("--config", default=None)
    parser.add_argument("-h", "--help", action="store_true")
    return parser


def load_run_config(config: str | None, overrides: Sequence[str]) -> tuple[config_lib.RunConfig, Path]:
    """Resolve ``--config`` (file or shipped name; None = the default run) and apply ``overrides``.

    Returns the config and the file it came from. Raises :class:`CliError`,
    :class:`~sslvit.config.ConfigError` or ``FileNotFoundError`` naming the bad name, key or file.
    """
    path = resolve_config(config) if config is not None else DEFAULT_CONFIG
    return config_lib.load(path, overrides), path


def help_text(prog: str, cfg: config_lib.RunConfig, source: Path) -> str:
    """``--help``: usage, description and every key with the value this command line would use."""
    where = textwrap.fill(f"config keys, with the values this command uses ({source} over the built-in "
                          f"defaults, then the overrides given; the objective keys are those of "
                          f"objective.name={cfg.objective.name}):", 100)
    return (f"usage: {prog} [-h] [--config FILE_OR_NAME] [section.key=value | --section.key value ...]\n\n"
            f"{DESCRIPTION}\n{where}\n{key_table(cfg)}\n")


def next_steps(model_path: str | Path) -> list[str]:
    """Commands that evaluate the encoder at ``model_path``; they work from any directory."""
    checkpoint = quoted(model_path)
    return [f"sslvit probe --checkpoint {checkpoint}",
            f"sslvit knn --checkpoint {checkpoint}",
            f"sslvit visualize --checkpoint {checkpoint}",
            f"sslvit publish --checkpoint {checkpoint} --repo-id ORG/NAME --dry-run "
            f"{quoted(Path(model_path).resolve().parent / 'hub')}"]


def main(argv: Sequence[str] | None = None, prog: str = "sslvit pretrain") -> int:
    """Run ``sslvit pretrain``; returns the exit status (2 for a bad key, value or file)."""
    args, overrides = build_parser(prog).parse_known_args(argv)
    try:
        cfg, source = load_run_config(args.config, overrides)
    except (CliError, config_lib.ConfigError, FileNotFoundError) as err:
        return fail(prog, error_text(err))
    if args.help:
        print(help_text(prog, cfg, source), end="")
        return 0

    from sslvit.evaluate.online import online_hooks  # deferred: torch-free CLI start
    from sslvit.training import ResumeError, train  # deferred: torch-free CLI start

    try:
        result = train(cfg, hooks=online_hooks(cfg))
    except (config_lib.ConfigError, FileNotFoundError, ResumeError, PermissionError) as err:
        return fail(prog, error_text(err))
    if is_main_process():
        print(f"\nencoder:   {result.model_path.resolve()}")
        print(f"objective: {result.objective_path.resolve()} (encoder + decoder, for reconstructions)")
        print(f"config:    {(result.run_dir / RUN_CONFIG_FILE).resolve()}    "
              f"metrics: {(result.run_dir / METRICS_FILE).resolve()}")
        print("next:")
        for command in next_steps(result.model_path):
            print(f"  {command}")
    return 0
