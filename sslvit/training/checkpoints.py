"""Resumable training-state checkpoints: ``run_dir/checkpoints/step_XXXXXXX/``.

Each directory holds accelerate's state (model weights in safetensors, optimizer, gradient scaler
and per-rank RNG states, all read back with ``weights_only=True``) and ``trainer_state.json``: the
step, the data-stream position (global micro-batches consumed), the world size, the run's resolved
config and shard set, and the sha256 of every other file of the directory. It is written under a
temporary name and renamed once every rank has finished writing, so a directory with a final name
is always complete; old checkpoints are renamed away before they are deleted, so a crash while
pruning never leaves a half-deleted directory under a final name.

Reading one back verifies every file against its recorded sha256 and every value of the state
file (:func:`validate_checkpoint`); choosing which one to resume from is :mod:`sslvit.training.resume`'s.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from torch import nn

from sslvit.errors import InputError, StorageError
from sslvit.files import sha256_file
from sslvit.progress import say

STATE_FILE = "trainer_state.json"
PREFIX = "step_"
RNG_FILE = "random_states_{rank}.pkl"
STATE_KEYS = ("step", "micro_batch", "world_size", "nonfinite_skipped")
RECORD_KEYS = ("config", "shards", "files")

class ResumeError(InputError):
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


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's part of ``tensor``: its local shard for an FSDP2 (DTensor) parameter or state."""
    return tensor.to_local() if callable(getattr(tensor, "to_local", None)) else tensor


def all_finite(accelerator: Accelerator, modules: list[nn.Module], optimizer: torch.optim.Optimizer) -> bool:
    """Whether every parameter and every optimizer-state tensor is finite on every rank (one host
    sync; called before a checkpoint is written and when a loss is non-finite). Under FSDP each rank
    checks its own shards."""
    flags = [torch.isfinite(_local(p.detach())).all() for m in modules for p in m.parameters()]
    for per_param in optimizer.state.values():
        flags.extend(
            torch.isfinite(_local(v)).all()
            for v in per_param.values()
            if isinstance(v, torch.Tensor) and v.is_floating_point()
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
    When the disk fills up on any rank, the partial directory is removed and, if ``keep_last`` would
    prune older checkpoints anyway (and one stays), they are pruned first and the write is tried
    once more; otherwise :class:`~sslvit.errors.StorageError` says where, how much and what the
    last good checkpoint is.
    """
    final = checkpoint_dir(run_dir, state.step)
    tmp = final.with_name(f".tmp-{final.name}")
    for attempt in (1, 2):
        if accelerator.is_main_process:
            for stale in final.parent.glob(".tmp-*") if final.parent.is_dir() else []:
                shutil.rmtree(stale)
            for stale in final.parent.glob(".del-*") if final.parent.is_dir() else []:
                shutil.rmtree(stale)
        accelerator.wait_for_everyone()
        failure = attempt_on_every_rank(accelerator, lambda: _write_state(accelerator, tmp, state, record))
        if failure is None:
            break
        pruned = _make_room(accelerator, run_dir, tmp, keep_last, failure, attempt)
        if not pruned:
            raise _storage_error(run_dir, state.step, tmp, failure)
    if accelerator.is_main_process:
        if final.exists():
            _remove(final)
        tmp.rename(final)
        _fsync(final.parent)
        if keep_last > 0:
            for old in list_checkpoints(run_dir)[:-keep_last]:
                _remove(old)
    accelerator.wait_for_everyone()
    return final


def _write_state(accelerator: Accelerator, tmp: Path, state: TrainerState, record: RunRecord | None) -> None:
    """accelerate's files into ``tmp`` (every rank), then the main process's ``trainer_state.json``."""
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


def attempt_on_every_rank(accelerator: Accelerator, write: Any) -> BaseException | None:
    """Run ``write``; the first rank's error that looks like a write failure, shared by every rank
    (so no rank waits on one that gave up), or None."""
    failure: BaseException | None = None
    try:
        write()
    except (OSError, RuntimeError) as err:  # torch reports ENOSPC as "RuntimeError: ... unexpected pos"
        failure = err
    failed = torch.tensor([int(failure is not None)], device=accelerator.device)
    if accelerator.num_processes > 1:
        failed = accelerator.reduce(failed, reduction="max")
    if failed.item() and failure is None:
        failure = OSError("another process could not write its part (its own error says why)")
    return failure


def tree_bytes(path: Path) -> int:
    """Bytes of the files under ``path`` (0 when it does not exist)."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


def is_disk_full(err: BaseException, free: int, needed: int) -> bool:
    """Whether a failed write ran out of space: its errno says so, or fewer bytes are free than it needed."""
    return (isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT)) or free < needed \
        or "No space left" in str(err)


