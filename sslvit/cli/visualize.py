"""``sslvit visualize``: pictures of a trained encoder (attention distance, position embeddings, ...)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from sslvit.cli.common import error_text, fail, quoted

DESCRIPTION = """\
Pictures of a trained encoder (ViT paper figure 7, MAE reconstructions, attention rollout).

    sslvit visualize --checkpoint runs/NAME/model.safetensors [--out DIR] [--data SHARDS]
        [--objective runs/NAME/objective.safetensors] [--num-images 64] [--num-show 8]

Writes into DIR (default: <checkpoint dir>/figures, where `sslvit publish` picks them up), each as
.png plus the numbers as .json:
  attention_distance    mean attention distance of every head against depth (pixels; class token
                        excluded, attention renormalised over the patch keys)
  pos_embed_similarity  cosine similarity of each patch's position embedding with every other
  patch_embed_pcs       top 28 principal components of the patch-embedding filters
  attention_rollout     attention rollout maps over sample images
  mae_reconstructions   original / masked / reconstruction, when an MAE objective checkpoint is found
Images come from the built-in digits val split unless --data names shards.
"""


def build_parser(prog: str) -> argparse.ArgumentParser:
    """The ``sslvit visualize`` options, each with its default."""
    parser = argparse.ArgumentParser(prog=prog, description=DESCRIPTION, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="encoder (or objective) checkpoint")
    parser.add_argument("--out", default=None, help="output folder (default: <checkpoint dir>/figures)")
    parser.add_argument("--data", default=None, help="shard spec of the images (default: digits val split)")
    parser.add_argument("--objective", default=None,
                        help="MAE objective checkpoint for reconstructions (default: objective.safetensors "
                             "next to the checkpoint, when present)")
    parser.add_argument("--num-images", type=int, default=64,
                        help="images for the attention distances (default: %(default)s)")
    parser.add_argument("--num-show", type=int, default=8,
                        help="images shown in rollout / reconstructions (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the MAE masks (default: %(default)s)")
    return parser


def main(argv: Sequence[str] | None = None, prog: str = "sslvit visualize") -> int:
    """Run ``sslvit visualize``; returns the exit status (2 for a missing or bad checkpoint)."""
    args = build_parser(prog).parse_args(argv)
    checkpoint = Path(args.checkpoint)
    if not checkpoint.is_file():
        return fail(prog, f"checkpoint not found: {checkpoint}")
    out = Path(args.out) if args.out else checkpoint.resolve().parent / "figures"

    from sslvit.checkpoint import CheckpointError  # deferred: torch-free CLI start
    from sslvit.viz import visualize  # deferred: torch-free CLI start

    skipped: dict[str, str] = {}
    try:
        figures = visualize(checkpoint, out, data=args.data, objective=args.objective,
                            num_images=args.num_images, num_show=args.num_show, seed=args.seed,
                            skipped=skipped)
    except (CheckpointError, ValueError, FileNotFoundError) as err:
        return fail(prog, error_text(err))
    for name, png in figures.items():
        print(f"{name:22s} {png.resolve()}  (numbers: {png.with_suffix('.json').name})")
    for name, reason in skipped.items():
        print(f"{name:22s} skipped: {reason}")
    if "mae_reconstructions" not in figures and "mae_reconstructions" not in skipped:
        print("no MAE objective checkpoint found: reconstructions skipped (pass --objective PATH)")
    print(f"figures: {quoted(out)}")
    return 0
