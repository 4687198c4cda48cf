"""Pixel statistics: ImageNet's, and the normalisation an encoder was trained with.

The one home of the ImageNet mean / std: transforms, objectives and evaluators take them from
here. :func:`normalization` finds what an encoder was trained with: its checkpoint metadata, its
run config, the manifest of its training shards, else ImageNet's, and says which.
"""

from __future__ import annotations

from typing import Any

from sslvit.data.shards import load_manifest

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_TRAIN_SHARDS = "data/shards/digits/train"  # where the default run's built-in corpus lands


def normalization(
    meta: dict[str, Any], fallback_specs: tuple[str, ...] = ()
) -> tuple[tuple[float, ...], tuple[float, ...], str]:
    """Pixel mean / std an encoder was trained with, and where they came from.

    Looked up in the checkpoint metadata (``normalization``), the run config (``data.mean``), the
    manifest of the run's training shards, the manifests of ``fallback_specs`` (only for sslvit
    checkpoints, i.e. non-empty ``meta``), else ImageNet's.
    """
    for key in ("normalization", "data"):
        value = meta.get(key)
        if isinstance(value, dict) and value.get("mean") and value.get("std"):
            return tuple(value["mean"]), tuple(value["std"]), "checkpoint metadata"
    data = (meta.get("config") or {}).get("data") or {}
    if data.get("mean") and data.get("std"):
        return tuple(data["mean"]), tuple(data["std"]), "run config"
    specs = (data.get("train_shards") or DEFAULT_TRAIN_SHARDS, *fallback_specs) if meta else ()
    for spec in specs:
        try:
            manifest = load_manifest(spec)
        except Exception:  # any failure means "unknown here": try the next source
            continue
        if manifest and manifest.get("mean") and manifest.get("std"):
            return tuple(manifest["mean"]), tuple(manifest["std"]), "training data manifest"
    return IMAGENET_MEAN, IMAGENET_STD, "ImageNet default"
