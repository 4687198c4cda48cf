"""Pretraining objectives; each is ``loss, metrics = objective(batch)`` over ``objective.encoder``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sslvit.models.vit import VisionTransformer
from sslvit.objectives.base import IMAGENET_MEAN, IMAGENET_STD, Objective
from sslvit.objectives.mae import MAE
from sslvit.objectives.mpp import MPP, color3bit_4x4_target, color3bit_target
from sslvit.objectives.simmim import SimMIM
from sslvit.objectives.supervised import Supervised

OBJECTIVES: dict[str, type[Objective]] = {"mae": MAE, "simmim": SimMIM, "mpp": MPP, "supervised": Supervised}


def build_objective(
    cfg: Any,
    encoder: VisionTransformer,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> Objective:
    """The objective named ``cfg.name`` (an ``ObjectiveConfig`` or any object with its attributes)
    around ``encoder``, normalising pixels with per-channel ``mean`` / ``std`` in [0, 1] units."""
    if cfg.name not in OBJECTIVES:
        raise ValueError(f"unknown objective {cfg.name!r}; known: {', '.join(OBJECTIVES)}")
    return OBJECTIVES[cfg.name](encoder, cfg, mean, std)


__all__ = [
    "MAE",
    "MPP",
    "OBJECTIVES",
    "Objective",
    "SimMIM",
    "Supervised",
    "build_objective",
    "color3bit_4x4_target",
    "color3bit_target",
]
