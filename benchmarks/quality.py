"""Does pretraining learn? Each recipe's encoder against the strongest baselines, on a built-in corpus.

    python benchmarks/quality.py --corpus fashion-mnist     # MAE, SimMIM, MPP recipes + supervised ceiling
    python benchmarks/quality.py --corpus digits            # the default run (default.yaml) + supervised
    python benchmarks/quality.py --corpus fashion-mnist --recipes mae_fashion_mnist --finetune-steps 0 \\
        --tag mask60 objective.mask_ratio=0.6                # one ablation row: probe and kNN only
    python benchmarks/quality.py --corpus digits --repeats 1 2 --finetune-steps 0   # data.repeats=1 vs 2

For the chosen corpus (``digits``: 1,437 train / 360 val; ``fashion-mnist``: 55,000 train, the
official 10,000 test images for reporting) every recipe (a shipped config name or a YAML file) is
pretrained with ``python -m sslvit pretrain`` (timed, alone on the machine), then its encoder goes
through the linear probe, kNN and (unless ``--finetune-steps 0``) fine-tuning, each through its
command (``python -m sslvit probe | knn | finetune``), trained on the train split and reported on
the report split. On fashion-mnist every encoder's feature, random ones included, is its class token
concatenated with the mean of its patch tokens (``--pool token+avg``, as DINO's linear evaluation
of ViT-B does); on digits, the encoder's own pooling. The baselines, evaluated the same way:

- random init: each recipe's architecture freshly initialised with each kind of position table
  (learned 1-D, learned 2-D, fixed 2-D sin-cos; the strongest on the probe is the baseline, and it
  alone is fine-tuned, without layer-wise lr decay, the fairer recipe from scratch);
- raw pixels: the same linear probe on the standardised pixels, and kNN on them;
- the supervised ceiling: the corpus's supervised recipe (same encoder, a budget of about the
  same time), whose encoder is probed and fine-tuned like the others.

A recipe passes when both its probe and its kNN top-1 beat the strongest baseline (best random
init or raw pixels) by ``--margin`` points. Prints a markdown table (with the wall time of each
pretraining and of each encoder's evaluation) and writes it, with the numbers as JSON, to
``--out``; exits 1 when a recipe does not pass.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
REUSE = False  # --reuse: finished pretraining and fine-tuning runs of the same command are taken as they are


@dataclass(frozen=True)
class Corpus:
    """A built-in corpus: its splits as shard specs, its recipes and how to fine-tune on it."""

    title: str
    train: str
    report: str
    recipes: tuple[str, ...]
    supervised: str
    finetune: tuple[str, ...]  # fine-tune overrides besides the step count
    finetune_steps: int
    probe: tuple[str, ...] = ()  # probe / kNN options for every encoder (fashion-mnist: class token + patch mean)
    pixel_splits: tuple[str, str] = ("train", "val")


CORPORA = {
    "digits": Corpus(
        title="Digits (scikit-learn: 1,437 train / 360 val, 32 px), val top-1",
        train="digits:train", report="digits:val", recipes=("default",), supervised="supervised_digits",
        finetune=("data.batch_size=32",), finetune_steps=900),
    "fashion-mnist": Corpus(
        title="Fashion-MNIST (55,000 train / official 10,000 test, 28 px crops of 32 px images), test top-1",
        train="fashion-mnist:train", report="fashion-mnist:test",
        recipes=("mae_fashion_mnist", "simmim_fashion_mnist", "mpp_fashion_mnist"),
        supervised="supervised_fashion_mnist",
        finetune=("data.batch_size=64", "data.hflip=true", "data.crop_scale=0.4,1.0", "finetune.eval_crop_pct=1.0",
                  "optim.warmup_steps=30"),
        finetune_steps=300, probe=("--crop_pct", "1.0", "--batch_size", "256", "--pool", "token+avg"),
        pixel_splits=("train", "test")),
}


@dataclass
class Row:
    """One encoder's numbers (top-1 percent; None = not measured) and wall times in seconds."""

    linear_probe: float | None = None
    knn: float | None = None
    finetune: float | None = None
    pretrain_s: float | None = None
    eval_s: float | None = None
    note: str = ""
    extra: dict = field(default_factory=dict)


