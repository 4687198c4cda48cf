"""The config-key table of ``--help``: every dotted key, the value a run uses, and its meaning."""

from __future__ import annotations

import json
from typing import Any

from sslvit import config as config_lib

UNDOCUMENTED = "(no description)"


def key_meanings(cfg: Any, extra: dict[str, str] | None = None) -> dict[str, str]:
    """Dotted key -> one-line meaning for every key of ``cfg`` (objective keys of its objective),
    from :func:`sslvit.config.key_docs`; ``extra`` overrides it for a command's own wording."""
    return {**config_lib.key_docs(cfg), **(extra or {})}


def flat_values(tree: dict, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (leaves only)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flat_values(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def key_table(cfg: Any, extra: dict[str, str] | None = None, width: int = 44) -> str:
    """One line per key: ``  section.key = value   meaning`` (values as YAML/JSON literals)."""
    meanings = key_meanings(cfg, extra)
    lines = []
    for key, value in flat_values(config_lib.to_dict(cfg)).items():
        left = f"  {key} = {json.dumps(value)}"
        meaning = meanings.get(key) or UNDOCUMENTED
        if len(left) + 2 > width:
            lines.append(left)
            lines.append(" " * width + meaning)
        else:
            lines.append(left.ljust(width) + meaning)
    return "\n".join(lines)
