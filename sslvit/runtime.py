"""Process setup for a run: the accelerator and what decides its options, the trackers, the run
directory, launcher sanity checks, and progress reporting.

``accelerate launch`` flags and accelerate config files reach the process as ``ACCELERATE_*``
environment variables (``ACCELERATE_MIXED_PRECISION``, ``ACCELERATE_GRADIENT_ACCUMULATION_STEPS``,
``ACCELERATE_DYNAMO_BACKEND``); the simple and multi-GPU launchers keep ``--gradient_accumulation_steps``
to themselves, so it is also read from the launcher's command line. They decide precision,
gradient accumulation and compilation unless ``train.precision`` / ``train.grad_accum`` /
``train.compile`` is set, and then one line says which value overrides which.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import GradientAccumulationPlugin, ProjectConfiguration, broadcast_object_list

from sslvit.config import ConfigError, RunConfig


class LaunchError(RuntimeError):
    """The processes that were started are not the ones that were asked for."""


class RunDirExistsError(ConfigError):
    """A fresh run was pointed at a run directory that already holds another run's outputs (a
    :class:`ConfigError`: ``train.name``, ``train.overwrite`` or ``train.resume`` decides)."""


def _launcher_argv() -> list[str] | None:
    """The command line of an ``accelerate launch`` parent process, if this process has one."""
    try:
        raw = Path(f"/proc/{os.getppid()}/cmdline").read_bytes()
    except OSError:
        return None
    argv = [a.decode(errors="replace") for a in raw.split(b"\0") if a]
    if not any(a.endswith("accelerate") or "accelerate.commands" in a for a in argv[:3]):
        return None
    return argv


def _launcher_int(flag: str, argv: Sequence[str] | None = None) -> int | None:
    """The integer value of ``--flag`` (``--flag N`` or ``--flag=N``, ``-`` or ``_``) on the launcher's
    command line, if there is a launcher and it was given."""
    argv = _launcher_argv() if argv is None else argv
    if not argv:
        return None
    pattern = flag.replace("_", "[_-]")
    for i, arg in enumerate(argv):
        match = re.fullmatch(rf"--{pattern}(?:=(\d+))?", arg)
        if match:
            value = match.group(1) or (argv[i + 1] if i + 1 < len(argv) else "")
            return int(value) if value.isdigit() else None
    return None


def _launcher_process_count() -> int | None:
    """``--num_processes`` of an ``accelerate launch`` parent process, if this process has one."""
    return _launcher_int("num_processes")


def check_launch(state: PartialState) -> None:
    """Refuse a launch that silently started fewer processes than were asked for.

    ``accelerate launch --cpu --num_processes 2`` runs the single-process launcher: one process,
    not two. Training on would give one run where two ranks were expected, so it stops here.
    """
    asked = _launcher_process_count()
    if asked is not None and asked > state.num_processes:
        raise LaunchError(
            f"accelerate launch was asked for {asked} processes but started {state.num_processes}. "
            "With --cpu, accelerate uses its single-process launcher. For several CPU processes run\n"
            f"  ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes {asked} pipelines/pretrain.py\n"
            f"or\n  torchrun --nproc_per_node {asked} pipelines/pretrain.py"
        )


def start_processes() -> PartialState:
    """Join the process group (gloo on CPU when no GPU is present) and check the launch."""
    state = PartialState(cpu=not torch.cuda.is_available())
    check_launch(state)
    return state


# ---------------------------------------------------------------- what decides the accelerator's options

PRECISION_NAMES = {"no": "fp32", "bf16": "bf16", "fp16": "fp16", "fp8": "fp8"}


@dataclass(frozen=True)
class LaunchOptions:
    """The accelerator's options as decided for a run, each with what decided it.

    ``precision`` is in accelerate's words ("no", "bf16", "fp16", "fp8"); ``dynamo_backend`` is
    what to pass to :class:`~accelerate.Accelerator` (None: accelerate reads its environment);
    ``trackers`` are accelerate tracker names; ``notes`` are the override lines to print once.
    """

    precision: str
    precision_source: str
    grad_accum: int
    grad_accum_source: str
    dynamo_backend: str | None
    compile_source: str
    trackers: tuple[str, ...]
    notes: tuple[str, ...] = ()
    compile_backend: str = "no"  # the backend the run compiles with; "no" = not compiled

    def describe(self) -> str:
        """``"precision bf16 (accelerate's mixed_precision), grad_accum 4 (train.grad_accum)"`` for the
        run line, and the compile backend when the run compiles."""
        text = (f"precision {PRECISION_NAMES.get(self.precision, self.precision)} ({self.precision_source}), "
                f"grad_accum {self.grad_accum} ({self.grad_accum_source})")
        if self.compile_backend != "no":
            text += f", compile {self.compile_backend} ({self.compile_source})"
        return text


def resolve_precision(
    asked: str, on_gpu: bool, bf16_ok: bool, env: Mapping[str, str] = os.environ
) -> tuple[str, str, str | None]:
    """``(precision, source, override note or None)`` for ``train.precision=asked``.

    ``auto`` takes accelerate's ``mixed_precision`` (``ACCELERATE_MIXED_PRECISION``, set by
    ``accelerate launch`` and its config files) when there is one, else bf16 on a GPU that supports
    it and fp32 elsewhere. Any other value is used as is, with a note when accelerate said otherwise.
    fp16 needs a GPU: on a CPU it is a :class:`ConfigError` (bf16 works on a CPU, under autocast).
    """
    launcher = env.get("ACCELERATE_MIXED_PRECISION", "").strip().lower() or None
    note = None
    if asked == "auto":
        if launcher is not None:
            value, source = launcher, "accelerate's mixed_precision"
        else:
            value = "bf16" if on_gpu and bf16_ok else "no"
            source = "default: bf16 on a bf16 GPU, fp32 elsewhere"
    else:
        value, source = asked, "train.precision"
        if launcher is not None and launcher != asked:
            note = f"train.precision={asked} overrides accelerate's mixed_precision={launcher}"
    if value == "fp16" and not on_gpu:
        by = "train.precision=fp16" if source == "train.precision" else "accelerate's mixed_precision=fp16"
        raise ConfigError(f"{by}: fp16 mixed precision needs a GPU and none is present; on a CPU use "
                          "train.precision=bf16 (bf16 autocast) or train.precision=no (fp32)")
    if value == "bf16" and on_gpu and not bf16_ok:
        raise ConfigError(f"{'train.precision' if source == 'train.precision' else source}=bf16: this GPU "
                          "does not support bf16; use fp16 or no")
    return value, source, note


def resolve_grad_accum(
    asked: int | None, env: Mapping[str, str] = os.environ, launcher_argv: Sequence[str] | None = None
) -> tuple[int, str, str | None]:
    """``(micro-batches per optimizer step, source, override note or None)`` for ``train.grad_accum``.

    None takes accelerate's ``gradient_accumulation_steps`` (``ACCELERATE_GRADIENT_ACCUMULATION_STEPS``,
    else the launcher's ``--gradient_accumulation_steps``), else 1.
    """
    launcher: int | None = None
    raw = env.get("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "").strip()
    if raw:
        if not raw.isdigit() or int(raw) < 1:
            raise ConfigError(f"ACCELERATE_GRADIENT_ACCUMULATION_STEPS={raw!r}: expected a positive integer")
        launcher = int(raw)
    else:
        launcher = _launcher_int("gradient_accumulation_steps", launcher_argv)
    if asked is None:
        if launcher is not None:
            return launcher, "accelerate's gradient_accumulation_steps", None
        return 1, "default", None
    if asked < 1:
        raise ConfigError(f"train.grad_accum: expected a positive integer, got {asked}")
    note = None
    if launcher is not None and launcher != asked:
        note = f"train.grad_accum={asked} overrides accelerate's gradient_accumulation_steps={launcher}"
    return asked, "train.grad_accum", note


def resolve_compile(asked: bool | None, env: Mapping[str, str] = os.environ) -> tuple[str | None, str, str | None]:
    """``(dynamo_backend for the Accelerator, source, override note or None)`` for ``train.compile``.

    None leaves it to accelerate (``ACCELERATE_DYNAMO_BACKEND``, off when unset); true compiles
    with the launcher's backend when it names one, else inductor; false does not compile.
    """
    launcher = env.get("ACCELERATE_DYNAMO_BACKEND", "").strip().lower() or None
    launcher_on = launcher not in (None, "no")
    if asked is None:
        return None, ("accelerate's dynamo_backend" if launcher else "default: off"), None
    if asked:
        if launcher_on:
            return launcher, "train.compile", None
        note = f"train.compile=true overrides accelerate's dynamo_backend={launcher}" if launcher else None
        return "inductor", "train.compile", note
    note = f"train.compile=false overrides accelerate's dynamo_backend={launcher}" if launcher_on else None
    return "no", "train.compile", note


def resolve_launch_options(cfg: RunConfig, env: Mapping[str, str] | None = None) -> LaunchOptions:
    """Decide precision, accumulation, compilation and trackers for ``cfg`` before any work starts.

    Raises :class:`ConfigError` naming the key for fp16 on a CPU and for missing or unknown trackers.
    """
    env = os.environ if env is None else env
    on_gpu = torch.cuda.is_available()
    bf16_ok = on_gpu and torch.cuda.is_bf16_supported()
    precision, p_source, p_note = resolve_precision(cfg.train.precision, on_gpu, bf16_ok, env)
    accum, a_source, a_note = resolve_grad_accum(cfg.train.grad_accum, env)
    backend, c_source, c_note = resolve_compile(cfg.train.compile, env)
    trackers = check_trackers(cfg.train.trackers)
    notes = tuple(n for n in (p_note, a_note, c_note) if n)
    compiles = backend or env.get("ACCELERATE_DYNAMO_BACKEND", "").strip().lower() or "no"
    return LaunchOptions(precision, p_source, accum, a_source, backend, c_source, trackers, notes, compiles)


def make_accelerator(cfg: RunConfig, run_dir: Path, options: LaunchOptions | None = None) -> Accelerator:
    """An Accelerator for ``cfg`` logging into ``run_dir`` with the options of
    :func:`resolve_launch_options` (whose override notes it prints once).

    Gradient accumulation is done by the training loop, so the Accelerator's own is pinned to 1
    (otherwise ``accelerator.backward`` would divide the loss by the launcher's count a second time).
    TensorBoard writes under ``<run_dir>/logs/<run name>``, the run name being the directory's name
    (``train.name``).
    """
    from accelerate.tracking import TensorBoardTracker

    options = options or resolve_launch_options(cfg)
    logs = run_dir / "logs"
    log_with = [TensorBoardTracker(run_dir.name, str(logs)) if t == "tensorboard" else t for t in options.trackers]
    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(),
        mixed_precision=options.precision,
        gradient_accumulation_plugin=GradientAccumulationPlugin(num_steps=1),
        log_with=log_with or None,
        project_config=ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(logs)),
        dynamo_backend=options.dynamo_backend,
    )
    if accelerator.is_main_process:
        for note in options.notes:
            print(note, flush=True)
    return accelerator


# ---------------------------------------------------------------- trackers

def _tracker_modules() -> dict[str, tuple[str, ...]]:
    """accelerate's tracker names -> the modules any one of which makes the tracker usable."""
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS

    modules = {name: (name,) for name in LOGGER_TYPE_TO_CLASS}
    modules["tensorboard"] = ("tensorboard", "tensorboardX")
    return modules


def installed_trackers() -> list[str]:
    """The accelerate trackers whose library is installed here."""
    import importlib.util

    return [name for name, mods in _tracker_modules().items()
            if any(importlib.util.find_spec(m) is not None for m in mods)]


def parse_trackers(value: str | Sequence[str]) -> tuple[str, ...]:
    """``"tensorboard"``, ``"tensorboard,wandb"``, ``["tensorboard"]`` or ``[]`` -> tracker names."""
    items = value.split(",") if isinstance(value, str) else [p for v in value for p in str(v).split(",")]
    return tuple(dict.fromkeys(t.strip().lower() for t in items if t.strip()))


def check_trackers(value: str | Sequence[str]) -> tuple[str, ...]:
    """The tracker names of ``train.trackers``; an unknown or not-installed one is a :class:`ConfigError`
    naming it, what is installed and what accelerate knows."""
    names = parse_trackers(value)
    known = _tracker_modules()
    installed = installed_trackers()
    for name in names:
        if name not in known:
            raise ConfigError(f"train.trackers: unknown tracker {name!r}; accelerate knows {', '.join(known)} "
                              f"(installed here: {', '.join(installed) or 'none'})")
        if name not in installed:
            raise ConfigError(f"train.trackers: {name!r} is not installed (pip install {known[name][0]}); "
                              f"installed here: {', '.join(installed) or 'none'}; or set train.trackers=[]")
    return names


def init_trackers(accelerator: Accelerator, cfg: RunConfig, run_name: str, config: dict[str, Any]) -> None:
    """Start the trackers on the main process: project ``train.project``, run ``run_name`` (the
    TensorBoard sub-directory, set by :func:`make_accelerator`; wandb's and MLflow's run name)."""
    if not accelerator.is_main_process or not accelerator.log_with:
        return
    init_kwargs = {"wandb": {"name": run_name}, "mlflow": {"run_name": run_name}}
    accelerator.init_trackers(cfg.train.project, config=config, init_kwargs=init_kwargs)


# ---------------------------------------------------------------- the run directory

OUTPUTS = ("model.safetensors", "objective.safetensors", "metrics.jsonl", "summary.json", "checkpoints")


def existing_outputs(run_dir: Path) -> list[str]:
    """The outputs of an earlier run that ``run_dir`` holds (an empty ``checkpoints/`` does not count)."""
    found = []
    for name in OUTPUTS:
        path = run_dir / name
        if path.is_dir() and any(path.iterdir()) or path.is_file():
            found.append(name)
    return found


def resolve_run_dir(cfg: RunConfig, accelerator: PartialState, resuming: bool = False) -> Path:
    """``out_dir/name`` (one name agreed by all ranks); created and checked for writing on the main process.

    A fresh run (not ``resuming``) into a directory that holds another run's outputs is refused with
    :class:`RunDirExistsError`, unless ``train.overwrite`` is true: then those outputs and the old
    tracker logs are removed first, and a line says so.
    """
    name = cfg.train.name or f"{cfg.objective.name}-{cfg.model.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    box = [name]
    if accelerator.num_processes > 1:
        broadcast_object_list(box, from_process=0)
    run_dir = Path(cfg.train.out_dir) / box[0]
    error = ["", ""]
    if accelerator.is_main_process:
        found = [] if resuming else existing_outputs(run_dir)
        if found and not cfg.train.overwrite:
            error = ["exists", (
                f"the run directory {run_dir} already holds outputs of a run ({', '.join(found)}); a fresh run "
                f"would overwrite them. Set train.overwrite=true to replace them, or train.resume=latest to "
                f"continue that run (or choose another train.name)."
            )]
        else:
            if found:
                found += ["logs"] if (run_dir / "logs").is_dir() else []  # the old run's tracker logs
                print(f"train.overwrite=true: removing {', '.join(found)} from {run_dir}", flush=True)
                for item in found:
                    path = run_dir / item
                    shutil.rmtree(path) if path.is_dir() else path.unlink()
            try:
                run_dir.mkdir(parents=True, exist_ok=True)
                probe = run_dir / f".write-test-{os.getpid()}"
                probe.write_text("ok")
                probe.unlink()
            except OSError as err:
                error = ["write", f"cannot write the run directory {run_dir}: {err.strerror or err}"]
    if accelerator.num_processes > 1:
        broadcast_object_list(error, from_process=0)
    if error[0] == "exists":
        raise RunDirExistsError(error[1])
    if error[0]:
        raise PermissionError(error[1])
    return run_dir


# ---------------------------------------------------------------- progress

LINE_EVERY_S = 10.0  # seconds between progress lines when stderr is not a terminal


def is_main_process() -> bool:
    """Whether this is the main process (rank 0), also before accelerate has started."""
    if PartialState._shared_state:
        return PartialState().is_main_process
    return os.environ.get("RANK", "0") == "0"


class LineProgress:
    """A progress report for logs: one line ``desc: n/total (p%), s elapsed`` every ``LINE_EVERY_S``
    seconds and one when it closes (if it printed before); the subset of tqdm's API used here."""

    def __init__(self, iterable: Iterable | None = None, total: int | None = None, desc: str = "",
                 initial: int = 0, unit: str = "it", stream: Any = None):
        self.iterable, self.total, self.desc, self.n, self.unit = iterable, total, desc, initial, unit
        self.stream = stream or sys.stderr
        self.start = self.last = time.perf_counter()
        self.postfix = ""
        self.printed = False
        self.closed = False

    def __iter__(self) -> Iterator:
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _line(self) -> str:
        done = f"{self.n}/{self.total} {self.unit} ({100.0 * self.n / self.total:.0f}%)" if self.total else \
            f"{self.n} {self.unit}"
        extra = f", {self.postfix}" if self.postfix else ""
        return f"{self.desc}: {done}, {time.perf_counter() - self.start:.0f} s{extra}"

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.perf_counter()
        if now - self.last >= LINE_EVERY_S:
            self.last = now
            self.printed = True
            print(self._line(), file=self.stream, flush=True)

    def set_postfix(self, **values: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def close(self) -> None:
        if not self.closed and self.printed:
            print(self._line() + " (done)", file=self.stream, flush=True)
        self.closed = True


class _NoProgress(LineProgress):
    def update(self, n: int = 1) -> None:
        self.n += n

    def close(self) -> None:
        self.closed = True


def progress(iterable: Iterable | None = None, total: int | None = None, desc: str = "", enabled: bool = True,
             initial: int = 0, unit: str = "it", leave: bool = True) -> Any:
    """A progress bar on the main process: tqdm when stderr is a terminal, else :class:`LineProgress`
    lines; nothing on other ranks or when not ``enabled``. Iterate it, or call ``update`` / ``close``.
    ``leave=False`` clears a finished bar (one shown while another bar runs)."""
    if total is None and iterable is not None:
        try:
            total = len(iterable)  # type: ignore[arg-type]
        except TypeError:
            total = None
    if not (enabled and is_main_process()):
        return _NoProgress(iterable, total, desc, initial, unit)
    if sys.stderr.isatty():
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, desc=desc, initial=initial, unit=unit, dynamic_ncols=True, leave=leave)
    return LineProgress(iterable, total, desc, initial, unit)


# ---------------------------------------------------------------- threads

_THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def cgroup_cpu_limit(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs the cgroup quota allows (quota / period) from cgroup v2 ``cpu.max`` or v1
    ``cpu/cpu.cfs_quota_us`` + ``cpu.cfs_period_us``; None when unlimited or unreadable."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    for folder in (root / "cpu", root / "cpu,cpuacct", root):
        try:
            quota_us = int((folder / "cpu.cfs_quota_us").read_text())
            period_us = int((folder / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            continue
        return None if quota_us <= 0 or period_us <= 0 else quota_us / period_us
    return None


def usable_cores(root: Path = Path("/sys/fs/cgroup")) -> int:
    """Cores this process may run on: its CPU affinity, capped by the cgroup quota (rounded up)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    limit = cgroup_cpu_limit(root)
    if limit is not None:
        cores = min(cores, max(1, math.ceil(limit - 1e-9)))
    return max(1, cores)


@dataclass(frozen=True)
class ThreadPlan:
    """How one rank uses its share of the cores: torch intra-op threads, inter-op threads, loader workers."""

    intra_op: int
    inter_op: int
    workers: int
    cores: int  # usable cores of the machine (affinity and cgroup quota)
    local_world_size: int
    notes: tuple[str, ...] = ()

    def describe(self) -> str:
        """One line, e.g. ``threads: 1 intra-op + 1 loader worker on 2 usable cores``."""
        share = f" ({self.cores} usable cores / {self.local_world_size} local ranks)" if self.local_world_size > 1 \
            else f" on {self.cores} usable core{'s' if self.cores != 1 else ''}"
        worker = f"{self.workers} loader worker{'s' if self.workers != 1 else ''}"
        line = f"threads: {self.intra_op} intra-op + {worker}{share}"
        return line + ("; " + "; ".join(self.notes) if self.notes else "")


def fit_threads(cfg: RunConfig, local_world_size: int | None = None, env: Mapping[str, str] | None = None,
                cores: int | None = None) -> ThreadPlan:
    """Choose intra-op threads so that intra-op threads + loader workers fit this rank's cores.

    A rank's share is ``usable_cores() // local_world_size`` (at least 1; ``local_world_size``
    defaults to env LOCAL_WORLD_SIZE, else 1). The loader keeps ``data.num_workers`` (the config's
    choice); the model gets the rest of the share, at least one thread, and one inter-op thread.
    OMP_NUM_THREADS (or MKL_NUM_THREADS) in ``env`` wins for the intra-op count. When the user's
    choices exceed the share, the plan keeps them and its notes say so. Apply it with
    :func:`apply_threads`.
    """
    env = os.environ if env is None else env
    if local_world_size is None:
        local_world_size = int(env.get("LOCAL_WORLD_SIZE", "1") or 1)
    if local_world_size < 1:
        raise ValueError(f"local_world_size must be >= 1, not {local_world_size}")
    cores = usable_cores() if cores is None else cores
    share = max(1, cores // local_world_size)
    workers = cfg.data.num_workers
    notes: list[str] = []
    asked = next(((name, env[name]) for name in _THREAD_ENV if env.get(name, "").strip()), None)
    if asked is not None:
        try:
            intra = int(asked[1])
        except ValueError:
            raise ConfigError(f"{asked[0]}={asked[1]!r} is not a thread count (a positive integer)") from None
        if intra < 1:
            raise ConfigError(f"{asked[0]}={asked[1]!r} is not a thread count (a positive integer)")
        notes.append(f"intra-op from {asked[0]}={intra}")
    else:
        intra = max(1, share - workers)
    if intra + workers > share:
        notes.append(f"{intra + workers} busy threads on a share of {share} core{'s' if share != 1 else ''}: "
                     f"oversubscribed as data.num_workers={workers}" + (f" and {asked[0]}" if asked else "")
                     + " ask")
    return ThreadPlan(intra_op=intra, inter_op=1, workers=workers, cores=cores,
                      local_world_size=local_world_size, notes=tuple(notes))


def apply_threads(plan: ThreadPlan) -> str:
    """Set torch's intra-op (and inter-op) thread counts to the plan's; returns the line to print.

    torch accepts an inter-op count only before its first inter-op work; after that the current
    count stays, and the returned line says so."""
    if torch.get_num_threads() != plan.intra_op:
        torch.set_num_threads(plan.intra_op)
    line = plan.describe()
    if torch.get_num_interop_threads() != plan.inter_op:
        try:
            torch.set_num_interop_threads(plan.inter_op)
        except RuntimeError:
            line += f"; inter-op threads stay {torch.get_num_interop_threads()} (torch had started its pool)"
    return line
