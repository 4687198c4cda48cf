"""Helpers shared by the data tests: tiny images in many encodings, labelled items."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from sslvit.data.shards import SourceItem  # noqa: E402


def encode(image: Image.Image, fmt: str = "JPEG", **kw) -> bytes:
    """PIL image -> encoded bytes."""
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


def rgb_image(seed: int, size: tuple[int, int] = (24, 20)) -> Image.Image:
    """A random RGB image of (width, height) ``size``."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def exif_rotated_jpeg(size: tuple[int, int] = (40, 20), orientation: int = 6) -> bytes:
    """Left half red, right half blue, stored with an EXIF orientation tag."""
    width, height = size
    arr = np.zeros((height, width, 3), np.uint8)
    arr[:, : width // 2, 0] = 255
    arr[:, width // 2 :, 2] = 255
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(Image.fromarray(arr), "JPEG", quality=95, exif=exif.tobytes())


def unusual_images() -> dict[str, bytes]:
    """Valid images in awkward modes: each must decode to RGB, never be skipped."""
    base = rgb_image(7)
    palette = base.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette.info["transparency"] = 0
    sixteen = Image.fromarray(np.arange(20 * 24, dtype=np.uint16).reshape(20, 24) * 100)
    return {
        "gray": encode(base.convert("L"), "PNG"),
        "palette": encode(palette, "PNG", transparency=0),
        "rgba": encode(base.convert("RGBA"), "PNG"),
        "la": encode(base.convert("LA"), "PNG"),
        "cmyk": encode(base.convert("CMYK"), "JPEG"),
        "sixteen": encode(sixteen, "PNG"),
        "exif": exif_rotated_jpeg(),
    }


def make_items(count: int, num_classes: int = 3) -> list[SourceItem]:
    """``count`` labelled items, alternating JPEG and PNG, named with dots to exercise safe keys."""
    items = []
    for i in range(count):
        image = rgb_image(i)
        data = encode(image, "JPEG", quality=90) if i % 2 == 0 else encode(image, "PNG")
        items.append(SourceItem(name=f"img.{i}.v2.{'jpg' if i % 2 == 0 else 'png'}", data=data,
                                label=i % num_classes))
    return items


def write_wds_shards(directory: Path, count: int, per_shard: int, key: str = "sample{:06d}",
                     members=None) -> list[str]:
    """``count`` samples written by webdataset's own ``ShardWriter`` (no manifest); returns the keys.

    ``members(i)`` gives sample i's members (default: a JPEG and a ``cls`` label ``i % 3``).
    """
    import webdataset as wds

    directory.mkdir(parents=True, exist_ok=True)
    keys = []
    with wds.ShardWriter(str(directory / "wds-%06d.tar"), maxcount=per_shard, verbose=0) as sink:
        for i in range(count):
            sample = members(i) if members else {"jpg": encode(rgb_image(i), "JPEG"), "cls": str(i % 3).encode()}
            sink.write({"__key__": key.format(i), **sample})
            keys.append(key.format(i))
    return keys
