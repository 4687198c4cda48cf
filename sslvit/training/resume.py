"""Resuming a run: which checkpoint, whether the asked-for run may continue it, and what it records.

A resume refuses a run config that would make the continued run differ from an uninterrupted one
(:func:`config_changes`); a change of world size or loader workers that keeps the global batch
is allowed (the stream position counts global micro-batches of ``batch_size x world_size``).
``train.resume=latest`` takes the newest verified checkpoint (:func:`find_resume_point`), saying
what it skipped; the run directory keeps ``config.yaml`` describing the first steps and logs one
``resume`` line (:func:`record_resume`).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list

from sslvit import config as config_lib
from sslvit.data import resolve
from sslvit.files import METRICS_FILE, RUN_CONFIG_FILE
from sslvit.progress import say
from sslvit.training.checkpoints import (
    RNG_FILE,
    STATE_FILE,
    Checkpoint,
    ResumeError,
    RunRecord,
    list_checkpoints,
    shard_set,
    validate_checkpoint,
)
from sslvit.training.config import RunConfig

# Config keys whose change leaves the continued run identical to an uninterrupted one.
# data.batch_size is judged with the world size (the global micro-batch), data.train_shards by the
# shard set it resolves to; every other key must be equal.
# Keys the config gained after runs were written, with the value that does what those runs did: a
# checkpoint without the key resumes when the new run keeps that value.
ADDED_KEYS: dict[str, object] = {
    "data.jpeg_decode": "cpu",
    "model.fc_norm": None,
    "model.head_type": None,
    "model.layer_scale_init": None,
    "model.weight_init": None,
    "optim.warmup_lr": 0.0,
    "optim.warmup_prefix": True,
    "optim.milestones": [],
    "optim.gamma": 0.1,
    "optim.no_decay": None,
    "optim.momentum": 0.9,
    "objective.rand_augment": "",
    "objective.reprob": 0.0,
}

NEUTRAL_KEYS = frozenset(
    {
        "data.num_workers",
        "data.in_memory",
        "data.in_memory_mb",
        "data.val_shards",
        "train.log_every",
        "train.ckpt_every",
        "train.keep_last",
        "train.max_nonfinite",
        "train.out_dir",
        "train.name",
        "train.resume",
        "train.trackers",
        "train.project",
        "train.progress",
        "train.overwrite",
        "train.eval_every",
        "train.eval_probe",
        "train.threads",
        "train.preempt_grace_s",
        "train.dist_timeout_s",
    }
)
JUDGED_KEYS = frozenset({"data.batch_size", "data.train_shards"})


def _flat(config: dict[str, Any]) -> dict[str, Any]:
    return {f"{s}.{k}": v for s, sec in config.items() if isinstance(sec, dict) for k, v in sec.items()}


def config_changes(saved: RunRecord, wanted: RunRecord) -> tuple[list[str], list[str]]:
    """(refused, allowed): the differences between the run that wrote a checkpoint and the run
    asked for, each as ``"key: old -> new"``.

    Refused: anything that would make the continued run differ from an uninterrupted one (the
    global micro-batch ``batch_size x world_size``, gradient accumulation and so the global batch,
    the model, objective and optimizer sections, the seed, the step count, the shard set, the
    data transforms). Allowed: the loader workers, the world size with the global micro-batch
    unchanged, and bookkeeping (logging, checkpoint cadence, names, trackers).
    """
    old, new = _flat(saved.config), _flat(wanted.config)
    refused, allowed = [], []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, ADDED_KEYS.get(key, "<absent>")), new.get(key, "<absent>")
        if a == b:
            continue
        line = f"{key}: {a!r} -> {b!r}"
        (allowed if key in NEUTRAL_KEYS or key in JUDGED_KEYS else refused).append(line)
    micro_old = old.get("data.batch_size", 0) * saved.world_size
    micro_new = new.get("data.batch_size", 0) * wanted.world_size
    accum_old, accum_new = old.get("train.grad_accum", 1), new.get("train.grad_accum", 1)
    if micro_old != micro_new:
        batch_line = [c for c in allowed if c.startswith("data.batch_size:")]
        allowed = [c for c in allowed if c not in batch_line]
        refused.extend(batch_line)
        refused.append(
            f"global micro-batch (data.batch_size x processes): {old.get('data.batch_size')} x {saved.world_size} "
            f"= {micro_old} -> {new.get('data.batch_size')} x {wanted.world_size} = {micro_new} "
            f"(global batch {micro_old * accum_old} -> {micro_new * accum_new})"
        )
    elif saved.world_size != wanted.world_size:
        allowed.append(f"processes: {saved.world_size} -> {wanted.world_size}")
    if saved.shards is not None and wanted.shards is not None and saved.shards != wanted.shards:
        gone = [s[0] for s in saved.shards if s not in wanted.shards]
        added = [s[0] for s in wanted.shards if s not in saved.shards]
        refused.append(f"shard set (data.train_shards): without {gone[:5]}, with {added[:5]}")
    return refused, allowed


def describe_layout(saved: RunRecord, wanted: RunRecord) -> str | None:
    """One line when the processes or loader workers change, else None."""
    def layout(r: RunRecord) -> tuple[int, int, int]:
        d = r.config.get("data", {})
        return r.world_size, d.get("num_workers", 0), d.get("batch_size", 0) * r.world_size

    (p0, w0, _), (p1, w1, g1) = layout(saved), layout(wanted)
    if (p0, w0) == (p1, w1):
        return None
    accum = wanted.config.get("train", {}).get("grad_accum", 1)

    def count(n: int, word: str) -> str:
        return f"{n} {word}" + ("" if n == 1 else ("es" if word.endswith("s") else "s"))

    return (
        f"resuming {count(p0, 'process')} x {count(w0, 'worker')} as {count(p1, 'process')} x "
        f"{count(w1, 'worker')}; global batch {g1 * accum} unchanged"
    )


# choosing -----------------------------------------------------------------------------------


def _newest_valid(run_dir: Path, total_steps: int | None, notes: list[str]) -> Checkpoint | None:
    for path in reversed(list_checkpoints(run_dir)):
        try:
            found = validate_checkpoint(path, total_steps)
        except ResumeError as err:
            notes.append(f"{err}; trying the previous checkpoint")
            continue
        found.notes = notes
        return found
    return None


def _refuse_changes(found: Checkpoint, wanted: RunRecord) -> None:
    if found.record is None:
        return
    refused, _ = config_changes(found.record, wanted)
    if refused:
        raise ResumeError(
            f"cannot resume from {found.path}: these settings differ from the run that wrote it, and the "
            "continued run would not be the one an uninterrupted run gives:\n  " + "\n  ".join(refused)
            + "\nresume with the checkpoint's settings (its run's config.yaml), or start a new run"
        )


def find_resume_point(
    resume: str,
    out_dir: Path,
    name: str,
    wanted: RunRecord,
    total_steps: int | None = None,
) -> Checkpoint | None:
    """Map ``train.resume`` ("", "latest" or a checkpoint directory) to a verified checkpoint.

    A path must verify and fit ``wanted``. "latest" with a ``name`` looks only in ``out_dir/name``
    and takes its newest checkpoint that verifies (falling back past broken ones, each noted in
    ``Checkpoint.notes``). "latest" without a name takes, among the runs under ``out_dir``, the one
    with the newest checkpoint whose recorded settings fit ``wanted``; when none fits it refuses and
    lists every run with what differs. Raises :class:`ResumeError`.
    """
    if not resume:
        return None
    if resume != "latest":
        found = validate_checkpoint(Path(resume), total_steps)
        _refuse_changes(found, wanted)
        return found
    others = sorted(p.name for p in out_dir.iterdir() if p.is_dir() and list_checkpoints(p)) if out_dir.is_dir() else []
    if name:
        run_dir = out_dir / name
        notes: list[str] = []
        found = _newest_valid(run_dir, total_steps, notes)
        if found is None:
            why = "; ".join(notes) if notes else "it has no complete checkpoint"
            elsewhere = f"; runs under {out_dir} with checkpoints: {', '.join(others)}" if others else ""
            raise ResumeError(f"cannot resume run {run_dir} (train.resume=latest): {why}{elsewhere}")
        _refuse_changes(found, wanted)
        return found
    if not others:
        raise ResumeError(f"cannot resume: no complete checkpoint under {out_dir}")
    fitting: list[Checkpoint] = []
    reasons: list[str] = []
    for run in others:
        notes = []
        found = _newest_valid(out_dir / run, total_steps, notes)
        if found is None:
            reasons.append(f"{run}: no checkpoint verifies ({'; '.join(notes)})")
            continue
        try:
            _refuse_changes(found, wanted)
        except ResumeError:
            refused, _ = config_changes(found.record, wanted)  # type: ignore[arg-type]
            reasons.append(f"{run}: {'; '.join(refused[:3])}")
            continue
        fitting.append(found)
    if not fitting:
        raise ResumeError(
            f"cannot resume (train.resume=latest without train.name): no run under {out_dir} fits this config:\n  "
            + "\n  ".join(reasons)
            + "\nname the run with train.name or pass a checkpoint directory as train.resume"
        )
    best = max(fitting, key=lambda c: (c.path / STATE_FILE).stat().st_mtime)
    skipped = [c.path.parent.parent.name for c in fitting if c is not best]
    best.notes.append(
        f"train.resume=latest without train.name: resuming run {best.path.parent.parent.name}, the newest of "
        f"the runs under {out_dir} whose settings fit"
        + (f" (also fitting: {', '.join(skipped)})" if skipped else "")
        + (f" (not fitting: {'; '.join(reasons)})" if reasons else "")
    )
    return best


# random states ------------------------------------------------------------------------------


def restore_rng(path: Path, rank: int, saved_world_size: int, seed_of: Callable[[int], int]) -> str | None:
    """Set this rank's Python, NumPy and torch (and CUDA) RNG states from ``path``'s
    ``random_states_<rank>.pkl``, raising :class:`ResumeError` naming the file when it cannot be
    applied. A rank the checkpoint has no state for (the world size grew) is seeded with
    ``seed_of(rank)``; the returned line says so (None otherwise)."""
    from accelerate.utils import load

    file = path / RNG_FILE.format(rank=rank)
    if rank >= saved_world_size:
        seed = seed_of(rank)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)
        return f"rank {rank} has no RNG state in {path} (written by {saved_world_size} processes): seeded with {seed}"
    try:
        states = load(str(file), map_location="cpu")
        random.setstate(states["random_state"])
        np.random.set_state(states["numpy_random_seed"])
        torch.set_rng_state(states["torch_manual_seed"])
        if torch.cuda.is_available() and "torch_cuda_manual_seed" in states:
            torch.cuda.set_rng_state_all(states["torch_cuda_manual_seed"])
    except Exception as err:  # unpickling, missing keys and wrong state types all mean the same here
        raise ResumeError(f"cannot resume: {file} does not hold usable RNG states ({type(err).__name__}: {err})") from err
    return None


def shard_set_of(spec: Any) -> list[list[Any]] | None:
    try:
        found = resolve(spec)
    except (OSError, ValueError):
        return None
    return shard_set(list(found.urls), list(found.counts) if found.counts is not None else None)


def run_record(cfg: RunConfig, world_size: int, accum: int, shards: list[list[Any]] | None) -> RunRecord:
    """What a checkpoint records of its run: the resolved config with the gradient accumulation in
    effect, the world size and the shard set."""
    config = config_lib.to_dict(cfg)
    config["train"]["grad_accum"] = accum
    return RunRecord(config, world_size, shards)


def choose_resume(cfg: RunConfig, processes: Any, wanted: RunRecord) -> Checkpoint | None:
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


def record_resume(run_dir: Path, resume: Checkpoint, wanted: RunRecord, cfg: RunConfig) -> None:
    """Keep ``config.yaml`` describing the first steps; write this resume's config beside it when
    anything but ``train.resume`` changed, and one ``resume`` line in ``metrics.jsonl``."""
    saved = resume.record
    if not (run_dir / RUN_CONFIG_FILE).exists():
        if saved is not None:
            (run_dir / RUN_CONFIG_FILE).write_text(yaml.safe_dump(saved.config, sort_keys=False))
        else:
            config_lib.save(cfg, run_dir / RUN_CONFIG_FILE)
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
    _drop_metrics_after(run_dir / METRICS_FILE, resume.state.step)
    with open(run_dir / METRICS_FILE, "a") as f:
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


def load_resume(accelerator: Accelerator, resume: Checkpoint, seed: int) -> None:
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
    say(f"resumed from {resume.path} at step {step}")
