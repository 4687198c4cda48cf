"""Pictures of a trained encoder (ViT paper figure 7, MAE reconstructions, attention rollout).

    python pipelines/visualize.py --checkpoint runs/NAME/model.safetensors [--out DIR] [--data SHARDS]
        [--objective runs/NAME/objective.safetensors] [--num-images 64] [--num-show 8]

Writes into DIR (default: <checkpoint dir>/figures, where publish.py picks them up), each as .png
plus the numbers as .json:
  attention_distance    mean attention distance of every head against depth (pixels; class token
                        excluded, attention renormalised over the patch keys)
  pos_embed_similarity  cosine similarity of each patch's position embedding with every other
  patch_embed_pcs       top 28 principal components of the patch-embedding filters
  attention_rollout     attention rollout maps over sample images
  mae_reconstructions   original / masked / reconstruction, when an MAE objective checkpoint is found
Images come from the built-in digits val split unless --data names shards.
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
    parser.add_argument("--checkpoint", required=True, help="encoder (or objective) checkpoint")
    parser.add_argument("--out", default=None, help="output folder (default: <checkpoint dir>/figures)")
    parser.add_argument("--data", default=None, help="shard spec of the images (default: digits val split)")
    parser.add_argument(
        "--objective",
        default=None,
        help="MAE objective checkpoint for reconstructions (default: objective.safetensors "
        "next to the checkpoint, when present)",
    )
    parser.add_argument("--num-images", type=int, default=64, help="images for the attention distances")
    parser.add_argument("--num-show", type=int, default=8, help="images shown in rollout / reconstructions")
    parser.add_argument("--seed", type=int, default=0, help="seed of the MAE masks")
    args = parser.parse_args(argv)
    checkpoint = Path(args.checkpoint)
    if not checkpoint.is_file():
        parser.exit(2, f"visualize.py: error: checkpoint not found: {checkpoint}\n")
    out = Path(args.out) if args.out else checkpoint.resolve().parent / "figures"

    from sslvit.checkpoint import CheckpointError
    from sslvit.viz import visualize

    skipped: dict[str, str] = {}
    try:
        figures = visualize(
            checkpoint,
            out,
            data=args.data,
            objective=args.objective,
            num_images=args.num_images,
            num_show=args.num_show,
            seed=args.seed,
            skipped=skipped,
        )
    except (CheckpointError, ValueError, FileNotFoundError) as err:
        parser.exit(2, f"visualize.py: error: {err}\n")
    for name, png in figures.items():
        print(f"{name:22s} {png}  (numbers: {png.with_suffix('.json').name})")
    for name, reason in skipped.items():
        print(f"{name:22s} skipped: {reason}")
    if "mae_reconstructions" not in figures and "mae_reconstructions" not in skipped:
        print("no MAE objective checkpoint found: reconstructions skipped (pass --objective PATH)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
