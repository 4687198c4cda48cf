"""One-GPU throughput report: bf16 GEMM peak, model-only training steps, loader, end to end.

    bash benchmarks/gpu.sh                         # fresh copy of the tree on a CUDA machine (installs, runs)
    python benchmarks/gpu.py                       # ~6-7 minutes on one GPU; --time-budget 420 by default
    python benchmarks/gpu.py --smoke               # CPU: tiny models, the same table and JSON, < 1 minute
    python benchmarks/gpu.py --rows mae,loader     # only some rows (the rest are skipped, "not selected")

In one invocation it writes a JSON (``--out``, default ``benchmarks/results/gpu-<timestamp>.json``,
rewritten after every row, so an interrupted run still leaves the rows it finished) and prints a
table:

* ``gemm_bf16_peak``: the measured dense bf16 matmul throughput of this GPU (n^3 products,
  n = 4096 / 8192 / 16384, CUDA events; the best is the MFU denominator), beside the data-sheet
  figure from ``sslvit.training.throughput.bf16_peak``.
* model-only training steps on synthetic uint8 batches already on the device (forward in bf16
  autocast, backward, fused AdamW), eager and ``torch.compile``d, for MAE ViT-B/16, supervised
  ViT-B/16, SimMIM ViT-B/16 and SimMIM on a Swin when one is registered: images/s, training
  TFLOP/s (3 x the objective's analytic forward FLOPs), MFU, peak memory (reset per row).
  Batch 256; a CUDA OOM retries once at half the batch and says so.
* ``loader_only``: sslvit's shard loader alone, all CPU cores as workers, on the loader
  benchmark's corpus (benchmarks/loader.py's ImageNet-like JPEGs in tar shards), MAE
  augmentation at 224 px.
* ``loader_nvjpeg``: the same loader with ``data.jpeg_decode=nvjpeg``: the workers send the JPEGs
  with their crop boxes and the main process decodes each batch on the GPU (nvJPEG through
  ``torchvision.io.decode_jpeg(device="cuda")``), crops, resizes and flips it there. In ``--smoke``
  on a CPU the same code decodes with libjpeg-turbo in the main process.
* ``e2e_mae_vit_b16``: that loader feeding MAE ViT-B/16 (compiled when compiling worked), masks
  made in the workers, pinned memory; images/s and the ratio to the model-only row of that mode.
* ``ddp_2proc_mae_vit_b16``: two DDP processes, one GPU each, when there are two GPUs and time.

Each row runs under try/except: a missing dependency, an error or the time budget
(``--time-budget``; rows that would start after it are skipped with reason "time budget", and a
row still running ``--grace`` seconds later is interrupted) becomes the row's skip reason.
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()  # the time budget counts from here, imports included

import argparse  # noqa: E402
import datetime as dt  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks import gpu_lib as lib  # noqa: E402
from benchmarks.gpu_lib import ModelSpec  # noqa: E402

SWIN_CANDIDATES = ("swin_base_patch4_window7_224", "swin_tiny_patch4_window7_224")
SMOKE_SWIN_CANDIDATES = ("swin_pico_patch2_window4_32", "swin_nano_patch2_window4_32", *SWIN_CANDIDATES)
MODEL_KEYS = ("mae_vit_b16", "supervised_vit_b16", "simmim_vit_b16", "simmim_swin")
MODES = ("eager", "compile")
ROW_IDS = ("gemm_bf16_peak", *(f"{k}/{m}" for k in MODEL_KEYS for m in MODES), "loader_only",
           "loader_nvjpeg", "e2e_mae_vit_b16", "ddp_2proc_mae_vit_b16")


def model_specs(smoke: bool) -> dict[str, ModelSpec | str]:
    """The four model rows; the Swin one is a skip reason when no Swin is registered."""
    if smoke:  # vit_pico_patch4 at 32 px with a tiny MAE decoder and 8 px SimMIM cells
        vit, size, cells = "vit_pico_patch4", 32, ["objective.mask_patch_size=8"]
        mae_extra = ["objective.decoder_depth=1", "objective.decoder_dim=32", "objective.decoder_heads=4"]
    else:
        vit, size, cells, mae_extra = "vit_base_patch16", 224, [], []
    specs: dict[str, ModelSpec | str] = {
        "mae_vit_b16": ModelSpec("mae_vit_b16", f"MAE {vit}", vit, "mae", size, mae_extra),
        "supervised_vit_b16": ModelSpec("supervised_vit_b16", f"supervised {vit}", vit, "supervised", size,
                                        ["model.num_classes=1000", "objective.num_classes=1000"]),
        "simmim_vit_b16": ModelSpec("simmim_vit_b16", f"SimMIM {vit}", vit, "simmim", size, cells),
    }
    try:
        from sslvit.models import list_models

        names = set(list_models())
    except Exception as err:  # noqa: BLE001
        specs["simmim_swin"] = f"cannot list models: {lib.describe_error(err)}"
        return specs
    swin = next((n for n in (SMOKE_SWIN_CANDIDATES if smoke else SWIN_CANDIDATES) if n in names), None)
    if swin is None:
        specs["simmim_swin"] = "no Swin backbone registered"
    else:
        swin_size = 32 if smoke else 224
        specs["simmim_swin"] = ModelSpec("simmim_swin", f"SimMIM {swin}", swin, "simmim", swin_size, cells)
    return specs


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true",
                   help="tiny models (vit_pico_patch4, 32 px), tiny batch and corpus, 2 timed steps: a CPU check")
    p.add_argument("--time-budget", type=float, default=420.0, help="seconds; rows after it are skipped")
    p.add_argument("--grace", type=float, default=35.0,
                   help="seconds past the budget after which a running row is interrupted")
    p.add_argument("--out", type=Path, default=None, help="JSON path (default benchmarks/results/gpu-<timestamp>.json)")
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    p.add_argument("--rows", default="", help="comma-separated row ids or prefixes to run (default: all)")
    p.add_argument("--batch-size", type=int, default=None, help="model rows and loader (default 256; smoke 4)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps per row (default 5; smoke 1; compile >= 3)")
    p.add_argument("--iters", type=int, default=None, help="most timed steps per row (default 40; smoke 2)")
    p.add_argument("--min-iters", type=int, default=None, help="fewest timed steps per row (default 10; smoke 2)")
    p.add_argument("--row-seconds", type=float, default=None, help="timed seconds aimed at per model row (default 4)")
    p.add_argument("--loader-images", type=int, default=None, help="JPEGs in the corpus (default 2048; smoke 4)")
    p.add_argument("--loader-workers", type=int, default=None, help="loader workers (default: all usable cores; smoke <= 2)")
    p.add_argument("--loader-seconds", type=float, default=None, help="timed loader seconds (default 10; smoke 0.5)")
    p.add_argument("--e2e-seconds", type=float, default=None, help="timed end-to-end seconds (default 15; smoke 0.5)")
    p.add_argument("--two-process", choices=("auto", "on", "off"), default="auto",
                   help="auto: with >= 2 GPUs; on: also on the CPU with gloo (a check of the code path)")
    p.add_argument("--cpu-compile", action="store_true",
                   help="run the torch.compile rows on the CPU too (slow; a check of the code path)")
    p.add_argument("--channels-last", action="store_true", help="channels_last images and conv weights")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's; smoke on CPU: 1)")
    p.add_argument("--workdir", default=None, help="where the JPEG corpus is built (default: a temporary dir)")
    args = p.parse_args(argv)
    smoke = args.smoke
    defaults = {"batch_size": 4 if smoke else 256, "warmup": 1 if smoke else 5, "iters": 2 if smoke else 40,
                "min_iters": 2 if smoke else 10, "row_seconds": 0.0 if smoke else 4.0,
                "loader_images": 4 if smoke else 2048,
                "loader_workers": min(2, lib.usable_cpus()) if smoke else lib.usable_cpus(),
                "loader_seconds": 0.5 if smoke else 10.0, "e2e_seconds": 0.5 if smoke else 15.0}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def selected(row_id: str, rows: str) -> bool:
    wanted = [w.strip() for w in rows.split(",") if w.strip()]
    return not wanted or any(row_id == w or row_id.startswith(w) for w in wanted)


class Runner:
    """Holds the result dict, writes it after every row and keeps the MAE bench for end to end."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.budget = lib.TimeBudget(args.time_budget, args.grace, STARTED)
        self.device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        self.out = args.out or ROOT / "benchmarks" / "results" / f"gpu-{stamp}.json"
        self.cuda = self.device.type == "cuda"
        self.specs = model_specs(args.smoke)
        self.rows = {rid: lib.new_row(rid, self._kind(rid)) for rid in ROW_IDS}
        self.peak: float | None = None  # measured FLOP/s
        self.datasheet: float | None = None
        self.kept: lib.Bench | None = None  # MAE bench reused by the end-to-end row
        self.corpus: dict[str, Any] | None = None
        self.corpus_error: str | None = None
        self.result: dict[str, Any] = {
            "schema": 1, "script": "benchmarks/gpu.py", "smoke": bool(args.smoke),
            "started": dt.datetime.now().isoformat(timespec="seconds"), "argv": sys.argv[1:],
            "torch": torch.__version__, "python": sys.version.split()[0], "device": {"type": self.device.type},
            "time_budget_s": args.time_budget,
            "settings": {"batch_size": args.batch_size, "warmup": args.warmup, "max_iters": args.iters,
                         "min_iters": args.min_iters, "row_seconds": args.row_seconds,
                         "amp": "bf16 autocast" if self.cuda else "fp32 (CPU)", "optimizer": "AdamW fused",
                         "tf32": self.cuda, "channels_last": args.channels_last,
                         "compile": "torch.compile(objective), default mode",
                         "train_flops": "3 x objective.flops_per_image()"},
            "peak": {"measured_tflops": None, "datasheet_tflops": None},
            "corpus": None, "rows": list(self.rows.values()),
        }

    @staticmethod
    def _kind(row_id: str) -> str:
        if row_id.startswith("gemm"):
            return "gemm"
        if "/" in row_id:
            return "model"
        return {"loader_only": "loader", "loader_nvjpeg": "loader", "e2e_mae_vit_b16": "e2e"}.get(row_id, "ddp")

    def save(self) -> None:
        self.result["wall_s"] = round(self.budget.elapsed(), 1)
        lib.write_json(self.result, self.out)

    def say(self, message: str) -> None:
        print(f"[{self.budget.elapsed():6.1f}s] {message}", flush=True)

    def run(self, row_id: str, fn, min_left_s: float = 0.0, reason: str | None = None) -> dict[str, Any]:
        row = self.rows[row_id]
        if not selected(row_id, self.args.rows):
            lib.skip(row, "not selected (--rows)")
        elif reason is not None:
            lib.skip(row, reason)
        else:
            self.say(f"{row_id} ...")
            lib.run_row(row, fn, self.budget, min_left_s)
            if row["status"] != "ok":  # a failed row may leave tensors (and compiled graphs) behind
                lib.free_memory(self.device, compiled=self.kept is None)
        done = f"{row.get('images_per_s')} img/s" if row["status"] == "ok" else f"skipped: {row['reason']}"
        if row_id == "gemm_bf16_peak" and row["status"] == "ok":
            done = f"{row['tflops']} TFLOP/s"
        self.say(f"{row_id}: {done}")
        self.save()
        return row

    # -------------------------------------------------------------------------------- rows
    def gemm(self) -> dict[str, Any]:
        sizes = (1024, 2048) if self.args.smoke else (4096, 8192, 16384)
        numbers = lib.gemm_peak(self.device, sizes, seconds=0.1 if self.args.smoke else 0.6)
        self.peak = numbers["tflops"] * 1e12
        numbers["datasheet_tflops"] = self.datasheet / 1e12 if self.datasheet else None
        numbers["label"] = "bf16 matmul"
        return numbers

    def model(self, spec: ModelSpec, compiled: bool) -> dict[str, Any]:
        args, device = self.args, self.device

        def attempt(batch: int) -> tuple[dict[str, Any], lib.Bench]:
            lib.reset_peak(device)  # the previous row's bench was closed (and memory freed) already
            bench = lib.Bench(spec, device, batch, compiled, args.channels_last)
            warmup = max(args.warmup, 3) if compiled else args.warmup
            timing = lib.time_steps(bench.step, device, warmup, args.iters, args.min_iters, args.row_seconds)
            ips = batch * timing["iters"] / timing["total_s"]
            flops = bench.flops_per_image()
            numbers = {"label": spec.label, "model": spec.model, "objective": spec.objective,
                       "image_size": spec.image_size, "mode": "compile" if compiled else "eager",
                       "batch": batch, "params_m": round(bench.num_params() / 1e6, 2),
                       "fwd_gflops_per_image": round(flops / 1e9, 3) if flops else None,
                       **lib.throughput_numbers(ips, flops, self.peak, self.datasheet),
                       **lib.peak_memory(device), **timing, "notes": []}
            numbers["total_s"] = round(numbers["total_s"], 3)
            if compiled:
                numbers["notes"].append(f"warm-up incl. compile {timing['warmup_s']:.0f} s")
            if flops is None:
                numbers["notes"].append("no analytic FLOPs: MFU n/a")
            return numbers, bench

        batch = args.batch_size
        retry = False
        try:
            numbers, bench = attempt(batch)
        except Exception as err:  # noqa: BLE001
            if not (self.cuda and lib.is_oom(err) and batch >= 2):
                raise
            retry = True
        if retry:  # outside the except block, so the failed attempt's tensors are freed first
            lib.free_memory(device, compiled)
            half = batch // 2
            try:
                numbers, bench = attempt(half)
            except Exception as err:  # noqa: BLE001
                if lib.is_oom(err):
                    raise RuntimeError(f"OOM at batch {batch} and at the retry with {half}") from None
                raise
            numbers["notes"].insert(0, f"OOM at batch {batch}, retried at {half}")
            numbers["oom_retry"] = True
        if spec.key == "mae_vit_b16" and compiled:  # the end-to-end row reuses it (no second compile)
            self.kept = bench
        else:
            bench.close()
        return numbers

    def build_corpus(self) -> None:
        import tempfile

        if not any(selected(r, self.args.rows) for r in ("loader_only", "loader_nvjpeg", "e2e_mae_vit_b16")):
            return
        self.say(f"corpus: {self.args.loader_images} JPEGs -> shards ...")
        try:
            self._tmp = tempfile.TemporaryDirectory(dir=self.args.workdir, prefix="sslvit-gpu-bench-")
            self.corpus = lib.build_corpus(Path(self._tmp.name), self.args.loader_images,
                                           self.args.loader_workers)
            self.say(f"corpus: {self.corpus['images']} JPEGs, mean {self.corpus['mean_kib']} KiB, "
                     f"{self.corpus['shards']} shards in {self.corpus['build_s']} s")
        except (Exception, lib.BudgetExceeded) as err:  # noqa: BLE001
            self.corpus_error = f"corpus: {lib.describe_error(err)}"
            self.say(self.corpus_error)
        self.result["corpus"] = self.corpus or {"error": self.corpus_error}

    def loader(self) -> dict[str, Any]:
        a = self.args
        numbers = lib.loader_only(self.corpus["dir"], self.specs_size(), a.batch_size, a.loader_workers,
                                  min(a.loader_seconds, max(1.0, self.budget.left())), a.loader_workers + 1, 100000)
        numbers["label"] = "sslvit stream, MAE aug"
        numbers["notes"] = [f"{numbers['workers']} workers, {numbers['image_size']} px, "
                            f"{numbers['images_per_s_per_worker']:.0f} img/s/worker"]
        return numbers

    def loader_nvjpeg(self) -> dict[str, Any]:
        a = self.args
        on = self.device if self.device.type == "cuda" else torch.device("cpu")
        numbers = lib.loader_only(self.corpus["dir"], self.specs_size(), a.batch_size, a.loader_workers,
                                  min(a.loader_seconds, max(1.0, self.budget.left())), a.loader_workers + 1, 100000,
                                  decode_on=on)
        numbers["label"] = ("sslvit stream, nvJPEG in the main process" if on.type == "cuda" else
                            "sslvit stream, JPEGs decoded in the main process (CPU stand-in for nvJPEG)")
        numbers["notes"] = [f"{numbers['workers']} workers read and draw boxes; decode on {on}"]
        return numbers

    def specs_size(self) -> int:
        spec = self.specs["mae_vit_b16"]
        return spec.image_size if isinstance(spec, ModelSpec) else (32 if self.args.smoke else 224)

    def e2e(self) -> dict[str, Any]:
        a, device = self.args, self.device
        spec = self.specs["mae_vit_b16"]
        bench, built = self.kept, False
        if bench is None:
            lib.free_memory(device)
            bench, built = lib.Bench(spec, device, a.batch_size, False, a.channels_last), True
        self.kept = None
        try:
            lib.reset_peak(device)
            mode = "compile" if bench.compiled else "eager"
            numbers = lib.end_to_end(bench, self.corpus["dir"], a.loader_workers,
                                     min(a.e2e_seconds, max(1.0, self.budget.left())),
                                     a.loader_workers + 2 + (a.warmup if built else 0), 100000)
            numbers.update(label=spec.label + " <- loader", mode=mode, batch=bench.batch_size,
                           **lib.throughput_numbers(numbers["images_per_s"], bench.flops_per_image(),
                                                    self.peak, self.datasheet), **lib.peak_memory(device))
            ref = self.rows[f"mae_vit_b16/{mode}"]
            notes = [f"{numbers['workers']} loader workers"]
            if ref["status"] == "ok" and ref.get("batch") == bench.batch_size:
                numbers["model_only_images_per_s"] = ref["images_per_s"]
                numbers["vs_model_only"] = round(numbers["images_per_s"] / ref["images_per_s"], 3)
                notes.append(f"ratio to mae_vit_b16/{mode}")
            else:
                numbers["vs_model_only"] = None
                notes.append(f"no model-only mae_vit_b16/{mode} row at batch {bench.batch_size} to compare")
            numbers["notes"] = notes
            return numbers
        finally:
            bench.close()

    def ddp_reason(self) -> str | None:
        mode = self.args.two_process
        if mode == "off":
            return "off (--two-process off)"
        if self.cuda and torch.cuda.device_count() < 2:
            return f"needs 2 GPUs, found {torch.cuda.device_count()} (one GPU is not shared by 2 DDP processes)"
        if not self.cuda and mode != "on":
            return "CUDA only (--two-process on runs it with gloo on the CPU)"
        return None

    def ddp(self) -> dict[str, Any]:
        a = self.args
        spec = self.specs["mae_vit_b16"]
        numbers = lib.two_process(spec, self.device.type, a.batch_size, max(a.warmup, 2),
                                  max(a.min_iters, 2 if a.smoke else 20),
                                  deadline_s=max(10.0, self.budget.left() + (0 if a.smoke else a.grace / 2)))
        single = self.rows["mae_vit_b16/eager"]
        gflops = single.get("fwd_gflops_per_image") if single["status"] == "ok" else None
        flops = int(gflops * 1e9) if gflops else None
        peak2 = 2 * self.peak if self.peak else None
        sheet2 = 2 * self.datasheet if self.datasheet else None
        numbers.update(label=spec.label + " x2 DDP", mode="eager", batch=numbers["batch_per_process"],
                       **lib.throughput_numbers(numbers["images_per_s"], flops, peak2, sheet2))
        notes = [f"{numbers['backend']}, batch {numbers['batch_per_process']} per process"]
        if single["status"] == "ok" and single.get("batch") == a.batch_size:
            numbers["vs_model_only"] = round(numbers["images_per_s"] / single["images_per_s"], 3)
            notes.append("ratio to 1-process mae_vit_b16/eager")
        numbers["notes"] = notes
        return numbers

    # -------------------------------------------------------------------------------- all
    def main(self) -> dict[str, Any]:
        a, cuda = self.args, self.cuda
        if cuda:
            lib.set_fast_math()
        elif a.smoke and a.threads is None:
            a.threads = 1  # tiny ops on a CPU that others share: more threads only wait on each other
        if a.threads:
            torch.set_num_threads(a.threads)
        self.result["settings"]["torch_threads"] = torch.get_num_threads()
        self.result["device"] = lib.device_info(self.device)
        try:
            self.datasheet = lib.datasheet_peak(self.device)
        except Exception as err:  # noqa: BLE001
            self.result["peak"]["datasheet_error"] = lib.describe_error(err)
        self.result["peak"]["datasheet_tflops"] = self.datasheet / 1e12 if self.datasheet else None
        name = self.result["device"].get("name")
        self.say(f"{name} ({self.device}), torch {torch.__version__}, {lib.usable_cpus()} CPUs, "
                 f"budget {a.time_budget:.0f} s{', smoke' if a.smoke else ''}; JSON -> {self.out}")
        self.save()
        self.budget.arm()
        try:
            self.build_corpus()
            self.run("gemm_bf16_peak", self.gemm, reason=None if cuda else "CUDA only (no GPU: MFU n/a)")
            self.result["peak"]["measured_tflops"] = self.peak / 1e12 if self.peak else None
            compile_reason = (None if cuda or a.cpu_compile else
                              "torch.compile rows run on CUDA only (--cpu-compile runs them on the CPU)")
            min_left = {"eager": 0.0 if a.smoke else 15.0, "compile": 0.0 if a.smoke else 45.0}
            order = ["mae_vit_b16", "loader", "e2e", "supervised_vit_b16", "simmim_vit_b16", "simmim_swin"]
            for key in order:
                if key == "loader":
                    self.run("loader_only", self.loader, reason=self.corpus_error or
                             (None if self.corpus else "no corpus"))
                    self.run("loader_nvjpeg", self.loader_nvjpeg, reason=self.corpus_error or
                             (None if self.corpus else "no corpus") or
                             (None if cuda or a.smoke else "CUDA only (nvJPEG decodes on the GPU)"))
                    continue
                if key == "e2e":
                    spec = self.specs["mae_vit_b16"]
                    self.run("e2e_mae_vit_b16", self.e2e, min_left_s=0.0 if a.smoke else 20.0,
                             reason=self.corpus_error or (None if self.corpus else "no corpus") or
                             (spec if isinstance(spec, str) else None))
                    if self.kept is not None:
                        self.kept.close()
                        self.kept = None
                    continue
                spec = self.specs[key]
                for mode in MODES:
                    reason = spec if isinstance(spec, str) else (compile_reason if mode == "compile" else None)
                    self.run(f"{key}/{mode}", lambda s=spec, m=mode: self.model(s, m == "compile"),
                             min_left_s=min_left[mode], reason=reason)
            if self.kept is not None:
                self.kept.close()
                self.kept = None
            self.run("ddp_2proc_mae_vit_b16", self.ddp, min_left_s=0.0 if a.smoke else 60.0,
                     reason=self.ddp_reason())
        except lib.BudgetExceeded as err:  # fired between rows
            self.say(str(err))
        finally:
            self.budget.disarm()
            for row in self.rows.values():
                if row["status"] == "pending":
                    lib.skip(row, self.budget.reason() if self.budget.left() <= 0 else
                             "not reached (the script stopped early)")
            if getattr(self, "_tmp", None) is not None:
                self._tmp.cleanup()
            self.save()
        peak = self.result["peak"]
        print(f"\n{name}, torch {torch.__version__}: measured bf16 peak "
              f"{lib.fmt(peak['measured_tflops'], '.0f')} TFLOP/s (MFU denominator), data sheet "
              f"{lib.fmt(peak['datasheet_tflops'], '.0f')} TFLOP/s; batch {a.batch_size}; "
              f"{self.result['wall_s']:.0f} s of {a.time_budget:.0f} s budget")
        print(lib.format_table(self.result))
        print(f"\nwrote {self.out}")
        return self.result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return Runner(parse_args(argv)).main()


if __name__ == "__main__":
    main()
