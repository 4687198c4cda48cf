"""Self-describing safetensors checkpoints, and loading foreign ViT weights.

An sslvit checkpoint is a safetensors file whose metadata carries the model config as JSON
(``sslvit.model``), what the file holds (``sslvit.kind``: ``encoder`` or ``objective``) and,
when written by a run, the run config (``sslvit.config``). ``"format": "pt"`` is always set, so
huggingface_hub's and transformers' loaders accept the file. :func:`load_checkpoint` needs nothing
but the path. Plain ViT state dicts that follow the common parameter names (timm / MAE / DeiT) load
too, from safetensors or from ``.pth`` files read with ``torch.load(weights_only=True)``; nothing is
ever unpickled.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

PREFIXES = ("module.", "_orig_mod.", "encoder.", "backbone.", "model.")
META_MODEL = "sslvit.model"
META_KIND = "sslvit.kind"
META_OBJECTIVE = "sslvit.objective"
META_CONFIG = "sslvit.config"


class CheckpointError(ValueError):
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
    save_file(tensors, str(tmp), metadata=metadata)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)
    return path


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes: how metrics files and Hub repos name the checkpoint they belong to."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


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


def strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop wrapper prefixes (``module.``, ``encoder.``, ...); keep only encoder keys of an objective."""
    if any(k.startswith("encoder.") for k in state):
        state = {k[len("encoder.") :]: v for k, v in state.items() if k.startswith("encoder.")}
    out = {}
    for key, value in state.items():
        changed = True
        while changed:
            changed = False
            for prefix in PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix) :], True
        out[key] = value
    return out


def infer_model_config(state: dict[str, torch.Tensor]) -> dict:
    """Guess the ViT constructor arguments of a plain state dict with the common parameter names.

    Heads are assumed 64 wide, as in every standard ViT variant.
    """
    state = strip_prefixes(state)
    if "patch_embed.proj.weight" not in state:
        raise CheckpointError("not a ViT encoder: no 'patch_embed.proj.weight' in the state dict")
    dim, in_chans, patch, _ = state["patch_embed.proj.weight"].shape
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    class_token = "cls_token" in state
    prefix = 1 if class_token else 0
    config: dict[str, Any] = {
        "patch_size": int(patch),
        "in_chans": int(in_chans),
        "embed_dim": int(dim),
        "depth": depth,
        "num_heads": max(1, int(dim) // 64),
        "mlp_ratio": state["blocks.0.mlp.fc1.weight"].shape[0] / dim,
        "qkv_bias": "blocks.0.attn.qkv.bias" in state,
        "class_token": class_token,
        "global_pool": "token" if class_token else "avg",
        "num_classes": int(state["head.weight"].shape[0]) if "head.weight" in state else 0,
    }
    if "pos_embed" in state:
        grid = math.isqrt(state["pos_embed"].shape[1] - prefix)
        config["img_size"] = grid * int(patch)
    else:
        config["pos_embed"] = "none"
    return config


def load_encoder_weights(model: nn.Module, state: dict[str, torch.Tensor], ignore_head: bool = False) -> None:
    """Load encoder weights into ``model``, adapting them where that is safe.

    Wrapper prefixes are stripped and position embeddings of another grid size are resampled to the
    model's grid. With ``ignore_head`` the checkpoint's ``head.*`` is dropped and the model keeps
    its own. Any other missing or unexpected key or shape mismatch raises :class:`CheckpointError`
    listing each one.
    """
    from sslvit.models.pos_embed import resample_state_pos_embed

    state = strip_prefixes(state)
    own = model.state_dict()
    if ignore_head:
        state = {k: v for k, v in state.items() if not k.startswith("head.")}
        state.update({k: v for k, v in own.items() if k.startswith("head.")})
    tables = [k for k in ("pos_embed", "pos_embed_row", "pos_embed_col") if k in state and k in own]
    if any(state[k].shape != own[k].shape and state[k].shape[-1] == own[k].shape[-1] for k in tables):
        grid = tuple(model.patch_embed.grid_size)
        state = resample_state_pos_embed(state, grid, model.num_prefix_tokens)
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state))
        if state[k].shape != own[k].shape
    ]
    if missing or unexpected or mismatched:
        lines = []
        if missing:
            lines.append("missing keys: " + ", ".join(missing))
        if unexpected:
            lines.append("unexpected keys: " + ", ".join(unexpected))
        if mismatched:
            lines.append("shape mismatches: " + "; ".join(mismatched))
        raise CheckpointError("checkpoint does not fit the model:\n  " + "\n  ".join(lines))
    model.load_state_dict(state, strict=True)


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The decoded ``sslvit.*`` metadata of a safetensors checkpoint (empty for foreign files)."""
    path = Path(path)
    if path.suffix != ".safetensors":
        return {}
    with safe_open(str(path), framework="pt", device="cpu") as f:
        raw = f.metadata() or {}
    decoded: dict[str, Any] = {}
    for key, value in raw.items():
        if key.startswith("sslvit."):
            try:
                decoded[key[len("sslvit.") :]] = json.loads(value)
            except json.JSONDecodeError:
                decoded[key[len("sslvit.") :]] = value
    return decoded


def load_checkpoint(path: str | Path, model_name: str | None = None, **overrides: Any) -> nn.Module:
    """Rebuild the encoder stored at ``path`` and return it in eval mode.

    Reads an sslvit encoder or objective checkpoint (config from its metadata), or a plain ViT state
    dict: then the architecture is ``model_name`` (a registered variant) or inferred from the
    tensor shapes. ``overrides`` change constructor arguments (``img_size=384`` resamples the
    position embeddings; ``num_classes=10`` gives a fresh head).
    """
    from sslvit.models import build_model, create_model

    state, raw_meta = read_state_dict(path)
    model_json = raw_meta.get(META_MODEL)
    if model_json is not None:
        config = {**json.loads(model_json), **overrides}
        model = build_model(config)
    elif model_name is not None:
        model = create_model(model_name, **overrides)
    else:
        model = build_model({**infer_model_config(state), **overrides})
    encoder_state = strip_prefixes(state)
    head_changed = "head.weight" in encoder_state and (
        encoder_state["head.weight"].shape != model.state_dict().get("head.weight", torch.empty(0)).shape
    )
    load_encoder_weights(model, encoder_state, ignore_head=head_changed or "num_classes" in overrides)
    return model.eval()
