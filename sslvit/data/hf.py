"""Hugging Face datasets as evaluation splits: converted once into shards in a cache directory.

A split is named ``hf:SOURCE[:SPLIT[:IMAGE_COLUMN[:LABEL_COLUMN]]]``; SOURCE is anything
:func:`sslvit.data.sources.hf_dataset` reads (a Hub name, a ``save_to_disk`` folder, parquet files,
an image folder). SPLIT defaults to ``train``, IMAGE_COLUMN to ``image``, LABEL_COLUMN to ``label``;
an empty LABEL_COLUMN (``hf:SOURCE:train:image:``) reads the dataset unlabeled. A split or column the
dataset lacks is an error listing those it has. The shards keep the original image bytes; the
per-channel mean / std land in their manifest like those written by ``sslvit shards``. Every
stage (pretraining, fine-tuning, probe, kNN) reads ``hf:`` specs through :func:`resolve_spec`.
"""

from __future__ import annotations

import re
import shutil
import uuid
from pathlib import Path
from typing import Any

from accelerate import PartialState

from sslvit.data.builtin import builtin_dir
from sslvit.data.shards import write_shards
from sslvit.data.sources import hf_dataset
from sslvit.files import MANIFEST_FILE


def parse_hf_spec(spec: str) -> dict[str, str]:
    """``"hf:mnist:test:image:label"`` -> ``{"source", "split", "image_column", "label_column"}``.

    Missing or empty parts take the defaults, except a LABEL_COLUMN given empty: ``""`` = unlabeled."""
    if not spec.startswith("hf:") or len(spec) <= 3:
        raise ValueError(f"{spec!r}: expected hf:SOURCE[:SPLIT[:IMAGE_COLUMN[:LABEL_COLUMN]]]")
    parts = spec[3:].split(":")
    if len(parts) > 4:
        raise ValueError(f"{spec!r}: too many ':' parts (hf:SOURCE[:SPLIT[:IMAGE_COLUMN[:LABEL_COLUMN]]])")
    names = ("source", "split", "image_column", "label_column")
    defaults = ("", "train", "image", "label")
    out = {n: (parts[i] if i < len(parts) and parts[i] else d) for i, (n, d) in enumerate(zip(names, defaults, strict=True))}
    if len(parts) == 4 and not parts[3]:
        out["label_column"] = ""
    return out


def hf_to_shards(spec: str, cache_root: str | Path, state: Any = None) -> str:
    """Shard directory for ``spec`` under ``cache_root``, written by the main process on first use.

    Other ranks wait for it. Returns the directory (which holds ``manifest.json``).
    """
    parts = parse_hf_spec(spec)
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", "-".join(parts.values())).strip("_")
    out = Path(cache_root) / name
    state = state or PartialState()
    failure: Exception | None = None
    if state.is_main_process and not (out / MANIFEST_FILE).is_file():
        try:
            source = hf_dataset(parts["source"], parts["split"], parts["image_column"], parts["label_column"])
            tmp = out.with_name(f".{out.name}.tmp-{uuid.uuid4().hex[:8]}")
            try:
                write_shards(source.items, tmp, prefix=name[:40], class_names=source.class_names,
                             total=source.total, skipped=source.skipped, extra={"hf": source.info},
                             progress=False)
                shutil.rmtree(out, ignore_errors=True)
                tmp.rename(out)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            print(f"{spec}: converted into shards at {out}", flush=True)
        except Exception as err:  # the other ranks must still reach the barrier below
            failure = err
    state.wait_for_everyone()
    if failure is not None:
        raise failure
    if not (out / MANIFEST_FILE).is_file():
        raise FileNotFoundError(f"{spec}: no shards at {out} (the main process could not convert it; see its error)")
    return str(out)


def resolve_spec(spec: str, cache_root: str | Path, state: Any = None) -> str:
    """A shard spec for ``spec``: an ``hf:`` spec becomes its shard directory under ``cache_root``
    (converted once, see :func:`hf_to_shards`); a built-in corpus split (``fashion-mnist:train``)
    its folder, built once; any other spec is returned unchanged."""

    builtin = builtin_dir(spec)
    if builtin is not None:
        return str(builtin)
    if spec.startswith("hf:"):
        return hf_to_shards(spec, cache_root, state)
    return spec
