"""Pretraining objectives; each is ``loss, metrics = objective(batch)`` over ``objective.encoder``.

The registry (:mod:`sslvit.objectives.registry`) finds every objective module in this package.
"""

from __future__ import annotations

from sslvit.objectives.base import Objective
from sslvit.objectives.registry import (
    build_objective,
    check_pair,
    config_class,
    objective_class,
    objective_config,
    objectives,
    supported_pairs,
)


def __getattr__(name: str):
    if name == "OBJECTIVES":
        return objectives()
    raise AttributeError(f"module 'sslvit.objectives' has no attribute {name!r}")


__all__ = [
    "OBJECTIVES",
    "Objective",
    "build_objective",
    "check_pair",
    "config_class",
    "objective_class",
    "objective_config",
    "objectives",
    "supported_pairs",
]
