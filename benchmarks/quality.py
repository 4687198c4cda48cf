"""Does pretraining learn? Each recipe's encoder, or one checkpoint, against the strongest baselines.

    python benchmarks/quality.py --corpus fashion-mnist     # MAE, SimMIM, MPP recipes + supervised ceiling
    python benchmarks/quality.py --corpus digits            # the default run (default.yaml) + supervised
    python benchmarks/quality.py --corpus digits --checkpoint runs/NAME/model.safetensors   # one encoder
    python benchmarks/quality.py --corpus digits --no-supervised --no-baselines --finetune-steps 0 \\
        --tag normpix objective.norm_pix_loss=true          # a recipe variant: probe and kNN only
    python benchmarks/quality.py --corpus fashion-mnist --recipes mae_fashion_mnist --finetune-steps 0 \\
        --tag mask60 objective.mask_ratio=0.6                # one ablation row beside its baselines
    python benchmarks/quality.py --corpus digits --repeats 1 2 --finetune-steps 0   # data.repeats=1 vs 2
    python benchmarks/quality.py --corpus digits --no-supervised --positions learned --finetune-epochs 20
    python benchmarks/quality.py --corpus digits --per-second     # quality per second: MAE vs data2vec2

Modes:

- recipes (the default): every recipe (``--recipes``: shipped config names or YAML files; default:
  the corpus's) is pretrained with ``python -m sslvit pretrain`` (timed, alone on the machine),
  then evaluated; ``section.key=value`` overrides apply to every recipe (a recipe variant; the
  supervised ceiling gets those outside ``objective.*``), ``--tag`` names the variant.
- one checkpoint (``--checkpoint PATH``: an encoder file or a run directory): nothing is
  pretrained; that encoder is evaluated beside its baselines (no supervised ceiling).
- repeats (``--repeats K ...``): the first recipe is pretrained once per K with ``data.repeats=K``
  (K augmented, masked views of each decoded image) for the same number of optimizer steps: the
  first K's run sets the count (its printed "N steps"), the others get ``train.steps=N`` (and that
  run's warmup as ``optim.warmup_steps`` when the recipe counts warmup in epochs), so a K-fold
  repeat sees 1/K of the epochs.
- quality per second (``--per-second``): every recipe (default: the corpus's ``curve``, MAE's
  first) pretrained for 1/4, 1/2 and 1 of the first recipe's wall time (``--fractions``), side by
  side in one run, probed and kNN-evaluated; a table and a PNG plot against the pixel and best
  random-ViT baselines (see ``quality_curve.py``).

For the chosen corpus (``digits``: 1,437 train / 360 val; ``fashion-mnist``: 55,000 train, the
official 10,000 test images for reporting) every encoder goes through the linear probe, kNN and
(unless ``--finetune-steps 0``) fine-tuning, each through its command (``python -m sslvit probe |
knn | finetune``), trained on the train split and reported on the report split. Fine-tuning runs
``--finetune-steps`` optimizer steps (default: the corpus's), or ``--finetune-epochs`` epochs. On
fashion-mnist every encoder's feature, random ones included, is its class token concatenated with
the mean of its patch tokens (``--pool token+avg``, as DINO's linear evaluation of ViT-B does); on
digits, the encoder's own pooling. The baselines, evaluated the same way:

- random init: each encoder's architecture freshly initialised (``--seed``) with each kind of
  position table (``--positions``: learned 1-D, learned 2-D, fixed 2-D sin-cos; backbones without a
  ``pos_embed`` option once, as built); the strongest on the probe is the baseline, and it alone is
  fine-tuned, without layer-wise lr decay, the fairer recipe from scratch;
- raw pixels: the same linear probe on the standardised pixels, and kNN on them;
- the supervised ceiling: the corpus's supervised recipe (same encoder, a budget of about the
  same time), whose encoder is probed and fine-tuned like the others (``--no-supervised``: left out).

An encoder passes when both its probe and its kNN top-1 beat the strongest baseline (best random
init or raw pixels) by ``--margin`` points. Prints a markdown table (with the wall time of each
pretraining and of each encoder's evaluation) and writes it, with the numbers as JSON, to
``--out`` (quality.md, quality.json); exits 1 when an encoder does not pass.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from quality_curve import per_second  # noqa: E402
from quality_lib import (  # noqa: E402
    ROOT,
    encoder_file,
    model_config,
    pixel_probe_knn,
    pretrain,
    random_encoder,
    run,
    same_steps,
    sslvit_command,
)

REUSE = False  # --reuse: finished pretraining and fine-tuning runs of the same command are taken as they are


@dataclass(frozen=True)
class Corpus:
    """A built-in corpus: its splits as shard specs, its recipes and how to fine-tune on it."""

    title: str
    train: str
    report: str
    recipes: tuple[str, ...]
    curve: tuple[str, ...]  # --per-second: the reference (MAE) first
    supervised: str
    finetune: tuple[str, ...]  # fine-tune overrides besides the budget (steps or epochs)
    finetune_steps: int
    probe: tuple[str, ...] = ()  # probe / kNN options for every encoder (fashion-mnist: class token + patch mean)
    pixel_splits: tuple[str, str] = ("train", "val")


CORPORA = {
    "digits": Corpus(
        title="Digits (scikit-learn: 1,437 train / 360 val, 32 px), val top-1",
        train="digits:train", report="digits:val", recipes=("default",),
        curve=("default", "data2vec2_digits"), supervised="supervised_digits",
        finetune=("data.batch_size=32",), finetune_steps=900),
    "fashion-mnist": Corpus(
        title="Fashion-MNIST (55,000 train / official 10,000 test, 28 px crops of 32 px images), test top-1",
        train="fashion-mnist:train", report="fashion-mnist:test",
        recipes=("mae_fashion_mnist", "simmim_fashion_mnist", "mpp_fashion_mnist"),
        curve=("mae_fashion_mnist", "data2vec2_fashion_mnist"),
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


def random_twins(checkpoint: Path, folder: Path, positions: list[str], seed: int) -> dict[str, Path]:
    """The checkpoint's architecture freshly initialised once per position table (once, "as built",
    when the backbone has no ``pos_embed`` option), with the same input normalisation and run
    metadata; form -> encoder path (``folder/random_FORM/model.safetensors``)."""
    forms = positions if "pos_embed" in model_config(checkpoint) else ["as built"]
    return {form: random_encoder(checkpoint, folder / f"random_{form.replace(' ', '_')}" / "model.safetensors",
                                 {} if form == "as built" else {"pos_embed": form}, seed) for form in forms}


def architecture(checkpoint: Path) -> str:
    """The checkpoint's model config without its position table, as a key for sharing random twins."""
    config = model_config(checkpoint)
    config.pop("pos_embed", None)
    config.pop("num_classes", None)
    return json.dumps(config, sort_keys=True)


