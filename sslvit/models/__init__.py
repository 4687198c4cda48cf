"""ViT variants by name: ``create_model("vit_base_patch16")``, ``build_model(model.get_config())``.

Standard sizes (width / depth / heads): tiny 192/12/3, small 384/12/6, base 768/12/12,
large 1024/24/16, huge 1280/32/16, each with patch 14, 16 or 32 at 224 px. Two small ones:
``vit_nano_patch4`` (32 px, width 128, depth 6, 4 heads; the CPU default for MAE on digits)
and ``vit_pico_patch4`` (32 px, width 32, depth 2, 2 heads; unit tests).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sslvit.models.vit import VisionTransformer

SIZES: dict[str, dict[str, Any]] = {
    "tiny": dict(embed_dim=192, depth=12, num_heads=3),
    "small": dict(embed_dim=384, depth=12, num_heads=6),
    "base": dict(embed_dim=768, depth=12, num_heads=12),
    "large": dict(embed_dim=1024, depth=24, num_heads=16),
    "huge": dict(embed_dim=1280, depth=32, num_heads=16),
}


def _variant(arch: str, **defaults: Any) -> Callable[..., VisionTransformer]:
    """A constructor for ``arch``: defaults below, keyword overrides on top."""

    def constructor(**overrides: Any) -> VisionTransformer:
        return VisionTransformer(**{**defaults, **overrides, "arch": arch})

    constructor.__name__ = arch
    constructor.__doc__ = f"{arch}: VisionTransformer({', '.join(f'{k}={v}' for k, v in defaults.items())})"
    constructor.defaults = dict(defaults)  # type: ignore[attr-defined]
    return constructor


MODELS: dict[str, Callable[..., VisionTransformer]] = {
    f"vit_{size}_patch{patch}": _variant(f"vit_{size}_patch{patch}", img_size=224, patch_size=patch, **dims)
    for size, dims in SIZES.items()
    for patch in (14, 16, 32)
}
MODELS["vit_nano_patch4"] = _variant(
    "vit_nano_patch4", img_size=32, patch_size=4, embed_dim=128, depth=6, num_heads=4
)
MODELS["vit_pico_patch4"] = _variant(
    "vit_pico_patch4", img_size=32, patch_size=4, embed_dim=32, depth=2, num_heads=2
)


def list_models() -> list[str]:
    """Registered variant names, sorted."""
    return sorted(MODELS)


def model_defaults(name: str) -> dict[str, Any]:
    """The constructor arguments a variant sets (without building it)."""
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(list_models())}")
    return dict(MODELS[name].defaults)  # type: ignore[attr-defined]


def create_model(name: str, **overrides: Any) -> VisionTransformer:
    """Build the variant ``name`` with constructor ``overrides`` (e.g. ``num_classes=10``, ``img_size=384``)."""
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(list_models())}")
    return MODELS[name](**overrides)


def build_model(config: dict[str, Any]) -> VisionTransformer:
    """Rebuild a model from ``VisionTransformer.get_config()`` (a JSON-ready dict with ``arch``)."""
    return VisionTransformer(**config)


__all__ = [
    "MODELS",
    "SIZES",
    "VisionTransformer",
    "build_model",
    "create_model",
    "list_models",
    "model_defaults",
]
