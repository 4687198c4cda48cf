"""benchmarks/gpu.py: the CPU smoke run writes every row (numbers or a skip reason) and the table;
the OOM retry, the time budget and error rows, without a GPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
ROWS = [
    "gemm_bf16_peak",
    "mae_vit_b16/eager", "mae_vit_b16/compile",
    "supervised_vit_b16/eager", "supervised_vit_b16/compile",
    "simmim_vit_b16/eager", "simmim_vit_b16/compile",
    "simmim_swin/eager", "simmim_swin/compile",
    "loader_only", "loader_nvjpeg", "e2e_mae_vit_b16", "ddp_2proc_mae_vit_b16",
]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu") / "smoke.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--smoke", "--device", "cpu", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stdout


def test_smoke_has_every_row_with_numbers_or_a_reason(smoke):
    result, _ = smoke
    assert [r["id"] for r in result["rows"]] == ROWS
    assert result["smoke"] is True and result["device"]["type"] == "cpu"
    assert result["torch"] == torch.__version__
    for row in result["rows"]:
        assert row["status"] in ("ok", "skipped"), row
        if row["status"] == "ok":
            assert row["reason"] is None and row["images_per_s"] > 0, row
        else:
            assert isinstance(row["reason"], str) and row["reason"], row


def test_smoke_cpu_rows(smoke):
    rows = {r["id"]: r for r in smoke[0]["rows"]}
    # CUDA-only rows say why they did not run
    assert rows["gemm_bf16_peak"]["status"] == "skipped" and "CUDA" in rows["gemm_bf16_peak"]["reason"]
    for key in ("mae_vit_b16", "supervised_vit_b16", "simmim_vit_b16", "simmim_swin"):
        assert rows[f"{key}/compile"]["status"] == "skipped" and rows[f"{key}/compile"]["reason"]
    assert smoke[0]["peak"]["measured_tflops"] is None
    # what the CPU can run, runs: eager model steps, the loader alone and the loader feeding MAE
    for rid in ("mae_vit_b16/eager", "supervised_vit_b16/eager", "simmim_vit_b16/eager", "loader_only",
                "loader_nvjpeg", "e2e_mae_vit_b16"):
        assert rows[rid]["status"] == "ok", rows[rid]
    assert rows["mae_vit_b16/eager"]["model"] == "vit_pico_patch4"
    assert rows["mae_vit_b16/eager"]["tflops"] > 0 and rows["mae_vit_b16/eager"]["mfu"] is None
    assert rows["mae_vit_b16/eager"]["peak_mem_gib"] is None
    assert rows["e2e_mae_vit_b16"]["vs_model_only"] > 0
    assert smoke[0]["corpus"]["images"] > 0


def test_smoke_prints_the_table(smoke):
    _, stdout = smoke
    table = stdout[stdout.index("row "):]
    for rid in ROWS:
        assert rid in table
    mae = next(line for line in table.splitlines() if line.startswith("mae_vit_b16/eager"))
    assert "n/a" in mae  # MFU and peak memory off CUDA
    assert "wrote " in stdout


# ---------------------------------------------------------------------------------- in process
@pytest.fixture()
def gpu(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    from benchmarks import gpu

    return gpu


def test_oom_retries_once_at_half_batch(gpu, monkeypatch, tmp_path):
    runner = gpu.Runner(gpu.parse_args(["--smoke", "--device", "cpu", "--out", str(tmp_path / "r.json")]))
    runner.cuda = True  # take the CUDA path of the retry on the CPU
    spec = runner.specs["mae_vit_b16"]
    step = gpu.lib.Bench.step

    def oom_at_4(self, batch=None):
        if self.batch_size >= 4:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1 GiB")
        return step(self, batch)

    monkeypatch.setattr(gpu.lib.Bench, "step", oom_at_4)
    numbers = runner.model(spec, compiled=False)
    assert numbers["batch"] == 2 and numbers["oom_retry"] is True
    assert numbers["notes"][0] == "OOM at batch 4, retried at 2"

    monkeypatch.setattr(gpu.lib.Bench, "step", lambda self, batch=None: (_ for _ in ()).throw(
        torch.OutOfMemoryError("CUDA out of memory")))
    row = gpu.lib.run_row(gpu.lib.new_row("x", "model"), lambda: runner.model(spec, compiled=False), runner.budget)
    assert row["status"] == "skipped" and row["reason"] == "RuntimeError: OOM at batch 4 and at the retry with 2"


def test_run_row_reasons(gpu):
    lib = gpu.lib
    spent = lib.TimeBudget(0.0)
    row = lib.run_row(lib.new_row("a", "model"), lambda: {"images_per_s": 1.0}, spent)
    assert row["status"] == "skipped" and row["reason"].startswith("time budget")

    budget = lib.TimeBudget(60.0)

    def missing():
        import sslvit_no_such_dependency  # noqa: F401

    row = lib.run_row(lib.new_row("b", "model"), missing, budget)
    assert row["reason"] == "missing dependency: sslvit_no_such_dependency"
    row = lib.run_row(lib.new_row("c", "model"), lambda: 1 / 0, budget)
    assert row["reason"] == "ZeroDivisionError: division by zero" and row["traceback"]
    row = lib.run_row(lib.new_row("d", "model"), lambda: {"images_per_s": 2.0}, budget)
    assert row["status"] == "ok" and row["reason"] is None and row["images_per_s"] == 2.0
