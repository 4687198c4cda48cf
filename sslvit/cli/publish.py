"""``sslvit publish``: publish an encoder to the Hugging Face Hub, or write the repository folder only."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from sslvit.cli.common import error_text, fail, quoted, quoted_spec
from sslvit.progress import is_main_process

DESCRIPTION = """\
Publish a pretrained encoder to the Hugging Face Hub (or write the repository folder only).

    sslvit publish --checkpoint runs/NAME/model.safetensors --repo-id ORG/NAME \\
        [--metrics runs/NAME/eval/linear_probe.json ...] [--private] [--revision BRANCH] [--dry-run DIR]

The repository gets model.safetensors (encoder only, common ViT names), config.json (timm's Hub
layout plus an `sslvit` section) and README.md (model card with the results and the figures from
`--figures DIR`, default <checkpoint dir>/figures). The token comes from HF_TOKEN or `hf auth login`;
it is never printed. Load the result with `sslvit.from_pretrained("ORG/NAME")` or timm.
"""


def build_parser(prog: str) -> argparse.ArgumentParser:
    """The ``sslvit publish`` options, each with its default."""
    parser = argparse.ArgumentParser(prog=prog, description=DESCRIPTION, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="encoder checkpoint (runs/NAME/model.safetensors)")
    parser.add_argument("--repo-id", required=True, help="Hub model repository, ORG/NAME")
    parser.add_argument("--metrics", nargs="*", default=[], metavar="FILE",
                        help="metrics JSON files from the evaluators (must have measured this checkpoint; "
                             "default: none)")
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument("--revision", default=None,
                        help="branch to commit to (created if missing; default: main)")
    parser.add_argument("--dry-run", default=None, metavar="DIR",
                        help="write the folder to DIR and upload nothing (default: upload)")
    parser.add_argument("--figures", default=None, metavar="DIR",
                        help="PNG figures for the card (default: <checkpoint dir>/figures when it exists)")
    parser.add_argument("--license", default="apache-2.0", help="license id for the card (default: %(default)s)")
    parser.add_argument("--message", default=None, help="commit message (default: one naming the checkpoint)")
    return parser


def main(argv: Sequence[str] | None = None, prog: str = "sslvit publish") -> int:
    """Run ``sslvit publish``; returns 0, 2 for bad input, 1 when the upload fails."""
    args = build_parser(prog).parse_args(argv)

    from sslvit.checkpoint import CheckpointError  # deferred: torch-free CLI start
    from sslvit.hub import PublishError, publish  # deferred: torch-free CLI start

    try:
        result = publish(args.checkpoint, args.repo_id, metrics=args.metrics, private=args.private,
                         revision=args.revision, dry_run=args.dry_run, figures=args.figures,
                         license=args.license, commit_message=args.message)
    except (PublishError, CheckpointError) as err:
        return fail(prog, error_text(err))
    except Exception as err:  # HTTP errors from the Hub client: report the message, not a traceback
        if is_main_process():
            print(f"{prog}: upload failed: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    for r in result.results:
        print(f"result:  {r.task} on {r.dataset}/{r.split}: top-1 {r.top1:.2f} ({r.source})")
    if result.commit_url is None:
        folder = result.folder.resolve()
        print(f"dry run: wrote {folder} ({', '.join(result.files)}); nothing uploaded")
        print(f"check it: python -c \"import sslvit; print(sslvit.from_pretrained('{folder}'))\"")
        metrics = "".join(f" {quoted(m)}" for m in args.metrics)
        print(f"upload it: sslvit publish --checkpoint {quoted_spec(args.checkpoint)} --repo-id {args.repo_id}"
              + (f" --metrics{metrics}" if metrics else ""))
    else:
        print(f"uploaded {len(result.files)} files to {result.repo_id}: {', '.join(result.files)}")
        print(f"commit:  {result.commit_url}")
    return 0
