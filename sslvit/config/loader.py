"""The generic typed config loader: dataclasses, YAML files and command-line overrides.

A config is a tree of dataclasses. :func:`load` builds one from an optional YAML file and a list of
overrides (``section.key=value`` or ``--section.key value``). Every key is checked against the
dataclass fields, every value against the field's type and its allowed range, and every section
against its own ``check(key)`` *before* any work starts; an unknown key, a wrong type or a value out
of range raises :class:`ConfigError` naming the dotted key, the value and what is allowed. Each
field carries its one-line meaning (``metadata["help"]``, see :func:`opt`); :func:`key_docs`
collects them. A section whose dataclass depends on its own values (the objective section: one
dataclass per objective) is declared with :func:`polymorphic`. The resolved config is written
next to a run's outputs with :func:`save`.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import re
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from sslvit.errors import InputError


class ConfigError(InputError):
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


def polymorphic(factory: Callable[[], Any], dispatch: Callable[[dict, str], type], help: str = "") -> Any:
    """A section field whose dataclass is chosen from its own values: ``dispatch(values, key)``
    returns the class (raising :class:`ConfigError` naming ``key`` for values it cannot place);
    ``factory()`` builds the default. A layer that names another kind (``name``) than the one
    below it starts from that kind's own defaults."""
    return field(default_factory=factory, metadata={"help": help, "dispatch": dispatch})


def join_key(prefix: str, name: str) -> str:
    """The dotted key of ``name`` inside the section ``prefix`` ("" = the top level)."""
    return f"{prefix}.{name}" if prefix else name


def show_value(value: Any) -> str:
    """A value as an error message shows it (tuples as lists, as YAML writes them)."""
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
                f"{join_key(key, f.name)}: {show_value(value)} is out of range; allowed: {allowed(cls, f.name)}"
            )
    hook = getattr(section, "check", None)
    if callable(hook):
        hook(key)


def check_tree(config: Any, key: str = "") -> None:
    """:func:`check_values` of ``config`` and of every section nested in it, innermost first: what
    :func:`load` checks, for a config built in code."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            check_tree(value, join_key(key, f.name))
    check_values(config, key)


def check_sections(config: Any) -> None:
    """:func:`check_tree` of each section of ``config`` (a whole run's config built in code), leaving
    out the rules between sections, which need what only the run knows (a fine-tune's checkpoint)."""
    for f in dataclasses.fields(config):
        check_tree(getattr(config, f.name), f.name)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str, dispatch: Callable[[dict, str], type] | None = None) -> Any:
    """Check ``value`` against the annotation ``tp`` and return it in canonical form; ``dispatch``
    picks the dataclass of a :func:`polymorphic` section."""
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
        if dispatch is not None:
            tp = dispatch(value, key)
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


def dispatch_of(cls: type, name: str) -> Callable[[dict, str], type] | None:
    """The :func:`polymorphic` dispatch of field ``name`` of ``cls``, or of the same field in a base
    class: a subclass that only changes a polymorphic section's default keeps its dispatch."""
    for klass in cls.__mro__:
        if dataclasses.is_dataclass(klass):
            found = {f.name: f for f in dataclasses.fields(klass)}.get(name)
            if found is not None and found.metadata.get("dispatch"):
                return found.metadata["dispatch"]
    return None


def _build(cls: type, values: dict, prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if key not in fields:
            raise ConfigError(f"unknown config key {dotted!r} (known: {', '.join(sorted(fields))})")
        kwargs[key] = _coerce(value, hints[key], dotted, dispatch_of(cls, key))
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


def load(file: str | Path | None, overrides: Sequence[str], cls: type) -> Any:
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
    dispatched = {f.name for f in dataclasses.fields(cls) if dispatch_of(cls, f.name)}
    for layer in layers:
        for section, values in layer.items():
            # a polymorphic section switched to another kind (objective.name=simmim over a file's
            # MAE section) starts from that kind's own defaults: the other kind's keys do not apply
            current = tree.get(section)
            if section in dispatched and isinstance(values, dict) and isinstance(current, dict):
                if "name" in values and values["name"] != current.get("name"):
                    tree[section] = {}
        tree = _merge(tree, layer)
    return _build(cls, tree)


def to_dict(config: Any) -> dict:
    """The config as plain JSON/YAML-serialisable data (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def from_dict(values: dict, cls: type) -> Any:
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
    """Dotted key -> one-line meaning, for every key of the config ``cfg`` (a run config or
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
