"""The registry of objectives: the only list of objective names.

Every module in ``sslvit/objectives/`` that defines a subclass of
:class:`~sslvit.objectives.base.Objective` with a ``name`` registers it; adding an objective is
one new file (plus a YAML config). Nothing else in sslvit switches on an objective's name.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Sequence
from functools import cache
from typing import Any

from sslvit.objectives.base import IMAGENET_MEAN, IMAGENET_STD, Objective


@cache
def objectives() -> dict[str, type[Objective]]:
    """name -> objective class, for every objective module in this package."""
    import sslvit.objectives as package

    found: dict[str, type[Objective]] = {}
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
        if info.name in ("base", "registry"):
            continue
        module = importlib.import_module(f"{package.__name__}.{info.name}")
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
    from sslvit.models import FAMILIES

    parts = []
    for name, cls in sorted(objectives().items()):
        families = [f for f, enc in FAMILIES.items() if cls.unsupported_reason(enc) is None]
        parts.append(f"{name}: {', '.join(families) or 'none'}")
    return "; ".join(parts)


def check_pair(objective: str, family: str) -> None:
    """Refuse (``ConfigError``, naming the pairs that work) an objective the family cannot run."""
    from sslvit.models import FAMILIES

    objective_class(objective).check_encoder(FAMILIES[family])


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
    return cls(encoder, cfg, mean, std)


def objective_config(name: str, **values: Any) -> Any:
    """The config section of objective ``name`` with ``values`` set (checked like a config file)."""
    from sslvit.config import from_dict

    return from_dict({"name": name, **values}, cls=config_class(name))
