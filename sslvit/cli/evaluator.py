"""The command line the evaluator subcommands share (probe, knn, finetune).

    sslvit probe [--config FILE_OR_NAME] [--key value | key=value ...]

Every option is a key of the evaluator's config dataclass; values are YAML. ``--help`` lists every
key with the value this command line would use and its meaning.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from sslvit import config as config_lib
from sslvit.checkpoint import CheckpointError
from sslvit.cli.common import CliError, error_text, fail, resolve_config
from sslvit.cli.keys import key_table

RUN_ERRORS = (CheckpointError, config_lib.ConfigError, FileNotFoundError, KeyError, ValueError)


def split_args(argv: Sequence[str], aliases: dict[str, str]) -> tuple[str | None, bool, list[str]]:
    """``argv`` -> (``--config`` value, whether help was asked, overrides with aliases expanded)."""
    args, config, wants_help, i = [], None, False, 0
    argv = list(argv)
    while i < len(argv):
        arg = argv[i]
        if arg in ("-h", "--help"):
            wants_help = True
        elif arg == "--config" or arg.startswith("--config="):
            if "=" in arg:
                config = arg.split("=", 1)[1]
            elif i + 1 < len(argv):
                config, i = argv[i + 1], i + 1
            else:
                raise CliError("--config needs a file or a shipped config name")
        else:
            for short, dotted in aliases.items():
                if arg == f"--{short}":
                    arg = f"--{dotted}"
                elif arg.startswith(f"--{short}="):
                    arg = f"--{dotted}={arg.split('=', 1)[1]}"
            args.append(arg)
        i += 1
    return config, wants_help, args


def help_text(prog: str, description: str, cfg: Any, aliases: dict[str, str],
              extra_help: dict[str, str] | None) -> str:
    """Usage, description, the short flags and every key with the value this command line uses."""
    short = "".join(f"  --{name} VALUE".ljust(44) + f"same as --{dotted}\n" for name, dotted in aliases.items())
    return (f"usage: {prog} [-h] [--config FILE_OR_NAME] [--KEY VALUE | KEY=VALUE ...]\n\n{description}\n"
            f"--config takes a YAML file holding any of the keys below, or a shipped config's name\n"
            f"(`sslvit configs`); the command line overrides it.\n{short}\n"
            f"keys, with the values this command line uses (set as --KEY VALUE or KEY=VALUE):\n"
            f"{key_table(cfg, extra_help)}\n")


def run_evaluator(
    argv: Sequence[str] | None,
    prog: str,
    description: str,
    cls: type,
    run: Callable[[Any], dict[str, Any]],
    report: Callable[[Any, dict[str, Any]], None],
    aliases: dict[str, str] | None = None,
    extra_help: dict[str, str] | None = None,
) -> int:
    """Parse ``argv`` into a ``cls``, call ``run(cfg)`` and ``report(cfg, metrics)`` on the main process.

    Returns the exit status: 0, or 2 after one ``{prog}: error: ...`` line for a bad key, value,
    file or checkpoint.
    """
    import sys

    aliases = aliases or {}
    try:
        config, wants_help, overrides = split_args(sys.argv[1:] if argv is None else argv, aliases)
        cfg = config_lib.load(resolve_config(config) if config is not None else None, overrides, cls=cls)
    except (CliError, config_lib.ConfigError, FileNotFoundError) as err:
        return fail(prog, error_text(err))
    if wants_help:
        print(help_text(prog, description, cfg, aliases, extra_help), end="")
        return 0
    try:
        metrics = run(cfg)
    except RUN_ERRORS as err:
        return fail(prog, error_text(err))
    if "metrics_path" in metrics:  # written by the main process only
        report(cfg, metrics)
    return 0
