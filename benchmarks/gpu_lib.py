"""The measuring half of ``benchmarks/gpu.py``: rows, timers, the JPEG corpus, the table.

Every measurement is a *row*: a dict with ``id``, ``kind``, ``status`` ("ok" or "skipped"),
``reason`` (None when ok) and its numbers. :func:`run_row` runs one under the time budget and turns
any exception (a missing dependency, an OOM after the half-batch retry, an sslvit API that moved)
into a skip reason, so one broken row never costs the others.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NA = "n/a"


# ------------------------------------------------------------------------------------ budget
class BudgetExceeded(BaseException):
    """Raised by the watchdog when a row runs past the hard deadline (a BaseException, so library
    code that catches ``Exception`` does not swallow it)."""


class TimeBudget:
    """Seconds since the script started against ``--time-budget``; a SIGALRM watchdog interrupts a
    row still running ``grace`` seconds after the budget is spent."""

    def __init__(self, seconds: float, grace: float = 35.0, start: float | None = None):
        self.total, self.grace = float(seconds), float(grace)
        self.start = time.perf_counter() if start is None else start  # perf_counter() at process start
        self.armed = False

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.total - self.elapsed()

    def reason(self) -> str:
        return f"time budget ({self.elapsed():.0f} s of {self.total:.0f} s used)"

    def arm(self) -> None:
        """Start the watchdog (main thread only; a no-op where SIGALRM does not exist)."""
        if not hasattr(signal, "setitimer"):
            return

        def _fire(signum: int, frame: Any) -> None:
            raise BudgetExceeded(f"time budget: row interrupted {self.grace:.0f} s after the "
                                 f"{self.total:.0f} s budget")

        signal.signal(signal.SIGALRM, _fire)
        signal.setitimer(signal.ITIMER_REAL, max(0.01, self.left() + self.grace))
        self.armed = True

    def disarm(self) -> None:
        if self.armed:
            signal.setitimer(signal.ITIMER_REAL, 0)
            self.armed = False


# ------------------------------------------------------------------------------------ rows
def new_row(row_id: str, kind: str, **info: Any) -> dict[str, Any]:
    return {"id": row_id, "kind": kind, "status": "pending", "reason": None, **info}


def skip(row: dict[str, Any], reason: str) -> dict[str, Any]:
    row.update(status="skipped", reason=reason)
    return row


def describe_error(err: BaseException) -> str:
    """One line for a skip reason: a missing module says so, others give type and message."""
    if isinstance(err, BudgetExceeded):
        return str(err)
    if isinstance(err, ModuleNotFoundError):
        return f"missing dependency: {err.name or err}"
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"{type(err).__name__}: {text[:300]}" if text else type(err).__name__


def run_row(row: dict[str, Any], fn: Callable[[], dict[str, Any]], budget: TimeBudget,
            min_left_s: float = 0.0) -> dict[str, Any]:
    """Run ``fn`` (returns the row's numbers) unless the budget is spent or fewer than
    ``min_left_s`` seconds remain; every exception becomes the row's skip reason."""
    if row["status"] == "skipped":
        return row
    if budget.left() <= 0 or budget.left() < min_left_s:
        extra = f", row needs ~{min_left_s:.0f} s" if budget.left() > 0 else ""
        return skip(row, budget.reason() + extra)
    start = time.perf_counter()
    try:
        row.update(fn())
        row["status"], row["reason"] = "ok", None
    except BudgetExceeded as err:
        skip(row, str(err))
    except Exception as err:  # noqa: BLE001 -- every failure is a reported skip, never a crash
        skip(row, describe_error(err))
        row["traceback"] = traceback.format_exc(limit=8).splitlines()[-12:]
    finally:
        row["row_s"] = round(time.perf_counter() - start, 2)
    return row


# ------------------------------------------------------------------------------------ device
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_info(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {"type": device.type, "cpu_count": usable_cpus(),
                            "torch_threads": torch.get_num_threads()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(name=torch.cuda.get_device_name(device), count=torch.cuda.device_count(),
                    capability=".".join(map(str, torch.cuda.get_device_capability(device))),
                    memory_gib=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version())
    else:
        import platform

        info.update(name=platform.processor() or platform.machine() or "cpu", count=0)
    return info


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def set_fast_math() -> None:
    """TF32 for any fp32 matmul / conv left outside autocast; cuDNN autotuning."""
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    torch.set_float32_matmul_precision("high")


def free_memory(device: torch.device, compiled: bool = False) -> None:
    """Drop what the last row left on the GPU (a full gc pass: cycles may hold device tensors;
    skipped on the CPU, where it only costs time)."""
    if device.type == "cuda":
        gc.collect()
    if compiled:
        try:
            torch._dynamo.reset()
        except Exception:  # noqa: BLE001
            pass
    if device.type == "cuda":
        torch.cuda.empty_cache()


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> dict[str, Any]:
    if device.type != "cuda":
        return {"peak_mem_gib": None, "peak_reserved_gib": None}
    return {"peak_mem_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2),
            "peak_reserved_gib": round(torch.cuda.max_memory_reserved(device) / 2**30, 2)}


def is_oom(err: BaseException) -> bool:
    oom = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", ())
    return isinstance(err, oom) or "out of memory" in str(err).lower()


# ------------------------------------------------------------------------------------ GEMM peak
def datasheet_peak(device: torch.device) -> float | None:
    """sslvit.training.throughput's data-sheet dense bf16 peak (FLOP/s) for this device, or None."""
    if device.type != "cuda":
        return None
    from sslvit.training.throughput import bf16_peak

    return bf16_peak(torch.cuda.get_device_name(device))


def gemm_peak(device: torch.device, sizes: tuple[int, ...] = (4096, 8192, 16384),
              seconds: float = 0.6) -> dict[str, Any]:
    """Measured dense bf16 matmul throughput: n x n x n products timed with CUDA events for about
    ``seconds`` per size after warm-up; the best size is the MFU denominator."""
    if device.type != "cuda":
        raise RuntimeError("CUDA only")  # the caller skips the row with its own reason first
    per_size: dict[str, float] = {}
    for n in sizes:
        a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
        b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
        out = torch.empty(n, n, device=device, dtype=torch.bfloat16)
        for _ in range(3):
            torch.matmul(a, b, out=out)
        sync(device)
        probe = time.perf_counter()
        torch.matmul(a, b, out=out)
        sync(device)
        iters = max(5, min(500, int(seconds / max(time.perf_counter() - probe, 1e-6))))
        best = 0.0
        for _ in range(3):  # three windows, the best one (clocks settle; other work on the GPU)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(max(1, iters // 3)):
                torch.matmul(a, b, out=out)
            end.record()
            end.synchronize()
            best = max(best, 2 * n**3 * max(1, iters // 3) / (start.elapsed_time(end) / 1e3))
        per_size[str(n)] = round(best / 1e12, 1)
        del a, b, out
    free_memory(device)
    peak = max(per_size.values())
    return {"tflops": peak, "per_size_tflops": per_size, "dtype": "bfloat16"}


# ------------------------------------------------------------------------------------ models
@dataclass
class ModelSpec:
    """One model-only benchmark: objective on a backbone at an image size."""

    key: str  # row id prefix, e.g. "mae_vit_b16"
    label: str  # shown in the table
    model: str
    objective: str
    image_size: int
    overrides: list[str] = field(default_factory=list)

    def config_overrides(self) -> list[str]:
        return [f"model.name={self.model}", f"objective.name={self.objective}",
                f"data.image_size={self.image_size}", *self.overrides]


def build_objective(spec: ModelSpec, device: torch.device, channels_last: bool = False) -> torch.nn.Module:
    """Through sslvit's stable entry points: config.load -> training.build_encoder -> build_objective."""
    import sslvit.objectives
    import sslvit.training.config

    cfg = sslvit.training.config.load(None, spec.config_overrides())
    try:
        from sslvit.training import build_encoder
    except ModuleNotFoundError as err:  # sslvit.training needs accelerate; the encoder itself does not
        if err.name and err.name.startswith("sslvit"):
            raise
        from sslvit.models import create_model

        def build_encoder(cfg: Any) -> torch.nn.Module:
            return create_model(cfg.model.name, img_size=cfg.model.img_size or cfg.data.image_size,
                                num_classes=cfg.model.num_classes)
    encoder = build_encoder(cfg)
    objective = sslvit.objectives.build_objective(cfg.objective, encoder, IMAGENET_MEAN, IMAGENET_STD)
    objective = objective.to(device).train()
    if channels_last:
        objective = objective.to(memory_format=torch.channels_last)
    return objective


def synthetic_batch(objective: torch.nn.Module, batch_size: int, image_size: int, device: torch.device,
                    channels_last: bool = False, seed: int = 0) -> dict[str, torch.Tensor]:
    """uint8 images, labels, valid flags and the objective's masks, already on ``device``."""
    g = torch.Generator().manual_seed(seed)
    batch = {
        "image": torch.randint(0, 256, (batch_size, 3, image_size, image_size), generator=g, dtype=torch.uint8),
        "label": torch.randint(0, 1000, (batch_size,), generator=g),
        "valid": torch.ones(batch_size, dtype=torch.bool),
    }
    masker = getattr(objective, "masker", None)
    if masker is not None:
        batch.update(masker(batch_size, g))
    return to_device(batch, device, channels_last)


def to_device(batch: dict[str, Any], device: torch.device, channels_last: bool = False) -> dict[str, Any]:
    out = {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    if channels_last and out["image"].ndim == 4:
        out["image"] = out["image"].contiguous(memory_format=torch.channels_last)
    return out


class Bench:
    """An objective, its fused AdamW and one training step (bf16 autocast on CUDA)."""

    def __init__(self, spec: ModelSpec, device: torch.device, batch_size: int, compiled: bool,
                 channels_last: bool = False):
        self.spec, self.device, self.batch_size, self.compiled = spec, device, batch_size, compiled
        self.channels_last = channels_last
        self.objective = build_objective(spec, device, channels_last)
        self.amp = device.type == "cuda"
        self.opt = torch.optim.AdamW(self.objective.parameters(), lr=1e-4, betas=(0.9, 0.95),
                                     weight_decay=0.05, fused=True)
        self.forward = torch.compile(self.objective) if compiled else self.objective
        self.batch = synthetic_batch(self.objective, batch_size, spec.image_size, device, channels_last)

    def step(self, batch: dict[str, torch.Tensor] | None = None) -> None:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            loss, _ = self.forward(self.batch if batch is None else batch)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    def flops_per_image(self) -> int | None:
        fn = getattr(self.objective, "flops_per_image", None)
        try:
            return int(fn()) if fn is not None else None
        except Exception:  # noqa: BLE001 -- a backbone without an analytic count gets no MFU
            return None

    def num_params(self) -> int:
        return sum(p.numel() for p in self.objective.parameters())

    def close(self) -> None:
        compiled = self.compiled
        self.objective = self.opt = self.forward = self.batch = None  # type: ignore[assignment]
        free_memory(self.device, compiled)


def time_steps(step: Callable[[], None], device: torch.device, warmup: int, max_iters: int,
               min_iters: int, target_s: float) -> dict[str, Any]:
    """Warm up (compilation happens here), then time steps: CUDA events around every step with no
    host sync in between, one synchronize at the end; ``perf_counter`` on the CPU. The number of
    timed steps aims at ``target_s`` seconds, within [min_iters, max_iters]."""
    sync(device)
    start = time.perf_counter()
    for _ in range(warmup):
        step()
    sync(device)
    warmup_s = time.perf_counter() - start
    start = time.perf_counter()
    step()  # probe step: sizes the timed run
    sync(device)
    probe_s = time.perf_counter() - start
    iters = max(min_iters, min(max_iters, int(target_s / max(probe_s, 1e-6))))
    if device.type == "cuda":
        marks = [torch.cuda.Event(enable_timing=True) for _ in range(iters + 1)]
        marks[0].record()
        for i in range(iters):
            step()
            marks[i + 1].record()
        marks[-1].synchronize()
        times = [marks[i].elapsed_time(marks[i + 1]) / 1e3 for i in range(iters)]
        total = marks[0].elapsed_time(marks[-1]) / 1e3
    else:
        times = []
        for _ in range(iters):
            t = time.perf_counter()
            step()
            times.append(time.perf_counter() - t)
        total = sum(times)
    return {"warmup_s": round(warmup_s, 2), "iters": iters, "total_s": total,
            "step_ms_median": round(1e3 * statistics.median(times), 2),
            "step_ms_min": round(1e3 * min(times), 2), "step_ms_max": round(1e3 * max(times), 2)}


def throughput_numbers(images_per_s: float, flops_per_image: int | None, peak: float | None,
                       datasheet: float | None) -> dict[str, Any]:
    """Achieved training TFLOP/s (train = 3 x forward FLOPs) and MFU against both peaks."""
    out: dict[str, Any] = {"images_per_s": round(images_per_s, 2), "tflops": None, "mfu": None,
                           "mfu_datasheet": None}
    if flops_per_image:
        achieved = 3 * flops_per_image * images_per_s
        out["tflops"] = float(f"{achieved / 1e12:.4g}")
        if peak:
            out["mfu"] = round(achieved / peak, 4)
        if datasheet:
            out["mfu_datasheet"] = round(achieved / datasheet, 4)
    return out


# ------------------------------------------------------------------------------------ corpus
def _jpeg_part(args: tuple[str, int, int]) -> list[str]:
    from benchmarks.loader import make_jpegs

    root, count, seed = args
    return [str(p) for p in make_jpegs(Path(root), count, seed=seed)]


def build_corpus(workdir: Path, count: int, processes: int) -> dict[str, Any]:
    """``count`` ImageNet-like JPEGs made by benchmarks/loader.py's ``make_jpegs`` (in parallel
    parts, one seed each), written to tar shards of 128 as the loader benchmark does."""
    from benchmarks.loader import make_jpegs  # noqa: F401 -- fail here, by name, when sklearn / PIL are missing
    from sslvit.data.shards import SourceItem, write_shards

    start = time.perf_counter()
    folder, shards = workdir / "folder", workdir / "shards"
    parts = max(1, min(processes, count // 8 or 1))
    jobs = [(str(folder / f"part{i}"), count // parts + (i < count % parts), i) for i in range(parts)]
    if parts > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
        with ProcessPoolExecutor(parts, mp_context=mp.get_context(method)) as pool:
            paths = [Path(p) for part in pool.map(_jpeg_part, jobs) for p in part]
    else:
        paths = [Path(p) for p in _jpeg_part(jobs[0])]
    classes = sorted({p.parent.name for p in paths})
    items = (SourceItem(name=str(p.relative_to(folder)), path=p, label=int(p.parent.name[5:])) for p in paths)
    write_shards(items, shards, prefix="bench", max_count=128, verify=False, compute_stats=False,
                 progress=False, class_names=classes)
    mean_kib = sum(p.stat().st_size for p in paths) / len(paths) / 1024
    return {"dir": str(shards), "images": len(paths), "mean_kib": round(mean_kib, 1),
            "shards": len(list(shards.glob("bench-*.tar"))), "build_s": round(time.perf_counter() - start, 2)}


def make_loader(shards: str, image_size: int, batch_size: int, workers: int, batches: int,
                masker: Callable | None = None, pin_memory: bool = False, decode_on: Any = None) -> Any:
    """sslvit's stream over the corpus, resampled (shards drawn with replacement) so one iterator
    runs ``batches`` batches without epoch restarts; MAE pretraining augmentation. ``decode_on``: the
    device the main process decodes JPEGs on (``data.jpeg_decode=nvjpeg``), else the workers do."""
    from sslvit.data import build_loader, pretrain_transform

    return build_loader(shards, batch_size=batch_size, transform=pretrain_transform(image_size),
                        num_workers=workers, mode="resampled", samples_per_epoch=batch_size * batches,
                        seed=0, masker=masker, pin_memory=pin_memory, rank=0, world_size=1, decode_on=decode_on)


def loader_only(shards: str, image_size: int, batch_size: int, workers: int, seconds: float,
                warm_batches: int, max_batches: int, decode_on: Any = None) -> dict[str, Any]:
    """Images/s of the loader alone after ``warm_batches`` (worker start-up, first batch of each);
    with ``decode_on`` the batches are decoded there (timed to a device synchronisation)."""
    loader = make_loader(shards, image_size, batch_size, workers, warm_batches + max_batches, decode_on=decode_on)
    it = iter(loader)
    start = time.perf_counter()
    for _ in range(warm_batches):
        next(it)
    warm_s = time.perf_counter() - start
    images, batches, start = 0, 0, time.perf_counter()
    while batches < max_batches and (batches == 0 or time.perf_counter() - start < seconds):
        batch = next(it, None)
        if batch is None:
            break
        images += int(batch["image"].shape[0])
        batches += 1
    if decode_on is not None:
        sync(torch.device(decode_on))
    wall = time.perf_counter() - start
    del it
    return {"images_per_s": round(images / wall, 2), "images": images, "batches": batches,
            "timed_s": round(wall, 2), "warmup_s": round(warm_s, 2), "workers": workers,
            "batch": batch_size, "image_size": image_size,
            "images_per_s_per_worker": round(images / wall / max(1, workers), 2)}


def end_to_end(bench: Bench, shards: str, workers: int, seconds: float, warm_batches: int,
               max_batches: int) -> dict[str, Any]:
    """The loader (masks made in its workers, pinned memory on CUDA) feeding ``bench``'s training
    step; wall-clock images/s between two device synchronisations."""
    device = bench.device
    loader = make_loader(shards, bench.spec.image_size, bench.batch_size, workers, warm_batches + max_batches,
                         masker=getattr(bench.objective, "masker", None), pin_memory=device.type == "cuda")
    it = iter(loader)
    start = time.perf_counter()
    for _ in range(warm_batches):
        bench.step(to_device(next(it), device, bench.channels_last))
    sync(device)
    warm_s = time.perf_counter() - start
    images, steps, start = 0, 0, time.perf_counter()
    while steps < max_batches and (steps == 0 or time.perf_counter() - start < seconds):
        batch = next(it, None)
        if batch is None:
            break
        bench.step(to_device(batch, device, bench.channels_last))
        images += int(batch["image"].shape[0])
        steps += 1
    sync(device)
    wall = time.perf_counter() - start
    del it
    return {"images_per_s": round(images / wall, 2), "images": images, "steps": steps,
            "timed_s": round(wall, 2), "warmup_s": round(warm_s, 2), "workers": workers}


# ------------------------------------------------------------------------------------ 2 processes
def _ddp_worker(rank: int, world: int, init_file: str, spec: ModelSpec, batch_size: int, warmup: int,
                iters: int, device_type: str, result_path: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    if device_type == "cuda":
        torch.cuda.set_device(rank)
        device = torch.device("cuda", rank)
        set_fast_math()
    else:
        torch.set_num_threads(max(1, usable_cpus() // world))
        device = torch.device("cpu")
    dist.init_process_group("nccl" if device_type == "cuda" else "gloo", init_method=f"file://{init_file}",
                            rank=rank, world_size=world)
    try:
        objective = build_objective(spec, device)
        model = DDP(objective, device_ids=[rank] if device_type == "cuda" else None)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05, fused=True)
        batch = synthetic_batch(objective, batch_size, spec.image_size, device, seed=rank)

        def step() -> None:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                loss, _ = model(batch)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        for _ in range(warmup):
            step()
        sync(device)
        dist.barrier()
        start = time.perf_counter()
        for _ in range(iters):
            step()
        sync(device)
        dist.barrier()
        wall = time.perf_counter() - start
        if rank == 0:
            peak = peak_memory(device)
            Path(result_path).write_text(json.dumps({
                "images_per_s": world * batch_size * iters / wall, "iters": iters, "timed_s": round(wall, 2),
                "processes": world, "batch_per_process": batch_size, "backend": dist.get_backend(), **peak}))
    finally:
        dist.destroy_process_group()


def two_process(spec: ModelSpec, device_type: str, batch_size: int, warmup: int, iters: int,
                deadline_s: float) -> dict[str, Any]:
    """Two ranks of DDP (NCCL, one GPU each; gloo on the CPU) training ``spec`` eagerly on
    synthetic batches; killed at ``deadline_s``."""
    import torch.multiprocessing as tmp

    with tempfile.TemporaryDirectory() as work:
        result = Path(work) / "result.json"
        ctx = tmp.start_processes(
            _ddp_worker, args=(2, str(Path(work) / "init"), spec, batch_size, warmup, iters, device_type,
                               str(result)), nprocs=2, join=False, start_method="spawn")
        end = time.perf_counter() + deadline_s
        try:
            while not ctx.join(timeout=1):
                if time.perf_counter() > end:
                    raise TimeoutError(f"time budget: 2-process run killed after {deadline_s:.0f} s")
        finally:
            for p in ctx.processes:
                if p.is_alive():
                    p.terminate()
                    p.join(5)
        return json.loads(result.read_text())


# ------------------------------------------------------------------------------------ output
def fmt(value: Any, spec: str = ".1f", suffix: str = "") -> str:
    if value is None:
        return NA
    if isinstance(value, (int, float)):
        return f"{value:{spec}}{suffix}"
    return str(value)


def table_rows(result: dict[str, Any]) -> list[list[str]]:
    """One list of cells per row; MFU and peak memory read "n/a" off CUDA, "-" on skipped rows."""
    cuda = result["device"]["type"] == "cuda"
    rows = []
    for r in result["rows"]:
        ok, loader = r["status"] == "ok", r["kind"] == "loader"
        if not ok:
            cells = ["-"] * 4
        else:
            cells = [fmt(r.get("images_per_s"), ".1f") if r["kind"] != "gemm" else "",
                     "" if loader else fmt(r.get("tflops"), ".3g"),
                     "" if loader or r["kind"] == "gemm" else
                     (fmt(100 * r["mfu"], ".1f", "%") if r.get("mfu") is not None else NA),
                     "" if loader else (fmt(r.get("peak_mem_gib"), ".1f") if cuda else NA)]
        if r["kind"] == "gemm" and ok:
            notes = (f"bf16 n^3, n = {' / '.join(f'{n}: {v}' for n, v in r['per_size_tflops'].items())} "
                     f"TFLOP/s; data sheet {fmt(r.get('datasheet_tflops'), '.0f')} TFLOP/s")
        elif not ok:
            notes = f"skipped: {r['reason']}"
        else:
            notes = "; ".join(r.get("notes", []))
        vs = fmt(r.get("vs_model_only"), ".2f", "x") if ok and r.get("vs_model_only") is not None else ""
        batch = fmt(r.get("batch"), "d") if ok and r.get("batch") else ""
        rows.append([r["id"], r.get("label", ""), r.get("mode", ""), batch, *cells, vs, notes])
    return rows


HEADER = ["row", "what", "mode", "batch", "img/s", "TFLOP/s", "MFU", "peak GiB", "vs model", "notes"]


def format_table(result: dict[str, Any]) -> str:
    rows = table_rows(result)
    widths = [max(len(str(r[i])) for r in [HEADER, *rows]) for i in range(len(HEADER) - 1)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(HEADER[:-1], widths, strict=True)) + "  " + HEADER[-1],
             "  ".join("-" * w for w in widths) + "  " + "-" * 5]
    for row in rows:
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(row[:-1], widths, strict=True)) + "  " + row[-1])
    return "\n".join(lines)


def write_json(result: dict[str, Any], path: Path) -> None:
    """Atomic: a partial run still leaves a complete JSON of the rows done so far."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2, default=str) + "\n")
    os.replace(tmp, path)
