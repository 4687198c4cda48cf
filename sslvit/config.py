"""Typed run configuration: dataclasses, YAML files and command-line overrides.

A run is described by :class:`RunConfig`, a tree of dataclasses. It is built by :func:`load` from an
optional YAML file and a list of overrides (``section.key=value`` or ``--section.key value``). Every
key is checked against the dataclass fields, every value against the field's type and its allowed
range, and every section against its own ``check(key)`` *before* any work starts; an unknown key, a
wrong type or a value out of range raises :class:`ConfigError` naming the dotted key, the value and
what is allowed. Each field carries its one-line meaning (``metadata["help"]``, see :func:`opt`);
:func:`key_docs` collects them. The resolved config is written next to a run's outputs with
:func:`save`.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import json
import math
import re
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A configuration key or value is invalid; the message names the dotted key."""


@dataclass(frozen=True)
class Bounds:
    """The allowed range of a number (or of each number of a tuple); None = unbounded on that side."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def contains(self, x: float) -> bool:
        """Whether ``x`` is a finite number in the range."""
        return (
            math.isfinite(x)
            and (self.ge is None or x >= self.ge)
            and (self.gt is None or x > self.gt)
            and (self.le is None or x <= self.le)
            and (self.lt is None or x < self.lt)
        )

    def describe(self) -> str:
        """The range in words: ``>= 1``, ``in (0, 1)``, ``in [0, 1)``, ..."""
        low = ("[", self.ge) if self.ge is not None else ("(", self.gt) if self.gt is not None else None
        high = ("]", self.le) if self.le is not None else (")", self.lt) if self.lt is not None else None
        if low and high:
            return f"in {low[0]}{_num(low[1])}, {_num(high[1])}{high[0]}"
        if low:
            return f"{'>=' if low[0] == '[' else '>'} {_num(low[1])}"
        if high:
            return f"{'<=' if high[0] == ']' else '<'} {_num(high[1])}"
        return "any number"


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def opt(
    default: Any,
    help: str,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    family_option: bool = False,
) -> Any:
    """A config field: its default, its one-line meaning and, for numbers, its allowed range.

    The range applies to the value, or to each element of a tuple value; None passes when the type
    allows it. ``family_option`` marks a model option that only some backbone families take.
    """
    metadata: dict[str, Any] = {"help": help}
    if any(b is not None for b in (ge, gt, le, lt)):
        metadata["bounds"] = Bounds(ge=ge, gt=gt, le=le, lt=lt)
    if family_option:
        metadata["family_option"] = True
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def join_key(prefix: str, name: str) -> str:
    """The dotted key of ``name`` inside the section ``prefix`` ("" = the top level)."""
    return f"{prefix}.{name}" if prefix else name


def _show(value: Any) -> str:
    return repr(list(value)) if isinstance(value, tuple) else repr(value)


def allowed(cls: type, name: str) -> str:
    """What field ``name`` of the config dataclass ``cls`` allows, in words ("" = its type says it all)."""
    bounds = {f.name: f for f in dataclasses.fields(cls)}[name].metadata.get("bounds")
    if bounds is None:
        return ""
    tp = typing.get_type_hints(cls)[name]
    args = typing.get_args(tp)
    optional = typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args
    if optional:
        tp = next(a for a in args if a is not type(None))
    text = ("each " if typing.get_origin(tp) is tuple else "") + bounds.describe()
    return text + (" or null" if optional else "")


def check_values(section: Any, key: str = "") -> None:
    """Refuse (``ConfigError`` naming the dotted key, the value and the allowed range) any value of
    the config dataclass ``section`` outside its field's range, then run the section's own
    ``check(key)`` for rules between fields; ``key`` is the section's dotted name ("" at the top)."""
    cls = type(section)
    for f in dataclasses.fields(section):
        bounds = f.metadata.get("bounds")
        value = getattr(section, f.name)
        if bounds is None or value is None:
            continue
        items = value if isinstance(value, tuple) else (value,)
        if not all(isinstance(v, (int, float)) and bounds.contains(v) for v in items):
            raise ConfigError(
                f"{join_key(key, f.name)}: {_show(value)} is out of range; allowed: {allowed(cls, f.name)}"
            )
    hook = getattr(section, "check", None)
    if callable(hook):
        hook(key)


