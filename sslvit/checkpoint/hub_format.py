"""The Hub's side of a checkpoint: repo ids in specs, downloads, and timm's ``config.json``.

A published folder or Hub repo holds ``config.json`` in timm's Hub layout (``architecture``,
``num_classes``, ``model_args``, ``pretrained_cfg``) plus an ``sslvit`` section with the exact
model config; :func:`model_config_from_hub` turns either into sslvit constructor arguments. Files
come through ``huggingface_hub.hf_hub_download``, so they land in (and, offline or with
``local_files_only=True``, are read from) the standard Hugging Face cache.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch

from sslvit.checkpoint.foreign import infer_model_config
from sslvit.files import CONFIG_FILE, WEIGHTS_FILE
from sslvit.version import __version__

HUB_SCHEME = "hf:"
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def hub_repo_id(spec: str) -> str | None:
    """The Hub repo id a spec names (``hf:ORG/NAME``, or ``ORG/NAME`` when no local path starts so)."""
    if spec.startswith(HUB_SCHEME):
        return spec[len(HUB_SCHEME) :]
    if _REPO_ID.match(spec) and not Path(spec).exists() and not Path(spec.split("/")[0]).exists():
        return spec
    return None


def download_files(
    repo_id: str,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    token: str | bool | None = None,
    endpoint: str | None = None,
    local_files_only: bool = False,
) -> tuple[Path, Path]:
    """(``config.json``, ``model.safetensors``) of Hub repo ``repo_id``, downloaded into the cache.

    ``endpoint`` and ``cache_dir`` default to ``HF_ENDPOINT`` and ``HF_HUB_CACHE`` as set when this
    is called; the token, when None, is huggingface_hub's (``HF_TOKEN`` or the saved login).
    """
    from huggingface_hub import hf_hub_download  # deferred: huggingface_hub is slow to import

    endpoint = endpoint or os.environ.get("HF_ENDPOINT") or None
    cache_dir = cache_dir or os.environ.get("HF_HUB_CACHE") or None

    paths = [
        Path(
            hf_hub_download(
                repo_id,
                name,
                revision=revision,
                cache_dir=cache_dir,
                token=token,
                endpoint=endpoint,
                local_files_only=local_files_only,
                library_name="sslvit",
                library_version=__version__,
            )
        )
        for name in (CONFIG_FILE, WEIGHTS_FILE)
    ]
    return paths[0], paths[1]


def model_config_from_hub(config: dict[str, Any], state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """sslvit constructor arguments for a Hub ``config.json``: its ``sslvit`` section, else the
    registered variant the weights match, with timm's ``model_args`` that sslvit shares on top."""
    if isinstance(config.get("sslvit"), dict) and "model" in config["sslvit"]:
        return dict(config["sslvit"]["model"])
    cfg = infer_model_config(state)
    args = config.get("model_args") or {}
    for key in ("img_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads", "mlp_ratio",
                "qkv_bias", "class_token", "global_pool"):
        if key in args and key in cfg:
            cfg[key] = args[key]
    if args.get("init_values") and "layer_scale_init" in cfg:
        cfg["layer_scale_init"] = args["init_values"]
    if "num_classes" in config:
        cfg["num_classes"] = int(config["num_classes"])
    if config.get("global_pool") in ("token", "avg") and "global_pool" in cfg:
        cfg["global_pool"] = config["global_pool"]
    return cfg
