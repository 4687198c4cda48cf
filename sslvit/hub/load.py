"""Rebuild an encoder from a published folder or Hub repository, with strict key matching.

Hub files come through ``huggingface_hub.hf_hub_download``, so they land in (and, offline or with
``local_files_only=True``, are read from) the standard Hugging Face cache.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file
from torch import nn

from sslvit.checkpoint import download_files, load_strict, model_config_from_hub
from sslvit.files import CONFIG_FILE, WEIGHTS_FILE
from sslvit.hub.common import PublishError, check_repo_id
from sslvit.models import build_model


def from_pretrained(
    name_or_path: str | Path,
    *,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    token: str | bool | None = None,
    endpoint: str | None = None,
    local_files_only: bool = False,
) -> nn.Module:
    """The encoder of a folder (``config.json`` + ``model.safetensors``) or Hub repo ``ORG/NAME``, eval mode.

    The architecture comes from the ``sslvit`` section of ``config.json`` (or, for a plain timm ViT
    repo, from timm's fields and the tensor shapes); every key of the weights must match the model
    exactly (missing or unexpected keys raise ``CheckpointError`` naming them). ``revision``,
    ``cache_dir``, ``token``, ``endpoint`` and ``local_files_only`` go to ``hf_hub_download``.
    """
    folder = Path(name_or_path)
    if folder.is_dir():
        config_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
        for path in (config_path, weights_path):
            if not path.is_file():
                raise PublishError(f"{folder} is not a published sslvit folder: {path.name} is missing")
    else:
        if str(name_or_path).startswith((".", "/", "~")):
            raise PublishError(f"folder not found: {name_or_path}")
        try:
            repo_id = check_repo_id(str(name_or_path), need_namespace=False)
        except PublishError as err:
            raise PublishError(f"{name_or_path!r} is neither a folder nor a Hub repo id ({err})") from None
        config_path, weights_path = download_files(repo_id, revision, cache_dir, token, endpoint, local_files_only)
    config = json.loads(config_path.read_text())
    state = load_file(str(weights_path), device="cpu")
    model = build_model(model_config_from_hub(config, state))
    load_strict(model, state, str(name_or_path))
    return model.eval()
