"""Publish a pretrained encoder to the Hugging Face Hub (or write the repository folder only).

    python pipelines/publish.py --checkpoint runs/NAME/model.safetensors --repo-id ORG/NAME \\
        [--metrics runs/NAME/eval/linear_probe.json ...] [--private] [--revision BRANCH] [--dry-run DIR]

The repository gets model.safetensors (encoder only, common ViT names), config.json (timm's Hub
layout plus an `sslvit` section) and README.md (model card with the results and the figures from
`--figures DIR`, default <checkpoint dir>/figures). The token comes from HF_TOKEN or `hf auth login`;
it is never printed. Load the result with `sslvit.from_pretrained("ORG/NAME")` or timm.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument(
        "--checkpoint", required=True, help="encoder checkpoint (runs/NAME/model.safetensors)"
    )
    parser.add_argument("--repo-id", required=True, help="Hub model repository, ORG/NAME")
    parser.add_argument(
        "--metrics",
        nargs="*",
        default=[],
        metavar="FILE",
        help="metrics JSON files from the evaluators (must have measured this checkpoint)",
    )
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument(
        "--revision", default=None, help="branch to commit to (created if missing; default main)"
    )
    parser.add_argument(
        "--dry-run", default=None, metavar="DIR", help="write the folder to DIR and upload nothing"
    )
    parser.add_argument(
        "--figures",
        default=None,
        metavar="DIR",
        help="PNG figures for the card (default: <checkpoint dir>/figures when it exists)",
    )
    parser.add_argument(
        "--license", default="apache-2.0", help="license id for the card (default: %(default)s)"
    )
    parser.add_argument("--message", default=None, help="commit message")
    args = parser.parse_args(argv)

    from sslvit.checkpoint import CheckpointError
    from sslvit.hub import PublishError, publish

    try:
        result = publish(
            args.checkpoint,
            args.repo_id,
            metrics=args.metrics,
            private=args.private,
            revision=args.revision,
            dry_run=args.dry_run,
            figures=args.figures,
            license=args.license,
            commit_message=args.message,
        )
    except (PublishError, CheckpointError) as err:
        parser.exit(2, f"publish.py: error: {err}\n")
    except Exception as err:  # HTTP errors from the Hub client: report the message, not a traceback
        parser.exit(1, f"publish.py: upload failed: {type(err).__name__}: {err}\n")
    for r in result.results:
        print(f"result:  {r.task} on {r.dataset}/{r.split}: top-1 {r.top1:.2f} ({r.source})")
    if result.commit_url is None:
        print(f"dry run: wrote {result.folder} ({', '.join(result.files)}); nothing uploaded")
        print(f"check it: python -c \"import sslvit; print(sslvit.from_pretrained('{result.folder}'))\"")
    else:
        print(f"uploaded {len(result.files)} files to {result.repo_id}: {', '.join(result.files)}")
        print(f"commit:  {result.commit_url}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
