"""Quality per second of pretraining: ``python benchmarks/quality.py --per-second``.

The first recipe (the reference: MAE's) is pretrained as shipped; its wall time T sets the budgets.
Every recipe is then pretrained for ``f x T`` seconds for each fraction f (``--fractions``, default
1/4, 1/2, 1), all in one run on one machine, one after the other: its steps are what its measured
throughput fits into the budget after its start-up (measured by a calibration run of at least
``CALIBRATION_S`` seconds and two epochs, after a 60-step run that sizes it: the rate is that of
its second half, so the first, streamed epoch and the thread tuner's settling count as start-up), its
schedule (warmup in steps, an EMA teacher's anneal) scaled to those steps. Each encoder is probed
and kNN-evaluated as ``quality.py`` does; the x axis is each run's measured wall time. The pixel
and best random-ViT baselines are horizontal lines. Writes ``per_second.md``, ``per_second.json``
and ``per_second.png`` (test top-1 against pretraining seconds, probe and kNN side by side).
"""

from __future__ import annotations

import json
import re
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from quality_lib import STEPS_LINE, pixel_probe_knn, pretrain, resolved_config

SIZING_STEPS = 60
CALIBRATION_S = 45.0
MIN_STEPS = 10


def _throughput(run_dir: Path, second_half: bool = False) -> float:
    """Median images/s of a run's logged steps (its metrics.jsonl): the first log line left out, or
    with ``second_half`` only the later half of the lines (the run's steady state)."""
    rates = [json.loads(line)["images_per_s"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
             if '"images_per_s"' in line]
    kept = rates[len(rates) // 2:] if second_half else rates[1:]
    return statistics.median(kept or rates)


def calibration_steps(rough_steps_per_s: float, steps_per_epoch: int) -> int:
    """Steps of the calibration run: at least ``CALIBRATION_S`` seconds at the sizing run's rate,
    two epochs and ``SIZING_STEPS``, so that its second half runs past the first (streamed) epoch
    and the thread tuner's first changes."""
    return max(SIZING_STEPS, 2 * steps_per_epoch, round(rough_steps_per_s * CALIBRATION_S))


def fitted_steps(budget_s: float, startup_s: float, steps_per_s: float) -> int:
    """Steps that fit into ``budget_s`` after ``startup_s`` at ``steps_per_s``."""
    return round((budget_s - startup_s) * steps_per_s)


def _schedule_overrides(config: dict[str, Any], steps: int, steps_per_epoch: int) -> list[str]:
    """``train.steps=steps`` and what scales with the run's length in the resolved ``config``: a
    warmup counted in epochs is kept as the same share of the run (capped at its epochs), an EMA
    teacher's anneal spans the run."""
    optim, objective, train = config["optim"], config["objective"], config["train"]
    full = train.get("steps") or train["epochs"] * steps_per_epoch
    warmup = optim.get("warmup_steps")
    if warmup is None:
        warmup = round(optim["warmup_epochs"] * steps_per_epoch)
    out = [f"train.steps={steps}", f"optim.warmup_steps={max(1, round(warmup * min(1.0, steps / full)))}"]
    if objective.get("name") == "data2vec2":
        out.append(f"objective.ema_anneal_steps={steps}")
    return out


def per_second(args: Any, corpus: Any, out: Path, evaluate: Callable[..., Any], random_twins: Callable[..., Any],
               recipes: list[str]) -> str:
    """Run the curve (see the module docstring); returns its markdown."""
    start = time.time()
    fractions = sorted(args.fractions)
    ref = recipes[0]
    runs: dict[str, list[dict[str, Any]]] = {}
    path, total, stdout = pretrain(ref, f"{Path(ref).stem}_full", out, list(args.overrides), args.reuse)
    found = STEPS_LINE.search(stdout)
    if not found:
        raise SystemExit(f"the {ref} run printed no 'N batches/epoch/rank, M steps' line")
    print(f"reference {ref}: {total:.0f} s, {found.group(2)} steps", flush=True)
    ref_encoder = path
    for recipe in recipes:
        name = Path(recipe).stem
        config = resolved_config(recipe, list(args.overrides))
        batch = config["data"]["batch_size"]
        size_path, _, size_out = pretrain(recipe, f"{name}_sizing", out,
                                          [*args.overrides, f"train.steps={SIZING_STEPS}"], args.reuse)
        steps_per_epoch = int(STEPS_LINE.search(size_out).group(1))
        n = calibration_steps(_throughput(size_path.parent) / batch, steps_per_epoch)
        cal_path, cal_s, _ = pretrain(recipe, f"{name}_calibration", out,
                                      [*args.overrides, f"train.steps={n}"], args.reuse)
        rate = _throughput(cal_path.parent, second_half=True) / batch  # steps per second, steady state
        startup = max(0.0, cal_s - n / rate)
        print(f"{name}: {rate:.2f} steps/s after a {startup:.0f} s start-up ({n}-step calibration, "
              f"{cal_s:.0f} s)", flush=True)
        runs[recipe] = []
        for f in fractions:
            if recipe == ref and f == 1.0:
                encoder, seconds, steps = path, total, int(found.group(2))
            else:
                steps = fitted_steps(f * total, startup, rate)
                if steps < MIN_STEPS:
                    print(f"warning: {name} fits {steps} steps into {f:g} T = {f * total:.0f} s after its "
                          f"{startup:.0f} s start-up; it runs {MIN_STEPS}, longer than the budget", flush=True)
                    steps = MIN_STEPS
                extra = _schedule_overrides(config, steps, steps_per_epoch)
                encoder, seconds, _ = pretrain(recipe, f"{name}_f{f:g}", out, [*args.overrides, *extra], args.reuse)
            row = evaluate(f"{name}_f{f:g}", encoder, corpus, out, args, finetune_overrides=None)
            runs[recipe].append({"fraction": f, "steps": steps, "seconds": seconds, "linear_probe": row.linear_probe,
                                 "knn": row.knn})
    pixels = pixel_probe_knn(args.corpus, *corpus.pixel_splits, args.probe_epochs)
    randoms = {form: evaluate(f"curve_random_{form}", twin, corpus, out, args, finetune_overrides=None)
               for form, twin in random_twins(ref_encoder, out / "curve_random", args.positions, args.seed).items()}
    baselines = {"raw pixels": {"linear_probe": pixels["linear_probe"], "knn": pixels["knn"]},
                 "best random ViT": {"linear_probe": max(r.linear_probe for r in randoms.values()),
                                     "knn": max(r.knn for r in randoms.values())}}
    text = _markdown(corpus.title, ref, total, runs, baselines, fractions)
    text += f"\n\nTotal time {time.time() - start:.0f}s."
    out.mkdir(parents=True, exist_ok=True)
    (out / "per_second.md").write_text(text + "\n")
    (out / "per_second.json").write_text(json.dumps({"corpus": args.corpus, "reference": ref, "reference_s": total,
                                                     "runs": runs, "baselines": baselines}, indent=2) + "\n")
    plot(out / "per_second.png", corpus.title, runs, baselines)
    return text + f"\n\nwritten: {out / 'per_second.md'}, {out / 'per_second.png'}"


def _markdown(title: str, ref: str, total: float, runs: dict[str, list[dict[str, Any]]],
              baselines: dict[str, dict[str, float]], fractions: list[float]) -> str:
    lines = [f"{title}; budgets as fractions of {ref}'s {total:.0f} s.", "",
             "| recipe | budget | steps | pretraining (s) | linear probe | kNN |", "|---|---:|---:|---:|---:|---:|"]
    for recipe, points in runs.items():
        for p in points:
            lines.append(f"| {recipe} | {p['fraction']:g} T | {p['steps']} | {p['seconds']:.0f} | "
                         f"{p['linear_probe']:.1f} | {p['knn']:.1f} |")
    for name, b in baselines.items():
        lines.append(f"| {name} | — | — | — | {b['linear_probe']:.1f} | {b['knn']:.1f} |")
    return "\n".join(lines)


def plot(path: Path, title: str, runs: dict[str, list[dict[str, Any]]], baselines: dict[str, dict[str, float]]) -> None:
    """Test top-1 against pretraining seconds: one panel per evaluator, a line per recipe, baselines flat."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharex=True)
    for ax, key, label in zip(axes, ("linear_probe", "knn"), ("linear probe", "kNN"), strict=True):
        for recipe, points in runs.items():
            ax.plot([p["seconds"] for p in points], [p[key] for p in points], marker="o",
                    label=re.sub(r"\.ya?ml$", "", Path(recipe).name))
        for (name, b), style in zip(baselines.items(), ("--", ":"), strict=True):
            ax.axhline(b[key], color="grey", linestyle=style, label=name)
        ax.set_xlabel("pretraining wall time (s)")
        ax.set_ylabel(f"{label} top-1 (%)")
        ax.set_title(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
