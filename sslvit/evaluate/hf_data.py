"""Hugging Face datasets as evaluation splits: converted once into shards in a cache directory.

A split is named ``hf:SOURCE[:SPLIT[:IMAGE_COLUMN[:LABEL_COLUMN]]]``; SOURCE is anything
:func:`sslvit.data.sources.hf_dataset` reads (a Hub name, a ``save_to_disk`` folder, parquet files,
an image folder). The shards keep the original image bytes; the per-channel mean / std land in
their manifest like those written by ``data/make_shards.py``.
"""

from __future__ import annotations

import re
import shutil
import uuid
from pathlib import Path
from typing import Any

from accelerate import PartialState


def parse_hf_spec(spec: str) -> dict[str, str]:
    """``"hf:mnist:test:image:label"`` -> ``{"source", "split", "image_column", "label_column"}``."""
    if not spec.startswith("hf:") or len(spec) <= 3:
        raise ValueError(f"{spec!r}: expected hf:SOURCE[:SPLIT[:IMAGE_COLUMN[:LABEL_COLUMN]]]")
    parts = spec[3:].split(":")
    if len(parts) > 4:
        raise ValueError(f"{spec!r}: too many ':' parts (hf:SOURCE[:SPLIT[:IMAGE_COLUMN[:LABEL_COLUMN]]])")
    names = ("source", "split", "image_column", "label_column")
    defaults = ("", "train", "image", "label")
    return {n: (parts[i] if i < len(parts) and parts[i] else d) for i, (n, d) in enumerate(zip(names, defaults, strict=True))}


def hf_to_shards(spec: str, cache_root: str | Path, state: Any = None) -> str:
    """Shard directory for ``spec`` under ``cache_root``, written by the main process on first use.

    Other ranks wait for it. Returns the directory (which holds ``manifest.json``).
    """
    from sslvit.data.shards import MANIFEST_NAME, write_shards
    from sslvit.data.sources import hf_dataset

    parts = parse_hf_spec(spec)
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", "-".join(parts.values())).strip("_")
    out = Path(cache_root) / name
    state = state or PartialState()
    if state.is_main_process and not (out / MANIFEST_NAME).is_file():
        source = hf_dataset(parts["source"], parts["split"], parts["image_column"], parts["label_column"])
        tmp = out.with_name(f".{out.name}.tmp-{uuid.uuid4().hex[:8]}")
        try:
            write_shards(source.items, tmp, prefix=name[:40], class_names=source.class_names, total=source.total,
                         skipped=source.skipped, extra={"hf": source.info}, progress=False)
            shutil.rmtree(out, ignore_errors=True)
            tmp.rename(out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    state.wait_for_everyone()
    if not (out / MANIFEST_NAME).is_file():
        raise FileNotFoundError(f"{spec}: no shards at {out}")
    return str(out)
