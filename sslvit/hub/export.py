"""Encoder export and the ``config.json`` that both timm and sslvit read from a Hub repository.

``config.json`` follows timm's Hub layout (``architecture``, ``num_classes``, ``num_features``,
``global_pool``, ``model_args``, ``pretrained_cfg``), so ``timm.create_model("hf-hub:ORG/NAME",
pretrained=True)`` builds the model, plus an ``sslvit`` section with the exact sslvit model config,
the objective, the training recipe and the data, which :func:`sslvit.from_pretrained` uses.

timm builds a ViT from ``architecture`` with ``model_args`` applied over that variant's defaults.
``architecture`` is the matching timm variant when the width / depth / heads / patch size are a
standard one (e.g. ``vit_base_patch16_224``); for other shapes (``vit_nano_patch4``) it is
``vit_base_patch16_224`` used only as the entry point, and ``model_args`` carries every argument, so
timm still builds the exact architecture. Encoders timm cannot express (2-D learned or no position
embeddings, the tanh pre-logits head, a LayerNorm eps other than 1e-6) name the sslvit arch instead
and the model card says that only sslvit loads them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sslvit.checkpoint import CheckpointError, read_state_dict, strip_prefixes
from sslvit.hub.common import PublishError

TIMM_SIZES = {
    (192, 12, 3): "tiny",
    (384, 12, 6): "small",
    (768, 12, 12): "base",
    (1024, 24, 16): "large",
    (1280, 32, 16): "huge",
}
TIMM_VARIANTS = {
    "vit_tiny_patch16_224",
    "vit_tiny_patch16_384",
    "vit_small_patch32_224",
    "vit_small_patch32_384",
    "vit_small_patch16_224",
    "vit_small_patch16_384",
    "vit_small_patch8_224",
    "vit_base_patch32_224",
    "vit_base_patch32_384",
    "vit_base_patch16_224",
    "vit_base_patch16_384",
    "vit_base_patch8_224",
    "vit_large_patch32_224",
    "vit_large_patch32_384",
    "vit_large_patch16_224",
    "vit_large_patch16_384",
    "vit_huge_patch14_224",
}
TIMM_CARRIER = "vit_base_patch16_224"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class Encoder:
    """An encoder read from a checkpoint: the model, its state dict and the checkpoint's metadata."""

    model: torch.nn.Module
    state: dict[str, torch.Tensor]
    metadata: dict[str, Any]
    path: Path


def read_encoder(path: str | Path) -> Encoder:
    """Load an sslvit *encoder* checkpoint strictly; anything else raises :class:`PublishError`.

    Objective checkpoints (encoder + decoder, ``sslvit.kind == "objective"``), files with ``encoder.`` /
    ``decoder`` / ``mask_token`` keys and files that do not rebuild a ViT with exactly matching keys are
    refused, so the published ``model.safetensors`` always holds encoder-only weights with the
    common ViT names (timm would take ``mask_token`` for DINOv2 and a top-level ``encoder`` for I-JEPA).
    """
    from sslvit.checkpoint import infer_model_config
    from sslvit.models import build_model

    path = Path(path)
    try:
        state, raw = read_state_dict(path)
    except CheckpointError as err:
        raise PublishError(str(err)) from None
    meta = {k[len("sslvit.") :]: _decode(v) for k, v in raw.items() if k.startswith("sslvit.")}
    kind = raw.get("sslvit.kind")
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
        model = build_model(config)
        load_strict(model, strip_prefixes(state), str(path))
    except (CheckpointError, TypeError, ValueError, KeyError) as err:
        raise PublishError(f"{path} is not a usable ViT encoder checkpoint: {err}") from None
    meta["model"] = model.get_config()
    return Encoder(model.eval(), {k: v.contiguous() for k, v in model.state_dict().items()}, meta, path)


def _decode(value: str) -> Any:
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


def load_strict(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """``model.load_state_dict(state, strict=True)`` with every missing / unexpected / misshaped key named."""
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state))
        if state[k].shape != own[k].shape
    ]
    problems = [
        f"{label}: {', '.join(items)}"
        for label, items in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatches", shapes),
        )
        if items
    ]
    if problems:
        raise CheckpointError(f"{source} does not match the model:\n  " + "\n  ".join(problems))
    model.load_state_dict(state, strict=True)


def timm_support(cfg: dict[str, Any]) -> str | None:
    """``None`` when timm's VisionTransformer can express the sslvit model config, else the reason."""
    if cfg.get("pos_embed", "learned") not in ("learned", "sincos"):
        return f"pos_embed={cfg['pos_embed']!r} has no timm equivalent"
    if cfg.get("head_type") == "pre_logits" and cfg.get("num_classes", 0) > 0:
        return "the tanh pre-logits head has no timm equivalent"
    if abs(float(cfg.get("norm_eps", 1e-6)) - 1e-6) > 1e-12:
        return f"norm_eps={cfg['norm_eps']} differs from timm's 1e-6"
    return None


def img_hw(cfg: dict[str, Any]) -> tuple[int, int]:
    """(height, width) of the model's input images."""
    size = cfg.get("img_size", 224)
    return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))


def timm_architecture(cfg: dict[str, Any]) -> tuple[str, bool]:
    """(timm variant with the same width / depth / heads / patch and size, True), else (carrier, False)."""
    size = TIMM_SIZES.get((cfg["embed_dim"], cfg["depth"], cfg["num_heads"]))
    h, w = img_hw(cfg)
    for res in (h if h == w else None, 224):
        name = f"vit_{size}_patch{cfg['patch_size']}_{res}"
        if size and res and name in TIMM_VARIANTS:
            return name, True
    return TIMM_CARRIER, False