def _needed(run_dir: Path, tmp: Path) -> int:
    """About what a checkpoint takes: the newest written one, else what the failed one got to."""
    done = list_checkpoints(run_dir)
    return tree_bytes(done[-1]) if done else tree_bytes(tmp)


def _make_room(accelerator: Accelerator, run_dir: Path, tmp: Path, keep_last: int, failure: BaseException,
               attempt: int) -> bool:
    """After a failed write: remove the partial ``tmp``; on the first disk-full failure, prune the
    checkpoints ``keep_last`` would drop after this one (keeping at least one) and say so. Returns
    whether a retry may help; a failure that is not a full disk is raised as it was."""
    needed = _needed(run_dir, tmp)
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp, ignore_errors=True)
    free = shutil.disk_usage(run_dir).free
    if not is_disk_full(failure, free, needed):
        raise failure
    done = list_checkpoints(run_dir)
    drop = done[: len(done) - keep_last + 1] if keep_last > 1 and len(done) >= keep_last else []
    if attempt > 1 or not drop:
        return False
    if accelerator.is_main_process:
        for old in drop:
            _remove(old)
        say(f"no space left for the next checkpoint in {run_dir / 'checkpoints'} ({size_text(free)} free, about "
            f"{size_text(needed)} needed): pruned {', '.join(d.name for d in drop)} first (train.keep_last="
            f"{keep_last}) and writing it again")
    accelerator.wait_for_everyone()
    return True


def size_text(n: float) -> str:
    """``n`` bytes in words: ``512 B``, ``3.4 MB``."""
    unit = "B"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            break
        n /= 1024
    return f"{n:.0f} B" if unit == "B" else f"{n:.1f} {unit}"


def _storage_error(run_dir: Path, step: int, tmp: Path, failure: BaseException) -> StorageError:
    free, needed = shutil.disk_usage(run_dir).free, _needed(run_dir, tmp)
    return StorageError(f"no space left to write the checkpoint of step {step} in {run_dir / 'checkpoints'}: "
                        f"about {size_text(needed)} needed, {size_text(free)} free ({failure}); the partial "
                        f"{tmp.name} was removed; {last_good_words(run_dir)}")


def last_good_words(run_dir: Path) -> str:
    """Where a stopped run may resume from, in words: its newest checkpoint, or that there is none."""
    done = list_checkpoints(run_dir)
    return f"the last good checkpoint is {done[-1]}" if done else "the run wrote no checkpoint before"


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
    if "/" in name:  # a part of FSDP's sharded weights or optimizer state, read by torch.distributed.checkpoint
        return
    try:
        if name.endswith(".safetensors"):
            with safe_open(str(file), framework="pt", device="cpu") as f:
                for key in f.keys():
                    f.get_slice(key)
        else:
            load(str(file), map_location="cpu")
    except Exception as err:  # torch / safetensors raise their own error types for bad files
        raise ResumeError(f"cannot resume: {file} is unreadable ({type(err).__name__}: {err})") from err


