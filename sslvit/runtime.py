"""Process setup for a run: the accelerator, the run directory, and launcher sanity checks."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import ProjectConfiguration, broadcast_object_list

from sslvit.config import RunConfig


class LaunchError(RuntimeError):
    """The processes that were started are not the ones that were asked for."""


def _launcher_process_count() -> int | None:
    """``--num_processes`` of an ``accelerate launch`` parent process, if this process has one."""
    try:
        raw = Path(f"/proc/{os.getppid()}/cmdline").read_bytes()
    except OSError:
        return None
    argv = [a.decode(errors="replace") for a in raw.split(b"\0") if a]
    if not any(a.endswith("accelerate") or "accelerate.commands" in a for a in argv[:3]):
        return None
    for i, arg in enumerate(argv):
        match = re.fullmatch(r"--num[_-]processes(?:=(\d+))?", arg)
        if match:
            value = match.group(1) or (argv[i + 1] if i + 1 < len(argv) else "")
            return int(value) if value.isdigit() else None
    return None


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


def make_accelerator(cfg: RunConfig, run_dir: Path) -> Accelerator:
    """An Accelerator for ``cfg`` logging into ``run_dir``: bf16 on GPU by default, fp32 on CPU."""
    on_gpu = torch.cuda.is_available()
    precision = cfg.train.precision
    if precision == "auto":
        precision = "bf16" if on_gpu and torch.cuda.is_bf16_supported() else "no"
    if not on_gpu and precision != "no":
        precision = "no"
    log_with = [t for t in cfg.train.trackers if _tracker_available(t)]
    accelerator = Accelerator(
        cpu=not on_gpu,
        mixed_precision=precision,
        log_with=log_with or None,
        project_config=ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(run_dir / "logs")),
        dynamo_backend="inductor" if cfg.train.compile else None,
    )
    return accelerator


def _tracker_available(name: str) -> bool:
    import importlib.util

    module = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow", "aim": "aim"}.get(
        name, name
    )
    return importlib.util.find_spec(module) is not None


def resolve_run_dir(cfg: RunConfig, accelerator: PartialState) -> Path:
    """``out_dir/name`` (one name agreed by all ranks); created and checked for writing on the main process."""
    name = cfg.train.name or f"{cfg.objective.name}-{cfg.model.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    box = [name]
    if accelerator.num_processes > 1:
        broadcast_object_list(box, from_process=0)
    run_dir = Path(cfg.train.out_dir) / box[0]
    error = [""]
    if accelerator.is_main_process:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            probe = run_dir / f".write-test-{os.getpid()}"
            probe.write_text("ok")
            probe.unlink()
        except OSError as err:
            error[0] = f"cannot write the run directory {run_dir}: {err.strerror or err}"
    if accelerator.num_processes > 1:
        broadcast_object_list(error, from_process=0)
    if error[0]:
        raise PermissionError(error[0])
    return run_dir
