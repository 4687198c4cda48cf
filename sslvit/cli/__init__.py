"""The ``sslvit`` command: one subcommand per stage of the pipeline.

    sslvit shards digits
    sslvit pretrain train.steps=200
    sslvit probe --checkpoint runs/NAME/model.safetensors

``python -m sslvit`` and ``accelerate launch -m sslvit pretrain ...`` run the same command. Each
subcommand lives in its own module here with a ``main(argv, prog) -> int``; it is imported only
when it runs, so ``sslvit --help`` starts fast.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

from sslvit import __version__

# name -> (module, one line of help); the order is the order of a run
COMMANDS: dict[str, tuple[str, str]] = {
    "shards": ("sslvit.cli.shards", "write WebDataset shards (digits, fashion-mnist, folder, HF) or index them"),
    "pretrain": ("sslvit.cli.pretrain", "pretrain an encoder (MAE, SimMIM, MPP, supervised)"),
    "probe": ("sslvit.cli.probe", "linear probe of a frozen encoder"),
    "knn": ("sslvit.cli.knn", "k-nearest-neighbour classification on frozen features"),
    "finetune": ("sslvit.cli.finetune", "fine-tune an encoder with a new classification head"),
    "visualize": ("sslvit.cli.visualize", "attention distances, position embeddings, reconstructions"),
    "publish": ("sslvit.cli.publish", "publish an encoder to the Hugging Face Hub (or --dry-run DIR)"),
    "config": ("sslvit.cli.config_show", "print the resolved config of --config X + overrides as YAML"),
    "configs": ("sslvit.cli.config_list", "list the shipped configs"),
}


def usage() -> str:
    """``sslvit --help``: every subcommand with one line of help."""
    width = max(len(name) for name in COMMANDS)
    lines = [f"usage: sslvit COMMAND [ARGS ...]    (sslvit {__version__})", "",
             "A pretraining pipeline for Vision Transformers: shards -> pretrain -> evaluate -> publish.", "",
             "commands:"]
    lines += [f"  {name.ljust(width)}  {text}" for name, (_, text) in COMMANDS.items()]
    lines += ["", "`sslvit COMMAND --help` lists the options of one command with the values it uses.",
              "Multi-process: accelerate launch [accelerate options] -m sslvit COMMAND [ARGS ...]"]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``sslvit COMMAND ARGS``; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(usage(), end="", file=sys.stdout if args else sys.stderr)
        return 0 if args else 2
    if args[0] == "--version":
        print(f"sslvit {__version__}")
        return 0
    name = args[0]
    if name not in COMMANDS:
        print(f"sslvit: error: unknown command {name!r} (commands: {', '.join(COMMANDS)})", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return module.main(args[1:], prog=f"sslvit {name}")


def console_main() -> None:
    """Entry point of the ``sslvit`` console script."""
    raise SystemExit(main())
