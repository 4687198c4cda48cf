"""The sslvit checkpoint file: safetensors with the model config in its metadata.

An sslvit checkpoint is a safetensors file whose metadata carries the model config as JSON
(``sslvit.model``), what the file holds (``sslvit.kind``: ``encoder`` or ``objective``) and,
when written by a run, the run config (``sslvit.config``). ``"format": "pt"`` is always set, so
huggingface_hub's and transformers' loaders accept the file. ``.pth`` / ``.bin`` files are read
with ``torch.load(weights_only=True)``; nothing is ever unpickled.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from sslvit.errors import InputError

META_MODEL = "sslvit.model"
META_KIND = "sslvit.kind"
META_OBJECTIVE = "sslvit.objective"
META_CONFIG = "sslvit.config"


class CheckpointError(InputError):
    """A checkpoint cannot be read or does not fit the model; the message says what is wrong."""


def save_model(
    module: nn.Module | dict[str, torch.Tensor],
    path: str | Path,
    model_config: dict,
    kind: str = "encoder",
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``module``'s state dict to ``path`` as safetensors with the model config in its metadata.

    ``extra`` values are stored as JSON under ``sslvit.<key>``. The file is written under a temporary
    name and renamed, so a crash never leaves a truncated checkpoint under the final name.
    """
    path = Path(path)
    state = module.state_dict() if isinstance(module, nn.Module) else module
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    metadata = {"format": "pt", META_KIND: kind, META_MODEL: json.dumps(model_config)}
    for key, value in (extra or {}).items():
        metadata[f"sslvit.{key}"] = json.dumps(value)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        save_file(tensors, str(tmp), metadata=metadata)
    except BaseException:  # a full disk, an interrupt: no partial file is left behind
        tmp.unlink(missing_ok=True)
        raise
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)
    return path


def read_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a state dict and its metadata from a ``.safetensors`` file or a ``.pth``/``.pt``/``.bin`` file.

    ``.pth`` files are read with ``weights_only=True``; a nested ``{"model": ...}`` or
    ``{"state_dict": ...}`` wrapper (as in MAE / DeiT releases) is unwrapped.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                metadata = f.metadata() or {}
                state = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as err:  # safetensors raises its own error types for bad headers
            raise CheckpointError(f"{path}: not a readable safetensors file ({err})") from err
        return state, metadata
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"{path}: cannot be read as a weights-only torch file ({err})") from err
    for key in ("model", "state_dict", "module"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: does not hold a state dict of tensors")
    return obj, {}


def decode_metadata(raw: dict[str, str]) -> dict[str, Any]:
    """The ``sslvit.*`` entries of raw safetensors metadata, JSON-decoded, without the prefix."""
    decoded: dict[str, Any] = {}
    for key, value in raw.items():
        if key.startswith("sslvit."):
            try:
                decoded[key[len("sslvit.") :]] = json.loads(value)
            except json.JSONDecodeError:
                decoded[key[len("sslvit.") :]] = value
    return decoded


def read_file_metadata(path: str | Path) -> dict[str, Any]:
    """The decoded ``sslvit.*`` metadata of the weights file ``path`` (empty for a file that is not
    safetensors); a file whose header cannot be read raises :class:`CheckpointError`."""
    path = Path(path)
    if path.suffix != ".safetensors":
        return {}
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            raw = f.metadata() or {}
    except Exception as err:  # safetensors raises its own error types for bad headers
        raise CheckpointError(f"{path}: not a readable safetensors file ({err})") from err
    return decode_metadata(raw)


def load_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """``model.load_state_dict(state, strict=True)`` with every missing / unexpected / misshaped key
    named in a :class:`CheckpointError` that names ``source``."""
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    mismatched = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state))
        if state[k].shape != own[k].shape
    ]
    lines = [
        f"{label}: {joiner.join(items)}"
        for label, items, joiner in (
            ("missing keys", missing, ", "),
            ("unexpected keys", unexpected, ", "),
            ("shape mismatches", mismatched, "; "),
        )
        if items
    ]
    if lines:
        raise CheckpointError(f"{source} does not fit the model:\n  " + "\n  ".join(lines))
    model.load_state_dict(state, strict=True)