@dataclass
class DataConfig:
    """Where images come from and how they are turned into batches."""

    train_shards: str = opt(
        "",
        "training shards: brace pattern, directory, manifest.json or a ','-separated list, 'hf:NAME[:SPLIT]',"
        " or a built-in split (fashion-mnist:train, digits:train); '' = the built-in digits corpus",
    )
    val_shards: str = opt(
        "",
        "validation shards (evaluators, online evaluation), same forms; '' = the built-in digits val split",
    )
    digits_image_size: int = opt(32, "side in pixels of the built-in digits corpus images", ge=1)
    image_size: int = opt(32, "side in pixels of the crops fed to the model", ge=1)
    batch_size: int = opt(128, "images per process per micro-batch (before gradient accumulation)", ge=1)
    num_workers: int = opt(2, "data loader worker processes per rank; 0 = load in the main process", ge=0)
    repeats: int = opt(
        1,
        "augmented (and masked) views per decoded image, at consecutive positions; an epoch holds"
        " repeats x the samples",
        ge=1,
    )
    mode: Literal["finite", "resampled"] = opt(
        "finite",
        "'finite': epochs over the shards; 'resampled': shards drawn with replacement, epochs of "
        "data.samples_per_epoch",
    )
    samples_per_epoch: int | None = opt(
        None,
        "samples in an epoch; null = the shard manifest's count (needed for resampled mode or shards without"
        " a manifest)",
        ge=1,
    )
    shuffle_buffer: int = opt(1000, "samples in the streaming shuffle buffer; 0 or 1 = no shuffling", ge=0)
    crop_scale: tuple[float, float] = opt(
        (0.2, 1.0),
        "random-resized-crop area range (low, high) as shares of the image",
        gt=0,
        le=1,
    )
    hflip: bool = opt(True, "random horizontal flips")
    label_key: str = opt(
        "",
        "'' = labels from the .cls member; else a field (dotted path) of the .json member",
    )
    key_dot: Literal["first", "last"] = opt(
        "first",
        "which dot of a member name splits the sample key from the extension",
    )
    mean: tuple[float, float, float] | None = opt(
        None,
        "per-channel pixel mean in [0, 1] units; null = the manifest's, else ImageNet's",
        ge=0,
        le=1,
    )
    std: tuple[float, float, float] | None = opt(
        None,
        "per-channel pixel std in [0, 1] units; null = as for data.mean",
        gt=0,
        le=1,
    )

    def check(self, key: str) -> None:
        """Refuse a crop-scale range whose low end is above its high end."""
        low, high = self.crop_scale
        if low > high:
            shown = _show(self.crop_scale)
            raise ConfigError(
                f"{join_key(key, 'crop_scale')}: {shown} is out of range; allowed: 0 < low <= high <= 1"
            )


