"""Resumable training-state checkpoints: ``run_dir/checkpoints/step_XXXXXXX/``.

Each directory holds accelerate's state (model weights in safetensors, optimizer, gradient scaler
and per-rank RNG states, all read back with ``weights_only=True``) and ``trainer_state.json`` (the
step, the data-stream position, the world size). It is written under a temporary name and renamed
once every rank has finished writing, so a directory with a final name is always complete.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from accelerate import Accelerator

STATE_FILE = "trainer_state.json"
PREFIX = "step_"


class ResumeError(RuntimeError):
    """A checkpoint to resume from is missing, partial or belongs to another setup."""


@dataclass
class TrainerState:
    """Where the run is: optimizer steps done and micro-batches consumed from the stream."""

    step: int
    micro_batch: int
    world_size: int
    nonfinite_skipped: int = 0


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"{PREFIX}{step:07d}"


def save_training_state(accelerator: Accelerator, run_dir: Path, state: TrainerState, keep_last: int) -> Path:
    """Write the full training state for ``state.step`` and prune to the newest ``keep_last``."""
    final = checkpoint_dir(run_dir, state.step)
    tmp = final.with_name(f".tmp-{final.name}")
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / STATE_FILE).write_text(json.dumps(asdict(state), indent=2))
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        if keep_last > 0:
            for old in list_checkpoints(run_dir)[:-keep_last]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoint directories of a run, oldest first (temporary ones are never listed)."""
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX))


def validate_checkpoint(path: Path, world_size: int) -> TrainerState:
    """Read ``path``'s trainer state, refusing a missing, partial or mismatched checkpoint with the reason."""
    if not path.exists():
        raise ResumeError(f"cannot resume: checkpoint {path} does not exist")
    if path.name.startswith(".tmp-"):
        raise ResumeError(f"cannot resume: {path} is a partial checkpoint (its writer did not finish)")
    state_file = path / STATE_FILE
    if not state_file.is_file():
        raise ResumeError(f"cannot resume: {path} has no {STATE_FILE} (partial or not a training checkpoint)")
    try:
        state = TrainerState(**json.loads(state_file.read_text()))
    except (ValueError, TypeError) as err:
        raise ResumeError(f"cannot resume: {state_file} is unreadable ({err})") from err
    weights = list(path.glob("model*.safetensors"))
    if not weights:
        raise ResumeError(f"cannot resume: {path} holds no model weights (model.safetensors missing)")
    if not list(path.glob("optimizer*.bin")):
        raise ResumeError(f"cannot resume: {path} holds no optimizer state")
    if state.world_size != world_size:
        raise ResumeError(
            f"cannot resume: {path} was written by {state.world_size} processes, this run has {world_size}; "
            "the data stream position depends on the number of processes"
        )
    for rank in range(world_size):
        if not (path / f"random_states_{rank}.pkl").is_file():
            raise ResumeError(f"cannot resume: {path} lacks the RNG state of rank {rank}")
    return state


def find_resume_point(resume: str, run_dir: Path, out_dir: Path) -> Path | None:
    """Map ``train.resume`` ("", "latest" or a path) to a checkpoint directory.

    "latest" takes the newest complete checkpoint of ``run_dir`` when it has one, else of the most
    recently changed run under ``out_dir``.
    """
    if not resume:
        return None
    if resume != "latest":
        return Path(resume)
    found = list_checkpoints(run_dir)
    if found:
        return found[-1]
    runs = [p for p in out_dir.iterdir() if p.is_dir() and list_checkpoints(p)] if out_dir.is_dir() else []
    if not runs:
        raise ResumeError(f"cannot resume: no complete checkpoint under {out_dir}")
    newest = max(runs, key=lambda p: list_checkpoints(p)[-1].stat().st_mtime)
    return list_checkpoints(newest)[-1]
