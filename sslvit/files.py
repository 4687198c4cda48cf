"""The file names every stage shares, and hashing of plain files.

One home for each name: a run directory, a published folder and a shard directory are read and
written by several packages, which all take the names from here.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

WEIGHTS_FILE = "model.safetensors"  # the encoder: run directories, published folders, Hub repos
OBJECTIVE_FILE = "objective.safetensors"  # encoder + decoder / heads, written at the end of a run
CONFIG_FILE = "config.json"  # a published folder's timm-style config
CARD_FILE = "README.md"  # a published folder's model card
FIGURES_DIR = "figures"  # a published folder's pictures
MANIFEST_FILE = "manifest.json"  # a shard directory's counts, hashes, classes and statistics
RUN_CONFIG_FILE = "config.yaml"  # a run directory's resolved config
METRICS_FILE = "metrics.jsonl"  # a run directory's logged metrics, one JSON object a line
SUMMARY_FILE = "summary.json"  # a finished run's step count and output paths


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of the bytes of the file at ``path``."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()
