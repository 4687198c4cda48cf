"""The training loop: one flat function counted in optimizer steps, under Hugging Face accelerate.

The loop never knows which objective it runs: ``loss, metrics = objective(batch)``. The learning
rate is a pure function of the step (:func:`sslvit.optim.lr_at`). Batches come from the streaming
loader, which is kept out of ``accelerator.prepare`` (every rank reads its own shards) and moved
to the device here. Outputs land in ``run_dir``: ``config.yaml``, ``metrics.jsonl``, TensorBoard
logs, ``checkpoints/step_XXXXXXX/`` (resumable), and at the end ``model.safetensors`` (the encoder)
and ``objective.safetensors`` (encoder + decoder / heads).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch import nn
from tqdm.auto import tqdm

from sslvit import config as config_lib
from sslvit.checkpoint import save_model
from sslvit.config import RunConfig
from sslvit.data_setup import resolve_train_data
from sslvit.optim import build_optimizer, lr_at, set_lr
from sslvit.runtime import make_accelerator, resolve_run_dir, start_processes
from sslvit.throughput import mfu
from sslvit.train_state import (
    TrainerState,
    find_resume_point,
    save_training_state,
    validate_checkpoint,
)


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite more often than ``train.max_nonfinite`` allows."""


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


MODEL_OPTIONS = ("patch_size", "global_pool", "pos_embed", "pos_embed_at", "class_token")


def check_model_config(cfg: RunConfig) -> None:
    """Refuse, before any work, an unknown model, options its family does not take and an
    objective x backbone pair that cannot train (``ConfigError`` naming the key or the pairs)."""
    import inspect

    from sslvit.config import ConfigError
    from sslvit.models import FAMILIES, list_models, model_family
    from sslvit.objectives import check_pair

    try:
        family = model_family(cfg.model.name)
    except KeyError:
        raise ConfigError(f"model.name: unknown model {cfg.model.name!r}; known: {', '.join(list_models())}") from None
    takes = inspect.signature(FAMILIES[family].__init__).parameters
    for key in MODEL_OPTIONS:
        if getattr(cfg.model, key) is not None and key not in takes:
            raise ConfigError(f"model.{key}: the {family} family ({cfg.model.name}) has no such option")
    check_pair(cfg.objective.name, family)


def build_encoder(cfg: RunConfig) -> nn.Module:
    """The encoder named by ``cfg.model`` (unset options keep the variant's defaults)."""
    from sslvit.models import create_model

    check_model_config(cfg)
    m = cfg.model
    overrides: dict[str, Any] = {"img_size": m.img_size or cfg.data.image_size, "num_classes": m.num_classes}
    for key in MODEL_OPTIONS:
        if getattr(m, key) is not None:
            overrides[key] = getattr(m, key)
    if m.drop_path_rate:
        overrides["drop_path_rate"] = m.drop_path_rate
    return create_model(m.name, **overrides)


def _batches(loader: Any, start_micro: int) -> Iterator[tuple[int, int, dict]]:
    """Yield ``(epoch, index_in_epoch, batch)`` forever, starting at global micro-batch ``start_micro``.

    Creating and advancing loader iterators runs under a forked CPU RNG, so the global RNG (used by
    the model: drop path, MixUp) does not depend on where in the stream a run was resumed.
    """
    per_epoch = len(loader)
    epoch, index = divmod(start_micro, per_epoch)
    while True:
        with torch.random.fork_rng(devices=[]):
            it = iter(loader.iterate(epoch, start_batch=index))
        while True:
            with torch.random.fork_rng(devices=[]):
                batch = next(it, None)
            if batch is None:
                break
            yield epoch, index, batch
            index += 1
        epoch, index = epoch + 1, 0


def _say(accelerator: Accelerator, message: str) -> None:
    """Print once for the whole job (global main process), not once per node."""
    if accelerator.is_main_process:
        print(message, flush=True)


def _to_device(batch: dict, device: torch.device) -> dict:
    return {
        k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()
    }


def _log(accelerator: Accelerator, run_dir: Path, step: int, values: dict[str, float]) -> None:
    if not accelerator.is_main_process:
        return
    accelerator.log(values, step=step)
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": step, **values}) + "\n")


