"""Resumable training-state checkpoints: ``run_dir/checkpoints/step_XXXXXXX/``.

Each directory holds accelerate's state (model weights in safetensors, optimizer, gradient scaler
and per-rank RNG states, all read back with ``weights_only=True``) and ``trainer_state.json``: the
step, the data-stream position (global micro-batches consumed), the world size, the run's resolved
config and shard set, and the sha256 of every other file of the directory. It is written under a
temporary name and renamed once every rank has finished writing, so a directory with a final name
is always complete; old checkpoints are renamed away before they are deleted, so a crash while
pruning never leaves a half-deleted directory under a final name.

Resuming verifies every file against its recorded sha256 and every value of the state file, and
refuses a run config that would make the continued run differ from an uninterrupted one
(:func:`config_changes`); a change of world size or loader workers that keeps the global batch
is allowed (the stream position counts global micro-batches of ``batch_size x world_size``).
"""

from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from torch import nn

from sslvit.checkpoint import sha256_file

STATE_FILE = "trainer_state.json"
PREFIX = "step_"
RNG_FILE = "random_states_{rank}.pkl"
STATE_KEYS = ("step", "micro_batch", "world_size", "nonfinite_skipped")
RECORD_KEYS = ("config", "shards", "files")

# Config keys whose change leaves the continued run identical to an uninterrupted one.
# data.batch_size is judged with the world size (the global micro-batch), data.train_shards by the
# shard set it resolves to; every other key must be equal.
NEUTRAL_KEYS = frozenset(
    {
        "data.num_workers",
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
    }
)
JUDGED_KEYS = frozenset({"data.batch_size", "data.train_shards"})


class ResumeError(RuntimeError):
    """A checkpoint to resume from is missing, partial, corrupt or belongs to another setup."""


@dataclass
class TrainerState:
    """Where the run is: optimizer steps done and global micro-batches consumed from the stream
    (a global micro-batch is ``batch_size`` samples on each of ``world_size`` ranks)."""

    step: int
    micro_batch: int
    world_size: int
    nonfinite_skipped: int = 0


@dataclass
class RunRecord:
    """What a run is made of, as far as resuming it exactly is concerned."""

    config: dict[str, Any]
    world_size: int
    shards: list[list[Any]] | None = None  # [[shard file name, sample count or None], ...]


@dataclass
class Checkpoint:
    """A verified checkpoint directory: its trainer state and the record of the run that wrote it
    (``record`` is None for checkpoints written without one)."""

    path: Path
    state: TrainerState
    record: RunRecord | None = None
    notes: list[str] = field(default_factory=list)  # what choosing it skipped, said by the caller


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"{PREFIX}{step:07d}"


def shard_set(urls: list[str], counts: list[int] | None) -> list[list[Any]]:
    """The shard set as recorded in a checkpoint: file names (not directories, so moved data still
    matches) with their sample counts."""
    counts = counts if counts is not None else [None] * len(urls)
    return [[url.rsplit("/", 1)[-1], count] for url, count in zip(urls, counts, strict=True)]


# writing ------------------------------------------------------------------------------------


def all_finite(accelerator: Accelerator, modules: list[nn.Module], optimizer: torch.optim.Optimizer) -> bool:
    """Whether every parameter and every optimizer-state tensor is finite on every rank (one host
    sync; called before a checkpoint is written and when a loss is non-finite)."""
    flags = [torch.isfinite(p.detach()).all() for m in modules for p in m.parameters()]
    for per_param in optimizer.state.values():
        flags.extend(
            torch.isfinite(v).all() for v in per_param.values() if isinstance(v, torch.Tensor) and v.is_floating_point()
        )
    ok = torch.stack([f.to(accelerator.device) for f in flags]).all().float() if flags else torch.ones(())
    ok = ok.to(accelerator.device)
    if accelerator.num_processes > 1:
        ok = accelerator.reduce(ok, reduction="mean")
    return bool(ok.item() == 1.0)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    """Rename ``path`` out of the checkpoint names, then delete it."""
    gone = path.with_name(f".del-{path.name}")
    if gone.exists():
        shutil.rmtree(gone)
    path.rename(gone)
    shutil.rmtree(gone)


