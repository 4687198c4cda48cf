"""Shared fixtures for the data tests: image factories and a tiny labelled shard set."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from data_helpers import encode, exif_rotated_jpeg, make_items, rgb_image, unusual_images

from sslvit.data.shards import write_shards


@pytest.fixture
def images() -> SimpleNamespace:
    """Image factories: rgb(seed, size), jpeg(seed, size), png(seed, size), exif(...), unusual()."""
    return SimpleNamespace(
        rgb=rgb_image,
        jpeg=lambda seed, size=(24, 20): encode(rgb_image(seed, size), "JPEG", quality=90),
        png=lambda seed, size=(24, 20): encode(rgb_image(seed, size), "PNG"),
        exif=exif_rotated_jpeg,
        unusual=unusual_images,
        encode=encode,
    )


@pytest.fixture
def clean_shards(tmp_path: Path) -> SimpleNamespace:
    """37 labelled samples in shards of at most 8 (5 shards) with a manifest."""
    items = make_items(37)
    out = tmp_path / "clean"
    manifest = write_shards(items, out, prefix="clean", max_count=8, class_names=["a", "b", "c"],
                            progress=False)
    return SimpleNamespace(dir=out, manifest=manifest, items=items)
