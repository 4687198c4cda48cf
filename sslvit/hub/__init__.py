"""Publish encoders to the Hugging Face Hub in a form timm and sslvit both load, and load them back.

    from sslvit.hub import publish, from_pretrained
    publish("runs/NAME/model.safetensors", "ORG/NAME", metrics=["runs/NAME/eval/linear_probe.json"])
    model = from_pretrained("ORG/NAME")          # or a local folder built with publish(..., dry_run=DIR)

A published repository holds ``model.safetensors`` (encoder only, common ViT names), ``config.json``
(timm's Hub layout plus an ``sslvit`` section) and ``README.md`` (model card with a ``model-index``).
"""

from __future__ import annotations

from sslvit.hub.common import PublishError, check_repo_id
from sslvit.hub.export import hub_config, read_encoder
from sslvit.hub.load import from_pretrained
from sslvit.hub.metrics import EvalResult, read_metrics
from sslvit.hub.publish import PublishResult, build_folder, publish, resolve_token

__all__ = [
    "EvalResult",
    "PublishError",
    "PublishResult",
    "build_folder",
    "check_repo_id",
    "from_pretrained",
    "hub_config",
    "publish",
    "read_encoder",
    "read_metrics",
    "resolve_token",
]