def run(cmd: list[str], log: Path) -> tuple[str, float]:
    """Run ``cmd`` from the repository root, keep its output in ``log``, fail loudly; (stdout, seconds)."""
    print("$ " + " ".join(cmd), flush=True)
    start = time.time()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    seconds = time.time() - start
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(done.stdout + "\n--- stderr ---\n" + done.stderr)
    if done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}), see {log}:\n{done.stderr[-3000:]}")
    print(f"  done in {seconds:.0f}s", flush=True)
    return done.stdout, seconds


def pretrain(recipe: str, name: str, out: Path, overrides: list[str], reuse: bool = False) -> tuple[Path, float, str]:
    """Pretrain ``recipe`` (config name or file) into ``out/runs/name``; (encoder path, seconds, stdout).
    With ``reuse``, a finished run of the same command (its encoder, output and time) is taken as is."""
    record = out / "runs" / name / "pretrain_command.json"
    command = {"recipe": recipe, "overrides": overrides}
    if reuse and record.is_file() and json.loads(record.read_text()).get("command") == command:
        saved = json.loads(record.read_text())
        print(f"reusing {name}: pretrained in {saved['seconds']:.0f}s", flush=True)
        return Path(saved["encoder"]), saved["seconds"], (out / "logs" / f"{name}_pretrain.log").read_text()
    stdout, seconds = run([sys.executable, "-m", "sslvit", "pretrain", "--config", recipe,
                           f"train.out_dir={out / 'runs'}", f"train.name={name}", "train.overwrite=true",
                           "train.progress=false", "train.trackers=[]", *overrides], out / "logs" / f"{name}_pretrain.log")
    match = re.search(r"^encoder:\s+(\S+)", stdout, re.M)
    if not match:
        raise SystemExit(f"the {recipe} run printed no 'encoder: PATH' line, see {out / 'logs'}")
    record.write_text(json.dumps({"command": command, "encoder": match.group(1), "seconds": seconds}) + "\n")
    return Path(match.group(1)), seconds, stdout


def random_twin(checkpoint: Path, out: Path, pos_embed: str, seed: int) -> Path:
    """The checkpoint's architecture with ``pos_embed``, freshly initialised, with the same input
    normalisation and run metadata."""
    import torch

    from sslvit.checkpoint import infer_model_config, read_metadata, read_state_dict, save_model
    from sslvit.models import build_model

    meta = read_metadata(checkpoint)
    config = dict(meta.get("model") or infer_model_config(read_state_dict(checkpoint)[0]))
    config["pos_embed"] = pos_embed
    torch.manual_seed(seed)
    model = build_model(config)
    extra = {k: v for k, v in meta.items() if k in ("config", "objective", "normalization")}
    return save_model(model, out / f"random_{pos_embed}" / "model.safetensors", model.get_config(), extra=extra)


def architecture(checkpoint: Path) -> str:
    """The checkpoint's model config without its position table, as a key for sharing random twins."""
    from sslvit.checkpoint import read_metadata

    config = dict(read_metadata(checkpoint).get("model") or {})
    config.pop("pos_embed", None)
    config.pop("num_classes", None)
    return json.dumps(config, sort_keys=True)


