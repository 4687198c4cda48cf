"""Does each backbone's default pretraining learn? Every family against itself randomly initialised.

    python benchmarks/backbones.py                          # all five families, ~45 minutes on 2 cores
    python benchmarks/backbones.py --families swin,poolformer
    python benchmarks/backbones.py --families vit --reuse   # reuse finished pretraining runs under --out

Rows of families not run this time are kept from an earlier run under the same ``--out``.

For each backbone family the script runs its digits recipe (the shipped config ``default`` for
the ViT, ``<family>_digits`` for the others: about 5 minutes each on 2 idle cores), then puts the pretrained encoder and the same architecture randomly initialised in
every position-coding form the family has (a random learned position table is noise, so the
sin-cos table, or none, is tried too, and the best form is the baseline) through the linear probe
and kNN (``python -m sslvit probe | knn``). Prints a markdown table with the wall time of each pretraining and writes
it, with the numbers as JSON, to ``--out``. A pretrained backbone that does not beat its strongest
random form on the linear probe is marked FAIL.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from quality_lib import (  # noqa: E402
    ROOT,
    metadata,
    pixel_logistic_regression,
    pretrain,
    random_encoder,
    run,
    sslvit_command,
)

RECIPES = {  # shipped config names
    "vit": "default",
    "hybrid": "hybrid_digits",
    "tnt": "tnt_digits",
    "swin": "swin_digits",
    "poolformer": "poolformer_digits",
}
# the random-initialisation forms of each family: constructor overrides (position coding)
RANDOM_FORMS: dict[str, dict[str, dict]] = {
    "vit": {"learned positions": {}, "sin-cos positions": {"pos_embed": "sincos"}},
    "hybrid": {"learned positions": {}, "sin-cos positions": {"pos_embed": "sincos"}},
    "tnt": {"learned positions": {}, "no positions": {"outer_pos": False, "inner_pos": False}},
    "swin": {"as built": {}},
    "poolformer": {"as built": {}},
}


def probe_and_knn(checkpoint: Path, out: Path, probe_epochs: int) -> dict[str, float]:
    """Linear probe and kNN val top-1 of one encoder, through the ``sslvit`` command."""
    eval_dir = out / "eval"
    common = ["--checkpoint", str(checkpoint), "--out_dir", str(eval_dir)]
    run(sslvit_command("probe", *common, "--epochs", str(probe_epochs)), out / "probe.log")
    run(sslvit_command("knn", *common), out / "knn.log")
    return {
        "linear_probe": json.loads((eval_dir / "linear_probe.json").read_text())["val_top1"],
        "knn": json.loads((eval_dir / "knn.json").read_text())["val_top1"],
    }


def family_row(family: str, out: Path, args: argparse.Namespace) -> dict:
    """Pretrain one family's recipe (or reuse it) and evaluate it beside its random forms."""
    run_dir = out / family
    summary = run_dir / "pretrain.json"
    if args.reuse and summary.is_file():
        done = json.loads(summary.read_text())
        checkpoint, seconds = Path(done["checkpoint"]), done["seconds"]
    else:
        checkpoint, seconds, _ = pretrain(RECIPES[family], "pretrain", run_dir, [])
        run_dir.mkdir(parents=True, exist_ok=True)
        summary.write_text(json.dumps({"checkpoint": str(checkpoint), "seconds": seconds}))
    meta = metadata(checkpoint)
    row = {
        "family": family,
        "model": meta["model"].get("arch"),
        "objective": meta["objective"]["name"],
        "recipe": RECIPES[family],
        "pretrain_seconds": round(seconds, 1),
        "pretrained": probe_and_knn(checkpoint, run_dir / "pretrained", args.probe_epochs),
        "random": {},
    }
    for form, overrides in RANDOM_FORMS[family].items():
        folder = run_dir / ("random-" + form.replace(" ", "_"))
        encoder = random_encoder(checkpoint, folder / "model.safetensors", overrides, args.seed)
        row["random"][form] = probe_and_knn(encoder, folder, args.probe_epochs)
    best = max(row["random"], key=lambda f: row["random"][f]["linear_probe"])
    row["best_random"] = best
    row["probe_gain"] = row["pretrained"]["linear_probe"] - row["random"][best]["linear_probe"]
    row["knn_gain"] = row["pretrained"]["knn"] - max(r["knn"] for r in row["random"].values())
    row["verdict"] = "PASS" if row["probe_gain"] > 0 else "FAIL"
    return row


def table(rows: list[dict], pixels: float) -> str:
    """Markdown table: one line per family, pretrained against the best random form."""
    lines = [
        "| backbone | objective | pretraining | probe | kNN | random init, best form | probe | kNN "
        "| probe gain | kNN gain | |",
        "|---|---|---:|---:|---:|---|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        best = r["random"][r["best_random"]]
        forms = ", ".join(f"{f}: {v['linear_probe']:.1f}" for f, v in r["random"].items())
        lines.append(
            f"| {r['family']} (`{r['model']}`) | {r['objective']} | {r['pretrain_seconds']:.0f} s "
            f"| {r['pretrained']['linear_probe']:.1f} | {r['pretrained']['knn']:.1f} | {r['best_random']} ({forms}) "
            f"| {best['linear_probe']:.1f} | {best['knn']:.1f} | {r['probe_gain']:+.1f} | {r['knn_gain']:+.1f} "
            f"| {r['verdict']} |"
        )
    lines.append(f"\nRaw pixels (logistic regression on the same split): {pixels:.1f}.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--families", default=",".join(RECIPES), help="comma-separated families to run (default: %(default)s)"
    )
    parser.add_argument("--out", default="runs/backbones", help="output directory (default: %(default)s)")
    parser.add_argument(
        "--probe-epochs", type=int, default=100, help="linear probe epochs (default: %(default)s)"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the random initialisations (default: %(default)s)"
    )
    parser.add_argument(
        "--reuse", action="store_true", help="reuse a family's finished pretraining under --out"
    )
    args = parser.parse_args(argv)
    families = [f.strip() for f in args.families.split(",") if f.strip()]
    unknown = sorted(set(families) - set(RECIPES))
    if unknown:
        parser.error(f"--families: unknown {unknown}; known: {', '.join(RECIPES)}")
    out = (ROOT / args.out).resolve() if not Path(args.out).is_absolute() else Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    results = out / "backbones.json"
    kept = {r["family"]: r for r in json.loads(results.read_text())} if results.is_file() else {}
    for family in families:  # families not run this time keep their earlier row
        kept[family] = family_row(family, out, args)
        results.write_text(json.dumps([kept[f] for f in RECIPES if f in kept], indent=2) + "\n")
    rows = [kept[f] for f in RECIPES if f in kept]
    text = (
        "Digits corpus (1,437 train / 360 val, 32 px), val top-1 (%), each backbone's recipe against the "
        f"same architecture randomly initialised.\n\n{table(rows, pixel_logistic_regression(32))}\n\n"
        f"Total time {time.time() - start:.0f} s."
    )
    print("\n" + text)
    (out / "backbones.md").write_text(text + "\n")
    print(f"\nwritten: {out / 'backbones.md'}")
    return 0 if all(r["verdict"] == "PASS" for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