@dataclass
class ModelConfig:
    """Which encoder to build; null keeps the variant's own default."""

    name: str = opt(
        "vit_nano_patch4",
        "encoder variant, a name registered in sslvit.models (sslvit.models.list_models())",
    )
    img_size: int | None = opt(
        None,
        "input side in pixels the encoder is built for; null = data.image_size",
        ge=1,
    )
    patch_size: int | None = opt(None, "patch side in pixels; null = the variant's", ge=1, family_option=True)
    global_pool: Literal["token", "avg"] | None = opt(
        None,
        "pooled feature: 'token' (class token) or 'avg' (mean of patch tokens); null = the variant's",
        family_option=True,
    )
    pos_embed: Literal["learned", "learned_2d", "sincos", "relative", "none"] | None = opt(
        None,
        "position embedding: 'learned' 1-D, 'learned_2d', fixed 2-D 'sincos', 'relative' attention bias or "
        "'none'; null = the variant's",
        family_option=True,
    )
    pos_embed_at: Literal["input", "every_layer", "every_layer_shared"] | None = opt(
        None,
        "ViT: where positions enter (the input, every layer, or the input table before every layer); null = "
        "the variant's",
        family_option=True,
    )
    class_token: bool | None = opt(None, "prepend a class token; null = the variant's", family_option=True)
    drop_path_rate: float = opt(
        0.0,
        "stochastic depth rate of the last block (linear from 0 over depth)",
        ge=0,
        lt=1,
    )
    num_classes: int = opt(0, "classes of the encoder's classification head; 0 = no head", ge=0)

    def check(self, key: str) -> None:
        """Refuse an unregistered variant (naming close matches) and options its family does not take."""
        if not self.name:
            return  # whether an empty name means anything is the run config's to say
        from sslvit import models
        from sslvit.models import FAMILIES, list_models, model_family

        try:
            family = model_family(self.name)
        except KeyError:
            names = [*list_models(), *getattr(models, "TIMM_NAMES", {})]
            close = difflib.get_close_matches(self.name, names, n=5, cutoff=0.6)
            hint = f"close matches: {', '.join(close)}" if close else "no close match"
            raise ConfigError(
                f"{join_key(key, 'name')}: unknown model {self.name!r}; {hint} (list all: python -c "
                f"\"from sslvit.models import list_models; print(*list_models())\")"
            ) from None
        takes = inspect.signature(FAMILIES[family].__init__).parameters
        for f in dataclasses.fields(self):
            if f.metadata.get("family_option") and getattr(self, f.name) is not None and f.name not in takes:
                option = join_key(key, f.name)
                raise ConfigError(f"{option}: the {family} family ({self.name}) has no such option")


@dataclass
class ObjectiveConfig:
    """The pretraining objective: ``name`` picks it; each objective adds its own keys.

    The section is polymorphic: :func:`load` builds the subclass that the objective named
    ``name`` declares (``sslvit.objectives.registry``), so each objective's options are checked
    against that objective's own dataclass and unknown keys are errors.
    """

    name: str = opt(
        "mae",
        "the objective, a name registered in sslvit.objectives (mae, simmim, mpp, supervised, ...)",
    )

    def check(self, key: str) -> None:
        """Refuse combinations of this objective's values that no single range expresses; ``key`` is
        the section's dotted name. Ranges of single values are declared with :func:`opt` and checked
        before this runs; a subclass with rules between its fields overrides this."""

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

    name: Literal["adamw", "adam"] = opt("adamw", "optimizer: 'adamw' (decoupled weight decay) or 'adam'")
    lr: float | None = opt(None, "peak learning rate; null = optim.base_lr * global batch / 256", gt=0)
    base_lr: float = opt(
        1.5e-4,
        "peak learning rate per 256 images of global batch (used when optim.lr is null)",
        gt=0,
    )
    min_lr: float = opt(0.0, "learning rate at the end of the decay schedule", ge=0)
    weight_decay: float = opt(0.05, "weight decay (none on norms, biases, position embeddings, tokens)", ge=0)
    betas: tuple[float, float] = opt((0.9, 0.95), "Adam betas (beta1, beta2)", ge=0, lt=1)
    warmup_steps: int | None = opt(
        None,
        "linear warmup length in optimizer steps; null = optim.warmup_epochs * steps per epoch",
        ge=0,
    )
    warmup_epochs: float = opt(
        0.0,
        "linear warmup length in epochs (used when optim.warmup_steps is null)",
        ge=0,
    )
    schedule: Literal["cosine", "linear", "constant"] = opt(
        "cosine",
        "learning-rate decay after warmup, from the peak to optim.min_lr",
    )
    clip_grad: float | None = opt(
        None,
        "clip the global gradient norm to this value; null = no clipping",
        gt=0,
    )
    layer_decay: float | None = opt(
        None,
        "layer-wise lr decay: a layer's lr is peak * decay ** (num_layers - layer); null = off",
        gt=0,
        le=1,
    )

    def check(self, key: str) -> None:
        """Refuse a final learning rate above an explicit peak."""
        if self.lr is not None and self.min_lr > self.lr:
            raise ConfigError(f"{join_key(key, 'min_lr')}: {self.min_lr!r} is out of range; allowed: <= "
                              f"{join_key(key, 'lr')} ({self.lr!r})")


