"""Self-describing safetensors checkpoints, and loading foreign ViT weights.

An sslvit checkpoint is a safetensors file whose metadata carries the model config as JSON
(``sslvit.model``), what the file holds (``sslvit.kind``: ``encoder`` or ``objective``) and,
when written by a run, the run config (``sslvit.config``). ``"format": "pt"`` is always set, so
huggingface_hub's and transformers' loaders accept the file. :func:`load_checkpoint` needs nothing
but the path. Plain ViT state dicts that follow the common parameter names (timm / MAE / DeiT) load
too, from safetensors or from ``.pth`` files read with ``torch.load(weights_only=True)``; nothing is
ever unpickled. A full MAE pretraining checkpoint loads its encoder (the decoder's keys are dropped
and named).

A checkpoint is named by a spec (:func:`resolve_checkpoint`): a weights file, a run directory
(``model.safetensors``), a published folder (``config.json`` + ``model.safetensors``, as
``sslvit.hub`` writes it), or a Hub repo ``hf:ORG/NAME`` (or bare ``ORG/NAME`` when no such local
path exists), downloaded through ``sslvit.hub.load``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

PREFIXES = ("module.", "_orig_mod.", "encoder.", "backbone.", "model.")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
META_MODEL = "sslvit.model"
META_KIND = "sslvit.kind"
META_OBJECTIVE = "sslvit.objective"
META_CONFIG = "sslvit.config"
DECODER_PREFIXES = ("decoder_", "decoder.", "mask_token")
HUB_SCHEME = "hf:"
WEIGHTS_FILE = "model.safetensors"
FOLDER_CONFIG = "config.json"
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class CheckpointError(ValueError):
    """A checkpoint cannot be read or does not fit the model; the message says what is wrong."""


def save_model(
    module: nn.Module | dict[str, torch.Tensor],
    path: str | Path,
    model_config: dict,
    kind: str = "encoder",
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``module``'s state dict to ``path`` as safetensors with the model config in its metadata.

    ``extra`` values are stored as JSON under ``sslvit.<key>``. The file is written under a temporary
    name and renamed, so a crash never leaves a truncated checkpoint under the final name.
    """
    path = Path(path)
    state = module.state_dict() if isinstance(module, nn.Module) else module
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    metadata = {"format": "pt", META_KIND: kind, META_MODEL: json.dumps(model_config)}
    for key, value in (extra or {}).items():
        metadata[f"sslvit.{key}"] = json.dumps(value)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    save_file(tensors, str(tmp), metadata=metadata)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)
    return path


def say(message: str) -> None:
    """Print ``message`` on the main process only (``RANK`` unset or 0)."""
    if int(os.environ.get("RANK", "0") or 0) == 0:
        print(message, flush=True)


@dataclass(frozen=True)
class CheckpointSource:
    """Where a checkpoint spec's files are: the weights, and ``config.json`` for published folders."""

    spec: str
    weights: Path
    config: Path | None = None


def hub_repo_id(spec: str) -> str | None:
    """The Hub repo id a spec names (``hf:ORG/NAME``, or ``ORG/NAME`` when no local path starts so)."""
    if spec.startswith(HUB_SCHEME):
        return spec[len(HUB_SCHEME) :]
    if _REPO_ID.match(spec) and not Path(spec).exists() and not Path(spec.split("/")[0]).exists():
        return spec
    return None


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
        weights, config = path / WEIGHTS_FILE, path / FOLDER_CONFIG
        if weights.is_file():
            return CheckpointSource(str(spec), weights, config if config.is_file() else None)
        held = sorted(p.name for p in path.iterdir())[:8]
        raise CheckpointError(
            f"{path} is a directory without {WEIGHTS_FILE}: neither a run directory ({WEIGHTS_FILE}) nor a "
            f"published folder ({FOLDER_CONFIG} + {WEIGHTS_FILE}); it holds: {', '.join(held) or 'nothing'}"
        )
    repo_id = hub_repo_id(str(spec))
    if repo_id is None:
        local = str(spec).split("/")[0]
        why = (f"; {local}/ exists here, so it is not taken as a Hub repo id (write {HUB_SCHEME}{spec} for the Hub)"
               if "/" in str(spec) and Path(local).exists() else "")
        raise CheckpointError(
            f"checkpoint not found: {spec} (looked for a weights file, a run directory with {WEIGHTS_FILE}, "
            f"a published folder with {FOLDER_CONFIG} + {WEIGHTS_FILE}, or a Hub repo id ORG/NAME / "
            f"{HUB_SCHEME}ORG/NAME){why}"
        )
    from sslvit.hub.load import download_files

    try:
        config, weights = download_files(repo_id)
    except Exception as err:  # huggingface_hub raises many error types (network, auth, missing repo / file)
        raise CheckpointError(
            f"{spec}: no such local file or directory, and Hub repo {repo_id!r} could not be read "
            f"({type(err).__name__}: {err})"
        ) from err
    return CheckpointSource(str(spec), weights, config)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes: how metrics files and Hub repos name the checkpoint they belong to.

    A run directory, published folder or Hub repo spec (:func:`resolve_checkpoint`) names its
    weights file.
    """
    if Path(path).is_dir() or hub_repo_id(str(path)) is not None:
        path = resolve_checkpoint(path).weights
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def read_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a state dict and its metadata from a ``.safetensors`` file or a ``.pth``/``.pt``/``.bin`` file.

    ``.pth`` files are read with ``weights_only=True``; a nested ``{"model": ...}`` or
    ``{"state_dict": ...}`` wrapper (as in MAE / DeiT releases) is unwrapped.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                metadata = f.metadata() or {}
                state = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as err:  # safetensors raises its own error types for bad headers
            raise CheckpointError(f"{path}: not a readable safetensors file ({err})") from err
        return state, metadata
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"{path}: cannot be read as a weights-only torch file ({err})") from err
    for key in ("model", "state_dict", "module"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: does not hold a state dict of tensors")
    return obj, {}


def strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop wrapper prefixes (``module.``, ``encoder.``, ...); keep only encoder keys of an objective."""
    if any(k.startswith("encoder.") for k in state):
        state = {k[len("encoder.") :]: v for k, v in state.items() if k.startswith("encoder.")}
    out = {}
    for key, value in state.items():
        changed = True
        while changed:
            changed = False
            for prefix in PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix) :], True
        out[key] = value
    return out


