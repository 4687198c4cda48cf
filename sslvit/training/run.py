"""A run's setup and its end: from a config to a prepared accelerator, objective, optimizer,
loader and schedule (:func:`prepare_run`), and from the last step to the final files
(:func:`finish_run`). The step loop between them is :mod:`sslvit.training.loop`.

Outputs land in ``run_dir``: ``config.yaml``, ``metrics.jsonl``, TensorBoard logs,
``checkpoints/step_XXXXXXX/`` (resumable), and at the end ``model.safetensors`` (the encoder) and
``objective.safetensors`` (encoder + decoder / heads).
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch import nn

from sslvit import config as config_lib
from sslvit.checkpoint import save_model
from sslvit.errors import StorageError
from sslvit.files import METRICS_FILE, OBJECTIVE_FILE, RUN_CONFIG_FILE, SUMMARY_FILE, WEIGHTS_FILE
from sslvit.models import create_model
from sslvit.objectives import build_objective
from sslvit.progress import say
from sslvit.training.checkpoints import (
    ResumeError,
    RunRecord,
    TrainerState,
    all_finite,
    attempt_on_every_rank,
    is_disk_full,
    last_good_words,
    save_training_state,
    size_text,
)
from sslvit.training.config import RunConfig
from sslvit.training.data import TrainData, resolve_train_data
from sslvit.training.launch import (
    LaunchError,
    init_trackers,
    make_accelerator,
    resolve_launch_options,
    resolve_run_dir,
    start_processes,
)
from sslvit.training.nonfinite import raise_nonfinite_weights
from sslvit.training.optim import build_optimizer, lr_at
from sslvit.training.resume import choose_resume, load_resume, record_resume, run_record, shard_set_of
from sslvit.training.threads import ThreadPlan, apply_threads, fit_threads

MODEL_OPTIONS = ("patch_size", "global_pool", "pos_embed", "pos_embed_at", "class_token", "fc_norm", "head_type",
                 "layer_scale_init", "weight_init")


class StepHook(Protocol):
    """Work the caller hands the loop to run after optimizer steps (online evaluation is one)."""

    def start(self, accelerator: Accelerator, mean: tuple[float, ...], std: tuple[float, ...]) -> str:
        """Called once the accelerator exists; returns a phrase for the run line ("" = none)."""

    def __call__(self, step: int, total_steps: int, encoder: nn.Module) -> dict[str, float] | None:
        """After optimizer step ``step`` (1-based): metrics to log, or None when not due."""


@dataclass
class EpochContext:
    """What an epoch-end callback sees (called on every rank)."""

    accelerator: Accelerator
    objective: nn.Module
    encoder: nn.Module
    epoch: int
    step: int
    run_dir: Path


@dataclass
class RunResult:
    """Where a finished run put its outputs."""

    run_dir: Path
    model_path: Path
    objective_path: Path
    steps: int
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Schedule:
    """The run's length and learning rate, all in optimizer steps; the lr is a pure function of the step."""

    total_steps: int
    warmup_steps: int
    peak_lr: float
    min_lr: float
    kind: str
    warmup_lr: float = 0.0
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    warmup_prefix: bool = True

    def lr(self, step: int) -> float:
        """The learning rate of optimizer step ``step`` (0-based)."""
        return lr_at(step, self.peak_lr, self.total_steps, self.warmup_steps, self.min_lr, self.kind,
                     self.warmup_lr, self.milestones, self.gamma, self.warmup_prefix)


@dataclass
class Run:
    """A prepared run: everything the step loop reads."""

    cfg: RunConfig
    accelerator: Accelerator
    objective: nn.Module  # as accelerate prepared it (DDP / FSDP wrapped)
    plain: nn.Module  # the same objective unwrapped
    optimizer: Any
    loader: Any
    data: TrainData
    run_dir: Path
    record: RunRecord
    start: TrainerState
    schedule: Schedule
    accum: int
    threads: ThreadPlan
    hooks: Sequence[StepHook] = ()
    flops_per_image: float | None = None


def check_model_config(cfg: RunConfig) -> None:
    """Refuse, before any work, an unknown model, options its family does not take and an
    objective x backbone pair that cannot train (``ConfigError`` naming the key or the pairs): the
    model checks :func:`sslvit.training.config.load` runs, repeated for configs built in code."""
    config_lib.check_values(cfg.model, "model")
    RunConfig.check(cfg, "")


