"""JPEG region decoding: only the crop box is decoded, and its pixels are the whole decode's."""

from __future__ import annotations

import io
import logging

import numpy as np
import pytest
import simplejpeg
import torch
from data_helpers import encode, exif_rotated_jpeg
from PIL import Image

from sslvit.data import ImageTransform, build_loader, jpeg_crop, pretrain_transform
from sslvit.data import stream as stream_module
from sslvit.data import worker as worker_module
from sslvit.data.decode import SampleError
from sslvit.data.shards import SourceItem, write_shards
from sslvit.data.worker import decode_for


def _photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """Smooth colour gradients plus noise: chroma that changes across every block edge."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([x / width * 255, y / height * 255, (x + y) % 97 * 2.6], axis=-1)
    pixels = base + rng.normal(0, 18, (height, width, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _jpegs() -> dict[str, bytes]:
    photo, odd = _photo(160, 120), _photo(133, 77, seed=1)
    out = {f"4:{s}": encode(photo, "JPEG", quality=90, subsampling=i) for i, s in enumerate(("4:4", "2:2", "2:0"))}
    out["progressive"] = encode(photo, "JPEG", quality=85, progressive=True)
    out["grey"] = encode(photo.convert("L"), "JPEG", quality=90)
    out["odd size"] = encode(odd, "JPEG", quality=80)
    out["odd size 4:2:2"] = encode(odd, "JPEG", quality=80, subsampling=1)
    out["restart markers"] = encode(photo, "JPEG", quality=90, restart_marker_blocks=3)
    return out


def _boxes(height: int, width: int, rng: np.random.Generator, count: int) -> list[tuple[int, int, int, int]]:
    boxes = [(0, 0, height, width), (height - 1, width - 1, 1, 1), (0, width - 1, height, 1), (height - 1, 0, 1, width)]
    for _ in range(count):
        h, w = int(rng.integers(1, height + 1)), int(rng.integers(1, width + 1))
        boxes.append((int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w))
    return boxes


def test_the_extension_is_built():
    assert jpeg_crop.enabled(), jpeg_crop.unavailable_reason()


@pytest.mark.parametrize("kind", list(_jpegs()))
def test_a_region_is_the_whole_decode_cut_out_bit_for_bit(kind):
    data = _jpegs()[kind]
    width, height = Image.open(io.BytesIO(data)).size
    rng = np.random.default_rng(0)
    for reduce in (1, 2, 4, 8):
        whole = simplejpeg.decode_jpeg(data, colorspace="RGB", min_height=-(-height // reduce),
                                       min_width=-(-width // reduce))
        h, w = whole.shape[:2]
        assert (h, w) == (-(-height // reduce), -(-width // reduce))
        for top, left, box_h, box_w in _boxes(h, w, rng, 40):
            region = jpeg_crop.decode_box(data, reduce, (top, left, box_h, box_w))
            assert region is not None
            pixels, inner = region
            assert inner == (0, 0, box_h, box_w) and pixels.shape == (3, box_h, box_w)
            expected = torch.from_numpy(whole[top:top + box_h, left:left + box_w]).permute(2, 0, 1)
            assert torch.equal(pixels, expected), (kind, reduce, (top, left, box_h, box_w))


def test_decode_for_decodes_the_box_alone_and_gives_the_same_output(monkeypatch):
    data = _jpegs()["4:2:0"]
    transforms = [pretrain_transform(32), pretrain_transform(48, scale=(0.9, 1.0)), ImageTransform(40, "center")]
    expected = {}
    monkeypatch.setenv("SSLVIT_JPEG_CROP", "0")
    for t, transform in enumerate(transforms):
        for seed in range(12):
            torch.manual_seed(seed)
            expected[t, seed] = decode_for(transform, data, 10**8)
    monkeypatch.delenv("SSLVIT_JPEG_CROP")

    def whole(*args, **kwargs):
        raise AssertionError("the whole image was decoded")

    monkeypatch.setattr(worker_module, "load_rgb", whole)
    for t, transform in enumerate(transforms):
        for seed in range(12):
            torch.manual_seed(seed)
            assert torch.equal(decode_for(transform, data, 10**8), expected[t, seed]), (t, seed)


def test_damaged_rotated_and_cmyk_jpegs_are_decoded_whole(monkeypatch):
    data = _jpegs()["4:2:0"]
    opened = Image.open(io.BytesIO(data))
    assert jpeg_crop.applies_to(opened, data, 1)
    truncated = data[: len(data) * 2 // 3]  # no end marker: judged by the whole decode, as before
    assert not jpeg_crop.applies_to(Image.open(io.BytesIO(truncated)), truncated, 1)
    with pytest.raises(SampleError, match="undecodable_image"):
        decode_for(pretrain_transform(32), truncated, 10**8)
    rotated = exif_rotated_jpeg()
    assert not jpeg_crop.applies_to(Image.open(io.BytesIO(rotated)), rotated, 6)
    assert decode_for(ImageTransform(8, "none"), rotated, 10**8).shape == (3, 8, 8)
    cmyk = encode(_photo(40, 30).convert("CMYK"), "JPEG")
    assert not jpeg_crop.applies_to(Image.open(io.BytesIO(cmyk)), cmyk, 1)
    assert jpeg_crop.decode_box(cmyk, 1, (0, 0, 30, 40)) is None  # the decoder refuses it too
    # corrupt entropy data inside the box: libjpeg's warning sends the file to the whole decode
    damaged = bytearray(data)
    start = data.index(b"\xff\xda") + 40
    damaged[start:start + 30] = b"\xff\xd3" * 15
    assert jpeg_crop.decode_box(bytes(damaged), 1, (0, 0, 120, 160)) is None


def test_the_loader_says_when_jpegs_are_decoded_whole(tmp_path, monkeypatch, caplog):
    items = [SourceItem(name=f"s{i}.jpg", data=encode(_photo(40, 30, seed=i), "JPEG"), label=0) for i in range(4)]
    write_shards(items, tmp_path, prefix="s", max_count=4, progress=False)
    monkeypatch.setattr(jpeg_crop, "_decode_region", None)
    monkeypatch.setattr(jpeg_crop, "_IMPORT_ERROR", "No module named 'sslvit.data._jpegcrop'")
    monkeypatch.setattr(stream_module, "_said_decoder", False)
    with caplog.at_level(logging.WARNING, logger="sslvit.data"):
        loader = build_loader(tmp_path, batch_size=2, transform=pretrain_transform(16), num_workers=0)
        batches = list(loader)
    assert len(batches) == 2 and batches[0]["image"].shape == (2, 3, 16, 16)
    assert "JPEGs are decoded whole, not only their crop box" in caplog.text
    assert "apt install libjpeg-dev" in caplog.text