def decoder_keys(state: dict[str, torch.Tensor], keep: set[str] | None = None) -> list[str]:
    """Keys of an MAE / SimMIM pretraining head (``decoder_*``, ``decoder.*``, ``mask_token``) in
    ``state``, those in ``keep`` (a model's own keys) excepted, sorted."""
    return sorted(k for k in state if k.startswith(DECODER_PREFIXES) and k not in (keep or set()))


def drop_decoder(state: dict[str, torch.Tensor], keep: set[str] | None = None, source: str = "checkpoint"
                 ) -> dict[str, torch.Tensor]:
    """``state`` without its :func:`decoder_keys`; one line names the dropped prefixes and counts."""
    dropped = decoder_keys(state, keep)
    if not dropped:
        return state
    counts: dict[str, int] = {}
    for key in dropped:
        group = key.split(".")[0] + (".*" if "." in key else "")
        counts[group] = counts.get(group, 0) + 1
    say(f"{source}: took the encoder; dropped {len(dropped)} decoder keys: "
        + ", ".join(f"{group} ({n})" for group, n in counts.items()))
    return {k: v for k, v in state.items() if k not in set(dropped)}


def detect_family(state: dict[str, torch.Tensor]) -> str:
    """The backbone family whose parameter names ``state`` uses (prefixes already stripped).

    Families are asked most specific first (the plain ViT last: a hybrid also has ViT blocks).
    """
    from sslvit.models import FAMILIES

    for family in sorted(FAMILIES, key=lambda f: f == "vit"):
        if FAMILIES[family].owns_state_dict(state):
            return family
    raise CheckpointError(
        "not an encoder of a known family (" + ", ".join(sorted(FAMILIES)) + "): no parameter names "
        f"match; first keys: {', '.join(sorted(state)[:5])}"
    )


def infer_model_config(state: dict[str, torch.Tensor]) -> dict:
    """The constructor arguments of a plain state dict, from the registered variant it matches.

    The family comes from the parameter names; the variant is the one whose tensors have the same
    names and shapes (position tables and the head may differ: the image size and the class count
    are read from them). Nothing is guessed: a state dict that matches no registered variant raises
    :class:`CheckpointError` asking for the variant name.
    """
    from sslvit.models import FAMILIES

    state = strip_prefixes(state)
    family = detect_family(state)
    try:
        return FAMILIES[family].infer_config(state)
    except ValueError as err:
        raise CheckpointError(str(err)) from None


def load_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """``model.load_state_dict(state, strict=True)`` with every missing / unexpected / misshaped key
    named in a :class:`CheckpointError` that names ``source``."""
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    mismatched = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state))
        if state[k].shape != own[k].shape
    ]
    lines = [
        f"{label}: {joiner.join(items)}"
        for label, items, joiner in (
            ("missing keys", missing, ", "),
            ("unexpected keys", unexpected, ", "),
            ("shape mismatches", mismatched, "; "),
        )
        if items
    ]
    if lines:
        raise CheckpointError(f"{source} does not fit the model:\n  " + "\n  ".join(lines))
    model.load_state_dict(state, strict=True)