def evaluate(name: str, checkpoint: Path, corpus: Corpus, out: Path, args: argparse.Namespace,
             finetune_overrides: tuple[str, ...] = ()) -> Row:
    """Linear probe, kNN and (unless skipped) fine-tuning of one encoder."""
    py, eval_dir = sys.executable, out / name / "eval"
    common = ["--checkpoint", str(checkpoint), "--train", corpus.train, "--val", corpus.report,
              "--out_dir", str(eval_dir), *corpus.probe]
    probe_cmd = [py, "-m", "sslvit", "probe", *common, "--epochs", str(args.probe_epochs)]
    knn_cmd = [py, "-m", "sslvit", "knn", *common]
    record = out / name / "eval_command.json"
    done = (REUSE and record.is_file() and (eval_dir / "knn.json").is_file()
            and json.loads(record.read_text())["command"] == [probe_cmd[1:], knn_cmd[1:]])
    if done:
        probe_s, knn_s = json.loads(record.read_text())["seconds"]
        print(f"reusing the probe and kNN of {name}", flush=True)
    else:
        _, probe_s = run(probe_cmd, out / "logs" / f"{name}_probe.log")
        _, knn_s = run(knn_cmd, out / "logs" / f"{name}_knn.log")
        record.write_text(json.dumps({"command": [probe_cmd[1:], knn_cmd[1:]], "seconds": [probe_s, knn_s]}) + "\n")
    row = Row(linear_probe=json.loads((eval_dir / "linear_probe.json").read_text())["val_top1"],
              knn=json.loads((eval_dir / "knn.json").read_text())["val_top1"],
              eval_s=None if probe_s is None or knn_s is None else probe_s + knn_s)
    if args.finetune_steps and finetune_overrides is not None:
        row.finetune, seconds = finetune(name, checkpoint, corpus, out, args.finetune_steps, finetune_overrides)
        row.eval_s = None if row.eval_s is None else row.eval_s + seconds
    return row


def finetune(name: str, checkpoint: Path, corpus: Corpus, out: Path, steps: int,
             overrides: tuple[str, ...] = ()) -> tuple[float, float]:
    """Fine-tune one encoder for ``steps`` optimizer steps on the train split; (report top-1, seconds)."""
    from sslvit.checkpoint import read_metadata

    size = (read_metadata(checkpoint).get("model") or {}).get("img_size", 32)
    cmd = [sys.executable, "-m", "sslvit", "finetune", "--checkpoint", str(checkpoint), "--train", corpus.train,
           "--val", corpus.report, f"data.image_size={size}", f"train.out_dir={out / name}", "train.name=finetune",
           "train.overwrite=true", f"train.steps={steps}", "train.progress=false", "train.trackers=[]",
           *corpus.finetune, *overrides]
    record, result = out / name / "finetune_command.json", out / name / "finetune" / "finetune.json"
    if REUSE and record.is_file() and result.is_file() and json.loads(record.read_text())["command"] == cmd[1:]:
        seconds = json.loads(record.read_text())["seconds"]
        print(f"reusing the fine-tuning of {name} ({seconds:.0f}s)", flush=True)
        return json.loads(result.read_text())["val_top1"], seconds
    _, seconds = run(cmd, out / "logs" / f"{name}_finetune.log")
    record.write_text(json.dumps({"command": cmd[1:], "seconds": seconds}) + "\n")
    return json.loads(result.read_text())["val_top1"], seconds


def pixel_rows(corpus_name: str, corpus: Corpus, args: argparse.Namespace) -> Row:
    """The linear probe (the same sweep as for encoders) and kNN on standardised raw pixels."""
    import torch

    from sslvit.evaluate.knn import knn_evaluate
    from sslvit.evaluate.linear_probe import ProbeConfig, evaluate_probe, fit_probe

    start = time.time()
    fit_split, report_split = corpus.pixel_splits
    if corpus_name == "digits":
        from sslvit.data.digits import digits_arrays

        arrays = {k: {"images": v[0], "labels": v[1]} for k, v in digits_arrays(32).items()}
    else:
        from sslvit.data.fashion_mnist import fashion_mnist_arrays

        arrays = fashion_mnist_arrays(image_size=32)

    def flat(split: str) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = arrays[split]["images"], arrays[split]["labels"]
        return (torch.tensor(images.reshape(len(images), -1), dtype=torch.float32) / 255.0,
                torch.as_tensor(labels, dtype=torch.long))

    (xt, yt), (xr, yr) = flat(fit_split), flat(report_split)
    mean, std = xt.mean(0), xt.std(0) + 1e-6
    xt, xr = (xt - mean) / std, (xr - mean) / std
    probe = fit_probe(xt, yt, int(yt.max()) + 1, ProbeConfig(epochs=args.probe_epochs))
    row = Row(linear_probe=evaluate_probe(probe["probe"], xr, yr)["top1"],
              knn=knn_evaluate(xt, yt, xr, yr, num_classes=int(yt.max()) + 1)["top1"])
    row.eval_s = time.time() - start
    return row


