"""What every evaluator shares: its base options, the command line, checkpoints and metrics files.

Each evaluator's options are a flat dataclass derived from :class:`EvalConfig`. Every field carries
its help text in ``metadata["help"]``, so :func:`parse_cli` can print a complete ``--help``; it loads
the rest of the command line with :func:`load_config` (the checks of :mod:`sslvit.config`: unknown
keys and wrong types fail before any work starts, naming the key).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from torch import nn

from sslvit import config as config_lib
from sslvit.checkpoint import hub_repo_id, load_checkpoint
from sslvit.config import opt, source_comments
from sslvit.config.sections import MAX_SIDE
from sslvit.models import resolve_model_name


@dataclass
class EvalConfig:
    """Options shared by the frozen-encoder evaluators (linear probe, kNN)."""

    checkpoint: str = opt("", "encoder to evaluate: sslvit .safetensors, a plain ViT state dict "
                              "(.safetensors / .pth, common timm/MAE/DeiT names; an MAE decoder is dropped), "
                              "a run directory, a published folder (config.json + model.safetensors), or a "
                              "Hub repo hf:ORG/NAME (or ORG/NAME when no such local path exists)")
    model: str = opt("", "registered variant or timm name (e.g. vit_base_patch16, vit_base_patch16_224) for "
                         "plain state dicts whose architecture cannot be inferred from the tensor shapes")
    train: str = opt("", "training split: shard spec (directory, manifest.json, brace pattern, "
                         "comma list), 'hf:NAME[:SPLIT]' or a built-in split (fashion-mnist:train, "
                         "digits:train); '' = the built-in digits train split")
    val: str = opt("", "validation split, same forms as --train; '' = the built-in digits val split")
    digits_image_size: int = opt(32, "side of the built-in digits corpus images", ge=1, le=MAX_SIDE)
    image_size: int | None = opt(None, "side of the images fed to the encoder; null = the encoder's own", ge=1,
                                 le=MAX_SIDE)
    crop_pct: float = opt(0.875, "eval transform: resize the shorter side to image_size / crop_pct, centre crop",
                          gt=0, le=1)
    mean: tuple[float, float, float] | None = opt(None, "pixel mean in [0,1]; null = the checkpoint's "
                                                         "run config, else the data manifest, else ImageNet's",
                                                         ge=0, le=1)
    std: tuple[float, float, float] | None = opt(None, "pixel std in [0,1]; null = as for --mean", gt=0, le=1)
    pool: Literal["auto", "token", "avg", "token+avg"] = opt("auto", "feature of one block: class token, "
                                                           "average of patch tokens, or both concatenated; "
                                                           "auto = the encoder's own pooling")
    last_k: int = opt(1, "concatenate the pooled features of the last k blocks (each after the final norm)", ge=1)
    batch_size: int = opt(128, "images per process per batch during feature extraction", ge=1)
    num_workers: int = opt(2, "data loader worker processes; 0 = load in the main process", ge=0)
    out_dir: str = opt("", "where the metrics JSON and the feature cache go; '' = <checkpoint dir>/eval")
    cache: bool = opt(True, "reuse cached features (keyed by checkpoint sha256 + data + options)")
    seed: int = opt(0, "random seed (probe initialisation, batch order, held-out split)", ge=0, le=2**32 - 1)


def field_help(cls: type, prefix: str = "", extra: dict[str, str] | None = None, defaults: Any = None) -> str:
    """One entry per (nested) field of ``cls``: ``--name TYPE (default: X)`` and its meaning.

    Defaults are read from ``defaults`` (an instance; ``cls()`` when None). The meaning is
    ``extra[dotted name]``, else the field's ``metadata["help"]``, else the comment on its line in
    the source.
    """
    defaults = cls() if defaults is None else defaults
    hints = typing.get_type_hints(cls)
    comments = source_comments(cls)
    lines = []
    for f in dataclasses.fields(cls):
        name, tp, default = f"{prefix}{f.name}", hints[f.name], getattr(defaults, f.name)
        if dataclasses.is_dataclass(tp):
            lines.append(field_help(tp, f"{name}.", extra, default))
            continue
        text = (extra or {}).get(name) or f.metadata.get("help") or comments.get(f.name, "")
        shown = tp.__name__ if isinstance(tp, type) else str(tp).replace("typing.", "")
        lines.append(f"  --{name} {shown} (default: {json.dumps(default)})\n      {text}")
    return "\n".join(lines)


def load_config(cls: type, file: str | Path | None = None, overrides: Sequence[str] = ()) -> Any:
    """Like :func:`sslvit.config.load`, but unset keys keep ``cls()``'s own defaults, also inside
    sections whose default a subclass changed (``FinetuneConfig.objective``: the supervised objective).

    Unknown keys and wrong types raise :class:`~sslvit.config.ConfigError` naming the dotted key; a
    missing file raises ``FileNotFoundError`` naming it.
    """
    return config_lib.load(file, overrides, cls=cls)


def parse_cli(
    cls: type,
    argv: Sequence[str] | None = None,
    description: str = "",
    aliases: dict[str, str] | None = None,
    extra_help: dict[str, str] | None = None,
) -> Any:
    """Parse ``[--config FILE] [--key value | key=value ...]`` into a ``cls`` instance.

    ``aliases`` maps short flags to dotted keys (``{"checkpoint": "finetune.checkpoint"}``).
    ``--help`` prints every option with its type, default and meaning and exits. Invalid keys,
    values or files print the error (which names the key or file) and exit with status 2.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if "-h" in args or "--help" in args:
        prog = Path(sys.argv[0]).name
        print(f"usage: {prog} [--config FILE.yaml] [--KEY VALUE | KEY=VALUE ...]\n\n{description}\n")
        print("options (values are YAML; a config file holds the same keys):")
        print("  --config FILE\n      YAML file with any of the keys below; the command line overrides it")
        for short, dotted in (aliases or {}).items():
            print(f"  --{short} VALUE\n      same as --{dotted}")
        print(field_help(cls, extra=extra_help))
        raise SystemExit(0)
    file = None
    if "--config" in args:
        i = args.index("--config")
        if i + 1 >= len(args):
            print("error: --config needs a file", file=sys.stderr)
            raise SystemExit(2)
        file = args[i + 1]
        del args[i : i + 2]
    for short, dotted in (aliases or {}).items():
        args = [f"--{dotted}" if a == f"--{short}" else
                f"--{dotted}={a.split('=', 1)[1]}" if a.startswith(f"--{short}=") else a for a in args]
    try:
        return load_config(cls, file, args)
    except (config_lib.ConfigError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from err


def load_encoder(cfg: EvalConfig, **overrides: Any) -> nn.Module:
    """Load ``cfg.checkpoint`` (any spec of :func:`sslvit.checkpoint.resolve_checkpoint`) as an
    encoder (eval mode), ``cfg.model`` (registered or timm name) naming plain state dicts."""
    if not cfg.checkpoint:
        raise config_lib.ConfigError("checkpoint: required (--checkpoint PATH)")
    if cfg.model:
        try:
            resolve_model_name(cfg.model)
        except KeyError as err:
            raise config_lib.ConfigError(f"model: {err}") from None
    return load_checkpoint(cfg.checkpoint, model_name=cfg.model or None, **overrides)


def encoder_image_size(encoder: nn.Module) -> int:
    """Side in pixels of the (square) images ``encoder`` was built for."""
    return int(encoder.img_size[0])


def default_output_dir(checkpoint: str) -> Path:
    """Where an evaluation of ``checkpoint`` writes by default: ``<file's dir>/eval`` for a file,
    ``<dir>/eval`` for a run directory or published folder, ``runs/hub/ORG--NAME/eval`` for a Hub repo."""
    path = Path(checkpoint)
    if path.is_dir():
        return path.resolve() / "eval"
    repo_id = hub_repo_id(checkpoint) if not path.exists() else None
    if repo_id is not None:
        return Path("runs") / "hub" / repo_id.replace("/", "--") / "eval"
    return path.resolve().parent / "eval"


def output_dir(cfg: EvalConfig) -> Path:
    """``cfg.out_dir`` or :func:`default_output_dir` of the checkpoint, created."""
    out = Path(cfg.out_dir) if cfg.out_dir else default_output_dir(cfg.checkpoint)
    out.mkdir(parents=True, exist_ok=True)
    return out


def write_metrics(path: str | Path, metrics: dict[str, Any]) -> Path:
    """Write ``metrics`` as indented JSON to ``path`` (via a temporary file) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(metrics, indent=2, sort_keys=False) + "\n")
    tmp.replace(path)
    return path


def topk_accuracy(scores: Any, labels: Any, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Percent of rows whose label is among the ``k`` highest scores.

    scores: (N, C) logits or class scores; labels: (N,) int64. ``k`` is capped at C.
    Returns ``{"top1": .., "top5": ..}``.
    """
    out = {}
    n = max(1, labels.numel())
    for k in ks:
        kk = min(k, scores.shape[1])
        hit = (scores.topk(kk, dim=1).indices == labels[:, None]).any(dim=1)
        out[f"top{k}"] = 100.0 * hit.sum().item() / n
    return out