def build_encoder(cfg: RunConfig) -> nn.Module:
    """The encoder named by ``cfg.model`` (unset options keep the variant's defaults)."""
    check_model_config(cfg)
    m = cfg.model
    overrides: dict[str, Any] = {"img_size": m.img_size or cfg.data.image_size, "num_classes": m.num_classes}
    for key in MODEL_OPTIONS:
        if getattr(m, key) is not None:
            overrides[key] = getattr(m, key)
    if m.drop_path_rate:
        overrides["drop_path_rate"] = m.drop_path_rate
    return create_model(m.name, **overrides)


def _freeze_untrained(objective: nn.Module) -> None:
    """Freeze (and say so) the parameters the objective's loss cannot reach, so no rank waits on their
    gradients and no optimizer decays them."""
    frozen = sorted(objective.untrained_parameters())
    for name, param in objective.named_parameters():
        if name in frozen:
            param.requires_grad_(False)
    if frozen:
        say(f"frozen (the {objective.name} loss cannot reach them): {', '.join(frozen)}")


def _schedule(cfg: RunConfig, steps_per_epoch: int, global_batch: int) -> Schedule:
    """The step count, warmup and peak lr ``cfg`` asks for, with ``steps_per_epoch`` optimizer steps
    an epoch and ``global_batch`` images a step; says when the warmup outlasts the run."""
    total = cfg.train.steps or max(1, math.ceil(cfg.train.epochs * steps_per_epoch))
    o = cfg.optim
    warmup = o.warmup_steps if o.warmup_steps is not None else round(o.warmup_epochs * steps_per_epoch)
    peak = o.lr if o.lr is not None else o.base_lr * global_batch / 256
    if warmup >= total:
        source = (f"optim.warmup_steps={o.warmup_steps}" if o.warmup_steps is not None
                  else f"optim.warmup_epochs={o.warmup_epochs:g} x {steps_per_epoch} steps per epoch")
        say(f"warning: the warmup ({warmup} steps, {source}) is as long as the run ({total} "
            f"steps): the learning rate never reaches its peak {peak:.3g}")
    milestones = tuple(round(epoch * steps_per_epoch) for epoch in o.milestones)
    return Schedule(total, warmup, peak, o.min_lr, o.schedule, o.warmup_lr, milestones, o.gamma,
                    o.warmup_prefix)


def _write_run_files(cfg: RunConfig, accelerator: Accelerator, run_dir: Path, resume: Any, record: RunRecord) -> None:
    """``config.yaml`` (or the resume's record of what changed) and the trackers, on the main process."""
    if not accelerator.is_main_process:
        return
    if resume is None:  # train.overwrite is a one-time choice: a rerun of config.yaml is refused again
        config_lib.save(replace(cfg, train=replace(cfg.train, overwrite=False)), run_dir / RUN_CONFIG_FILE)
        if (run_dir / METRICS_FILE).exists():
            (run_dir / METRICS_FILE).unlink()
    else:
        record_resume(run_dir, resume, record, cfg)
    if accelerator.log_with:
        flat = {
            f"{s}.{k}": (str(v) if isinstance(v, (list, tuple)) or v is None else v)
            for s, sec in config_lib.to_dict(cfg).items()
            for k, v in sec.items()
        }
        init_trackers(accelerator, cfg, run_dir.name, flat)


def fsdp_asked(env: Any = None) -> bool:
    """Whether the launcher asked for FSDP (an accelerate config with ``distributed_type: FSDP`` or
    ``--use_fsdp`` sets ``ACCELERATE_USE_FSDP=true``)."""
    env = os.environ if env is None else env
    return env.get("ACCELERATE_USE_FSDP", "false").strip().lower() == "true"


def fsdp_refusal(what: str, processes: int) -> LaunchError:
    """The error for an FSDP launch that cannot shard here: ``what`` accelerate did instead."""
    import accelerate

    return LaunchError(
        f"accelerate launch was given an FSDP config (ACCELERATE_USE_FSDP=true), but {what}: accelerate "
        f"{accelerate.__version__} runs FSDP only on GPUs and other accelerators, not on CPUs. FSDP needs "
        "GPUs; on CPUs train without the FSDP config:\n"
        f"  ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes {processes} -m sslvit pretrain"
    )