def _is_model_file(name: str) -> bool:
    """A file of accelerate's model weights: ``model*.safetensors``, or under FSDP
    ``pytorch_model_fsdp*.bin`` (full or per-rank state dict) / ``pytorch_model_fsdp_N/`` (sharded)."""
    top = name.split("/", 1)[0]
    return (top.startswith("model") and top.endswith(".safetensors")) or top.startswith("pytorch_model_fsdp")


def _is_optimizer_file(name: str) -> bool:
    """A file of accelerate's optimizer state: ``optimizer*.bin``, or under FSDP ``optimizer_N/`` (sharded)."""
    top, _, rest = name.partition("/")
    return top.startswith("optimizer") and (top.endswith(".bin") or bool(rest))


def _check_files(path: Path, state: TrainerState, files: dict[str, str] | None) -> None:
    present = sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file() and p.name != STATE_FILE)
    if not any(_is_model_file(n) for n in present):
        raise ResumeError(f"cannot resume: {path} holds no model weights (model.safetensors missing, "
                          "nor FSDP's pytorch_model_fsdp*)")
    if not any(_is_optimizer_file(n) for n in present):
        raise ResumeError(f"cannot resume: {path} holds no optimizer state (optimizer.bin missing, "
                          "nor FSDP's optimizer_*/)")
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


def _sharded_tensors(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a torch.distributed.checkpoint folder (FSDP's sharded ``pytorch_model_fsdp_N/``),
    read whole in this process without a process group; nested names joined with dots."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.format_utils import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    state: dict[str, Any] = {}
    _load_state_dict(state, storage_reader=FileSystemReader(str(folder)), planner=_EmptyStateDictLoadPlanner(),
                     no_dist=True)
    flat: dict[str, torch.Tensor] = {}

    def visit(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                visit(f"{prefix}.{key}" if prefix else str(key), inner)
        elif isinstance(value, torch.Tensor):
            flat[prefix] = value

    visit("", state)
    return flat


def model_tensors(path: Path) -> dict[str, torch.Tensor] | None:
    """The model weights of checkpoint ``path`` by name, whatever form accelerate wrote them in
    (``model*.safetensors``; under FSDP ``pytorch_model_fsdp*.bin`` or the sharded folders
    ``pytorch_model_fsdp_N/``); None when it holds none. Unreadable files raise."""
    from safetensors.torch import load_file

    found: dict[str, torch.Tensor] = {}
    parts = sorted(path.glob("model*.safetensors")) + sorted(path.glob("pytorch_model_fsdp*"))
    for part in parts:
        if part.is_dir():
            found.update({f"{part.name}/{k}": v for k, v in _sharded_tensors(part).items()})
        elif part.suffix == ".safetensors":
            found.update({f"{part.name}/{k}": v for k, v in load_file(str(part)).items()})
        elif part.suffix == ".bin":
            loaded = torch.load(str(part), map_location="cpu", weights_only=True)
            found.update({f"{part.name}/{k}": v for k, v in loaded.items() if isinstance(v, torch.Tensor)})
    return found if parts else None


def last_finite_checkpoint(run_dir: Path) -> tuple[Path | None, list[str]]:
    """The newest checkpoint of ``run_dir`` whose weights are all finite (in any of the forms
    :func:`model_tensors` reads, FSDP's sharded one included), and a note for each newer one passed
    over (unreadable, without weights, or holding NaN / inf)."""
    skipped: list[str] = []
    for path in reversed(list_checkpoints(run_dir)):
        try:
            tensors = model_tensors(path)
        except Exception as err:  # safetensors / torch.distributed.checkpoint raise their own error types
            skipped.append(f"{path.name} is unreadable: {err}")
            continue
        if tensors is None:
            skipped.append(f"{path.name} holds no model weights")
            continue
        bad = [k for k, v in tensors.items() if v.is_floating_point() and not v.isfinite().all()]
        if bad:
            skipped.append(f"{path.name} has non-finite weights in {len(bad)} tensors")
        else:
            return path, skipped
    return None, skipped