@dataclass
class TrainConfig:
    """The loop: length, precision, logging, checkpoints."""

    steps: int | None = opt(None, "total optimizer steps; null = train.epochs * steps per epoch", ge=1)
    epochs: float = opt(
        1.0,
        "length in passes over the data, may be fractional (used when train.steps is null)",
        gt=0,
    )
    grad_accum: int | None = opt(
        None,
        "micro-batches per optimizer step (gradient accumulation); null = accelerate's "
        "gradient_accumulation_steps, else 1",
        ge=1,
    )
    precision: Literal["auto", "no", "bf16", "fp16"] = opt(
        "auto",
        "mixed precision: 'no' (fp32), 'bf16', 'fp16'; 'auto' = accelerate's mixed_precision, else bf16 on a"
        " bf16 GPU, fp32 on CPU",
    )
    compile: bool | None = opt(
        None,
        "torch.compile the objective; null = accelerate's dynamo_backend, else off",
    )
    seed: int = opt(0, "random seed (initialisation, masks, data order)", ge=0, le=2**32 - 1)
    log_every: int = opt(10, "log metrics every N optimizer steps", ge=1)
    ckpt_every: int = opt(
        0,
        "write a resumable checkpoint every N optimizer steps; 0 = none (the final model is always written)",
        ge=0,
    )
    keep_last: int = opt(2, "newest step checkpoints kept; 0 = keep every one", ge=0)
    max_nonfinite: int = opt(0, "optimizer steps with a non-finite loss skipped before the run stops", ge=0)
    out_dir: str = opt("runs", "parent directory of the run directories")
    name: str = opt(
        "",
        "run directory name under train.out_dir, also the tracker run name; '' = objective-model-timestamp",
    )
    resume: str = opt(
        "",
        "'' = start fresh; 'latest' = the newest verified checkpoint of train.name's run (without a "
        "name: of the newest run in train.out_dir whose settings fit); or a checkpoint directory",
    )
    trackers: tuple[str, ...] = opt(
        ("tensorboard",),
        "experiment trackers (accelerate's names: tensorboard, wandb, ...), a list or comma-separated; [] = "
        "none",
    )
    project: str = opt("sslvit", "tracker project name (the run name is train.name)")
    progress: bool = opt(True, "show a progress bar")
    overwrite: bool = opt(False, "allow a fresh run into a run directory that already holds outputs")
    eval_every: int = opt(
        0,
        "optimizer steps between online kNN evaluations on data.val_shards; 0 = off",
        ge=0,
    )
    eval_probe: bool = opt(False, "online evaluation also fits the linear probe")
    threads: int = opt(
        0,
        "torch intra-op threads per process; 0 = fit the cores and follow what other processes and the "
        "loader workers leave free (re-checked every 10 s; OMP_NUM_THREADS also fixes it)",
        ge=0,
    )

    def check(self, key: str) -> None:
        """Refuse empty tracker names."""
        if any(not name.strip() for name in self.trackers):
            shown = _show(self.trackers)
            raise ConfigError(f"{join_key(key, 'trackers')}: {shown} holds an empty name; allowed: tracker "
                              "names such as tensorboard or wandb")


