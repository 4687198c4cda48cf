"""Optimizer parameter groups and the learning-rate schedule as a pure function of the step."""

from __future__ import annotations

import math

import torch
from torch import nn

NO_DECAY_NAMES = ("pos_embed", "cls_token", "mask_token", "dist_token", "decoder_pos_embed")


def _takes_no_decay(name: str, param: torch.Tensor, extra: set[str]) -> bool:
    base = name.split(".")[-1]
    return (
        param.ndim <= 1
        or name in extra
        or base in NO_DECAY_NAMES
        or any(part in NO_DECAY_NAMES for part in name.split("."))
    )


def param_groups(model: nn.Module, weight_decay: float, layer_decay: float | None = None) -> list[dict]:
    """Split trainable parameters into AdamW groups.

    ``model`` is an encoder (``sslvit.models.encoder.Encoder``) or an objective holding one as
    ``model.encoder``. No weight decay on norms, biases (every 1-D tensor), ``NO_DECAY_NAMES`` (mask
    tokens, fixed tables) and what the encoder's ``no_weight_decay()`` names. With ``layer_decay`` each
    group also carries
    ``lr_scale = layer_decay ** (num_layers - layer_id)`` from the encoder's ``layer_id`` (the
    objective's own parameters, such as a decoder, count as the last layer). Each group dict has
    ``params``, ``weight_decay``, ``lr_scale`` and ``names``.
    """
    encoder = getattr(model, "encoder", model)
    top = encoder.num_layers
    own = {f"encoder.{n}" if encoder is not model else n for n, _ in encoder.named_parameters()}
    extra = set()
    if hasattr(model, "no_weight_decay"):
        extra |= set(model.no_weight_decay())
    if encoder is not model and hasattr(encoder, "no_weight_decay"):
        extra |= {f"encoder.{n}" for n in encoder.no_weight_decay()}
    groups: dict[tuple[int, bool], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        no_decay = _takes_no_decay(name, param, extra)
        layer = 0
        if layer_decay is not None:
            layer = encoder.layer_id(name.removeprefix("encoder.")) if name in own else top
        key = (layer, no_decay)
        if key not in groups:
            scale = layer_decay ** (top - layer) if layer_decay is not None else 1.0
            groups[key] = {
                "params": [],
                "names": [],
                "weight_decay": 0.0 if no_decay else weight_decay,
                "lr_scale": scale,
            }
        groups[key]["params"].append(param)
        groups[key]["names"].append(name)
    return [groups[k] for k in sorted(groups)]


def lr_at(
    step: int,
    peak_lr: float,
    total_steps: int,
    warmup_steps: int,
    min_lr: float = 0.0,
    schedule: str = "cosine",
) -> float:
    """Learning rate at optimizer step ``step`` (0-based): linear warmup, then the decay schedule."""
    if warmup_steps > 0 and step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return peak_lr
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    if schedule == "linear":
        return min_lr + (peak_lr - min_lr) * (1.0 - progress)
    if schedule == "cosine":
        return min_lr + (peak_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"optim.schedule: unknown schedule {schedule!r}")


def build_optimizer(
    model: nn.Module,
    name: str,
    weight_decay: float,
    betas: tuple[float, float],
    layer_decay: float | None = None,
) -> torch.optim.Optimizer:
    """AdamW (decoupled weight decay) or Adam over :func:`param_groups`; lr is set per step later.

    The fused implementation is used (one kernel over all parameters, CPU and CUDA); parameters are
    expected on their final device before the optimizer is built, as accelerate's ``prepare`` does.
    """
    groups = param_groups(model, weight_decay, layer_decay)
    for group in groups:
        group.pop("names")
    params = [p for g in groups for p in g["params"]]
    fused = bool(params) and all(p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point for p in params)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=0.0, betas=betas, fused=fused)
    if name == "adam":
        return torch.optim.Adam(groups, lr=0.0, betas=betas, fused=fused)
    raise ValueError(f"optim.name: unknown optimizer {name!r}")


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's lr to ``lr * lr_scale``."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
