"""The registry of backbones: families (one class each) and variants (tiny constructor functions).

Each backbone file defines its class (a subclass of :class:`~sslvit.models.encoder.Encoder`) and a
dict ``MODELS`` of variants made with :func:`variant`; ``sslvit.models`` collects them. Each
variant is also recorded here as it is made, so a family finds its own (:func:`family_variants`)
without importing the package that collects them all.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sslvit.models.encoder import Encoder

VARIANTS: dict[str, Callable[..., Encoder]] = {}  # arch -> constructor, filled as each family module loads


def variant(cls: type[Encoder], arch: str, **defaults: Any) -> Callable[..., Encoder]:
    """A constructor for ``arch``: ``cls(**defaults)`` with keyword overrides on top."""

    def constructor(**overrides: Any) -> Encoder:
        return cls(**{**defaults, **overrides, "arch": arch})

    constructor.__name__ = arch
    constructor.__doc__ = f"{arch}: {cls.__name__}({', '.join(f'{k}={v}' for k, v in defaults.items())})"
    constructor.defaults = dict(defaults)  # type: ignore[attr-defined]
    constructor.family = cls.family  # type: ignore[attr-defined]
    VARIANTS[arch] = constructor
    return constructor


def family_variants(family: str) -> dict[str, Callable[..., Encoder]]:
    """The variants of ``family`` made so far (all of them once its module is imported), by name."""
    return {name: make for name, make in VARIANTS.items() if make.family == family}  # type: ignore[attr-defined]
