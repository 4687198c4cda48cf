"""Typed run configuration: dataclasses, YAML files and command-line overrides.

A run is described by :class:`RunConfig`, a tree of dataclasses. It is built by :func:`load` from an
optional YAML file and a list of overrides (``section.key=value`` or ``--section.key value``). Every
key is checked against the dataclass fields and every value against the field's type *before* any
work starts; an unknown key or a wrong type raises :class:`ConfigError` naming the dotted key.
The resolved config is written next to a run's outputs with :func:`save`.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A configuration key or value is invalid; the message names the dotted key."""


@dataclass
class DataConfig:
    """Where images come from and how they are turned into batches."""

    train_shards: str = ""  # shard spec (brace pattern, dir, manifest, list with ','); "" = built-in digits
    val_shards: str = ""  # used by evaluators; "" = the built-in digits val split
    digits_image_size: int = 32  # side of the built-in digits corpus images
    image_size: int = 32  # side of the crops fed to the model
    batch_size: int = 128  # per process, per step (before gradient accumulation)
    num_workers: int = 2
    mode: Literal["finite", "resampled"] = "finite"
    samples_per_epoch: int | None = None  # needed for resampled mode or shards without a manifest
    shuffle_buffer: int = 1000
    crop_scale: tuple[float, float] = (0.2, 1.0)
    hflip: bool = True
    label_key: str = ""  # "" = labels from the .cls member; else a field of the .json member (dotted path)
    key_dot: Literal["first", "last"] = "first"  # where a member name splits into sample key and extension
    mean: tuple[float, float, float] | None = None  # None = from the manifest, else ImageNet's
    std: tuple[float, float, float] | None = None


@dataclass
class ModelConfig:
    """Which encoder to build; None keeps the variant's own default."""

    name: str = "vit_nano_patch4"
    img_size: int | None = None  # None = data.image_size
    patch_size: int | None = None
    global_pool: Literal["token", "avg"] | None = None
    pos_embed: Literal["learned", "learned_2d", "sincos", "relative", "none"] | None = None
    pos_embed_at: Literal["input", "every_layer", "every_layer_shared"] | None = None  # ViT: where positions enter
    class_token: bool | None = None
    drop_path_rate: float = 0.0
    num_classes: int = 0


@dataclass
class ObjectiveConfig:
    """The pretraining objective: ``name`` picks it; each objective adds its own keys.

    The section is polymorphic: :func:`load` builds the subclass that the objective named
    ``name`` declares (``sslvit.objectives.registry``), so each objective's options are checked
    against that objective's own dataclass and unknown keys are errors.
    """

    name: str = "mae"  # the objective (see sslvit.objectives: mae, simmim, mpp, supervised, ...)

    @classmethod
    def section_class(cls, values: dict, key: str) -> type:
        """The dataclass for a section whose values are ``values`` (dispatch on ``name``)."""
        from sslvit.objectives.registry import config_class

        name = values.get("name", cls.name if isinstance(cls.name, str) else "mae")
        try:
            return config_class(name)
        except KeyError as err:
            raise ConfigError(f"{key}.name: {err.args[0]}") from None


def default_objective() -> ObjectiveConfig:
    """The default objective section (MAE with its own defaults)."""
    from sslvit.objectives.registry import config_class

    return config_class("mae")()


@dataclass
class OptimConfig:
    """Optimizer and learning-rate schedule (all counted in optimizer steps)."""

    name: Literal["adamw", "adam"] = "adamw"
    lr: float | None = None  # absolute peak lr; None = base_lr * global_batch / 256
    base_lr: float = 1.5e-4
    min_lr: float = 0.0
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_steps: int | None = None  # None = warmup_epochs * steps per epoch
    warmup_epochs: float = 0.0
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    clip_grad: float | None = None
    layer_decay: float | None = None


