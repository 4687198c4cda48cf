"""sslvit: a pretraining pipeline for Vision Transformers.

WebDataset shards stream into a pretraining objective (MAE, SimMIM, the ViT paper's masked patch
prediction, supervised classification) trained under Hugging Face ``accelerate``; the encoder is
written as a self-describing safetensors checkpoint that the evaluators and the Hub tools read.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sslvit.version import __version__

__all__ = ["create_model", "load_checkpoint", "save_model", "from_pretrained", "__version__"]

if TYPE_CHECKING:
    from sslvit.checkpoint import load_checkpoint, save_model
    from sslvit.hub import from_pretrained
    from sslvit.models import create_model

_LAZY = {
    "create_model": "sslvit.models",
    "load_checkpoint": "sslvit.checkpoint",
    "save_model": "sslvit.checkpoint",
    "from_pretrained": "sslvit.hub",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sslvit' has no attribute {name!r}")