def table(rows: dict[str, Row]) -> str:
    """Markdown table of top-1 per encoder and evaluator, with wall times."""

    def cell(v: float | None, fmt: str = "{:.1f}") -> str:
        return "—" if v is None else fmt.format(v)

    lines = ["| encoder | linear probe | kNN | fine-tune | pretraining (s) | evaluation (s) |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {cell(r.linear_probe)} | {cell(r.knn)} | {cell(r.finetune)} | "
                     f"{cell(r.pretrain_s, '{:.0f}')} | {cell(r.eval_s, '{:.0f}')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", choices=sorted(CORPORA), default="fashion-mnist", help="(default: %(default)s)")
    parser.add_argument("--recipes", nargs="+", metavar="CONFIG",
                        help="configs to pretrain (shipped names or YAML files); default: the corpus's recipes")
    parser.add_argument("--no-supervised", action="store_true", help="leave out the supervised ceiling")
    parser.add_argument("--positions", nargs="+", choices=("learned", "learned_2d", "sincos"),
                        default=["learned", "learned_2d", "sincos"],
                        help="position tables of the random encoders (default: all three)")
    parser.add_argument("--reuse", action="store_true",
                        help="take finished pretraining and fine-tuning runs of the same command from --out (their times "
                             "as measured then)")
    parser.add_argument("--no-baselines", action="store_true",
                        help="leave out the random-init and raw-pixel rows (an ablation row; no verdict)")
    parser.add_argument("--out", default=None, help="output directory (default: runs/quality/CORPUS[-TAG])")
    parser.add_argument("--tag", default="", help="a name for this variant (run names and the output folder)")
    parser.add_argument("--probe-epochs", type=int, default=100, help="linear probe epochs (default: %(default)s)")
    parser.add_argument("--finetune-steps", type=int, default=None,
                        help="fine-tuning steps per encoder; 0 skips fine-tuning (default: the corpus's, digits 900, "
                             "fashion-mnist 300)")
    parser.add_argument("--margin", type=float, default=1.0,
                        help="top-1 points a recipe must gain over the strongest baseline (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random initialisations (default: %(default)s)")
    parser.add_argument("--repeats", type=int, nargs="+", default=None, metavar="K",
                        help="pretrain the (first) recipe once per K with data.repeats=K, all for the first run's steps")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value",
                        help="overrides for every recipe (objective.* ones not for the supervised ceiling)")
    args = parser.parse_args(argv)
    corpus = CORPORA[args.corpus]
    global REUSE
    REUSE = args.reuse
    args.finetune_steps = corpus.finetune_steps if args.finetune_steps is None else args.finetune_steps
    tag = f"-{args.tag}" if args.tag else ""
    out = Path(args.out or f"runs/quality/{args.corpus}{tag}")
    out = out if out.is_absolute() else (ROOT / out).resolve()
    start = time.time()

    runs: list[tuple[str, str, list[str]]] = []  # (row label, recipe, overrides)
    recipes = list(args.recipes or corpus.recipes)
    if args.repeats:
        runs = [(f"{recipes[0]} data.repeats={k}", recipes[0], [*args.overrides, f"data.repeats={k}"]) for k in args.repeats]
    else:
        runs = [(" ".join([r, *args.overrides]), r, list(args.overrides)) for r in recipes]

    rows: dict[str, Row] = {}
    encoders: dict[str, Path] = {}
    steps: list[str] = []
    for i, (label, recipe, overrides) in enumerate(runs):
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(recipe).stem + tag + (f"_r{args.repeats[i]}" if args.repeats else ""))
        path, seconds, stdout = pretrain(recipe, name, out, [*overrides, *steps], args.reuse)
        if args.repeats and not steps:  # every K gets the first run's optimizer steps (and warmup steps)
            found = re.search(r"(\d+) batches/epoch/rank, (\d+) steps", stdout)
            if not found:
                raise SystemExit(f"the {label} run printed no 'N steps' line")
            from sslvit.cli.pretrain import load_run_config

            optim = load_run_config(recipe, overrides)[0].optim
            steps = [f"train.steps={found.group(2)}"]
            if optim.warmup_steps is None:
                steps.append(f"optim.warmup_steps={round(optim.warmup_epochs * int(found.group(1)))}")
        encoders[label] = path
        rows[label] = evaluate(name, path, corpus, out, args, finetune_overrides=())
        rows[label].pretrain_s = seconds
    if not args.no_supervised:
        shared = [o for o in args.overrides if not o.lstrip("-").startswith("objective.")]
        path, seconds, _ = pretrain(corpus.supervised, f"supervised{tag}", out, shared, args.reuse)
        label = f"supervised ceiling ({corpus.supervised})"
        rows[label] = evaluate(f"supervised{tag}", path, corpus, out, args, finetune_overrides=())
        rows[label].pretrain_s = seconds

    done: dict[str, list[str]] = {}
    for label, path in ({} if args.no_baselines else encoders).items():
        key = architecture(path)
        if key in done:
            continue
        labels = []
        for pos in args.positions:
            twin = random_twin(path, out / f"arch{len(done)}", pos, args.seed)
            rlabel = f"random init, {pos} positions" + (f" ({label}'s encoder)" if len(encoders) > 1 and done else "")
            rows[rlabel] = evaluate(f"arch{len(done)}_random_{pos}", twin, corpus, out, args, finetune_overrides=None)
            labels.append(rlabel)
        best = max(labels, key=lambda lab: rows[lab].linear_probe)
        if args.finetune_steps:
            twin = out / f"arch{len(done)}" / f"random_{best.split(', ')[1].split()[0]}" / "model.safetensors"
            rows[best].finetune, seconds = finetune(f"arch{len(done)}_random_best", twin, corpus, out,
                                                    args.finetune_steps, ("optim.layer_decay=1.0",))
            rows[best].eval_s = None if rows[best].eval_s is None else rows[best].eval_s + seconds
        done[key] = labels
    verdicts = {}
    if not args.no_baselines:
        rows["raw pixels (standardised; linear probe, kNN)"] = pixels = pixel_rows(args.corpus, corpus, args)
    for label in ({} if args.no_baselines else encoders):
        key = architecture(encoders[label])
        base_probe = max([pixels.linear_probe] + [rows[r].linear_probe for r in done[key]])
        base_knn = max([pixels.knn] + [rows[r].knn for r in done[key]])
        gain_probe, gain_knn = rows[label].linear_probe - base_probe, rows[label].knn - base_knn
        verdicts[label] = {"probe_gain": gain_probe, "knn_gain": gain_knn,
                           "pass": gain_probe >= args.margin and gain_knn >= args.margin}
    lines = [f"- {label}: probe {v['probe_gain']:+.1f}, kNN {v['knn_gain']:+.1f} points over the strongest "
             f"baseline: {'PASS' if v['pass'] else 'FAIL'}" for label, v in verdicts.items()]
    text = (f"{corpus.title}.\n\n{table(rows)}\n\n" + ("" if args.no_baselines else (
            f"Gain over the strongest baseline (best random init or raw pixels, per evaluator; needs >= "
            f"{args.margin:g}):\n" + "\n".join(lines)))
            + f"\n\nTotal time {time.time() - start:.0f}s. Command: python benchmarks/quality.py "
            + " ".join(argv if argv is not None else sys.argv[1:]))
    print("\n" + text)
    out.mkdir(parents=True, exist_ok=True)
    (out / "quality.md").write_text(text + "\n")
    (out / "quality.json").write_text(json.dumps(
        {"corpus": args.corpus, "encoders": {k: str(v) for k, v in encoders.items()},
         "rows": {k: {f: getattr(r, f) for f in ("linear_probe", "knn", "finetune", "pretrain_s", "eval_s")}
                  for k, r in rows.items()}, "verdicts": verdicts}, indent=2) + "\n")
    print(f"\nwritten: {out / 'quality.md'}")
    return 0 if all(v["pass"] for v in verdicts.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
