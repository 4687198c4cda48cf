"""The registry of backbones: families (one class each) and variants (tiny constructor functions).

Each backbone file defines its class (a subclass of :class:`~sslvit.models.encoder.Encoder`) and a
dict ``MODELS`` of variants made with :func:`variant`; ``sslvit.models`` collects them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sslvit.models.encoder import Encoder


def variant(cls: type[Encoder], arch: str, **defaults: Any) -> Callable[..., Encoder]:
    """A constructor for ``arch``: ``cls(**defaults)`` with keyword overrides on top."""

    def constructor(**overrides: Any) -> Encoder:
        return cls(**{**defaults, **overrides, "arch": arch})

    constructor.__name__ = arch
    constructor.__doc__ = f"{arch}: {cls.__name__}({', '.join(f'{k}={v}' for k, v in defaults.items())})"
    constructor.defaults = dict(defaults)  # type: ignore[attr-defined]
    constructor.family = cls.family  # type: ignore[attr-defined]
    return constructor
