"""Backbones by name: ``create_model("vit_base_patch16")``, ``build_model(model.get_config())``.

Every backbone implements :class:`~sslvit.models.encoder.Encoder`; one file per family:

- ``vit``: the ViT of "An Image is Worth 16x16 Words", ``vit_{tiny,small,base,large,huge}_patch{14,16,32}``
  at 224 px, plus ``vit_nano_patch4`` (32 px, width 128, depth 6, 4 heads; the CPU default for MAE
  on digits) and ``vit_pico_patch4`` (32 px, width 32, depth 2; unit tests).
- ``hybrid``: ResNet stem + ViT (``vit_base_r50_s16_224``, ...).
- ``tnt``: Transformer in Transformer (``tnt_s_patch16_224``, ...).
- ``swin``: Swin Transformer (``swin_{tiny,small,base}_patch4_window7_224``, ...).
- ``poolformer``: PoolFormer / MetaFormer (``poolformer_{s12,s24,s36,m36,m48}``, ...).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from sslvit.models.encoder import CAPABILITIES, Encoder
from sslvit.models.vit import SIZES, VisionTransformer

FAMILY_MODULES = ("vit", "hybrid", "tnt", "swin", "poolformer")

FAMILIES: dict[str, type[Encoder]] = {}
MODELS: dict[str, Callable[..., Encoder]] = {}
for _module_name in FAMILY_MODULES:
    try:
        _module = importlib.import_module(f"sslvit.models.{_module_name}")
    except ModuleNotFoundError as _err:
        if _err.name != f"sslvit.models.{_module_name}":
            raise
        continue
    FAMILIES[_module.FAMILY.family] = _module.FAMILY
    MODELS.update(_module.MODELS)


def list_models(family: str | None = None) -> list[str]:
    """Registered variant names (of one ``family`` when given), sorted."""
    return sorted(n for n, c in MODELS.items() if family is None or c.family == family)  # type: ignore[attr-defined]


def _known(name: str) -> Callable[..., Encoder]:
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(list_models())}")
    return MODELS[name]


def model_defaults(name: str) -> dict[str, Any]:
    """The constructor arguments a variant sets (without building it)."""
    return dict(_known(name).defaults)  # type: ignore[attr-defined]


def model_family(name: str) -> str:
    """The family of a registered variant."""
    return _known(name).family  # type: ignore[attr-defined]


def create_model(name: str, **overrides: Any) -> Encoder:
    """Build the variant ``name`` with constructor ``overrides`` (e.g. ``num_classes=10``, ``img_size=384``)."""
    return _known(name)(**overrides)


def build_model(config: dict[str, Any]) -> Encoder:
    """Rebuild an encoder from ``get_config()`` (a JSON-ready dict with ``family``; none = ``vit``)."""
    config = dict(config)
    family = config.pop("family", "vit") or "vit"
    if family not in FAMILIES:
        raise KeyError(f"unknown model family {family!r}; known: {', '.join(sorted(FAMILIES))}")
    return FAMILIES[family](**config)


__all__ = [
    "CAPABILITIES",
    "FAMILIES",
    "MODELS",
    "SIZES",
    "Encoder",
    "VisionTransformer",
    "build_model",
    "create_model",
    "list_models",
    "model_defaults",
    "model_family",
]
