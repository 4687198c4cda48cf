"""JPEGs decoded by the main process on a device (nvJPEG on a GPU; libjpeg-turbo on the CPU here)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from data_helpers import encode, exif_rotated_jpeg
from PIL import Image

from sslvit.config import ConfigError
from sslvit.data import build_loader, finetune_transform, pretrain_transform
from sslvit.data.device_decode import Encoded, decode_batch, encode_for
from sslvit.data.shards import SourceItem, write_shards
from sslvit.errors import InputError
from sslvit.training.launch import check_jpeg_decode


def _photo(seed: int, size=(56, 44)) -> Image.Image:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size[1], 0:size[0]].astype(np.float32)
    pixels = np.stack([x * 4, y * 5, (x + y) * 3], axis=-1) + rng.normal(0, 20, (size[1], size[0], 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """JPEGs (one rotated by EXIF) and PNGs: 24 samples in 3 shards."""
    path = tmp_path_factory.mktemp("device")
    items = []
    for i in range(24):
        if i == 5:
            data, name = exif_rotated_jpeg((56, 44)), f"s{i}.jpg"
        elif i % 4 == 3:
            data, name = encode(_photo(i), "PNG"), f"s{i}.png"
        else:
            data, name = encode(_photo(i), "JPEG", quality=90), f"s{i}.jpg"
        items.append(SourceItem(name=name, data=data, label=i % 3))
    write_shards(items, path, prefix="d", max_count=8, progress=False)
    return path


@pytest.mark.parametrize("workers", [0, 2])
def test_the_main_process_decode_gives_the_readers_batches(shards, workers):
    # crops of 56 x 44 images to 24 px never reach a reduced DCT scale: the two paths meet bit for bit
    transform = pretrain_transform(24, scale=(0.3, 1.0))
    cpu = build_loader(shards, batch_size=6, transform=transform, num_workers=0, seed=2)
    device = build_loader(shards, batch_size=6, transform=transform, num_workers=workers, seed=2, decode_on="cpu")
    for epoch in range(2):
        cpu.set_epoch(epoch)
        device.set_epoch(epoch)
        for g, (want, got) in enumerate(zip(cpu, device, strict=True)):
            assert got["key"] == want["key"]
            assert got["image"].dtype == torch.uint8 and got["image"].shape == (6, 3, 24, 24)
            assert torch.equal(got["image"], want["image"]), (epoch, g)
            assert torch.equal(got["label"], want["label"])
    device.close()


def test_readers_send_plain_jpegs_encoded_and_decode_the_rest():
    transform = pretrain_transform(24)
    torch.manual_seed(0)
    encoded = encode_for(transform, encode(_photo(1), "JPEG"), 10**8)
    assert isinstance(encoded, Encoded) and encoded.data.dtype == torch.uint8
    top, left, height, width = encoded.box
    assert 0 <= top and top + height <= 44 and 0 <= left and left + width <= 56
    assert encode_for(transform, exif_rotated_jpeg(), 10**8) is None
    assert encode_for(transform, encode(_photo(1), "PNG"), 10**8) is None
    flips = []
    for seed in range(40):  # the flip is the transform's own draw: about half of them
        torch.manual_seed(seed)
        flips.append(encode_for(transform, encode(_photo(1), "JPEG"), 10**8).flip)
    assert 8 < sum(flips) < 32
    pixels = torch.zeros(3, 24, 24, dtype=torch.uint8)
    out = decode_batch([encoded, pixels], (24, 24), "cpu")
    assert out.shape == (2, 3, 24, 24) and torch.equal(out[1], pixels)


def test_the_device_decode_refuses_what_it_cannot_do(shards):
    with pytest.raises(InputError, match="RandAugment"):
        build_loader(shards, batch_size=6, transform=finetune_transform(24), num_workers=0, decode_on="cpu")
    with pytest.raises(InputError, match="repeats=2"):
        build_loader(shards, batch_size=6, transform=pretrain_transform(24), num_workers=0, repeats=2,
                     decode_on="cpu")
    with pytest.raises(ConfigError, match="data.jpeg_decode=nvjpeg .* no CUDA device"):
        check_jpeg_decode("nvjpeg", on_gpu=False)
    check_jpeg_decode("nvjpeg", on_gpu=True)
    check_jpeg_decode("cpu", on_gpu=False)

