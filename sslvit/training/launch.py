"""Process setup for a run: the accelerator and what decides its options, the trackers, the run
directory and launcher sanity checks (progress: :mod:`sslvit.progress`; threads: :mod:`sslvit.training.threads`).

``accelerate launch`` flags and accelerate config files reach the process as ``ACCELERATE_*``
environment variables (``ACCELERATE_MIXED_PRECISION``, ``ACCELERATE_GRADIENT_ACCUMULATION_STEPS``,
``ACCELERATE_DYNAMO_BACKEND``); the simple and multi-GPU launchers keep ``--gradient_accumulation_steps``
to themselves, so it is also read from the launcher's command line. They decide precision,
gradient accumulation and compilation unless ``train.precision`` / ``train.grad_accum`` /
``train.compile`` is set, and then one line says which value overrides which.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import GradientAccumulationPlugin, ProjectConfiguration, broadcast_object_list

from sslvit.config import ConfigError
from sslvit.errors import InputError
from sslvit.files import METRICS_FILE, OBJECTIVE_FILE, SUMMARY_FILE, WEIGHTS_FILE
from sslvit.training.config import RunConfig


class LaunchError(InputError):
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
            f"  ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes {asked} -m sslvit pretrain\n"
            f"or\n  torchrun --nproc_per_node {asked} -m sslvit pretrain"
        )


def start_processes(timeout_s: float | None = None) -> tuple[PartialState, str]:
    """Join the process group (gloo on CPU when no GPU is present) with collectives that give up
    on a silent process after ``timeout_s`` seconds, and check the launch. Returns the state and a
    phrase for the run line ("" for one process)."""
    joined = torch.distributed.is_available() and torch.distributed.is_initialized()
    kwargs = {"timeout": timedelta(seconds=timeout_s)} if timeout_s and not joined else {}
    state = PartialState(cpu=not torch.cuda.is_available(), **kwargs)
    check_launch(state)
    if state.num_processes == 1:
        return state, ""
    if joined:
        return state, "collective timeout as set by the code that started the process group"
    return state, f"collectives give up after {timeout_s:g} s (train.dist_timeout_s)"


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

    Raises :class:`ConfigError` naming the key for fp16 or nvJPEG on a CPU and for missing or unknown
    trackers.
    """
    env = os.environ if env is None else env
    on_gpu = torch.cuda.is_available()
    bf16_ok = on_gpu and torch.cuda.is_bf16_supported()
    precision, p_source, p_note = resolve_precision(cfg.train.precision, on_gpu, bf16_ok, env)
    accum, a_source, a_note = resolve_grad_accum(cfg.train.grad_accum, env)
    backend, c_source, c_note = resolve_compile(cfg.train.compile, env)
    trackers = check_trackers(cfg.train.trackers)
    check_jpeg_decode(cfg.data.jpeg_decode, on_gpu)
    notes = tuple(n for n in (p_note, a_note, c_note) if n)
    compiles = backend or env.get("ACCELERATE_DYNAMO_BACKEND", "").strip().lower() or "no"
    return LaunchOptions(precision, p_source, accum, a_source, backend, c_source, trackers, notes, compiles)


def check_jpeg_decode(asked: str, on_gpu: bool) -> None:
    """Refuse ``data.jpeg_decode=nvjpeg`` where there is no CUDA device to decode on."""
    if asked == "nvjpeg" and not on_gpu:
        raise ConfigError("data.jpeg_decode=nvjpeg decodes JPEGs on the GPU with nvJPEG "
                          "(torchvision.io.decode_jpeg(device='cuda')), and this machine has no CUDA device "
                          "(torch.cuda.is_available() is False); use data.jpeg_decode=cpu")


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

OUTPUTS = (WEIGHTS_FILE, OBJECTIVE_FILE, METRICS_FILE, SUMMARY_FILE, "checkpoints")


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
