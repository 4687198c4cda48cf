"""Does each backbone's default pretraining learn? Every family against itself randomly initialised.

    python benchmarks/backbones.py                          # all five families, ~45 minutes on 2 cores
    python benchmarks/backbones.py --families swin,poolformer
    python benchmarks/backbones.py --families vit --reuse   # reuse finished pretraining runs under --out

Rows of families not run this time are kept from an earlier run under the same ``--out``.

For each backbone family the script runs its digits recipe (``sslvit/configs/default.yaml`` for
the ViT, ``sslvit/configs/<family>_digits.yaml`` for the others: about 5 minutes each on 2
idle cores), then puts the pretrained encoder and the same architecture randomly initialised in
every position-coding form the family has (a random learned position table is noise, so the
sin-cos table, or none, is tried too, and the best form is the baseline) through the linear probe
and kNN of ``pipelines/``. Prints a markdown table with the wall time of each pretraining and writes
it, with the numbers as JSON, to ``--out``. A pretrained backbone that does not beat its strongest
random form on the linear probe is marked FAIL.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from digits_quality import pixel_logistic_regression, pretrain, run  # noqa: E402

RECIPES = {
    "vit": "sslvit/configs/default.yaml",
    "hybrid": "sslvit/configs/hybrid_digits.yaml",
    "tnt": "sslvit/configs/tnt_digits.yaml",
    "swin": "sslvit/configs/swin_digits.yaml",
    "poolformer": "sslvit/configs/poolformer_digits.yaml",
}
# the random-initialisation forms of each family: constructor overrides (position coding)
RANDOM_FORMS: dict[str, dict[str, dict]] = {
    "vit": {"learned positions": {}, "sin-cos positions": {"pos_embed": "sincos"}},
    "hybrid": {"learned positions": {}, "sin-cos positions": {"pos_embed": "sincos"}},
    "tnt": {"learned positions": {}, "no positions": {"outer_pos": False, "inner_pos": False}},
    "swin": {"as built": {}},
    "poolformer": {"as built": {}},
}


def random_encoder(checkpoint: Path, out: Path, overrides: dict, seed: int) -> Path:
    """``checkpoint``'s architecture with ``overrides``, freshly initialised, saved with its run metadata."""
    import torch

    from sslvit.checkpoint import read_metadata, save_model
    from sslvit.models import build_model

    meta = read_metadata(checkpoint)
    torch.manual_seed(seed)
    model = build_model({**meta["model"], **overrides})
    extra = {k: v for k, v in meta.items() if k in ("config", "objective", "normalization")}
    return save_model(model, out / "model.safetensors", model.get_config(), extra=extra)


def probe_and_knn(checkpoint: Path, out: Path, probe_epochs: int) -> dict[str, float]:
    """Linear probe and kNN val top-1 of one encoder, through the pipelines' command lines."""
    py, eval_dir = sys.executable, out / "eval"
    common = ["--checkpoint", str(checkpoint), "--out_dir", str(eval_dir)]
    run([py, "pipelines/linear_probe.py", *common, "--epochs", str(probe_epochs)], out / "probe.log")
    run([py, "pipelines/knn.py", *common], out / "knn.log")
    return {
        "linear_probe": json.loads((eval_dir / "linear_probe.json").read_text())["val_top1"],
        "knn": json.loads((eval_dir / "knn.json").read_text())["val_top1"],
    }


def family_row(family: str, out: Path, args: argparse.Namespace) -> dict:
    """Pretrain one family's recipe (or reuse it) and evaluate it beside its random forms."""
    from sslvit.checkpoint import read_metadata

    run_dir = out / family
    summary = run_dir / "pretrain.json"
    if args.reuse and summary.is_file():
        done = json.loads(summary.read_text())
        checkpoint, seconds = Path(done["checkpoint"]), done["seconds"]
    else:
        start = time.time()
        checkpoint = pretrain(
            run_dir,
            [
                "--config",
                RECIPES[family],
                f"train.out_dir={run_dir / 'runs'}",
                f"train.name=pretrain-{int(start)}",
                "train.progress=false",
            ],
        )
        seconds = time.time() - start
        summary.write_text(json.dumps({"checkpoint": str(checkpoint), "seconds": seconds}))
    meta = read_metadata(checkpoint)
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
        encoder = random_encoder(checkpoint, folder, overrides, args.seed)
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