def train(
    cfg: RunConfig,
    encoder: nn.Module | None = None,
    on_epoch_end: Callable[[EpochContext], dict[str, float]] | None = None,
    on_step_end: Callable[[int], None] | None = None,
) -> RunResult:
    """Run ``cfg`` to ``train.steps`` optimizer steps and return where the outputs are.

    ``encoder`` replaces the one ``cfg.model`` would build (fine-tuning a pretrained encoder).
    ``on_epoch_end`` runs on every rank after each epoch; the metrics it returns are logged.
    ``on_step_end(step)`` runs after each optimizer step (and its checkpoint, if one is due).
    """
    from sslvit.objectives import build_objective

    if encoder is None:
        check_model_config(cfg)
    processes = start_processes()
    out_dir = Path(cfg.train.out_dir)
    resume_from = find_resume_point(cfg.train.resume, out_dir / (cfg.train.name or "_"), out_dir)
    if resume_from is not None and not cfg.train.name:
        cfg = replace(cfg, train=replace(cfg.train, name=resume_from.parent.parent.name))
    run_dir = resolve_run_dir(cfg, processes)
    accelerator = make_accelerator(cfg, run_dir)
    start = (
        validate_checkpoint(resume_from, accelerator.num_processes)
        if resume_from is not None
        else TrainerState(step=0, micro_batch=0, world_size=accelerator.num_processes)
    )

    set_seed(cfg.train.seed)
    data = resolve_train_data(cfg, accelerator)
    encoder = encoder if encoder is not None else build_encoder(cfg)
    objective = build_objective(cfg.objective, encoder, data.mean, data.std)
    loader = data.make_loader(masker=getattr(objective, "masker", None))
    _freeze_untrained(accelerator, objective)

    accum = cfg.train.grad_accum
    steps_per_epoch = max(1, len(loader) // accum)
    total_steps = cfg.train.steps or max(1, math.ceil(cfg.train.epochs * steps_per_epoch))
    warmup = (
        cfg.optim.warmup_steps
        if cfg.optim.warmup_steps is not None
        else round(cfg.optim.warmup_epochs * steps_per_epoch)
    )
    global_batch = cfg.data.batch_size * accum * accelerator.num_processes
    peak_lr = cfg.optim.lr if cfg.optim.lr is not None else cfg.optim.base_lr * global_batch / 256
    optimizer = build_optimizer(
        objective, cfg.optim.name, cfg.optim.weight_decay, cfg.optim.betas, cfg.optim.layer_decay
    )
    objective, optimizer = accelerator.prepare(objective, optimizer)
    plain = accelerator.unwrap_model(objective)

    resolved = config_lib.to_dict(cfg)
    if accelerator.is_main_process:
        config_lib.save(cfg, run_dir / "config.yaml")
        if start.step == 0 and (run_dir / "metrics.jsonl").exists():
            (run_dir / "metrics.jsonl").unlink()
    if accelerator.is_main_process and accelerator.log_with:
        flat = {
            f"{s}.{k}": (str(v) if isinstance(v, (list, tuple)) or v is None else v)
            for s, sec in resolved.items()
            for k, v in sec.items()
        }
        accelerator.init_trackers("sslvit", config=flat)
    if resume_from is not None:
        accelerator.load_state(str(resume_from))
        _say(accelerator, f"resumed from {resume_from} at step {start.step}")

    _say(
        accelerator,
        f"run {run_dir} | {accelerator.num_processes} process(es) on {accelerator.device} | "
        f"{data.num_samples} samples, {len(loader)} batches/epoch/rank, {total_steps} steps, "
        f"global batch {global_batch}, peak lr {peak_lr:.3g}",
    )
    flops_per_image = plain.flops_per_image() if hasattr(plain, "flops_per_image") else None
    stream = _batches(loader, start.micro_batch)
    state = start
    bar = tqdm(
        total=total_steps,
        initial=state.step,
        disable=not (accelerator.is_main_process and cfg.train.progress),
        desc="pretrain",
        dynamic_ncols=True,
    )
    window_start, window_images = time.perf_counter(), 0
    epoch_now = state.micro_batch // len(loader)
    objective.train()
    while state.step < total_steps:
        lr = lr_at(state.step, peak_lr, total_steps, warmup, cfg.optim.min_lr, cfg.optim.schedule)
        set_lr(optimizer, lr)
        step_loss = torch.zeros((), device=accelerator.device)
        metrics: dict[str, float] = {}
        for micro in range(accum):
            epoch, _, batch = next(stream)
            if epoch != epoch_now:
                _end_epoch(accelerator, on_epoch_end, plain, loader, epoch_now, state.step, run_dir)
                epoch_now = epoch
            batch = _to_device(batch, accelerator.device)
            sync = accelerator.no_sync(objective) if micro < accum - 1 else nullcontext()
            with sync:
                loss, metrics = objective(batch)
                accelerator.backward(loss / accum)
            step_loss += loss.detach() / accum
            window_images += batch["image"].shape[0]
        state = replace(state, micro_batch=state.micro_batch + accum)
        finite = torch.isfinite(step_loss).float()
        if accelerator.num_processes > 1:
            finite = accelerator.reduce(finite, reduction="mean")
        if finite.item() < 1.0:
            optimizer.zero_grad(set_to_none=True)
            state = replace(state, nonfinite_skipped=state.nonfinite_skipped + 1)
            if state.nonfinite_skipped > cfg.train.max_nonfinite:
                bar.close()
                _raise_nonfinite(run_dir, state.step + 1, step_loss.item())
            _say(
                accelerator,
                f"step {state.step + 1}: non-finite loss, step skipped "
                f"({state.nonfinite_skipped}/{cfg.train.max_nonfinite})",
            )
            continue
        grad_norm = None
        if cfg.optim.clip_grad:
            grad_norm = accelerator.clip_grad_norm_(objective.parameters(), cfg.optim.clip_grad)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        state = replace(state, step=state.step + 1)
        bar.update(1)
        if state.step % cfg.train.log_every == 0 or state.step == total_steps:
            loss_mean = accelerator.reduce(step_loss, reduction="mean").item()
            elapsed = time.perf_counter() - window_start
            images_per_s = window_images * accelerator.num_processes / max(elapsed, 1e-9)
            values = {"loss": loss_mean, "lr": lr, "images_per_s": images_per_s, "epoch": epoch_now}
            values.update({k: float(v) for k, v in metrics.items()})
            if grad_norm is not None:
                values["grad_norm"] = float(grad_norm)
            utilisation = mfu(flops_per_image, images_per_s, accelerator)
            if utilisation is not None:
                values["mfu"] = utilisation
            _log(accelerator, run_dir, state.step, values)
            bar.set_postfix(loss=f"{loss_mean:.4f}", lr=f"{lr:.2e}", img_s=f"{images_per_s:.0f}")
            window_start, window_images = time.perf_counter(), 0
        if cfg.train.ckpt_every and state.step % cfg.train.ckpt_every == 0 and state.step < total_steps:
            save_training_state(accelerator, run_dir, state, cfg.train.keep_last)
        if on_step_end is not None:
            on_step_end(state.step)
    bar.close()
    if state.micro_batch % len(loader) == 0:
        _end_epoch(accelerator, on_epoch_end, plain, loader, epoch_now, state.step, run_dir)
    normalization = {"mean": list(data.mean), "std": list(data.std)}
    return _finish(accelerator, plain, run_dir, state, {**resolved, "normalization": normalization})


def _freeze_untrained(accelerator: Accelerator, objective: nn.Module) -> None:
    """Freeze (and say so) the parameters the objective's loss cannot reach, so no rank waits on their
    gradients and no optimizer decays them."""
    frozen = sorted(objective.untrained_parameters())
    for name, param in objective.named_parameters():
        if name in frozen:
            param.requires_grad_(False)
    if frozen:
        _say(accelerator, f"frozen (the {objective.name} loss cannot reach them): {', '.join(frozen)}")


def _raise_nonfinite(run_dir: Path, step: int, value: float) -> None:
    from sslvit.train_state import list_checkpoints

    found = list_checkpoints(run_dir)
    last = f"the last good checkpoint is {found[-1]}" if found else "no checkpoint was written before it"
    raise NonFiniteLossError(
        f"loss is {value} at step {step}; the run stopped ({last}). "
        "Lower optim.base_lr, set optim.clip_grad, or allow skips with train.max_nonfinite."
    )


def _end_epoch(
    accelerator: Accelerator,
    callback: Callable | None,
    objective: nn.Module,
    loader: Any,
    epoch: int,
    step: int,
    run_dir: Path,
) -> None:
    skipped = loader.stats
    if skipped and any(skipped.values()):
        _say(accelerator, f"epoch {epoch}: skipped samples {dict(skipped)}")
    values = {f"skipped/{k}": float(v) for k, v in (skipped or {}).items()}
    if callback is not None:
        values.update(
            callback(EpochContext(accelerator, objective, objective.encoder, epoch, step, run_dir)) or {}
        )
    if values:
        _log(accelerator, run_dir, step, {"epoch": epoch, **values})


def _finish(
    accelerator: Accelerator,
    objective: nn.Module,
    run_dir: Path,
    state: TrainerState,
    resolved: dict,
) -> RunResult:
    model_path, objective_path = run_dir / "model.safetensors", run_dir / "objective.safetensors"
    steps = torch.tensor([state.step], device=accelerator.device)
    per_rank = accelerator.gather(steps).tolist()
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        encoder = objective.encoder
        extra = {
            "objective": resolved["objective"],
            "normalization": resolved.pop("normalization"),
            "config": resolved,
        }
        save_model(encoder, model_path, encoder.get_config(), kind="encoder", extra=extra)
        save_model(objective, objective_path, encoder.get_config(), kind="objective", extra=extra)
        summary = {
            "steps": state.step,
            "world_size": accelerator.num_processes,
            "steps_per_rank": per_rank,
            "model": str(model_path),
            "objective": str(objective_path),
        }
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return RunResult(run_dir, model_path, objective_path, state.step, {"steps_per_rank": per_rank})