def save_training_state(
    accelerator: Accelerator,
    run_dir: Path,
    state: TrainerState,
    keep_last: int,
    record: RunRecord | None = None,
) -> Path:
    """Write the full training state for ``state.step`` and prune to the newest ``keep_last``.

    The main process records the sha256 of every file accelerate wrote in ``trainer_state.json``
    together with ``record``; files are flushed to disk before the directory gets its final name.
    """
    final = checkpoint_dir(run_dir, state.step)
    tmp = final.with_name(f".tmp-{final.name}")
    if accelerator.is_main_process:
        for stale in final.parent.glob(".tmp-*") if final.parent.is_dir() else []:
            shutil.rmtree(stale)
        for stale in final.parent.glob(".del-*") if final.parent.is_dir() else []:
            shutil.rmtree(stale)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        files = {p.relative_to(tmp).as_posix(): p for p in sorted(tmp.rglob("*")) if p.is_file()}
        payload: dict[str, Any] = asdict(state)
        if record is not None:
            payload.update(config=record.config, shards=record.shards)
        payload["files"] = {name: sha256_file(p) for name, p in files.items()}
        (tmp / STATE_FILE).write_text(json.dumps(payload, indent=2))
        for p in [*files.values(), tmp / STATE_FILE, tmp]:
            _fsync(p)
        if final.exists():
            _remove(final)
        tmp.rename(final)
        _fsync(final.parent)
        if keep_last > 0:
            for old in list_checkpoints(run_dir)[:-keep_last]:
                _remove(old)
    accelerator.wait_for_everyone()
    return final


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoint directories of a run with a final name, oldest first (temporary ones and ones
    being deleted are never listed)."""
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX))


# reading ------------------------------------------------------------------------------------


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _read_state(path: Path, total_steps: int | None) -> tuple[TrainerState, RunRecord | None, dict | None]:
    state_file = path / STATE_FILE
    try:
        raw = json.loads(state_file.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ResumeError(f"cannot resume: {state_file} is unreadable ({err})") from err
    if not isinstance(raw, dict):
        raise ResumeError(f"cannot resume: {state_file} holds {type(raw).__name__}, not an object")
    unknown = sorted(set(raw) - set(STATE_KEYS) - set(RECORD_KEYS))
    if unknown:
        raise ResumeError(f"cannot resume: {state_file} has unknown keys {unknown}")
    values = {"nonfinite_skipped": 0, **{k: raw[k] for k in STATE_KEYS if k in raw}}
    for key in STATE_KEYS:
        if key not in values:
            raise ResumeError(f"cannot resume: {state_file} lacks {key!r}")
        value = values[key]
        least = 1 if key == "world_size" else 0
        if not _is_int(value) or value < least:
            raise ResumeError(f"cannot resume: {state_file}: {key} is {value!r}, not an integer >= {least}")
    state = TrainerState(**values)
    if total_steps is not None and state.step > total_steps:
        raise ResumeError(
            f"cannot resume: {state_file}: step {state.step} is beyond this run's {total_steps} steps (train.steps)"
        )
    record = None
    if "config" in raw:
        config = raw["config"]
        shards = raw.get("shards")
        if not isinstance(config, dict) or not isinstance(config.get("train"), dict):
            raise ResumeError(f"cannot resume: {state_file}: 'config' is not a run config")
        if shards is not None and not isinstance(shards, list):
            raise ResumeError(f"cannot resume: {state_file}: 'shards' is not a list")
        record = RunRecord(config, state.world_size, shards)
        accum = config["train"].get("grad_accum", 1)
        expected = state.step * accum if _is_int(accum) else None  # a skipped update still counts as a step
        if state.micro_batch != expected:
            raise ResumeError(
                f"cannot resume: {state_file}: micro_batch {state.micro_batch} does not match step {state.step} "
                f"x grad_accum {accum} = {expected}"
            )
    files = raw.get("files")
    if files is not None and not (isinstance(files, dict) and all(isinstance(v, str) for v in files.values())):
        raise ResumeError(f"cannot resume: {state_file}: 'files' is not a mapping of file name to sha256")
    return state, record, files


def _check_structure(path: Path, name: str) -> None:
    """Open one checkpoint file the way resuming will (used when no sha256 was recorded)."""
    from accelerate.utils import load
    from safetensors import safe_open

    file = path / name
    try:
        if name.endswith(".safetensors"):
            with safe_open(str(file), framework="pt", device="cpu") as f:
                for key in f.keys():
                    f.get_slice(key)
        else:
            load(str(file), map_location="cpu")
    except Exception as err:  # torch / safetensors raise their own error types for bad files
        raise ResumeError(f"cannot resume: {file} is unreadable ({type(err).__name__}: {err})") from err


def _check_files(path: Path, state: TrainerState, files: dict[str, str] | None) -> None:
    present = sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file() and p.name != STATE_FILE)
    if not any(n.startswith("model") and n.endswith(".safetensors") for n in present):
        raise ResumeError(f"cannot resume: {path} holds no model weights (model.safetensors missing)")
    if not any(n.startswith("optimizer") and n.endswith(".bin") for n in present):
        raise ResumeError(f"cannot resume: {path} holds no optimizer state (optimizer.bin missing)")
    for rank in range(state.world_size):
        if RNG_FILE.format(rank=rank) not in present:
            raise ResumeError(f"cannot resume: {path} lacks the RNG state of rank {rank} ({RNG_FILE.format(rank=rank)})")
    if files is None:
        for name in present:
            _check_structure(path, name)
        return
    for name, digest in files.items():
        file = path / name
        if not file.is_file():
            raise ResumeError(f"cannot resume: {file} is missing (recorded in {STATE_FILE} when written)")
        if sha256_file(file) != digest:
            raise ResumeError(
                f"cannot resume: {file} is not the file that was written ({file.stat().st_size} bytes, "
                f"sha256 differs from the one in {STATE_FILE}): truncated or overwritten"
            )
    unrecorded = [n for n in present if n not in files]
    if unrecorded:
        raise ResumeError(f"cannot resume: {path} holds files written after it was complete: {unrecorded}")


def validate_checkpoint(path: Path, total_steps: int | None = None, verify_files: bool = True) -> Checkpoint:
    """Read and verify ``path``: its state file's values and types, and (``verify_files``) every
    file against the sha256 recorded when it was written. Raises :class:`ResumeError` naming the
    file and what is wrong."""
    path = Path(path)
    if not path.exists():
        raise ResumeError(f"cannot resume: checkpoint {path} does not exist")
    if path.name.startswith((".tmp-", ".del-")):
        raise ResumeError(f"cannot resume: {path} is a partial checkpoint (its writer did not finish)")
    if not (path / STATE_FILE).is_file():
        raise ResumeError(f"cannot resume: {path} has no {STATE_FILE} (partial or not a training checkpoint)")
    state, record, files = _read_state(path, total_steps)
    if verify_files:
        _check_files(path, state, files)
    return Checkpoint(path, state, record)


# comparing runs -----------------------------------------------------------------------------


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
        a, b = old.get(key, "<absent>"), new.get(key, "<absent>")
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


def last_finite_checkpoint(run_dir: Path) -> tuple[Path | None, list[str]]:
    """The newest checkpoint of ``run_dir`` whose weights are all finite, and a note for each newer
    one passed over (unreadable or holding NaN / inf)."""
    from safetensors.torch import load_file

    skipped: list[str] = []
    for path in reversed(list_checkpoints(run_dir)):
        files = sorted(path.glob("model*.safetensors"))
        try:
            bad = [k for f in files for k, v in load_file(str(f)).items() if v.is_floating_point() and not v.isfinite().all()]
        except Exception as err:  # safetensors raises its own error types for bad files
            skipped.append(f"{path.name} is unreadable: {err}")
            continue
        if not files:
            skipped.append(f"{path.name} holds no model weights")
        elif bad:
            skipped.append(f"{path.name} has non-finite weights in {len(bad)} tensors")
        else:
            return path, skipped
    return None, skipped
