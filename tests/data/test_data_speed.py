"""Loader speed features: persistent workers across epochs, and repeated views of one decode."""

from __future__ import annotations

import pytest
import torch
from data_helpers import make_items

from sslvit.data import build_loader, pretrain_transform
from sslvit.data.shards import write_shards


def _masker(batch_size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    return {"mask": torch.rand(batch_size, 16, generator=generator) > 0.5}


@pytest.fixture
def shards(tmp_path):
    """21 labelled samples in 3 shards of at most 8."""
    write_shards(make_items(21), tmp_path, prefix="s", max_count=8, progress=False)
    return tmp_path


def _loader(spec, workers: int = 2, **kw):
    return build_loader(spec, batch_size=6, transform=pretrain_transform(16), num_workers=workers, seed=5,
                        masker=_masker, **kw)


def _same(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for g, (x, y) in enumerate(zip(a, b, strict=True)):
        assert x["key"] == y["key"], g
        for name in ("image", "mask", "valid", "label"):
            assert torch.equal(x[name], y[name]), (g, name)


def test_workers_persist_across_epochs_with_the_same_batches(shards):
    persistent, fresh = _loader(shards), _loader(shards, persistent_workers=False)
    pids, fresh_pids = [], []
    for epoch in range(3):
        _same(list(persistent.iterate(epoch)), list(fresh.iterate(epoch)))
        pids.append(persistent.reader_pids)
        fresh_pids.append(fresh.reader_pids)
    assert len(pids[0]) == 2 and len(set(pids[0])) == 2
    assert pids[0] == pids[1] == pids[2]
    assert len({tuple(p) for p in fresh_pids}) == 3  # a loader per pass: new processes every epoch
    # resume on the persistent workers: start at batch 2 of epoch 1 = the tail of that epoch
    _same(list(persistent.iterate(1, start_batch=2)), list(fresh.iterate(1))[2:])
    assert persistent.reader_pids == pids[0]


def test_batches_are_pinned_exactly_when_cuda_is_present(shards):
    assert _loader(shards).pin_memory is torch.cuda.is_available()
    assert _loader(shards, pin_memory=False).pin_memory is False


def test_a_new_pass_ends_the_previous_one_on_persistent_workers(shards):
    loader = _loader(shards)
    first = loader.iterate(0)
    next(first)
    second = list(loader.iterate(1))
    _same(second, list(_loader(shards, workers=0).iterate(1)))
    with pytest.raises(RuntimeError, match="another pass of this loader started"):
        next(first)


def test_repeats_give_k_distinct_views_of_each_key(shards, monkeypatch):
    from sslvit.data import worker

    decoded = []
    real_decode = worker.decode_image
    monkeypatch.setattr(worker, "decode_image", lambda data, limit: decoded.append(1) or real_decode(data, limit))
    plain, twice = _loader(shards, workers=0), _loader(shards, workers=0, repeats=2)
    assert (len(plain), len(twice)) == (4, 7)  # ceil(21 / 6), ceil(42 / 6)
    batches = list(twice.iterate(0))
    assert len(decoded) == 21  # one decode per sample for its two views
    keys = [k for b in batches for k, v in zip(b["key"], b["valid"].tolist(), strict=True) if v]
    assert len(keys) == 42 and len(set(keys)) == 21
    assert all(keys.count(k) == 2 for k in set(keys))
    images = torch.cat([b["image"] for b in batches])
    masks = torch.cat([b["mask"] for b in batches])
    flat = [k for b in batches for k in b["key"]]
    pairs = 0
    for i in range(len(flat) - 1):
        if flat[i] and flat[i] == flat[i + 1]:  # the two views sit side by side in their stream
            pairs += 1
            assert not torch.equal(images[i], images[i + 1]), flat[i]
            assert not torch.equal(masks[i], masks[i + 1]), flat[i]
    assert pairs >= 15


@pytest.mark.parametrize("workers", [0, 2])
def test_repeats_resume_bitwise_at_batch_g(shards, workers):
    full = list(_loader(shards, workers=0, repeats=2).iterate(1))
    loader = _loader(shards, workers=workers, repeats=2)
    assert len(full) > 3 and len(full) == len(loader)
    _same(list(loader.iterate(1)), full)  # asserts keys and pixels equal, batch by batch
    tail = list(loader.iterate(1, start_batch=3))
    assert len(tail) == len(full) - 3
    _same(tail, full[3:])


def _pil_pixels(data: bytes, reduce: int = 1) -> torch.Tensor:
    import io

    import numpy as np
    from PIL import Image

    image = Image.open(io.BytesIO(data))
    if reduce > 1:
        image.draft("RGB", (image.size[0] // reduce, image.size[1] // reduce))
    return torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1)


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_jpeg_decoding_gives_pil_pixels_at_every_dct_scale(images, mode):
    from sslvit.data import decode

    assert decode.jpeg_decoder() == "simplejpeg"  # a dependency: the loader's speed depends on it
    data = images.encode(images.rgb(3, (67, 45)).convert(mode), "JPEG", quality=88)
    for reduce in (1, 2, 4, 8):
        pixels, got = decode.load_rgb(decode.open_image(data), data, reduce)
        assert got == reduce
        assert torch.equal(pixels, _pil_pixels(data, reduce)), reduce
    rotated = images.exif()  # left red, right blue, EXIF orientation 6: shown rotated
    pixels = decode.decode_image(rotated)
    assert pixels.shape == (3, 40, 20)
    assert pixels[0, :10].float().mean() > 200 and pixels[2, -10:].float().mean() > 200
    with pytest.raises(decode.SampleError, match="undecodable_image"):
        broken = data[:200] + b"\x00" * 50
        decode.load_rgb(decode.open_image(broken), broken, 1)


def _tar(path, members, fmt, compress=""):
    import io
    import tarfile

    with tarfile.open(path, f"w:{compress}" if compress else "w", format=fmt) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


@pytest.mark.parametrize("fmt", ["USTAR", "GNU", "PAX"])
@pytest.mark.parametrize("compress", ["", "gz"])
def test_tar_headers_parsed_directly_match_tarfile(tmp_path, fmt, compress):
    import tarfile
    from collections import Counter

    from sslvit.data.tario import iter_shard

    deep = "d" * 60 + "/" + "e" * 70  # a path over 100 characters: prefix field, GNU long name or pax path
    names = [f"{deep}/k{i}" if fmt != "USTAR" or i % 2 else f"dir/k{i}" for i in range(5)]
    members = [(f"{n}.{ext}", f"{n}-{ext}".encode() * (i + 1) * 37) for i, n in enumerate(names)
               for ext in ("jpg", "cls", "npy")]
    path = tmp_path / f"s.tar{'.gz' if compress else ''}"
    _tar(path, members, getattr(tarfile, f"{fmt}_FORMAT"), compress)
    errors: Counter = Counter()
    raws = list(iter_shard(str(path), errors, expected=5))
    assert not errors
    assert [r.key for r in raws] == names and [r.index for r in raws] == list(range(5))
    for i, raw in enumerate(raws):
        assert raw.members == {"jpg": members[3 * i][1], "cls": members[3 * i + 1][1]}
        assert raw.other == ("npy",)


def test_a_damaged_tar_header_keeps_the_samples_before_it(tmp_path):
    import tarfile
    from collections import Counter

    from sslvit.data.tario import iter_shard

    path = tmp_path / "s.tar"
    _tar(path, [(f"k{i}.cls", b"1" * 700) for i in range(4)], tarfile.USTAR_FORMAT)
    data = bytearray(path.read_bytes())
    data[3 * 1536 + 10] ^= 0xFF  # the 4th member's header (each member: 512 header + 1024 data)
    path.write_bytes(bytes(data))
    errors: Counter = Counter()
    assert [r.key for r in iter_shard(str(path), errors, expected=4)] == ["k0", "k1"]
    assert errors == Counter(truncated_tar=1)
