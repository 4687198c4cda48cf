"""Does pretraining help? The default pretraining run's encoder (or any --checkpoint) against the
same encoder untrained, on digits. benchmarks/quality.py is the benchmark of record: both built-in
corpora, every position-table kind of the random encoder, raw pixels through the same probe and
kNN, and the supervised ceiling; this script stays for one checkpoint and for the helpers that
benchmarks/backbones.py and benchmarks/pos_coding.py share.

    python benchmarks/digits_quality.py                        # runs `python pipelines/pretrain.py` first
    python benchmarks/digits_quality.py --checkpoint runs/NAME/model.safetensors
    python benchmarks/digits_quality.py --out runs/q-normpix objective.norm_pix_loss=true   # a recipe variant
    python benchmarks/digits_quality.py --repeats 1 2 --finetune-epochs 0   # data.repeats=1 vs 2, same steps

Both encoders (the pretrained one, and the same architecture randomly initialised with the same
input normalisation) go through the linear probe, kNN and fine-tuning on the built-in digits
corpus; the random one is fine-tuned a second time without layer-wise lr decay, the fairer recipe
from scratch; a logistic regression on the raw pixels of the same split is the floor. Every evaluator
runs through its command line (pipelines/*.py). Prints a markdown table and writes it, with the
numbers as JSON, to --out. The pretrained encoder should beat the random one on the linear probe
by a clear margin (--margin points).

``--repeats K ...`` pretrains once per K with ``data.repeats=K`` (K augmented, masked views of each
decoded image) for the same number of optimizer steps: the first K's run sets the count (its
printed "N steps"), the others get ``train.steps=N`` (and that run's warmup as ``optim.warmup_steps``),
so a K-fold repeat sees 1/K of the epochs.
Every pretrained encoder gets a row; the margin is checked for each.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRATCH = "random init, fine-tuned without layer decay (optim.layer_decay=1.0)"
sys.path.insert(0, str(ROOT))


def run(cmd: list[str], log: Path) -> str:
    """Run ``cmd`` from the repository root, tee its output to ``log``, fail loudly; return stdout."""
    print("$ " + " ".join(cmd), flush=True)
    start = time.time()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(done.stdout + "\n--- stderr ---\n" + done.stderr)
    if done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}), see {log}:\n{done.stderr[-3000:]}")
    print(f"  done in {time.time() - start:.0f}s", flush=True)
    return done.stdout


def pretrain(out: Path, overrides: list[str], log: Path | None = None) -> Path:
    """Run the default pretraining with ``overrides`` and return the encoder path it prints."""
    stdout = run([sys.executable, "pipelines/pretrain.py", *overrides], log or out / "logs" / "pretrain.log")
    match = re.search(r"^encoder:\s+(\S+)", stdout, re.M)
    if not match:
        raise SystemExit("pretrain.py did not print 'encoder: PATH'")
    path = Path(match.group(1))
    return path if path.is_absolute() else ROOT / path


def random_twin(checkpoint: Path, out: Path, seed: int) -> Path:
    """The checkpoint's architecture, freshly initialised, saved with the same run metadata."""
    import torch

    from sslvit.checkpoint import infer_model_config, read_metadata, read_state_dict, save_model
    from sslvit.models import build_model

    meta = read_metadata(checkpoint)
    config = meta.get("model") or infer_model_config(read_state_dict(checkpoint)[0])
    torch.manual_seed(seed)
    model = build_model(config)
    extra = {k: v for k, v in meta.items() if k in ("config", "objective", "normalization")}
    return save_model(model, out / "random_init" / "model.safetensors", model.get_config(), extra=extra)