def start_accelerator(cfg: RunConfig, run_dir: Path, options: Any, processes: int) -> Accelerator:
    """:func:`make_accelerator`, refusing with one :class:`LaunchError` an FSDP launch that accelerate
    cannot shard on this machine: on a CPU it either refuses the FSDP settings (FSDP1's
    ``sync_module_states``) or sets up plain data parallelism, which would train every rank on the full,
    unsharded model."""
    from accelerate.utils import DistributedType

    try:
        accelerator = make_accelerator(cfg, run_dir, options)
    except RuntimeError as err:
        if fsdp_asked() and "not supported on cpu" in str(err):
            raise fsdp_refusal(f"it refused it on this CPU ({err})", processes) from err
        raise
    if fsdp_asked() and accelerator.distributed_type != DistributedType.FSDP:
        kind = getattr(accelerator.distributed_type, "value", accelerator.distributed_type)
        raise fsdp_refusal(f"it set up {kind} on {accelerator.device} without FSDP, so the model would "
                           "not be sharded", processes)
    return accelerator


def prepare_run(cfg: RunConfig, encoder: nn.Module | None = None, hooks: Sequence[StepHook] = ()) -> Run:
    """Everything before the first step: processes and threads, data, the resume point, the run
    directory, the accelerator, encoder, objective, loader, optimizer and schedule, the run's files
    and trackers, the resumed state; then the run line. ``encoder`` replaces the one ``cfg.model``
    would build (fine-tuning)."""
    config_lib.check_sections(cfg)  # what loading the config checks, for one built in code
    if encoder is None:
        check_model_config(cfg)
    processes, timeout_note = start_processes(cfg.train.dist_timeout_s)
    plan = fit_threads(cfg)
    say(apply_threads(plan))  # before any torch work: intra-op + loader workers fit the cores
    options = resolve_launch_options(cfg)
    data = resolve_train_data(cfg, processes)
    shards = shard_set_of(data.shards)
    resume = choose_resume(cfg, processes, run_record(cfg, processes.num_processes, options.grad_accum, shards))
    if resume is not None and not cfg.train.name:
        cfg = replace(cfg, train=replace(cfg.train, name=resume.path.parent.parent.name))
    record = run_record(cfg, processes.num_processes, options.grad_accum, shards)
    run_dir = resolve_run_dir(cfg, processes, resuming=resume is not None)
    accelerator = start_accelerator(cfg, run_dir, options, processes.num_processes)
    world = accelerator.num_processes
    start = replace(resume.state, world_size=world) if resume is not None else TrainerState(0, 0, world)

    set_seed(cfg.train.seed)
    encoder = encoder if encoder is not None else build_encoder(cfg)
    objective = build_objective(cfg.objective, encoder, data.mean, data.std)
    loader = data.make_loader(masker=getattr(objective, "masker", None))
    _freeze_untrained(objective)
    if cfg.train.eval_every and not hooks:
        say(f"warning: train.eval_every={cfg.train.eval_every} is set but no online-evaluation hook was "
            "given to the loop, so none runs (sslvit pretrain passes sslvit.evaluate.online.OnlineEvalHook)")
    described = [text for text in (hook.start(accelerator, data.mean, data.std) for hook in hooks) if text]
    global_batch = cfg.data.batch_size * options.grad_accum * world
    schedule = _schedule(cfg, max(1, len(loader) // options.grad_accum), global_batch)
    optimizer = build_optimizer(
        objective, cfg.optim.name, cfg.optim.weight_decay, cfg.optim.betas, cfg.optim.layer_decay, cfg.optim.no_decay,
        cfg.optim.momentum,
    )
    prepared, optimizer = accelerator.prepare(objective, optimizer)
    plain = accelerator.unwrap_model(prepared)
    if start.step > schedule.total_steps:
        raise ResumeError(f"cannot resume: {resume.path} is at step {start.step}, beyond this run's "  # type: ignore[union-attr]
                          f"{schedule.total_steps} steps")
    _write_run_files(cfg, accelerator, run_dir, resume, record)
    if resume is not None:
        load_resume(accelerator, resume, cfg.train.seed)
    say(f"run {run_dir} | {world} process(es) on {accelerator.device} | {data.num_samples} samples, "
        f"{len(loader)} batches/epoch/rank, {schedule.total_steps} steps, global batch {global_batch}, "
        f"peak lr {schedule.peak_lr:.3g} | {options.describe()}"
        + "".join(f" | {d}" for d in [*described, timeout_note, _in_memory_note(cfg, loader)] if d))
    flops = plain.flops_per_image() if hasattr(plain, "flops_per_image") else None
    return Run(cfg, accelerator, prepared, plain, optimizer, loader, data, run_dir, record, start, schedule,
               options.grad_accum, plan, tuple(hooks), flops)


def _in_memory_note(cfg: RunConfig, loader: Any) -> str:
    """The run line's word on data.in_memory: whether the corpus is held in memory, and where."""
    if getattr(loader, "resident", None) is None:
        return ""
    readers = loader.cfg.num_readers
    where = ("the main process" if cfg.data.num_workers == 0 else
             "its loader worker" if readers == 1 else f"each of its {readers} loader workers")
    chosen = "data.in_memory=true" if cfg.data.in_memory else f"local shards under data.in_memory_mb={cfg.data.in_memory_mb:g}"
    return f"corpus held in memory after epoch 1 by {where} ({chosen}; data.in_memory=false streams it)"


def save_checkpoint(run: Run, state: TrainerState, bar: Any) -> None:
    """Write the resumable checkpoint of ``state``, refusing (and stopping the run) when the weights
    or optimizer state are not finite: no checkpoint with a NaN is ever written."""
    if not all_finite(run.accelerator, [run.objective], run.optimizer):
        bar.close()
        raise_nonfinite_weights(run.run_dir, state.step)
    save_training_state(run.accelerator, run.run_dir, state, run.cfg.train.keep_last, run.record)


def full_state_dicts(
    accelerator: Accelerator, prepared: nn.Module, plain: nn.Module
) -> tuple[nn.Module | dict[str, torch.Tensor], nn.Module | dict[str, torch.Tensor]]:
    """What the final files hold: the objective and its encoder, as modules, or under FSDP as the full
    (gathered, unsharded) state dicts, which every rank takes part in gathering and the main process
    receives (the encoder's keys without their ``encoder.`` prefix)."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type != DistributedType.FSDP:
        return plain, plain.encoder
    full = accelerator.get_state_dict(prepared)
    encoder = {k.removeprefix("encoder."): v for k, v in full.items() if k.startswith("encoder.")}
    return full, encoder


def finish_run(run: Run, state: TrainerState) -> RunResult:
    """The final files: ``model.safetensors`` (the encoder), ``objective.safetensors`` and
    ``summary.json``, with the resolved config and normalisation in the metadata."""
    accelerator, objective, run_dir = run.accelerator, run.plain, run.run_dir
    resolved = config_lib.to_dict(run.cfg)
    model_path, objective_path = run_dir / WEIGHTS_FILE, run_dir / OBJECTIVE_FILE
    steps = torch.tensor([state.step], device=accelerator.device)
    per_rank = accelerator.gather(steps).tolist()
    accelerator.wait_for_everyone()
    weights, encoder_weights = full_state_dicts(accelerator, run.objective, objective)

    def write() -> None:
        if not accelerator.is_main_process:
            return
        encoder = objective.encoder
        normalization = {"mean": list(run.data.mean), "std": list(run.data.std)}
        extra = {"objective": resolved["objective"], "normalization": normalization, "config": resolved}
        save_model(encoder_weights, model_path, encoder.get_config(), kind="encoder", extra=extra)
        save_model(weights, objective_path, encoder.get_config(), kind="objective", extra=extra)
        summary = {"steps": state.step, "world_size": accelerator.num_processes, "steps_per_rank": per_rank,
                   "model": str(model_path), "objective": str(objective_path)}
        (run_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))

    failure = attempt_on_every_rank(accelerator, write)
    if failure is not None:
        needed = 2 * sum(p.numel() * p.element_size() for p in objective.state_dict().values())
        free = shutil.disk_usage(run_dir).free
        if not is_disk_full(failure, free, needed):
            raise failure
        raise StorageError(f"no space left to write the final model in {run_dir}: about {size_text(needed)} "
                           f"needed, {size_text(free)} free ({failure}); {last_good_words(run_dir)}")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return RunResult(run_dir, model_path, objective_path, state.step, {"steps_per_rank": per_rank})
