"""Backbones by name: ``create_model("vit_base_patch16")``, ``build_model(model.get_config())``.

Every backbone implements :class:`~sslvit.models.encoder.Encoder`; one file per family:

- ``vit``: the ViT of "An Image is Worth 16x16 Words", ``vit_{tiny,small,base,large,huge}_patch{14,16,32}``
  at 224 px, plus ``vit_nano_patch4`` (32 px, width 128, depth 6, 4 heads; the CPU default for MAE
  on digits), ``vit_pico_patch4`` (32 px, width 32, depth 2; unit tests) and DeiT's distilled
  ``deit_{tiny,small,base}_distilled_patch16_224``.
- ``hybrid``: ResNet stem + ViT (``vit_base_r50_s16_224``, ...).
- ``tnt``: Transformer in Transformer (``tnt_s_patch16_224``, ...).
- ``swin``: Swin Transformer (``swin_{tiny,small,base}_patch4_window7_224``, ...).
- ``poolformer``: PoolFormer / MetaFormer (``poolformer_{s12,s24,s36,m36,m48}``, ...).

timm's names resolve too (:func:`resolve_model_name`): a registered name plus ``_<px>`` is that
variant at that image size (``vit_small_patch16_224`` -> ``vit_small_patch16``, ``img_size=224``),
and :data:`TIMM_NAMES` lists the timm names that are a registered variant under another name
(DeiT's plain ViTs, DeiT-B distilled at 384 px). The other families register timm's own names.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import re
from collections.abc import Callable
from typing import Any

from sslvit.errors import InputError
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


TIMM_NAMES: dict[str, tuple[str, dict[str, Any]]] = {
    **{f"deit_{size}_patch16_{px}": (f"vit_{size}_patch16", {"img_size": px})
       for size in ("tiny", "small", "base") for px in (224, 384)},
    "deit_base_distilled_patch16_384": ("deit_base_distilled_patch16_224", {"img_size": 384}),
}
_SIZED = re.compile(r"^(?P<base>.+)_(?P<px>\d+)$")


class UnknownModelError(KeyError):
    """A model name that is neither registered nor a timm name of a registered variant."""

    def __str__(self) -> str:
        return str(self.args[0])


def list_models(family: str | None = None) -> list[str]:
    """Registered variant names (of one ``family`` when given), sorted."""
    return sorted(n for n, c in MODELS.items() if family is None or c.family == family)  # type: ignore[attr-defined]


def resolve_model_name(name: str) -> tuple[str, dict[str, Any]]:
    """The registered variant a (registered or timm) model name means, and the constructor
    arguments the name fixes: ``"vit_small_patch16_224"`` -> ``("vit_small_patch16", {"img_size": 224})``.

    An unknown name raises :class:`UnknownModelError` (a ``KeyError``) listing the closest names.
    """
    if name in MODELS:
        return name, {}
    if name in TIMM_NAMES:
        return TIMM_NAMES[name][0], dict(TIMM_NAMES[name][1])
    sized = _SIZED.match(name)
    if sized and sized["base"] in MODELS and "img_size" in MODELS[sized["base"]].defaults:  # type: ignore[attr-defined]
        return sized["base"], {"img_size": int(sized["px"])}
    sizes = {n: m.defaults.get("img_size") for n, m in MODELS.items()}  # type: ignore[attr-defined]
    timm_forms = [f"{n}_{px}" for n, px in sizes.items() if isinstance(px, int) and not n.endswith(f"_{px}")]
    close = difflib.get_close_matches(name, [*MODELS, *TIMM_NAMES, *timm_forms], n=5, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise UnknownModelError(
        f"unknown model {name!r}; {hint}registered: {', '.join(list_models())} "
        "(timm names: a registered name plus _<image size>, e.g. vit_small_patch16_224)"
    )


def _known(name: str) -> tuple[Callable[..., Encoder], dict[str, Any]]:
    registered, fixed = resolve_model_name(name)
    return MODELS[registered], fixed


def model_defaults(name: str) -> dict[str, Any]:
    """The constructor arguments a variant sets (without building it); timm names as in
    :func:`resolve_model_name`."""
    make, fixed = _known(name)
    return {**make.defaults, **fixed}  # type: ignore[attr-defined]


def model_family(name: str) -> str:
    """The family of a registered variant (or of the variant a timm name means)."""
    return _known(name)[0].family  # type: ignore[attr-defined]


def create_model(name: str, **overrides: Any) -> Encoder:
    """Build the variant ``name`` (registered, or a timm name: :func:`resolve_model_name`) with
    constructor ``overrides`` (e.g. ``num_classes=10``, ``img_size=384``) over what the name fixes."""
    make, fixed = _known(name)
    return make(**{**fixed, **overrides})


def build_model(config: dict[str, Any]) -> Encoder:
    """Rebuild an encoder from ``get_config()`` (a JSON-ready dict with ``family``; none = ``vit``).

    An unknown family is a ``KeyError``; options the family does not take are an
    :class:`~sslvit.errors.InputError` naming them."""
    config = dict(config)
    family = config.pop("family", "vit") or "vit"
    if family not in FAMILIES:
        raise KeyError(f"unknown model family {family!r}; known: {', '.join(sorted(FAMILIES))}")
    takes = inspect.signature(FAMILIES[family].__init__).parameters
    unknown = sorted(k for k in config if k not in takes)
    if unknown and not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in takes.values()):
        raise InputError(f"model config: the {family} family takes no option {', '.join(map(repr, unknown))}; "
                         f"it takes: {', '.join(k for k in takes if k != 'self')}")
    return FAMILIES[family](**config)


__all__ = [
    "CAPABILITIES",
    "FAMILIES",
    "MODELS",
    "SIZES",
    "TIMM_NAMES",
    "Encoder",
    "UnknownModelError",
    "VisionTransformer",
    "build_model",
    "create_model",
    "list_models",
    "model_defaults",
    "model_family",
    "resolve_model_name",
]