def pixel_logistic_regression(image_size: int) -> float:
    """Top-1 (percent) of a logistic regression on standardised raw pixels of the digits split."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from sslvit.data.digits import digits_arrays

    arrays = digits_arrays(image_size)
    (xt, yt), (xv, yv) = arrays["train"], arrays["val"]
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000))
    clf.fit(xt.reshape(len(xt), -1) / 255.0, yt)
    return 100.0 * float((clf.predict(xv.reshape(len(xv), -1) / 255.0) == yv).mean())


def finetune(name: str, checkpoint: Path, out: Path, epochs: int, overrides: tuple[str, ...] = ()) -> float:
    """Fine-tune one encoder with pipelines/finetune.py (its digits recipe plus ``overrides``); val top-1."""
    run([sys.executable, "pipelines/finetune.py", "--checkpoint", str(checkpoint), f"train.out_dir={out / name}",
         "train.name=finetune", f"train.epochs={epochs}", "train.progress=false", *overrides],
        out / "logs" / f"{name}_finetune.log")
    return json.loads((out / name / "finetune" / "finetune.json").read_text())["val_top1"]


def evaluate(name: str, checkpoint: Path, out: Path, args: argparse.Namespace) -> dict[str, float | None]:
    """Linear probe, kNN and (unless skipped) fine-tuning of one encoder; val top-1 of each."""
    py, eval_dir = sys.executable, out / name / "eval"
    common = ["--checkpoint", str(checkpoint), "--out_dir", str(eval_dir)]
    run([py, "pipelines/linear_probe.py", *common, "--epochs", str(args.probe_epochs)], out / "logs" / f"{name}_probe.log")
    run([py, "pipelines/knn.py", *common], out / "logs" / f"{name}_knn.log")
    return {
        "linear_probe": json.loads((eval_dir / "linear_probe.json").read_text())["val_top1"],
        "knn": json.loads((eval_dir / "knn.json").read_text())["val_top1"],
        "finetune": finetune(name, checkpoint, out, args.finetune_epochs) if args.finetune_epochs > 0 else None,
    }


def table(rows: dict[str, dict[str, float | None]]) -> str:
    """Markdown table of val top-1 per encoder and evaluator."""

    def cell(v: float | None) -> str:
        return "—" if v is None else f"{v:.1f}"

    lines = ["| encoder | linear probe top-1 (%) | kNN top-1 (%) | fine-tune top-1 (%) |", "|---|---:|---:|---:|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {cell(r.get('linear_probe'))} | {cell(r.get('knn'))} | {cell(r.get('finetune'))} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="pretrained encoder to reuse; default: run `python pipelines/pretrain.py`")
    parser.add_argument("--out", default="runs/digits_quality", help="output directory (default: %(default)s)")
    parser.add_argument("--probe-epochs", type=int, default=100, help="linear probe epochs (default: %(default)s)")
    parser.add_argument("--finetune-epochs", type=int, default=20,
                        help="fine-tuning epochs per encoder; 0 skips fine-tuning (default: %(default)s)")
    parser.add_argument("--margin", type=float, default=5.0,
                        help="linear-probe points the pretrained encoder must gain over random (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random initialisation (default: %(default)s)")
    parser.add_argument("--repeats", type=int, nargs="+", default=None, metavar="K",
                        help="pretrain once per K with data.repeats=K, all for the first run's number of steps")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value",
                        help="pretraining config overrides (default.yaml otherwise); not with --checkpoint")
    args = parser.parse_args(argv)
    if args.checkpoint and args.overrides:
        parser.error("pretraining overrides have no effect with --checkpoint")
    out = (ROOT / args.out).resolve() if not Path(args.out).is_absolute() else Path(args.out)
    start = time.time()
    if args.checkpoint and args.repeats:
        parser.error("--repeats pretrains; it has no effect with --checkpoint")
    pretrained: dict[str, Path] = {}
    if args.checkpoint:
        pretrained["pretrained (checkpoint)"] = Path(args.checkpoint).resolve()
    elif args.repeats:
        steps: list[str] = []
        for k in args.repeats:
            run_overrides = [*args.overrides, f"data.repeats={k}", f"train.out_dir={out / 'runs'}",
                             f"train.name=repeats{k}", "train.overwrite=true", *steps]
            stdout_log = out / "logs" / f"pretrain_repeats{k}.log"
            pretrained[f"pretrained ({' '.join(['default run', *args.overrides, f'data.repeats={k}'])})"] = \
                pretrain(out, run_overrides, stdout_log)
            if not steps:
                found = re.search(r"(\d+) batches/epoch/rank, (\d+) steps", stdout_log.read_text())
                if not found:
                    raise SystemExit(f"the data.repeats={k} run printed no 'N steps' line, see {stdout_log}")
                steps = [f"train.steps={found.group(2)}"]
                from sslvit.cli.pretrain import load_run_config

                optim = load_run_config(None, run_overrides)[0].optim
                if optim.warmup_steps is None:  # warmup in epochs would scale with K: keep its steps
                    steps.append(f"optim.warmup_steps={round(optim.warmup_epochs * int(found.group(1)))}")
                print(f"  every run: {' '.join(steps)}", flush=True)
    else:
        pretrained["pretrained (" + " ".join(["default run", *args.overrides]) + ")"] = pretrain(out, args.overrides)
    checkpoint = next(iter(pretrained.values()))
    for path in pretrained.values():
        if not path.is_file():
            parser.error(f"no such checkpoint {path}")
    random_ckpt = random_twin(checkpoint, out, args.seed)

    from sslvit.checkpoint import read_metadata

    image_size = ((read_metadata(checkpoint).get("config") or {}).get("data") or {}).get("digits_image_size", 32)
    rows = {label: evaluate("pretrained" if len(pretrained) == 1 else f"pretrained{i}", path, out, args)
            for i, (label, path) in enumerate(pretrained.items())}
    rows["random init (same architecture)"] = evaluate("random", random_ckpt, out, args)
    rows["raw pixels (logistic regression)"] = {"linear_probe": pixel_logistic_regression(image_size)}
    if args.finetune_epochs > 0:
        # Layer-wise lr decay suits a pretrained encoder; from scratch every layer gets the full lr.
        rows[SCRATCH] = {"finetune": finetune("random_no_layer_decay", random_ckpt, out, args.finetune_epochs,
                                              ("optim.layer_decay=1.0",))}
    gains = {label: rows[label]["linear_probe"] - rows["random init (same architecture)"]["linear_probe"]
             for label in pretrained}
    gain = min(gains.values())
    verdict = "PASS" if gain >= args.margin else "FAIL"
    shown = "; ".join(f"{label}: {g:+.1f}" for label, g in gains.items()) if len(gains) > 1 else f"{gain:+.1f}"
    text = (f"Digits corpus (1,437 train / 360 val, 32 px), val top-1. Pretrained: "
            f"{', '.join(str(p) for p in pretrained.values())}\n\n{table(rows)}\n\n"
            f"Linear probe gain of pretraining over random init: {shown} points "
            f"({verdict}, needs >= {args.margin:g}). Total time {time.time() - start:.0f}s.")
    print("\n" + text)
    (out / "digits_quality.md").write_text(text + "\n")
    (out / "digits_quality.json").write_text(json.dumps(
        {"checkpoint": str(checkpoint), "checkpoints": {k: str(v) for k, v in pretrained.items()}, "rows": rows, "probe_gain": gain, "verdict": verdict}, indent=2) + "\n")
    print(f"\nwritten: {out / 'digits_quality.md'}")
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    raise SystemExit(main())
