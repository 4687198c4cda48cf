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
from accelerate.utils import broadcast_object_list, set_seed
from torch import nn

from sslvit import config as config_lib
from sslvit.checkpoint import save_model
from sslvit.config import RunConfig
from sslvit.data_setup import resolve_train_data
from sslvit.evaluate.online import OnlineEval
from sslvit.evaluate.online import describe as online_describe
from sslvit.optim import build_optimizer, lr_at, set_lr
from sslvit.progress import progress
from sslvit.runtime import (
    init_trackers,
    make_accelerator,
    resolve_launch_options,
    resolve_run_dir,
    start_processes,
)
from sslvit.threads import ThreadTuner, apply_threads, fit_threads
from sslvit.throughput import mfu
from sslvit.train_state import (
    Checkpoint,
    ResumeError,
    RunRecord,
    TrainerState,
    all_finite,
    config_changes,
    describe_layout,
    find_resume_point,
    last_finite_checkpoint,
    restore_rng,
    save_training_state,
    shard_set,
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
    objective x backbone pair that cannot train (``ConfigError`` naming the key or the pairs): the
    model checks :func:`sslvit.config.load` runs, repeated for configs built in code."""
    from sslvit.config import check_values

    check_values(cfg.model, "model")
    RunConfig.check(cfg, "")


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


def _accumulate(sums: dict[str, torch.Tensor], metrics: dict[str, Any], batch: dict) -> torch.Tensor:
    """Add each metric times this rank's number of valid samples to ``sums`` (on the device, no
    host sync) and return that number: padding samples (``valid == False``) weigh nothing."""
    valid = batch.get("valid")
    n = valid.sum().float() if isinstance(valid, torch.Tensor) else torch.tensor(
        float(batch["image"].shape[0]), device=batch["image"].device
    )
    for key, value in metrics.items():
        value = torch.as_tensor(value, device=n.device).detach().float()
        sums[key] = sums[key] + value * n if key in sums else value * n
    return n


def _rank_means(accelerator: Accelerator, sums: dict[str, torch.Tensor], weight: torch.Tensor) -> dict[str, float]:
    """Each metric's mean over the valid samples of every rank (one reduce, one host sync).

    Every rank must report the same metric names (an objective's metrics are fixed by its config).
    With no valid sample anywhere the means are undefined and none is returned.
    """
    names = sorted(sums)
    packed = torch.stack([sums[k] for k in names] + [weight])  # (len(names) + 1,)
    if accelerator.num_processes > 1:
        packed = accelerator.reduce(packed, reduction="sum")
    *totals, count = packed.tolist()
    if count <= 0:
        return {}
    return {k: v / count for k, v in zip(names, totals, strict=True)}


def _shard_set(spec: Any) -> list[list[Any]] | None:
    from sslvit.data import resolve

    try:
        found = resolve(spec)
    except (OSError, ValueError):
        return None
    return shard_set(list(found.urls), list(found.counts) if found.counts is not None else None)


def _run_record(cfg: RunConfig, world_size: int, accum: int, shards: list[list[Any]] | None) -> RunRecord:
    """What a checkpoint records of its run: the resolved config with the gradient accumulation in
    effect, the world size and the shard set."""
    config = config_lib.to_dict(cfg)
    config["train"]["grad_accum"] = accum
    return RunRecord(config, world_size, shards)


def _choose_resume(cfg: RunConfig, processes: Any, wanted: RunRecord) -> Checkpoint | None:
    """The verified checkpoint ``train.resume`` names (the main process verifies, every rank reads
    the state), or None for a fresh run; what was skipped on the way is said once."""
    if not cfg.train.resume:
        return None
    box: list[Any] = [None, ""]
    if processes.is_main_process:
        try:
            found = find_resume_point(
                cfg.train.resume, Path(cfg.train.out_dir), cfg.train.name, wanted, cfg.train.steps
            )
            box = [str(found.path), found.notes] if found is not None else [None, ""]
        except ResumeError as err:
            box = [None, str(err)]
    if processes.num_processes > 1:
        broadcast_object_list(box, from_process=0)
    path, notes = box
    if path is None:
        raise ResumeError(notes)
    if processes.is_main_process:
        for note in notes:
            print(note, flush=True)
    return validate_checkpoint(Path(path), cfg.train.steps, verify_files=False)


def _record_resume(run_dir: Path, resume: Checkpoint, wanted: RunRecord, cfg: RunConfig) -> None:
    """Keep ``config.yaml`` describing the first steps; write this resume's config beside it when
    anything but ``train.resume`` changed, and one ``resume`` line in ``metrics.jsonl``."""
    import yaml

    saved = resume.record
    if not (run_dir / "config.yaml").exists():
        if saved is not None:
            (run_dir / "config.yaml").write_text(yaml.safe_dump(saved.config, sort_keys=False))
        else:
            config_lib.save(cfg, run_dir / "config.yaml")
    changed: list[str] = []
    layout = None
    if saved is not None:
        _, allowed = config_changes(saved, wanted)
        changed = [c for c in allowed if not c.startswith(("train.resume:", "train.name: ''"))]
        layout = describe_layout(saved, wanted)
    line: dict[str, Any] = {"event": "resume", "step": resume.state.step, "from": str(resume.path)}
    if changed:
        name = f"config.resume-{resume.state.step:07d}.yaml"
        config_lib.save(cfg, run_dir / name)
        line.update(config=name, changed=changed)
        print(f"resume at step {resume.state.step} changes {'; '.join(changed)} (written to {run_dir / name})")
    if layout:
        line["layout"] = layout
        print(layout, flush=True)
    _drop_metrics_after(run_dir / "metrics.jsonl", resume.state.step)
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write(json.dumps(line) + "\n")


def _drop_metrics_after(path: Path, step: int) -> None:
    """Remove from ``path`` the step lines an interrupted attempt logged after checkpoint ``step``:
    the resumed run logs those steps again (identically), so each step appears once. Says so."""
    if not path.exists():
        return
    kept, dropped = [], 0
    for raw in path.read_text().splitlines():
        try:
            entry = json.loads(raw)
        except json.JSONDecodeError:
            dropped += 1  # a line cut short by the kill
            continue
        if "event" not in entry and isinstance(entry.get("step"), int) and entry["step"] > step:
            dropped += 1
            continue
        kept.append(raw)
    if dropped:
        path.write_text("".join(line + "\n" for line in kept))
        print(f"metrics.jsonl: dropped {dropped} line(s) the interrupted run logged after step {step}; "
              "they are logged again as the run repeats those steps", flush=True)


def _load_resume(accelerator: Accelerator, resume: Checkpoint, seed: int) -> None:
    """Load weights, optimizer and RNG states from ``resume``; a failure names the checkpoint."""
    try:
        accelerator.load_state(str(resume.path))
    except Exception as err:  # the checkpoint was verified; anything failing here is reported as is
        raise ResumeError(f"cannot resume: loading {resume.path} failed ({type(err).__name__}: {err})") from err
    step = resume.state.step

    def seed_of(rank: int) -> int:
        return (seed * 1_000_003 + step * 7919 + rank) % 2**63

    note = restore_rng(resume.path, accelerator.process_index, resume.state.world_size, seed_of)
    if note:
        print(note, flush=True)
    _say(accelerator, f"resumed from {resume.path} at step {step}")


def train(
    cfg: RunConfig,
    encoder: nn.Module | None = None,
    on_epoch_end: Callable[[EpochContext], dict[str, float]] | None = None,
    on_step_end: Callable[[int], None] | None = None,
    desc: str = "pretrain",
) -> RunResult:
    """Run ``cfg`` to ``train.steps`` optimizer steps and return where the outputs are.

    ``encoder`` replaces the one ``cfg.model`` would build (fine-tuning a pretrained encoder).
    ``on_epoch_end`` runs on every rank after each epoch; the metrics it returns are logged.
    ``on_step_end(step)`` runs after each optimizer step (and its checkpoint, if one is due).
    ``desc`` labels the progress bar. ``train.eval_every`` > 0 adds online kNN evaluation
    (:mod:`sslvit.evaluate.online`).
    """
    from sslvit.objectives import build_objective

    if encoder is None:
        check_model_config(cfg)
    processes = start_processes()
    plan = fit_threads(cfg)
    threads = apply_threads(plan)  # before any torch work: intra-op + loader workers fit the cores
    if processes.is_main_process:
        print(threads, flush=True)
    options = resolve_launch_options(cfg)
    accum = options.grad_accum
    data = resolve_train_data(cfg, processes)
    shards = _shard_set(data.shards)
    resume = _choose_resume(cfg, processes, _run_record(cfg, processes.num_processes, accum, shards))
    if resume is not None and not cfg.train.name:
        cfg = replace(cfg, train=replace(cfg.train, name=resume.path.parent.parent.name))
    record = _run_record(cfg, processes.num_processes, accum, shards)
    run_dir = resolve_run_dir(cfg, processes, resuming=resume is not None)
    accelerator = make_accelerator(cfg, run_dir, options)
    start = (
        replace(resume.state, world_size=accelerator.num_processes)
        if resume is not None
        else TrainerState(step=0, micro_batch=0, world_size=accelerator.num_processes)
    )

    set_seed(cfg.train.seed)
    encoder = encoder if encoder is not None else build_encoder(cfg)
    objective = build_objective(cfg.objective, encoder, data.mean, data.std)
    loader = data.make_loader(masker=getattr(objective, "masker", None))
    _freeze_untrained(accelerator, objective)
    online = OnlineEval.from_config(cfg, accelerator, data.mean, data.std)

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

    if start.step > total_steps:
        raise ResumeError(
            f"cannot resume: {resume.path} is at step {start.step}, beyond this run's {total_steps} steps"  # type: ignore[union-attr]
        )
    resolved = config_lib.to_dict(cfg)
    if accelerator.is_main_process:
        if resume is None:  # train.overwrite is a one-time choice: a rerun of config.yaml is refused again
            config_lib.save(replace(cfg, train=replace(cfg.train, overwrite=False)), run_dir / "config.yaml")
            if (run_dir / "metrics.jsonl").exists():
                (run_dir / "metrics.jsonl").unlink()
        else:
            _record_resume(run_dir, resume, record, cfg)
    if accelerator.is_main_process and accelerator.log_with:
        flat = {
            f"{s}.{k}": (str(v) if isinstance(v, (list, tuple)) or v is None else v)
            for s, sec in resolved.items()
            for k, v in sec.items()
        }
        init_trackers(accelerator, cfg, run_dir.name, flat)
    if resume is not None:
        _load_resume(accelerator, resume, cfg.train.seed)

    if warmup >= total_steps:
        source = (f"optim.warmup_steps={cfg.optim.warmup_steps}" if cfg.optim.warmup_steps is not None
                  else f"optim.warmup_epochs={cfg.optim.warmup_epochs:g} x {steps_per_epoch} steps per epoch")
        _say(accelerator, f"warning: the warmup ({warmup} steps, {source}) is as long as the run ({total_steps} "
                          f"steps): the learning rate never reaches its peak {peak_lr:.3g}")
    _say(
        accelerator,
        f"run {run_dir} | {accelerator.num_processes} process(es) on {accelerator.device} | "
        f"{data.num_samples} samples, {len(loader)} batches/epoch/rank, {total_steps} steps, "
        f"global batch {global_batch}, peak lr {peak_lr:.3g} | {options.describe()}"
        + (f" | {online_describe(online)}" if online is not None else ""),
    )
    flops_per_image = plain.flops_per_image() if hasattr(plain, "flops_per_image") else None
    stream = _batches(loader, start.micro_batch)
    state = start
    skips = NonFiniteSkips(optimizer, accelerator, start.nonfinite_skipped, cfg.train.max_nonfinite)
    bar = progress(total=total_steps, initial=state.step, enabled=cfg.train.progress, desc=desc, unit="step")
    window_start, window_images = time.perf_counter(), 0
    epoch_now = state.micro_batch // len(loader)
    tuner = ThreadTuner(plan)  # first reading; loader workers count from the reading after they start
    objective.train()
    while state.step < total_steps:
        lr = lr_at(state.step, peak_lr, total_steps, warmup, cfg.optim.min_lr, cfg.optim.schedule)
        set_lr(optimizer, lr)
        step_loss = torch.zeros((), device=accelerator.device)
        sums: dict[str, torch.Tensor] = {}
        weight = torch.zeros((), device=accelerator.device)
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
            weight = weight + _accumulate(sums, {**metrics, "loss": loss}, batch)
            window_images += batch["image"].shape[0]
        state = replace(state, micro_batch=state.micro_batch + accum)
        finite = torch.isfinite(step_loss).float()
        if accelerator.num_processes > 1:
            finite = accelerator.reduce(finite, reduction="mean")
        bad = (finite < 1.0).float()  # () on the device: 1 skips this update on every rank
        grad_norm = None
        if skips.on_device:
            skips.record(bad, state.step + 1, step_loss)
            if cfg.optim.clip_grad:
                grad_norm = accelerator.clip_grad_norm_(objective.parameters(), cfg.optim.clip_grad)
            optimizer.step()  # the fused kernel skips the whole update (and its step count) when bad is 1
        elif bad.item() > 0:
            skips.record(bad, state.step + 1, step_loss)
        else:
            if cfg.optim.clip_grad:
                grad_norm = accelerator.clip_grad_norm_(objective.parameters(), cfg.optim.clip_grad)
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        state = replace(state, step=state.step + 1)  # a skipped update still counts as a step
        bar.update(1)
        due_ckpt = bool(cfg.train.ckpt_every) and state.step % cfg.train.ckpt_every == 0 and state.step < total_steps
        if not skips.on_device or due_ckpt or state.step % cfg.train.log_every == 0 or state.step == total_steps:
            state = skips.check(state, accelerator, [objective], optimizer, bar, run_dir)
        if state.step % cfg.train.log_every == 0 or state.step == total_steps:
            means = _rank_means(accelerator, sums, weight)
            loss_mean = means.pop("loss", float("nan"))
            elapsed = time.perf_counter() - window_start
            images_per_s = window_images * accelerator.num_processes / max(elapsed, 1e-9)
            values = {"loss": loss_mean, "lr": lr, "images_per_s": images_per_s, "epoch": epoch_now}
            values.update(means)
            if grad_norm is not None:
                values["grad_norm"] = float(grad_norm)
            utilisation = mfu(flops_per_image, images_per_s, accelerator)
            if utilisation is not None:
                values["mfu"] = utilisation
            _log(accelerator, run_dir, state.step, values)
            bar.set_postfix(loss=f"{loss_mean:.4f}", lr=f"{lr:.2e}", img_s=f"{images_per_s:.0f}")
            window_start, window_images = time.perf_counter(), 0
        if online is not None and online.due(state.step, total_steps):
            eval_start = time.perf_counter()
            _log(accelerator, run_dir, state.step, online(plain.encoder))
            window_start += time.perf_counter() - eval_start  # evaluation time is not training throughput
        if due_ckpt:
            if not all_finite(accelerator, [objective], optimizer):
                bar.close()
                _raise_nonfinite_weights(run_dir, state.step)
            save_training_state(accelerator, run_dir, state, cfg.train.keep_last, record)
        if on_step_end is not None:
            on_step_end(state.step)
        retuned = tuner.update()
        if retuned is not None:
            _say(accelerator, retuned)
    bar.close()
    if not all_finite(accelerator, [objective], optimizer):
        _raise_nonfinite_weights(run_dir, state.step, what="the final model")
    if state.micro_batch % len(loader) == 0:
        _end_epoch(accelerator, on_epoch_end, plain, loader, epoch_now, state.step, run_dir)
    normalization = {"mean": list(data.mean), "std": list(data.std)}
    return _finish(accelerator, plain, run_dir, state, {**resolved, "normalization": normalization})


class NonFiniteSkips:
    """Non-finite losses, skipped without a host sync per step where the optimizer allows it.

    With a fused torch optimizer (and no fp16 grad scaler), the skip flag stays on the device: it
    becomes the optimizer's ``found_inf``, which makes the fused kernel leave parameters, moments and
    step counts untouched, exactly as if the update had not run. The host reads the count only at
    log and checkpoint steps and at the end (:meth:`check`). Otherwise each step reads the flag.
    A skipped update still counts as a step (as a grad scaler's skipped steps do).
    """

    def __init__(self, optimizer: Any, accelerator: Accelerator, skipped: int, allowed: int) -> None:
        self.torch_optimizer = getattr(optimizer, "optimizer", optimizer)
        fused = all(group.get("fused") for group in self.torch_optimizer.param_groups)
        self.on_device = fused and getattr(accelerator, "scaler", None) is None
        device = accelerator.device
        self.count = torch.tensor(float(skipped), device=device)
        self.first = torch.tensor(-1.0, device=device)  # first skipped step since the last check
        self.first_loss = torch.tensor(0.0, device=device)
        self.allowed = allowed
        self.reported = skipped

    def record(self, bad: torch.Tensor, step: int, loss: torch.Tensor) -> None:
        """Note step ``step``'s flag (``bad``: () float, 1 = skip) and loss, on the device."""
        if self.on_device:
            self.torch_optimizer.found_inf = bad
        new = (bad > 0) & (self.first < 0)
        self.first = torch.where(new, torch.full_like(self.first, step), self.first)
        self.first_loss = torch.where(new, loss.detach().float(), self.first_loss)
        self.count = self.count + bad

    def check(self, state: TrainerState, accelerator: Accelerator, modules: list, optimizer: Any,
              bar: Any, run_dir: Path) -> TrainerState:
        """Read the count (one host sync); say what was skipped, or stop past ``train.max_nonfinite``
        or when the weights are no longer finite."""
        count = int(self.count.item())
        if count == self.reported:
            return state
        first, loss = int(self.first.item()), float(self.first_loss.item())
        new, self.reported = count - self.reported, count
        self.first = torch.full_like(self.first, -1.0)
        state = replace(state, nonfinite_skipped=count)
        weights_finite = all_finite(accelerator, modules, optimizer)
        if count > self.allowed or not weights_finite:
            bar.close()
            _raise_nonfinite(run_dir, first, loss, weights_finite)
        where = f"step {first}" if new == 1 else f"steps {first}..{state.step}: {new}"
        _say(accelerator, f"{where} non-finite loss, update skipped ({count}/{self.allowed} allowed)")
        return state


def _freeze_untrained(accelerator: Accelerator, objective: nn.Module) -> None:
    """Freeze (and say so) the parameters the objective's loss cannot reach, so no rank waits on their
    gradients and no optimizer decays them."""
    frozen = sorted(objective.untrained_parameters())
    for name, param in objective.named_parameters():
        if name in frozen:
            param.requires_grad_(False)
    if frozen:
        _say(accelerator, f"frozen (the {objective.name} loss cannot reach them): {', '.join(frozen)}")


def _last_good(run_dir: Path) -> str:
    found, skipped = last_finite_checkpoint(run_dir)
    note = f" ({'; '.join(skipped)})" if skipped else ""
    return (f"the last good checkpoint is {found}" if found else "no checkpoint with finite weights was written before it") + note


def _raise_nonfinite(run_dir: Path, step: int, value: float, weights_finite: bool = True) -> None:
    if not weights_finite:
        raise NonFiniteLossError(
            f"loss is {value} at step {step} and the parameters or optimizer state are non-finite (an earlier "
            f"update made them so; skipping steps cannot recover); the run stopped ({_last_good(run_dir)}). "
            "Lower optim.base_lr or set optim.clip_grad."
        )
    raise NonFiniteLossError(
        f"loss is {value} at step {step}; the run stopped ({_last_good(run_dir)}). "
        "Lower optim.base_lr, set optim.clip_grad, or allow skips with train.max_nonfinite."
    )


def _raise_nonfinite_weights(run_dir: Path, step: int, what: str = "") -> None:
    what = what or f"checkpoint step {step}"
    raise NonFiniteLossError(
        f"the parameters or optimizer state are non-finite after step {step} (its loss was finite, its update "
        f"was not); {what} was not written and the run stopped ({_last_good(run_dir)}). "
        "Lower optim.base_lr or set optim.clip_grad."
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
