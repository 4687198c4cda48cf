"""Optimizer parameter groups and the learning-rate schedule as a pure function of the step."""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence

import torch
from torch import nn

NO_DECAY_NAMES = ("pos_embed", "cls_token", "mask_token", "dist_token", "decoder_pos_embed")


def _takes_no_decay(name: str, param: torch.Tensor, extra: set[str], names: Sequence[str]) -> bool:
    return param.ndim <= 1 or name in extra or any(part in names for part in name.split("."))


def param_groups(
    model: nn.Module,
    weight_decay: float,
    layer_decay: float | None = None,
    no_decay: Sequence[str] | None = None,
) -> list[dict]:
    """Split trainable parameters into AdamW groups.

    ``model`` is an encoder (``sslvit.models.encoder.Encoder``) or an objective holding one as
    ``model.encoder``. No weight decay on norms, biases (every 1-D tensor) and, with ``no_decay``
    None, on ``NO_DECAY_NAMES`` (position tables, class / mask tokens) and what the model's and the
    encoder's ``no_weight_decay()`` name. A ``no_decay`` sequence replaces those: only parameters
    with one of its names as a dotted part of theirs are exempt besides the 1-D ones (``()`` is MAE's
    pretraining rule, timm's ``add_weight_decay``, which decays ``cls_token`` and ``mask_token``).
    With ``layer_decay`` each
    group also carries
    ``lr_scale = layer_decay ** (num_layers - layer_id)`` from the encoder's ``layer_id`` (the
    objective's own parameters, such as a decoder, count as the last layer). Each group dict has
    ``params``, ``weight_decay``, ``lr_scale`` and ``names``.
    """
    encoder = getattr(model, "encoder", model)
    top = encoder.num_layers
    own = {f"encoder.{n}" if encoder is not model else n for n, _ in encoder.named_parameters()}
    extra, names = set(), tuple(no_decay) if no_decay is not None else NO_DECAY_NAMES
    if no_decay is None and hasattr(model, "no_weight_decay"):
        extra |= set(model.no_weight_decay())
    if no_decay is None and encoder is not model and hasattr(encoder, "no_weight_decay"):
        extra |= {f"encoder.{n}" for n in encoder.no_weight_decay()}
    groups: dict[tuple[int, bool], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        exempt = _takes_no_decay(name, param, extra, names)
        layer = 0
        if layer_decay is not None:
            layer = encoder.layer_id(name.removeprefix("encoder.")) if name in own else top
        key = (layer, exempt)
        if key not in groups:
            scale = layer_decay ** (top - layer) if layer_decay is not None else 1.0
            groups[key] = {
                "params": [],
                "names": [],
                "weight_decay": 0.0 if exempt else weight_decay,
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
    warmup_lr: float = 0.0,
    milestones: Sequence[int] = (),
    gamma: float = 0.1,
    warmup_prefix: bool = True,
) -> float:
    """Learning rate at optimizer step ``step`` (0-based): linear warmup, then the decay schedule.

    The warmup rises linearly from ``warmup_lr`` at step 0 to ``peak_lr`` at ``warmup_steps``, as
    MAE's ``adjust_learning_rate`` (``lr * epoch / warmup_epochs`` at fractional epochs, 0 at step 0)
    and timm's schedulers with ``warmup_lr_init`` (SimMIM). After it, ``cosine`` (half a cycle from
    the peak to ``min_lr`` over the remaining steps, MAE's), ``linear``, ``constant``, or
    ``multistep`` (the peak times ``gamma`` for each of ``milestones`` (steps, counted from step 0)
    already reached, as timm's ``MultiStepLRScheduler``; SimMIM's ViT recipe). With
    ``warmup_prefix`` False, ``cosine`` / ``linear`` run over all ``total_steps`` from step 0 and the
    warmup replaces their start (timm's schedulers without ``warmup_prefix``; SimMIM's fine-tune).
    """
    if warmup_steps > 0 and step < warmup_steps:
        return warmup_lr + (peak_lr - warmup_lr) * step / warmup_steps
    if schedule == "constant":
        return peak_lr
    if schedule == "multistep":
        return peak_lr * gamma ** bisect.bisect_right(sorted(milestones), step)
    start = warmup_steps if warmup_prefix else 0
    span = max(1, total_steps - start)
    progress = min(1.0, (step - start) / span)
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
    no_decay: Sequence[str] | None = None,
    momentum: float = 0.9,
) -> torch.optim.Optimizer:
    """AdamW (decoupled weight decay), Adam, or SGD with (heavy-ball) ``momentum`` and L2 weight decay
    over :func:`param_groups`; lr is set per step later. ``betas`` is the Adam optimizers',
    ``momentum`` SGD's (the ViT paper's fine-tune: SGD, momentum 0.9).

    The fused implementation is used (one kernel over all parameters, CPU and CUDA); parameters are
    expected on their final device before the optimizer is built, as accelerate's ``prepare`` does.
    """
    groups = param_groups(model, weight_decay, layer_decay, no_decay)
    for group in groups:
        group.pop("names")
    params = [p for g in groups for p in g["params"]]
    fused = bool(params) and all(p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point for p in params)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=0.0, betas=betas, fused=fused)
    if name == "adam":
        return torch.optim.Adam(groups, lr=0.0, betas=betas, fused=fused)
    if name == "sgd":
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"optim.momentum: {momentum!r} is out of range; allowed: 0 <= momentum < 1")
        return torch.optim.SGD(groups, lr=0.0, momentum=momentum, fused=fused)
    raise ValueError(f"optim.name: unknown optimizer {name!r}")


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's lr to ``lr * lr_scale``."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
