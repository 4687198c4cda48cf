"""The built-in corpora as shard specs: ``digits:train``, ``digits:val``, ``fashion-mnist:train``,
``fashion-mnist:val``, ``fashion-mnist:test`` (``fashion_mnist:`` too). A spec of this form builds the
corpus once under ``data/shards/<corpus>`` (relative to the working directory, as ``sslvit shards``
does; 32 px) and stands for that split's folder. Fashion-MNIST needs its idx files (see
:mod:`sslvit.data.fashion_mnist`); without them the error says how to install them."""

from __future__ import annotations

from pathlib import Path

from sslvit.data.digits import ensure_digits_shards
from sslvit.data.fashion_mnist import ensure_fashion_mnist_shards

BUILTIN_SPLITS = {"digits": ("train", "val"), "fashion-mnist": ("train", "val", "test")}
BUILTIN_ROOTS = {"digits": Path("data/shards/digits"), "fashion-mnist": Path("data/shards/fashion_mnist")}


def builtin_name(spec: str) -> tuple[str, str] | None:
    """(corpus, split) when ``spec`` names a built-in corpus split, else None. An unknown split of a
    built-in corpus is a ValueError listing its splits."""
    name, sep, split = spec.partition(":")
    name = name.strip().lower().replace("_", "-")
    if not sep or name not in BUILTIN_SPLITS:
        return None
    if split not in BUILTIN_SPLITS[name]:
        raise ValueError(f"{spec}: the built-in {name} corpus has the splits {', '.join(BUILTIN_SPLITS[name])}")
    return name, split


def builtin_dir(spec: str) -> Path | None:
    """The folder of the built-in split ``spec`` names (built on first use), or None for other specs."""
    found = builtin_name(spec)
    if found is None:
        return None
    name, split = found
    if name == "digits":
        return ensure_digits_shards(BUILTIN_ROOTS[name])[split]
    return ensure_fashion_mnist_shards(BUILTIN_ROOTS[name])[split]
