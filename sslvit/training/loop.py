"""The training loop: one flat function counted in optimizer steps, under Hugging Face accelerate.

The loop never knows which objective it runs: ``loss, metrics = objective(batch)``. The learning
rate is a pure function of the step (:class:`sslvit.training.run.Schedule`). Batches come from the
streaming loader, which is kept out of ``accelerator.prepare`` (every rank reads its own shards) and
moved to the device here. Setup and the final files are :mod:`sslvit.training.run`'s; the
non-finite policy is :mod:`sslvit.training.nonfinite`'s; online evaluation and other per-step work
arrive as hooks from the caller.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from sslvit.errors import Preempted
from sslvit.progress import progress, say
from sslvit.training.checkpoints import TrainerState, all_finite, checkpoint_dir
from sslvit.training.config import RunConfig
from sslvit.training.nonfinite import NonFiniteSkips, nonfinite_flag, raise_nonfinite_weights
from sslvit.training.optim import set_lr
from sslvit.training.preempt import PreemptionWatch
from sslvit.training.run import (
    EpochContext,
    Run,
    RunResult,
    StepHook,
    finish_run,
    prepare_run,
    save_checkpoint,
)
from sslvit.training.step_log import StepLog, write_metrics
from sslvit.training.threads import ThreadTuner

EpochHook = Callable[[EpochContext], "dict[str, float] | None"]


def batches(loader: Any, start_micro: int) -> Iterator[tuple[int, int, dict]]:
    """Yield ``(epoch, index_in_epoch, batch)`` forever, starting at global micro-batch ``start_micro``.

    Creating and advancing loader iterators runs under a forked CPU RNG, so the global RNG (used by
    the model: drop path, MixUp) does not depend on where in the stream a run was resumed.
    """
    epoch, index = divmod(start_micro, len(loader))
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


def to_device(batch: dict, device: torch.device) -> dict:
    """``batch`` with its tensors on ``device`` (non-blocking copies)."""
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def end_epoch(run: Run, callback: EpochHook | None, epoch: int, step: int) -> None:
    """Say and log what epoch ``epoch`` skipped, and log what the epoch-end ``callback`` returns."""
    skipped = run.loader.stats
    if skipped and any(skipped.values()):
        say(f"epoch {epoch}: skipped samples {dict(skipped)}")
    values = {f"skipped/{k}": float(v) for k, v in (skipped or {}).items()}
    if callback is not None:
        context = EpochContext(run.accelerator, run.plain, run.plain.encoder, epoch, step, run.run_dir)
        values.update(callback(context) or {})
    if values:
        write_metrics(run.accelerator, run.run_dir, step, {"epoch": epoch, **values})


def stop_preempted(run: Run, state: TrainerState, bar: Any, preempt: PreemptionWatch, saved: bool) -> None:
    """Write the checkpoint of ``state`` (unless this step's was just ``saved``), shut the loader
    down and raise :class:`~sslvit.errors.Preempted` saying where to resume from."""
    if not saved:
        save_checkpoint(run, state, bar)
    bar.close()
    run.loader.close()
    waited = time.monotonic() - (preempt.since or time.monotonic())
    raise Preempted(f"stopped on {preempt.signal} after step {state.step} of {run.schedule.total_steps} "
                    f"({waited:.1f} s after the signal): checkpoint {checkpoint_dir(run.run_dir, state.step)}; "
                    f"continue with train.name={run.run_dir.name} train.resume=latest")


def train(
    cfg: RunConfig,
    encoder: nn.Module | None = None,
    on_epoch_end: EpochHook | None = None,
    on_step_end: Callable[[int], None] | None = None,
    desc: str = "pretrain",
    hooks: Sequence[StepHook] = (),
) -> RunResult:
    """Run ``cfg`` to its last optimizer step and return where the outputs are.

    ``encoder`` replaces the one ``cfg.model`` would build (fine-tuning a pretrained encoder).
    ``on_epoch_end`` runs on every rank after each epoch; the metrics it returns are logged.
    ``on_step_end(step)`` runs after each optimizer step (and its checkpoint, if one is due).
    ``hooks`` run after each step and log what they return (online evaluation:
    :class:`sslvit.evaluate.online.OnlineEvalHook`). ``desc`` labels the progress bar.
    """
    with PreemptionWatch(cfg.train.preempt_grace_s) as preempt:
        run = prepare_run(cfg, encoder, hooks)
        return finish_run(run, run_steps(run, on_epoch_end, on_step_end, desc, preempt))


def run_steps(run: Run, on_epoch_end: EpochHook | None, on_step_end: Callable[[int], None] | None,
              desc: str, preempt: PreemptionWatch | None = None) -> TrainerState:
    """The step loop, from ``run.start`` to the last step; returns the final state. A preemption
    (``preempt``) ends it after a step with that step's checkpoint (:func:`stop_preempted`); after
    the last step the run simply finishes."""
    cfg, accelerator, objective, optimizer = run.cfg, run.accelerator, run.objective, run.optimizer
    total, accum, state = run.schedule.total_steps, run.accum, run.start
    stream = batches(run.loader, state.micro_batch)
    skips = NonFiniteSkips(optimizer, accelerator, state.nonfinite_skipped, cfg.train.max_nonfinite)
    bar = progress(total=total, initial=state.step, enabled=cfg.train.progress, desc=desc, unit="step")
    log = StepLog(accelerator, run.run_dir, cfg.train.log_every, run.flops_per_image, bar)
    epoch_now = state.micro_batch // len(run.loader)
    tuner = ThreadTuner(run.threads)  # first reading; loader workers count from the reading after they start
    objective.train()
    while state.step < total:
        lr = run.schedule.lr(state.step)
        set_lr(optimizer, lr)
        step_loss = torch.zeros((), device=accelerator.device)
        log.new_step()
        for micro in range(accum):
            epoch, _, batch = next(stream)
            if epoch != epoch_now:
                end_epoch(run, on_epoch_end, epoch_now, state.step)
                epoch_now = epoch
            batch = to_device(batch, accelerator.device)
            with accelerator.no_sync(objective) if micro < accum - 1 else nullcontext():
                loss, metrics = objective(batch)
                accelerator.backward(loss / accum)
            step_loss += loss.detach() / accum
            log.add(metrics, loss, batch)
        state = replace(state, micro_batch=state.micro_batch + accum)
        grad_norm = skips.step(nonfinite_flag(step_loss, accelerator), state.step + 1, step_loss,
                               objective.parameters(), cfg.optim.clip_grad, accelerator, optimizer)
        state = replace(state, step=state.step + 1)  # a skipped update still counts as a step
        run.plain.after_optimizer_step(state.step, total)  # e.g. an EMA teacher, once per update
        bar.update(1)
        every = cfg.train.ckpt_every
        due_ckpt = bool(every) and state.step % every == 0 and state.step < total
        if not skips.on_device or due_ckpt or log.due(state.step, total):
            state = skips.check(state, accelerator, [objective], optimizer, bar, run.run_dir)
        if log.due(state.step, total):
            log.write(state.step, lr, epoch_now, grad_norm)
        log.run_hooks(run.hooks, state.step, total, run.plain.encoder)
        if due_ckpt:
            save_checkpoint(run, state, bar)
        if on_step_end is not None:
            on_step_end(state.step)
        if preempt is not None and preempt.requested(accelerator) and state.step < total:
            stop_preempted(run, state, bar, preempt, saved=due_ckpt)
        retuned = tuner.update()
        if retuned is not None:
            say(retuned)
    bar.close()
    if not all_finite(accelerator, [objective], optimizer):
        raise_nonfinite_weights(run.run_dir, state.step, what="the final model")
    if state.micro_batch % len(run.loader) == 0:
        end_epoch(run, on_epoch_end, epoch_now, state.step)
    return state
