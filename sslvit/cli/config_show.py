"""``sslvit config``: print the resolved config of ``--config X`` plus overrides as YAML, run nothing."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import yaml

from sslvit.cli.common import DEFAULT_CONFIG, CliError, error_text, fail, resolve_config
from sslvit.training import config as config_lib

DESCRIPTION = """\
Print the config a command would run with, as YAML, and run nothing.

    sslvit config [--for pretrain|finetune|probe|knn] [--config FILE_OR_NAME] [overrides]

Takes the same arguments as the command named by --for (default: pretrain); every key is checked
as that command checks it, so a mistyped key or a wrong type fails here too. The output is a valid
--config file.
"""


def config_classes() -> dict[str, type]:
    """Command name -> the config dataclass that command loads."""
    from sslvit.evaluate.finetune import FinetuneConfig  # deferred: torch-free CLI start
    from sslvit.evaluate.knn import KnnConfig  # deferred: torch-free CLI start
    from sslvit.evaluate.linear_probe import ProbeConfig  # deferred: torch-free CLI start

    return {"pretrain": config_lib.RunConfig, "finetune": FinetuneConfig, "probe": ProbeConfig,
            "knn": KnnConfig}


def main(argv: Sequence[str] | None = None, prog: str = "sslvit config") -> int:
    """Print the resolved config; returns 2 for a bad name, key, value or file."""
    parser = argparse.ArgumentParser(prog=prog, description=DESCRIPTION, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--for", dest="command", default="pretrain",
                        choices=["pretrain", "finetune", "probe", "knn"],
                        help="the command whose config to resolve (default: %(default)s)")
    parser.add_argument("--config", default=None,
                        help="YAML file or shipped config name (default: `default` for pretrain, "
                             "the built-in defaults for the others)")
    args, overrides = parser.parse_known_args(argv)
    try:
        if args.config is not None:
            path = resolve_config(args.config)
        else:
            path = DEFAULT_CONFIG if args.command == "pretrain" else None
        cfg = config_lib.load(path, overrides, cls=config_classes()[args.command])
    except (CliError, config_lib.ConfigError, FileNotFoundError) as err:
        return fail(prog, error_text(err))
    print(f"# sslvit {args.command}: {path or 'built-in defaults'} + {len(overrides)} override argument(s)")
    print(yaml.safe_dump(config_lib.to_dict(cfg), sort_keys=False), end="")
    return 0