def load_encoder_weights(
    model: nn.Module, state: dict[str, torch.Tensor], ignore_head: bool = False, source: str = "checkpoint"
) -> None:
    """Load encoder weights into ``model``, adapting them where that is safe.

    Wrapper prefixes are stripped, a pretraining decoder is dropped (:func:`drop_decoder`, which
    says so) and the encoder's own filter (``adapt_state_dict``: position tables of another grid
    size resampled) is applied. With ``ignore_head`` the checkpoint's ``head.*`` / ``head_dist.*``
    is dropped and the model keeps its own. Any other missing or unexpected key or shape mismatch
    raises :class:`CheckpointError` listing each one.
    """
    own = model.state_dict()
    state = drop_decoder(strip_prefixes(state), set(own), source)
    if ignore_head:
        heads = ("head.", "head_dist.")
        state = {k: v for k, v in state.items() if not k.startswith(heads)}
        state.update({k: v for k, v in own.items() if k.startswith(heads)})
    if hasattr(model, "adapt_state_dict"):
        state = model.adapt_state_dict(state)
    load_strict(model, state, source)


def decode_metadata(raw: dict[str, str]) -> dict[str, Any]:
    """The ``sslvit.*`` entries of raw safetensors metadata, JSON-decoded, without the prefix."""
    decoded: dict[str, Any] = {}
    for key, value in raw.items():
        if key.startswith("sslvit."):
            try:
                decoded[key[len("sslvit.") :]] = json.loads(value)
            except json.JSONDecodeError:
                decoded[key[len("sslvit.") :]] = value
    return decoded


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The decoded ``sslvit.*`` metadata of a safetensors checkpoint (empty for foreign files).

    ``path`` may be any spec of :func:`resolve_checkpoint`; a published folder's ``config.json``
    supplies the normalisation (``pretrained_cfg`` mean / std) when the weights do not record one.
    """
    source = resolve_checkpoint(path) if Path(path).is_dir() or hub_repo_id(str(path)) else None
    path = source.weights if source else Path(path)
    if path.suffix != ".safetensors":
        return {}
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            raw = f.metadata() or {}
    except Exception as err:  # safetensors raises its own error types for bad headers
        raise CheckpointError(f"{path}: not a readable safetensors file ({err})") from err
    meta = decode_metadata(raw)
    if source and source.config and not meta.get("normalization"):
        pretrained = json.loads(source.config.read_text()).get("pretrained_cfg") or {}
        if pretrained.get("mean") and pretrained.get("std"):
            meta["normalization"] = {"mean": list(pretrained["mean"]), "std": list(pretrained["std"])}
    return meta


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
    specs = (data.get("train_shards") or "data/shards/digits/train", *fallback_specs) if meta else ()
    for spec in specs:
        try:
            from sslvit.data import load_manifest

            manifest = load_manifest(spec)
        except Exception:  # any failure means "unknown here": try the next source
            continue
        if manifest and manifest.get("mean") and manifest.get("std"):
            return tuple(manifest["mean"]), tuple(manifest["std"]), "training data manifest"
    return IMAGENET_MEAN, IMAGENET_STD, "ImageNet default"


def _named_options(model_name: str, state: dict[str, torch.Tensor], source: str) -> dict[str, Any]:
    """Options of ``model_name``'s family that the plain ``state``'s parameter names fix (ViT:
    ``fc_norm``, ``distilled``), said in one line when there are any."""
    from sslvit.models import FAMILIES, model_family

    read = getattr(FAMILIES[model_family(model_name)], "state_dict_options", None)
    options = read(state) if read is not None else {}
    if options:
        say(f"{source}: {model_name} with {', '.join(f'{k}={v!r}' for k, v in options.items())}, "
            "as the checkpoint's parameter names require")
    return options


def load_checkpoint(path: str | Path, model_name: str | None = None, **overrides: Any) -> nn.Module:
    """Rebuild the encoder a checkpoint spec names (:func:`resolve_checkpoint`) in eval mode.

    Reads an sslvit encoder or objective checkpoint (config from its metadata), a published folder
    or Hub repo (config from its ``config.json``), or a plain state dict: then the architecture is
    ``model_name`` (a registered variant or timm name) or the registered variant whose tensor
    names and shapes it matches. A pretraining decoder (full MAE checkpoints) is dropped, saying
    so. ``overrides`` change constructor arguments (``img_size=384`` resamples the position
    embeddings; ``num_classes=10`` gives a fresh head).
    """
    from sslvit.models import build_model, create_model

    source = resolve_checkpoint(path)
    state, raw_meta = read_state_dict(source.weights)
    model_json = raw_meta.get(META_MODEL)
    encoder_state = strip_prefixes(state)
    body = {k: v for k, v in encoder_state.items() if k not in set(decoder_keys(encoder_state))}
    if model_json is not None:
        model = build_model({**json.loads(model_json), **overrides})
    elif model_name is not None:
        model = create_model(model_name, **{**_named_options(model_name, body, source.spec), **overrides})
    elif source.config is not None:
        from sslvit.hub.export import model_config_from_hub

        hub_config = json.loads(source.config.read_text())
        model = build_model({**model_config_from_hub(hub_config, body), **overrides})
    else:
        model = build_model({**infer_model_config(body), **overrides})
    head_changed = "head.weight" in encoder_state and (
        encoder_state["head.weight"].shape != model.state_dict().get("head.weight", torch.empty(0)).shape
    )
    load_encoder_weights(model, encoder_state, head_changed or "num_classes" in overrides, source.spec)
    return model.eval()
