"""Encoder export and the ``config.json`` that both timm and sslvit read from a Hub repository.

``config.json`` follows timm's Hub layout (``architecture``, ``num_classes``, ``num_features``,
``global_pool``, ``model_args``, ``pretrained_cfg``), so ``timm.create_model("hf-hub:ORG/NAME",
pretrained=True)`` builds the model, plus an ``sslvit`` section with the exact sslvit model config,
the objective, the training recipe and the data, which :func:`sslvit.from_pretrained` uses.

timm builds a ViT from ``architecture`` with ``model_args`` applied over that variant's defaults.
``architecture`` and ``model_args`` come from the encoder's own ``timm_spec()`` (each backbone
family knows its timm counterpart): the matching timm variant when the shape is a standard one
(e.g. ``vit_base_patch16_224``, ``swin_tiny_patch4_window7_224``), else a timm entry point of the
family with every argument in ``model_args``, so timm still builds the exact architecture. Encoders
timm cannot express name the sslvit arch instead and the model card says that only sslvit loads
them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sslvit.checkpoint import (
    CheckpointError,
    decode_metadata,
    infer_model_config,
    load_strict,
    read_state_dict,
    strip_prefixes,
)
from sslvit.data.stats import normalization
from sslvit.data.transforms import eval_transform
from sslvit.hub.common import PublishError
from sslvit.models import build_model
from sslvit.version import __version__


@dataclass
class ReadEncoder:
    """An encoder read from a checkpoint: the model, its state dict and the checkpoint's metadata."""

    model: torch.nn.Module
    state: dict[str, torch.Tensor]
    metadata: dict[str, Any]
    path: Path


def read_encoder(path: str | Path) -> ReadEncoder:
    """Load an sslvit *encoder* checkpoint strictly; anything else raises :class:`PublishError`.

    Objective checkpoints (encoder + decoder, ``sslvit.kind == "objective"``), files with ``encoder.`` /
    ``decoder`` / ``mask_token`` keys and files that do not rebuild an encoder with exactly matching
    keys are refused, so the published ``model.safetensors`` always holds encoder-only weights with
    the family's timm names (timm would take ``mask_token`` for DINOv2 and a top-level ``encoder`` for
    I-JEPA).
    """
    path = Path(path)
    try:
        state, raw = read_state_dict(path)
    except CheckpointError as err:
        raise PublishError(str(err)) from None
    meta = decode_metadata(raw)
    kind = meta.get("kind")
    if kind is not None and kind != "encoder":
        raise PublishError(
            f"{path} is an sslvit {kind!r} checkpoint, not an encoder: publish the encoder "
            f"file (runs/NAME/model.safetensors), not objective.safetensors"
        )
    foreign = sorted(
        k for k in state if k.startswith(("encoder.", "decoder", "mask_token")) or ".decoder" in k
    )
    if foreign:
        raise PublishError(
            f"{path} is not an encoder checkpoint: it holds {', '.join(foreign[:4])}"
            f"{' ...' if len(foreign) > 4 else ''}"
        )
    try:
        config = meta.get("model") or {**infer_model_config(state), "arch": None}
        if not isinstance(config, dict):
            raise CheckpointError(f"its sslvit.model metadata is not a mapping of model options: {str(config)[:100]}")
        model = build_model(config)
        load_strict(model, strip_prefixes(state), str(path))
    except (CheckpointError, TypeError, ValueError, KeyError) as err:
        raise PublishError(f"{path} is not a usable encoder checkpoint: {err}") from None
    meta["model"] = model.get_config()
    return ReadEncoder(model.eval(), {k: v.contiguous() for k, v in model.state_dict().items()}, meta, path)


def hub_config(encoder: ReadEncoder, license: str = "apache-2.0") -> dict[str, Any]:
    """The ``config.json`` dict: timm's Hub layout plus the ``sslvit`` section."""
    model, meta = encoder.model, encoder.metadata
    cfg, run = model.get_config(), meta.get("config") or {}
    mean, std, stats_source = normalization(meta)
    spec = model.timm_spec()
    reason = spec if isinstance(spec, str) else None
    h, w = model.img_size
    num_classes = int(model.num_classes)
    first_conv = next((n.removesuffix(".weight") for n, p in model.named_parameters() if p.ndim == 4), None)
    config: dict[str, Any] = {
        "architecture": spec["architecture"] if reason is None else (cfg.get("arch") or model.family),
        "num_classes": num_classes,
        "num_features": int(model.num_features),
        "global_pool": model.global_pool,
        "model_args": spec["model_args"] if reason is None else {},
        "pretrained_cfg": {
            "tag": "sslvit",
            "custom_load": False,
            "input_size": [int(cfg.get("in_chans", 3)), h, w],
            "fixed_input_size": True,
            "interpolation": "bicubic",
            "crop_pct": eval_crop_pct(),
            "crop_mode": "center",
            "mean": list(mean),
            "std": list(std),
            "num_classes": num_classes,
            "pool_size": None,
            "first_conv": first_conv,
            "classifier": "head.fc" if hasattr(model.head, "fc") else "head",
            "license": license,
        },
        "sslvit": {
            "version": __version__,
            "kind": "encoder",
            "model": cfg,
            "objective": meta.get("objective") or run.get("objective"),
            "recipe": {k: run[k] for k in ("optim", "train") if k in run},
            "data": {**(run.get("data") or {}), "mean": list(mean), "std": list(std), "stats_source": stats_source},
            "timm": {"loadable": reason is None, "reason": reason, "variant": reason is None and spec["exact"]},
            "source_checkpoint": {"name": encoder.path.name},
        },
    }
    return config


def eval_crop_pct() -> float:
    """Fraction of the resized image sslvit's evaluation transform keeps (its default ``crop_pct``)."""
    import inspect

    return float(inspect.signature(eval_transform).parameters["crop_pct"].default)
