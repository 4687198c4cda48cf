"""The ``sslvit`` command: one subcommand per stage of the pipeline.

    sslvit shards digits
    sslvit pretrain train.steps=200
    sslvit probe --checkpoint runs/NAME/model.safetensors

``python -m sslvit`` and ``accelerate launch -m sslvit pretrain ...`` run the same command. Each
subcommand lives in its own module here with a ``main(argv, prog) -> int``; it is imported only
when it runs, so ``sslvit --help`` starts fast. Whatever a subcommand raises as the user's input
being wrong (:class:`sslvit.errors.InputError`, a missing file, a denied one) ends as one line,
``sslvit CMD: error: MESSAGE``, and exit status 2; a run stopped by SIGTERM / SIGINT after writing
its checkpoint (:class:`sslvit.errors.Preempted`) says where, with exit status 75.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

from sslvit.cli.common import error_text, fail
from sslvit.errors import EXIT_PREEMPTED, EXIT_STORAGE, InputError, Preempted, StorageError
from sslvit.progress import say
from sslvit.version import __version__

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
    prog = f"sslvit {name}"
    try:
        return module.main(args[1:], prog=prog)
    except (InputError, FileNotFoundError, PermissionError) as err:  # the user's input: one line, exit 2
        return fail(prog, error_text(err))
    except StorageError as err:  # a full disk: one line naming the directory and the last good checkpoint
        say(f"{prog}: error: {err}", file=sys.stderr)
        return EXIT_STORAGE
    except Preempted as stopped:  # SIGTERM / SIGINT: the checkpoint is written, say where
        say(f"{prog}: {stopped}", file=sys.stderr)
        return EXIT_PREEMPTED
    except KeyboardInterrupt as stopped:  # Ctrl-C outside a run, or a second one inside it
        say(f"{prog}: interrupted{f' ({stopped})' if str(stopped) else ''}", file=sys.stderr)
        return 130


def console_main() -> None:
    """Entry point of the ``sslvit`` console script."""
    raise SystemExit(main())
