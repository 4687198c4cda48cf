"""The registry of objectives: the only list of objective names.

Every module in ``sslvit/objectives/`` that defines a subclass of
:class:`~sslvit.objectives.base.Objective` with a ``name`` registers it; adding an objective is
one new file (plus a YAML config). Nothing else in sslvit switches on an objective's name.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from collections.abc import Sequence
from functools import cache
from typing import Any

from sslvit.config import ConfigError, from_dict
from sslvit.data.stats import IMAGENET_MEAN, IMAGENET_STD
from sslvit.models import FAMILIES
from sslvit.objectives.base import Objective

NOT_OBJECTIVES = ("base", "registry", "masking")


@cache
def objectives() -> dict[str, type[Objective]]:
    """name -> objective class, for every objective module in this package."""
    found: dict[str, type[Objective]] = {}
    package_path = sys.modules[__package__].__path__  # this package's folders (more may be added)
    for info in sorted(pkgutil.iter_modules(package_path), key=lambda i: i.name):
        if info.name in NOT_OBJECTIVES:
            continue
        module = importlib.import_module(f"{__package__}.{info.name}")
        for value in vars(module).values():
            if (
                isinstance(value, type)
                and issubclass(value, Objective)
                and value.name
                and value.__module__ == module.__name__
            ):
                if value.name in found and found[value.name] is not value:
                    raise RuntimeError(f"objective name {value.name!r} is defined twice")
                found[value.name] = value
    return found


def objective_class(name: str) -> type[Objective]:
    """The objective registered as ``name``; ``KeyError`` naming the known ones otherwise."""
    known = objectives()
    if name not in known:
        raise KeyError(f"unknown objective {name!r}; known: {', '.join(sorted(known))}")
    return known[name]


def config_class(name: str) -> type:
    """The typed config section of the objective ``name``."""
    return objective_class(name).Config


def supported_pairs() -> str:
    """Every objective with the backbone families it can train, e.g. ``mae: vit, hybrid; ...``."""
    parts = []
    for name, cls in sorted(objectives().items()):
        families = [f for f, enc in FAMILIES.items() if cls.unsupported_reason(enc) is None]
        parts.append(f"{name}: {', '.join(families) or 'none'}")
    return "; ".join(parts)


def check_pair(objective: str, family: str) -> None:
    """Refuse (``ConfigError``, naming the reason and the pairs that work) an objective the family
    cannot run."""
    try:
        objective_class(objective).check_encoder(FAMILIES[family])
    except ConfigError as err:
        raise ConfigError(f"{err} Pairs that work: {supported_pairs()}") from None


def build_objective(
    cfg: Any,
    encoder: Any,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> Objective:
    """The objective named ``cfg.name`` around ``encoder``, normalising pixels with per-channel
    ``mean`` / ``std`` in [0, 1] units. ``cfg`` is that objective's config section."""
    try:
        cls = objective_class(cfg.name)
    except KeyError as err:
        raise ValueError(err.args[0]) from None
    if not isinstance(cfg, cls.Config):
        raise TypeError(f"objective {cfg.name!r} takes a {cls.Config.__name__}, got {type(cfg).__name__}")
    if getattr(encoder, "family", None) in FAMILIES:
        check_pair(cfg.name, encoder.family)
    return cls(encoder, cfg, mean, std)


def objective_config(name: str, **values: Any) -> Any:
    """The config section of objective ``name`` with ``values`` set (checked like a config file)."""
    return from_dict({"name": name, **values}, cls=config_class(name))
