"""The ViT paper's position-coding ablation (appendix D.4, table 8) on the built-in digits corpus.

    python benchmarks/pos_coding.py                  # 9 rows, ~15 minutes on 2 cores
    python benchmarks/pos_coding.py --epochs 8       # longer, less noisy

As in the paper, the ViT is trained with supervision (here ``vit_nano_patch4`` on digits, the same
recipe and seed for every row) with each way of coding position: none, 1-D learned, 2-D learned
(row + column), 1-D relative attention, and the fixed 2-D sin-cos table, each added once at the
input (the paper's "default/stem"), to the input of every block with a table per block ("every
layer") or the same table before every block ("every layer-shared"). Its representation is then
read by the linear probe (the paper reads a 5-shot linear classifier). Prints a markdown table
beside the paper's numbers (ImageNet 5-shot linear, ViT-B/16) and writes it to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from quality_lib import ROOT, pretrain, run, sslvit_command  # noqa: E402

# (label, pos_embed, pos_embed_at, the paper's ImageNet 5-shot linear accuracy for the row)
ROWS = [
    ("no position", "none", "input", 0.61382),
    ("1-D learned, at the input", "learned", "input", 0.64206),
    ("1-D learned, every layer", "learned", "every_layer", 0.63964),
    ("1-D learned, every layer shared", "learned", "every_layer_shared", 0.64292),
    ("2-D learned, at the input", "learned_2d", "input", 0.64001),
    ("2-D learned, every layer", "learned_2d", "every_layer", 0.64046),
    ("2-D learned, every layer shared", "learned_2d", "every_layer_shared", 0.64022),
    ("relative attention", "relative", "input", 0.64032),
    ("2-D sin-cos (fixed), at the input", "sincos", "input", None),
]
RECIPE = [
    "objective.name=supervised",
    "objective.num_classes=10",
    "objective.label_smoothing=0.1",
    "model.name=vit_nano_patch4",
    "data.batch_size=64",
    "data.num_workers=1",
    "data.crop_scale=[0.5,1.0]",
    "data.hflip=false",
    "optim.base_lr=3e-3",
    "optim.weight_decay=0.05",
    "optim.warmup_epochs=1",
    "train.log_every=20",
    "train.progress=false",
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--epochs", type=int, default=4, help="supervised epochs per row (default: %(default)s)"
    )
    parser.add_argument("--out", default="runs/pos_coding", help="output directory (default: %(default)s)")
    parser.add_argument(
        "--probe-epochs", type=int, default=100, help="linear probe epochs (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    out = (ROOT / args.out).resolve() if not Path(args.out).is_absolute() else Path(args.out)
    start, results = time.time(), []
    for label, kind, at, paper in ROWS:
        name = f"{kind}-{at}"
        checkpoint, seconds, _ = pretrain(
            "default",
            "run",
            out / name,
            [*RECIPE, f"model.pos_embed={kind}", f"model.pos_embed_at={at}", f"train.epochs={args.epochs}"],
        )
        eval_dir = out / name / "eval"
        run(
            sslvit_command("probe", "--checkpoint", str(checkpoint), "--out_dir", str(eval_dir),
                           "--epochs", str(args.probe_epochs)),
            out / name / "probe.log",
        )
        probe = json.loads((eval_dir / "linear_probe.json").read_text())["val_top1"]
        results.append(
            {
                "row": label,
                "pos_embed": kind,
                "pos_embed_at": at,
                "probe": probe,
                "paper": paper,
                "seconds": round(seconds, 1),
            }
        )
        (out / "pos_coding.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [
        "| position coding | `model.pos_embed` / `pos_embed_at` | digits probe top-1 (%) | paper: ImageNet 5-shot linear |",
        "|---|---|---:|---:|",
    ]
    for r in results:
        paper = "—" if r["paper"] is None else f"{100 * r['paper']:.2f}"
        lines.append(
            f"| {r['row']} | `{r['pos_embed']}` / `{r['pos_embed_at']}` | {r['probe']:.1f} | {paper} |"
        )
    text = (
        f"Supervised vit_nano_patch4 on digits, {args.epochs} epochs per row, then the linear probe "
        f"(360 val images).\n\n" + "\n".join(lines) + f"\n\nTotal time {time.time() - start:.0f} s."
    )
    print("\n" + text)
    (out / "pos_coding.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
