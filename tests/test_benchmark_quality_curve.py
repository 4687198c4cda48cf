"""benchmarks/quality_curve.py: the calibration that sizes each per-second run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import quality_curve  # noqa: E402


def _metrics(run: Path, rates: list[float]) -> Path:
    run.mkdir(parents=True)
    lines = [json.dumps({"step": 10 * (i + 1), "images_per_s": r}) for i, r in enumerate(rates)]
    (run / "metrics.jsonl").write_text("\n".join([json.dumps({"event": "start"}), *lines]) + "\n")
    return run


def test_the_steady_rate_leaves_out_the_streamed_epoch_and_the_tuners_settling(tmp_path):
    # a run that streams its first epoch on one thread (400 images/s), then reads from memory on two (900)
    run = _metrics(tmp_path / "r", [350, 400, 400, 420, 440, 880, 900, 910])
    assert quality_curve._throughput(run) == 440  # all but the first line: the old, low estimate
    assert quality_curve._throughput(run, second_half=True) == 890


def test_the_calibration_runs_two_epochs_and_long_enough():
    assert quality_curve.calibration_steps(13.5, 23) == round(13.5 * quality_curve.CALIBRATION_S)
    assert quality_curve.calibration_steps(0.5, 23) == quality_curve.SIZING_STEPS
    assert quality_curve.calibration_steps(2.0, 470) == 940


def test_a_budget_is_filled_at_the_steady_rate_after_the_start_up():
    # 123 s budget, 9 s start-up (first epoch and settling included), 14 steps/s
    assert quality_curve.fitted_steps(123.0, 9.0, 14.0) == 1596