def evaluate(name: str, checkpoint: Path, corpus: Corpus, out: Path, args: argparse.Namespace,
             finetune_overrides: tuple[str, ...] | None = ()) -> Row:
    """Linear probe, kNN and (unless skipped, or ``finetune_overrides`` is None) fine-tuning of one encoder."""
    eval_dir = out / name / "eval"
    common = ["--checkpoint", str(checkpoint), "--train", corpus.train, "--val", corpus.report,
              "--out_dir", str(eval_dir), *corpus.probe]
    probe_cmd = sslvit_command("probe", *common, "--epochs", str(args.probe_epochs))
    knn_cmd = sslvit_command("knn", *common)
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
    if args.finetune_budget and finetune_overrides is not None:
        row.finetune, seconds = finetune(name, checkpoint, corpus, out, args.finetune_budget, finetune_overrides)
        row.eval_s = None if row.eval_s is None else row.eval_s + seconds
    return row


def finetune(name: str, checkpoint: Path, corpus: Corpus, out: Path, budget: str,
             overrides: tuple[str, ...] = ()) -> tuple[float, float]:
    """Fine-tune one encoder on the train split for ``budget`` (``train.steps=N`` or
    ``train.epochs=N``); (report top-1, seconds)."""
    size = model_config(checkpoint).get("img_size", 32)
    cmd = sslvit_command("finetune", "--checkpoint", str(checkpoint), "--train", corpus.train,
                         "--val", corpus.report, f"data.image_size={size}", f"train.out_dir={out / name}",
                         "train.name=finetune", "train.overwrite=true", budget, "train.progress=false",
                         "train.trackers=[]", *corpus.finetune, *overrides)
    record, result = out / name / "finetune_command.json", out / name / "finetune" / "finetune.json"
    if REUSE and record.is_file() and result.is_file() and json.loads(record.read_text())["command"] == cmd[1:]:
        seconds = json.loads(record.read_text())["seconds"]
        print(f"reusing the fine-tuning of {name} ({seconds:.0f}s)", flush=True)
        return json.loads(result.read_text())["val_top1"], seconds
    _, seconds = run(cmd, out / "logs" / f"{name}_finetune.log")
    record.write_text(json.dumps({"command": cmd[1:], "seconds": seconds}) + "\n")
    return json.loads(result.read_text())["val_top1"], seconds


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


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", choices=sorted(CORPORA), default="fashion-mnist", help="(default: %(default)s)")
    parser.add_argument("--recipes", nargs="+", metavar="CONFIG",
                        help="configs to pretrain (shipped names or YAML files); default: the corpus's recipes")
    parser.add_argument("--checkpoint", metavar="PATH",
                        help="evaluate this encoder (a checkpoint file or run directory) beside the baselines "
                             "instead of pretraining; no supervised ceiling")
    parser.add_argument("--no-supervised", action="store_true", help="leave out the supervised ceiling")
    parser.add_argument("--positions", nargs="+", choices=("learned", "learned_2d", "sincos"),
                        default=["learned", "learned_2d", "sincos"],
                        help="position tables of the random encoders (default: all three)")
    parser.add_argument("--reuse", action="store_true",
                        help="take finished pretraining and fine-tuning runs of the same command from --out (their times "
                             "as measured then)")
    parser.add_argument("--no-baselines", action="store_true",
                        help="leave out the random-init and raw-pixel rows (an ablation row; no verdict)")
    parser.add_argument("--out", default=None,
                        help="output directory (default: runs/quality/CORPUS[-TAG], with --checkpoint "
                             "runs/quality/CORPUS-checkpoint)")
    parser.add_argument("--tag", default="", help="a name for this variant (run names and the output folder)")
    parser.add_argument("--probe-epochs", type=int, default=100, help="linear probe epochs (default: %(default)s)")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--finetune-steps", type=int, default=None,
                        help="fine-tuning steps per encoder; 0 skips fine-tuning (default: the corpus's, digits 900, "
                             "fashion-mnist 300)")
    budget.add_argument("--finetune-epochs", type=int, default=None,
                        help="fine-tune for this many epochs (train.epochs) instead of a number of steps; 0 skips "
                             "fine-tuning")
    parser.add_argument("--margin", type=float, default=1.0,
                        help="top-1 points an encoder must gain over the strongest baseline (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random initialisations (default: %(default)s)")
    parser.add_argument("--repeats", type=int, nargs="+", default=None, metavar="K",
                        help="pretrain the (first) recipe once per K with data.repeats=K, all for the first run's steps")
    parser.add_argument("--per-second", action="store_true",
                        help="quality per second: each --recipes (default: the corpus's curve) at fractions of the "
                             "first one's wall time")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.25, 0.5, 1.0],
                        help="budgets of --per-second as fractions of the first recipe's time (default: %(default)s)")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value",
                        help="overrides for every recipe (objective.* ones not for the supervised ceiling)")
    args = parser.parse_args(argv)
    if args.checkpoint and (args.recipes or args.repeats or args.overrides):
        parser.error("--checkpoint pretrains nothing: --recipes, --repeats and overrides have no effect with it")
    if args.per_second and (args.checkpoint or args.repeats):
        parser.error("--per-second pretrains the recipes itself: not with --checkpoint or --repeats")
    if args.checkpoint and not encoder_file(args.checkpoint).is_file():
        parser.error(f"no such checkpoint {encoder_file(args.checkpoint)}")
    if args.finetune_epochs is not None:
        args.finetune_budget = f"train.epochs={args.finetune_epochs}" if args.finetune_epochs > 0 else None
    else:
        steps = CORPORA[args.corpus].finetune_steps if args.finetune_steps is None else args.finetune_steps
        args.finetune_budget = f"train.steps={steps}" if steps > 0 else None
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    corpus = CORPORA[args.corpus]
    global REUSE
    REUSE = args.reuse
    tag = f"-{args.tag}" if args.tag else ""
    folder = tag or ("-checkpoint" if args.checkpoint else "")
    out = Path(args.out or f"runs/quality/{args.corpus}{folder}")
    out = out if out.is_absolute() else (ROOT / out).resolve()
    start = time.time()

    if args.per_second:
        text = per_second(args, corpus, out, evaluate, random_twins, list(args.recipes or corpus.curve))
        print("\n" + text + "\nCommand: python benchmarks/quality.py " + " ".join(argv if argv is not None else sys.argv[1:]))
        return 0
    rows: dict[str, Row] = {}
    encoders: dict[str, Path] = {}
    recipes = list(args.recipes or corpus.recipes)
    if args.checkpoint:
        runs: list[tuple[str, str, list[str]]] = []  # (row label, recipe, overrides)
        label = f"checkpoint {args.checkpoint}"
        encoders[label] = encoder_file(args.checkpoint)
        rows[label] = evaluate("checkpoint", encoders[label], corpus, out, args)
    elif args.repeats:
        runs = [(f"{recipes[0]} data.repeats={k}", recipes[0], [*args.overrides, f"data.repeats={k}"]) for k in args.repeats]
    else:
        runs = [(" ".join([r, *args.overrides]), r, list(args.overrides)) for r in recipes]
    steps: list[str] = []
    for i, (label, recipe, overrides) in enumerate(runs):
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(recipe).stem + tag + (f"_r{args.repeats[i]}" if args.repeats else ""))
        path, seconds, stdout = pretrain(recipe, name, out, [*overrides, *steps], args.reuse)
        if args.repeats and not steps:  # every K gets the first run's optimizer steps (and warmup steps)
            steps = same_steps(stdout, recipe, overrides)
        encoders[label] = path
        rows[label] = evaluate(name, path, corpus, out, args)
        rows[label].pretrain_s = seconds
    if not args.no_supervised and not args.checkpoint:
        shared = [o for o in args.overrides if not o.lstrip("-").startswith("objective.")]
        path, seconds, _ = pretrain(corpus.supervised, f"supervised{tag}", out, shared, args.reuse)
        label = f"supervised ceiling ({corpus.supervised})"
        rows[label] = evaluate(f"supervised{tag}", path, corpus, out, args)
        rows[label].pretrain_s = seconds

    done: dict[str, list[str]] = {}
    for label, path in ({} if args.no_baselines else encoders).items():
        key = architecture(path)
        if key in done:
            continue
        arch = f"arch{len(done)}"
        twins: dict[str, Path] = {}
        for form, twin in random_twins(path, out / arch, args.positions, args.seed).items():
            rlabel = "random init, " + (form if form == "as built" else f"{form} positions") + (
                f" ({label}'s encoder)" if len(encoders) > 1 and done else "")
            rows[rlabel] = evaluate(f"{arch}_random_{form.replace(' ', '_')}", twin, corpus, out, args,
                                    finetune_overrides=None)
            twins[rlabel] = twin
        best = max(twins, key=lambda lab: rows[lab].linear_probe)
        if args.finetune_budget:
            rows[best].finetune, seconds = finetune(f"{arch}_random_best", twins[best], corpus, out,
                                                    args.finetune_budget, ("optim.layer_decay=1.0",))
            rows[best].eval_s = None if rows[best].eval_s is None else rows[best].eval_s + seconds
        done[key] = list(twins)
    verdicts = {}
    if not args.no_baselines:
        found = pixel_probe_knn(args.corpus, *corpus.pixel_splits, args.probe_epochs)
        pixels = Row(linear_probe=found["linear_probe"], knn=found["knn"], eval_s=found["seconds"])
        rows["raw pixels (standardised; linear probe, kNN)"] = pixels
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