@dataclass
class TrainConfig:
    """The loop: length, precision, logging, checkpoints."""

    steps: int | None = None  # total optimizer steps; None = epochs * steps per epoch
    epochs: float = 1.0
    grad_accum: int = 1
    precision: Literal["auto", "no", "bf16", "fp16"] = "auto"  # auto: bf16 on GPU, fp32 on CPU
    compile: bool = False
    seed: int = 0
    log_every: int = 10
    ckpt_every: int = 0  # 0 = only at the end
    keep_last: int = 2
    max_nonfinite: int = 0  # non-finite losses skipped before the run stops
    out_dir: str = "runs"
    name: str = ""  # "" = objective-model-timestamp
    resume: str = ""  # "" = start fresh, "latest", or a checkpoint directory
    trackers: tuple[str, ...] = ("tensorboard",)
    project: str = "sslvit"  # tracker project name; the run name is train.name
    progress: bool = True
    overwrite: bool = False  # allow a fresh run into a run directory that already holds outputs
    eval_every: int = 0  # optimizer steps between online kNN evaluations on data.val_shards; 0 = off
    eval_probe: bool = False  # online evaluation also fits the linear probe


@dataclass
class RunConfig:
    """The whole run."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    objective: ObjectiveConfig = field(default_factory=default_objective)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and return it in canonical form."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: expected one of {list(args)}, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)}")
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True)))
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        if hasattr(tp, "section_class"):
            tp = tp.section_class(value, key)
        return _build(tp, value, key)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):
            try:
                return float(value)  # YAML 1.1 reads 1e-3 (no dot) as a string
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {_type_name(tp)}")


def _build(cls: type, values: dict, prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            raise ConfigError(f"unknown config key {dotted!r} (known: {', '.join(sorted(names))})")
        kwargs[key] = _coerce(value, hints[key], dotted)
    return cls(**kwargs)


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{dotted}: {part!r} is not a section")
        node = child
    node[parts[-1]] = value


def parse_overrides(args: Sequence[str]) -> dict:
    """Turn ``["a.b=1", "--c.d", "x", "--e.f=2"]`` into a nested dict; values are parsed as YAML."""
    tree: dict = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("--"):
            body = arg[2:]
            if "=" in body:
                key, raw = body.split("=", 1)
            else:
                if i + 1 >= len(args):
                    raise ConfigError(f"{body}: missing a value after --{body}")
                key, raw = body, args[i + 1]
                i += 1
        elif "=" in arg:
            key, raw = arg.split("=", 1)
        else:
            raise ConfigError(f"cannot read override {arg!r}: use key=value or --key value")
        key = key.replace("-", "_")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as err:
            raise ConfigError(f"{key}: cannot parse value {raw!r}: {err}") from err
        _set_dotted(tree, key, value)
        i += 1
    return tree


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def load(file: str | Path | None = None, overrides: Sequence[str] = (), cls: type = RunConfig) -> Any:
    """Build a config of type ``cls`` from an optional YAML ``file`` and ``overrides``.

    Keys that neither sets keep ``cls()``'s defaults, also inside sections whose default a subclass
    changed. Raises :class:`ConfigError` naming the key for unknown keys and wrong types, and
    ``FileNotFoundError`` naming the path when ``file`` does not exist.
    """
    layers: list[dict] = []
    if file:
        path = Path(file)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {err}") from err
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
        layers.append(loaded)
    layers.append(parse_overrides(overrides))
    tree: dict = to_dict(cls())
    hints = typing.get_type_hints(cls)
    for layer in layers:
        for section, values in layer.items():
            # a polymorphic section switched to another kind (objective.name=simmim over a file's
            # MAE section) starts from that kind's own defaults: the other kind's keys do not apply
            current = tree.get(section)
            if hasattr(hints.get(section), "section_class") and isinstance(values, dict) and isinstance(current, dict):
                if "name" in values and values["name"] != current.get("name"):
                    tree[section] = {}
        tree = _merge(tree, layer)
    return _build(cls, tree)


def to_dict(config: Any) -> dict:
    """The config as plain JSON/YAML-serialisable data (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def from_dict(values: dict, cls: type = RunConfig) -> Any:
    """Rebuild a config from :func:`to_dict` output, with the same checks as :func:`load`."""
    return _build(cls, values)


def save(config: Any, path: str | Path) -> Path:
    """Write the resolved config as YAML to ``path`` and return it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
    return path