def timm_model_args(cfg: dict[str, Any]) -> dict[str, Any]:
    """timm ``VisionTransformer`` keyword arguments that rebuild the sslvit architecture exactly."""
    h, w = img_hw(cfg)
    args = {
        "img_size": h if h == w else [h, w],
        "patch_size": cfg["patch_size"],
        "in_chans": cfg.get("in_chans", 3),
        "embed_dim": cfg["embed_dim"],
        "depth": cfg["depth"],
        "num_heads": cfg["num_heads"],
        "mlp_ratio": cfg.get("mlp_ratio", 4.0),
        "qkv_bias": cfg.get("qkv_bias", True),
        "class_token": cfg.get("class_token", True),
        "global_pool": cfg.get("global_pool", "token"),
        "fc_norm": False,
    }  # sslvit normalises every token before pooling, as timm does with fc_norm=False
    if cfg.get("layer_scale_init"):
        args["init_values"] = cfg["layer_scale_init"]
    return args


def normalization(meta: dict[str, Any]) -> tuple[list[float], list[float], str]:
    """Pixel mean / std the encoder was trained with, and where they came from."""
    for key in ("normalization", "data"):
        value = meta.get(key)
        if isinstance(value, dict) and value.get("mean") and value.get("std"):
            return list(value["mean"]), list(value["std"]), "checkpoint metadata"
    data = (meta.get("config") or {}).get("data") or {}
    if data.get("mean") and data.get("std"):
        return list(data["mean"]), list(data["std"]), "run config"
    manifest = _train_manifest(data)
    if manifest and manifest.get("mean") and manifest.get("std"):
        return list(manifest["mean"]), list(manifest["std"]), "training data manifest"
    return list(IMAGENET_MEAN), list(IMAGENET_STD), "ImageNet default"


def _train_manifest(data: dict[str, Any]) -> dict[str, Any] | None:
    """The manifest of the run's training shards when it can be read here (nothing is built), else None."""
    try:
        from sslvit.data import load_manifest

        spec = data.get("train_shards") or "data/shards/digits/train"  # the built-in corpus, if built here
        return load_manifest(spec)
    except Exception:  # any failure means "unknown": the caller falls back to ImageNet statistics
        return None


def hub_config(encoder: Encoder, license: str = "apache-2.0") -> dict[str, Any]:
    """The ``config.json`` dict: timm's Hub layout plus the ``sslvit`` section."""
    from sslvit import __version__

    cfg, meta = encoder.model.get_config(), encoder.metadata
    run = meta.get("config") or {}
    mean, std, stats_source = normalization(meta)
    reason = timm_support(cfg)
    timm_name, exact = timm_architecture(cfg)
    h, w = img_hw(cfg)
    num_classes = int(cfg.get("num_classes", 0))
    config: dict[str, Any] = {
        "architecture": timm_name if reason is None else (cfg.get("arch") or "vit"),
        "num_classes": num_classes,
        "num_features": int(cfg["embed_dim"]),
        "global_pool": cfg.get("global_pool", "token"),
        "model_args": timm_model_args(cfg),
        "pretrained_cfg": {
            "tag": "sslvit",
            "custom_load": False,
            "input_size": [int(cfg.get("in_chans", 3)), h, w],
            "fixed_input_size": True,
            "interpolation": "bicubic",
            "crop_pct": eval_crop_pct(),
            "crop_mode": "center",
            "mean": mean,
            "std": std,
            "num_classes": num_classes,
            "pool_size": None,
            "first_conv": "patch_embed.proj",
            "classifier": "head",
            "license": license,
        },
        "sslvit": {
            "version": __version__,
            "kind": "encoder",
            "model": cfg,
            "objective": meta.get("objective") or run.get("objective"),
            "recipe": {k: run[k] for k in ("optim", "train") if k in run},
            "data": {**(run.get("data") or {}), "mean": mean, "std": std, "stats_source": stats_source},
            "timm": {"loadable": reason is None, "reason": reason, "variant": exact and reason is None},
            "source_checkpoint": {"name": encoder.path.name},
        },
    }
    return config


def eval_crop_pct() -> float:
    """Fraction of the resized image sslvit's evaluation transform keeps (its default ``crop_pct``)."""
    import inspect

    try:
        from sslvit.data.transforms import eval_transform
    except ImportError:
        return 0.875
    return float(inspect.signature(eval_transform).parameters["crop_pct"].default)


def model_config_from_hub(config: dict[str, Any], state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """sslvit constructor arguments for a Hub ``config.json``: its ``sslvit`` section, else timm's fields."""
    from sslvit.checkpoint import infer_model_config

    if isinstance(config.get("sslvit"), dict) and "model" in config["sslvit"]:
        return dict(config["sslvit"]["model"])
    cfg = {**infer_model_config(state), "arch": config.get("architecture")}
    args = config.get("model_args") or {}
    for key in (
        "img_size",
        "patch_size",
        "in_chans",
        "embed_dim",
        "depth",
        "num_heads",
        "mlp_ratio",
        "qkv_bias",
        "class_token",
        "global_pool",
    ):
        if key in args:
            cfg[key] = args[key]
    if args.get("init_values"):
        cfg["layer_scale_init"] = args["init_values"]
    if "num_classes" in config:
        cfg["num_classes"] = int(config["num_classes"])
    if config.get("global_pool") in ("token", "avg"):
        cfg["global_pool"] = config["global_pool"]
    return cfg
