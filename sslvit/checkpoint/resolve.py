"""A checkpoint spec -> its files -> the encoder.

A checkpoint is named by a spec (:func:`resolve_checkpoint`): a weights file, a run directory
(``model.safetensors``), a published folder (``config.json`` + ``model.safetensors``, as
``sslvit publish`` writes it), or a Hub repo ``hf:ORG/NAME`` (or bare ``ORG/NAME`` when no such
local path exists). :func:`load_checkpoint` needs nothing but the spec.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sslvit.checkpoint.foreign import (
    decoder_keys,
    infer_model_config,
    load_encoder_weights,
    named_options,
    strip_prefixes,
)
from sslvit.checkpoint.format import META_MODEL, CheckpointError, read_file_metadata, read_state_dict
from sslvit.checkpoint.hub_format import HUB_SCHEME, download_files, hub_repo_id, model_config_from_hub
from sslvit.errors import InputError
from sslvit.files import CONFIG_FILE, WEIGHTS_FILE, sha256_file
from sslvit.models import FAMILIES, build_model, create_model, model_defaults, model_family
from sslvit.progress import say


@dataclass(frozen=True)
class CheckpointSource:
    """Where a checkpoint spec's files are: the weights, and ``config.json`` for published folders."""

    spec: str
    weights: Path
    config: Path | None = None


def resolve_checkpoint(spec: str | Path) -> CheckpointSource:
    """The files of a checkpoint spec: a weights file (``.safetensors`` / ``.pth``), a run directory
    (``model.safetensors``), a published folder (``config.json`` + ``model.safetensors``), or a Hub
    repo ``hf:ORG/NAME`` / ``ORG/NAME`` (when it is not a local path; downloaded into the Hugging
    Face cache, with ``HF_ENDPOINT``, ``HF_TOKEN`` and ``HF_HUB_CACHE`` from the environment).

    Anything else raises :class:`CheckpointError` saying what was looked for.
    """
    path = Path(spec)
    if path.is_file():
        return CheckpointSource(str(spec), path)
    if path.is_dir():
        weights, config = path / WEIGHTS_FILE, path / CONFIG_FILE
        if weights.is_file():
            return CheckpointSource(str(spec), weights, config if config.is_file() else None)
        held = sorted(p.name for p in path.iterdir())[:8]
        raise CheckpointError(
            f"{path} is a directory without {WEIGHTS_FILE}: neither a run directory ({WEIGHTS_FILE}) nor a "
            f"published folder ({CONFIG_FILE} + {WEIGHTS_FILE}); it holds: {', '.join(held) or 'nothing'}"
        )
    repo_id = hub_repo_id(str(spec))
    if repo_id is None:
        local = str(spec).split("/")[0]
        why = (f"; {local}/ exists here, so it is not taken as a Hub repo id (write {HUB_SCHEME}{spec} for the Hub)"
               if "/" in str(spec) and Path(local).exists() else "")
        raise CheckpointError(
            f"checkpoint not found: {spec} (looked for a weights file, a run directory with {WEIGHTS_FILE}, "
            f"a published folder with {CONFIG_FILE} + {WEIGHTS_FILE}, or a Hub repo id ORG/NAME / "
            f"{HUB_SCHEME}ORG/NAME){why}"
        )
    try:
        config, weights = download_files(repo_id)
    except Exception as err:  # huggingface_hub raises many error types (network, auth, missing repo / file)
        raise CheckpointError(
            f"{spec}: no such local file or directory, and Hub repo {repo_id!r} could not be read "
            f"({type(err).__name__}: {err})"
        ) from err
    return CheckpointSource(str(spec), weights, config)