@dataclass
class RunConfig:
    """The whole run."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    objective: ObjectiveConfig = field(default_factory=default_objective)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def check(self, key: str) -> None:
        """Rules between sections: a model name (empty only where this config's own default is empty,
        e.g. a fine-tune that reads it from the checkpoint) and an objective x backbone pair that can
        train."""
        model_key = join_key(key, "model.name")
        if not self.model.name:
            spec = {f.name: f for f in dataclasses.fields(self)}["model"]
            default = spec.default if spec.default_factory is dataclasses.MISSING else spec.default_factory()
            if default.name:
                raise ConfigError(f"{model_key}: '' is not a model; allowed: a name registered in "
                                  "sslvit.models")
            return
        from sslvit.models import model_family
        from sslvit.objectives.registry import check_pair

        try:
            check_pair(self.objective.name, model_family(self.model.name))
        except ConfigError as err:
            raise ConfigError(f"{model_key}: {err}") from None


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
        if value is False and "no" in args and False not in args:
            value = "no"  # YAML reads a bare `no` as false
        if value not in args or isinstance(value, bool) and not any(a is value for a in args):
            raise ConfigError(f"{key}: expected one of {list(args)}, got {value!r}")
        return value
    if origin is tuple:
        if isinstance(value, str):
            value = _split_list(value, args, key)
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


def _split_list(value: str, args: tuple, key: str) -> list:
    """A comma-separated string (``"tensorboard,wandb"``, ``"0.2,1.0"``, a single name, "" = empty) as
    the list it stands for; entries of non-string types are read as YAML scalars."""
    if not value.strip():
        return []
    parts = [part.strip() for part in value.split(",")]
    if any(not part for part in parts):
        raise ConfigError(f"{key}: empty entry in {value!r}")
    if all(a is str for a in args if a is not Ellipsis):
        return parts
    try:
        return [yaml.safe_load(part) for part in parts]
    except yaml.YAMLError as err:
        raise ConfigError(f"{key}: cannot parse {value!r} as a list: {err}") from err


def _build(cls: type, values: dict, prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            raise ConfigError(f"unknown config key {dotted!r} (known: {', '.join(sorted(names))})")
        kwargs[key] = _coerce(value, hints[key], dotted)
    section = cls(**kwargs)
    check_values(section, prefix)
    return section


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


def source_comments(cls: type) -> dict[str, str]:
    """Trailing ``# comments`` of a dataclass's field lines, by field name (fields without ``help``)."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    return dict(re.findall(r"^\s+(\w+):[^#\n]*#\s*(.+)$", source, re.M))


def _meaning(cls: type, name: str) -> str:
    """The ``help`` of field ``name`` of ``cls``, else of the same field in a base class, else the
    comment on its line in the source; "" when none says anything."""
    for klass in cls.__mro__:
        spec = vars(klass).get("__dataclass_fields__", {}).get(name)
        if spec is not None and spec.metadata.get("help"):
            return str(spec.metadata["help"])
    for klass in cls.__mro__:
        if dataclasses.is_dataclass(klass) and name in source_comments(klass):
            return source_comments(klass)[name].strip()
    return ""


def key_docs(cfg: Any) -> dict[str, str]:
    """Dotted key -> one-line meaning, for every key of the config ``cfg`` (a :class:`RunConfig` or
    another config dataclass), with the allowed range where one applies (``"... [allowed: >= 1]"``).

    The objective section documents the keys of the objective that ``cfg.objective.name`` names;
    each meaning comes from the field's ``metadata["help"]`` (see :func:`opt`), else from a base
    class's field of the same name, else from the trailing comment of the field's source line.
    A key nothing documents maps to "".
    """
    docs: dict[str, str] = {}

    def walk(section: Any, prefix: str) -> None:
        cls = type(section)
        for f in dataclasses.fields(section):
            value, dotted = getattr(section, f.name), join_key(prefix, f.name)
            if dataclasses.is_dataclass(value) and not isinstance(value, type):
                walk(value, dotted)
                continue
            text, limits = _meaning(cls, f.name), allowed(cls, f.name)
            docs[dotted] = f"{text} [allowed: {limits}]" if text and limits else text

    walk(cfg, "")
    return docs


def save(config: Any, path: str | Path) -> Path:
    """Write the resolved config as YAML to ``path`` and return it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
    return path
