"""The registry of backbones: families (one class each) and variants (tiny constructor functions).

Each backbone file defines its class (a subclass of :class:`~sslvit.models.encoder.Encoder`) and a
dict ``MODELS`` of variants made with :func:`variant`; ``sslvit.models`` collects them. Each
variant is also recorded on its class (``cls.variants``) as it is made, so a family finds its own
without importing the package that collects them all.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def variant(cls: type, arch: str, **defaults: Any) -> Callable[..., Any]:
    """A constructor for ``arch``: ``cls(**defaults)`` with keyword overrides on top (an encoder)."""

    def constructor(**overrides: Any) -> Any:
        return cls(**{**defaults, **overrides, "arch": arch})

    constructor.__name__ = arch
    constructor.__doc__ = f"{arch}: {cls.__name__}({', '.join(f'{k}={v}' for k, v in defaults.items())})"
    constructor.defaults = dict(defaults)  # type: ignore[attr-defined]
    constructor.family = cls.family  # type: ignore[attr-defined]
    if "variants" not in cls.__dict__:  # each family class holds its own, not its parent's
        cls.variants = {}  # type: ignore[attr-defined]
    cls.variants[arch] = constructor  # type: ignore[attr-defined]
    return constructor