def checkpoint_sha256(spec: str | Path) -> str:
    """Hex sha256 of a checkpoint's weights: how metrics files and Hub repos name the checkpoint
    they belong to. A run directory, published folder or Hub repo spec names its weights file."""
    if Path(spec).is_dir() or hub_repo_id(str(spec)) is not None:
        spec = resolve_checkpoint(spec).weights
    return sha256_file(spec)


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The decoded ``sslvit.*`` metadata of a safetensors checkpoint (empty for foreign files).

    ``path`` may be any spec of :func:`resolve_checkpoint`; a published folder's ``config.json``
    supplies the normalisation (``pretrained_cfg`` mean / std) when the weights do not record one.
    """
    source = resolve_checkpoint(path) if Path(path).is_dir() or hub_repo_id(str(path)) else None
    meta = read_file_metadata(source.weights if source else path)
    if source and source.config and not meta.get("normalization"):
        pretrained = json.loads(source.config.read_text()).get("pretrained_cfg") or {}
        if pretrained.get("mean") and pretrained.get("std"):
            meta["normalization"] = {"mean": list(pretrained["mean"]), "std": list(pretrained["std"])}
    return meta


def model_from_metadata(path: str | Path, config: Any, overrides: dict[str, Any] | None = None) -> nn.Module:
    """The encoder the decoded ``sslvit.model`` metadata ``config`` of the file ``path`` describes;
    one that is not a mapping or names options the model does not take is a
    :class:`CheckpointError` naming ``path``."""
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: its {META_MODEL} metadata is not a mapping of model options")
    try:
        return build_model({**config, **(overrides or {})})
    except (InputError, KeyError, TypeError) as err:
        raise CheckpointError(f"{path}: its {META_MODEL} metadata does not build a model: "
                              f"{err.args[0] if err.args else err}") from None


def variant_geometry(config: dict[str, Any], model_name: str | None) -> dict[str, Any]:
    """The geometry a checkpoint's model is rebuilt with when ``model_name`` asks for another one:
    for a family that declares ``load_geometry`` (Swin: ``window_size``, ``img_size``), a
    ``model_name`` of the checkpoint's family whose window differs from the checkpoint's gives its
    values of those options (SimMIM's Swin-B: pretrained with windows of 6 at 192 px, fine-tuned
    with 7 at 224; the family's ``adapt_state_dict`` resamples the tables). Otherwise nothing: the
    checkpoint's metadata decides, as for every other option."""
    family = config.get("family", "vit") if isinstance(config, dict) else None
    geometry = getattr(FAMILIES.get(family or ""), "load_geometry", ())
    if not model_name or not geometry:
        return {}
    try:
        if model_family(model_name) != family:
            return {}
        defaults = model_defaults(model_name)
    except KeyError:
        return {}
    if "window_size" not in defaults or defaults["window_size"] == config.get("window_size"):
        return {}
    return {k: defaults[k] for k in geometry if k in defaults}


def _fresh_fc_norm(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """``state`` for a model built with ``fc_norm`` from a checkpoint that normalised every token:
    the checkpoint's final ``norm.*`` dropped and the model's fresh ``fc_norm.*`` kept (MAE's
    ``global_pool`` fine-tune deletes ``norm`` and trains a new ``fc_norm``), saying so."""
    own = model.state_dict()
    if "norm.weight" not in state or "norm.weight" in own or "fc_norm.weight" not in own or "fc_norm.weight" in state:
        return state
    kept = {k: v for k, v in state.items() if not k.startswith("norm.")}
    kept.update({k: v for k, v in own.items() if k.startswith("fc_norm.")})
    say(f"{source}: its final norm.* is dropped; the pooled feature gets a fresh fc_norm (fc_norm=True)")
    return kept


def load_checkpoint(path: str | Path, model_name: str | None = None, **overrides: Any) -> nn.Module:
    """Rebuild the encoder a checkpoint spec names (:func:`resolve_checkpoint`) in eval mode.

    Reads an sslvit encoder or objective checkpoint (config from its metadata), a published folder
    or Hub repo (config from its ``config.json``), or a plain state dict: then the architecture is
    ``model_name`` (a registered variant or timm name) or the registered variant whose tensor
    names and shapes it matches; for an sslvit checkpoint, a ``model_name`` of its family with
    another window takes that window and image size (:func:`variant_geometry`). A pretraining
    decoder (full MAE checkpoints) is dropped, saying so. ``overrides`` change constructor
    arguments (``img_size=384`` resamples the position embeddings; ``num_classes=10`` gives a
    fresh head).
    """
    source = resolve_checkpoint(path)
    state, raw_meta = read_state_dict(source.weights)
    model_json = raw_meta.get(META_MODEL)
    encoder_state = strip_prefixes(state)
    body = {k: v for k, v in encoder_state.items() if k not in set(decoder_keys(encoder_state))}
    if model_json is not None:
        try:
            config = json.loads(model_json)
        except json.JSONDecodeError as err:
            raise CheckpointError(f"{source.weights}: its {META_MODEL} metadata is not JSON ({err})") from None
        geometry = variant_geometry(config, model_name)
        model = model_from_metadata(source.weights, config, {**geometry, **overrides})
    elif model_name is not None:
        model = create_model(model_name, **{**named_options(model_name, body, source.spec), **overrides})
    elif source.config is not None:
        hub_config = json.loads(source.config.read_text())
        model = build_model({**model_config_from_hub(hub_config, body), **overrides})
    else:
        model = build_model({**infer_model_config(body), **overrides})
    encoder_state = _fresh_fc_norm(model, encoder_state, source.spec)
    head_changed = "head.weight" in encoder_state and (
        encoder_state["head.weight"].shape != model.state_dict().get("head.weight", torch.empty(0)).shape
    )
    load_encoder_weights(model, encoder_state, head_changed or "num_classes" in overrides, source.spec)
    return model.eval()
