"""Dirty corpora: every kind of bad sample is skipped and counted exactly; odd modes decode to RGB;
pickled members are never unpickled."""

from __future__ import annotations

import pickle
import tarfile

import numpy as np
import pytest
import torch
from data_helpers import unusual_images

from sslvit.data import build_loader, decode_image, pretrain_transform
from sslvit.data.decode import SampleError
from sslvit.data.shards import ShardWriter, write_manifest


class _CreatesFileWhenUnpickled:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _truncate_inside_member(path, member_index: int) -> None:
    with tarfile.open(path) as tar:
        member = tar.getmembers()[member_index]
    with open(path, "r+b") as f:
        f.truncate(member.offset_data + member.size // 2)


@pytest.fixture
def dirty_shards(tmp_path, images):
    good = {f"good{i}": images.jpeg(100 + i) for i in range(4)}
    unusual = unusual_images()
    jpeg = images.jpeg(1)
    shard_a = {
        **{k: {"jpg": v, "cls": b"1"} for k, v in good.items()},
        **{k: {"png" if v[:4] == b"\x89PNG" else "jpg": v, "cls": b"2"} for k, v in unusual.items()},
        "corrupt": {"jpg": jpeg[: int(len(jpeg) * 0.6)], "cls": b"0"},
        "zerobyte": {"jpg": b"", "cls": b"0"},
        "textfile": {"jpg": b"this is not an image\n", "cls": b"0"},
        "oversized": {"png": images.encode(images.rgb(9, (300, 300)), "PNG"), "cls": b"0"},
        "nolabel": {"jpg": images.jpeg(50)},
        "badlabel": {"jpg": images.jpeg(51), "cls": b"cat"},
        "noimage": {"cls": b"1", "json": b"{}"},
    }
    shards = []
    with ShardWriter(tmp_path, "dirty", max_count=100) as writer:
        for key, members in shard_a.items():
            writer.write(key, members)
    shards += writer.shards
    with ShardWriter(tmp_path, "trunc", max_count=100) as writer:
        for i in range(3):
            writer.write(f"t{i}", {"jpg": images.jpeg(200 + i), "cls": b"0"})
    _truncate_inside_member(tmp_path / "trunc-000000.tar", 4)  # the third sample's image
    shards += writer.shards
    write_manifest({"shards": shards, "total": sum(s["count"] for s in shards),
                    "class_names": ["0", "1", "2"]}, tmp_path)
    expected_valid = set(good) | set(unusual) | {"t0", "t1"}
    return tmp_path, expected_valid


def test_battery_counts_exactly_what_was_injected(dirty_shards):
    directory, expected_valid = dirty_shards
    loader = build_loader(directory, batch_size=4, transform=pretrain_transform(16), num_workers=2,
                          need_labels=True, max_pixels=200 * 200, return_meta=True)
    batches = list(loader)
    assert loader.stats == {"undecodable_image": 2, "empty_image": 1, "too_large": 1, "missing_label": 1,
                            "bad_label": 1, "missing_image": 1, "truncated_tar": 1}
    seen = [k for b in batches for k, v in zip(b["key"], b["valid"].tolist(), strict=True) if v]
    assert sorted(seen) == sorted(expected_valid)  # odd modes are decoded, not skipped; no repeats
    for b in batches:
        assert b["image"].shape == (4, 3, 16, 16) and b["image"].dtype == torch.uint8
        assert (b["label"] >= 0).all()


def test_labels_optional_when_not_needed(dirty_shards):
    directory, expected_valid = dirty_shards
    loader = build_loader(directory, batch_size=4, transform=pretrain_transform(16), num_workers=0,
                          need_labels=False, max_pixels=200 * 200, return_meta=True)
    batches = list(loader)
    assert "missing_label" not in loader.stats and "bad_label" not in loader.stats
    labels = {k: lab for b in batches for k, lab, v in zip(b["key"], b["label"].tolist(), b["valid"].tolist(),
                                                           strict=True) if v}
    assert labels["nolabel"] == -1 and labels["badlabel"] == -1 and labels["good0"] == 1
    assert set(labels) == expected_valid | {"nolabel", "badlabel"}


def test_pickle_members_are_never_unpickled(tmp_path, images):
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_CreatesFileWhenUnpickled(str(marker)))
    shards_dir = tmp_path / "shards"
    with ShardWriter(shards_dir, "p") as writer:
        for i in range(6):
            writer.write(f"s{i}", {"jpg": images.jpeg(i), "cls": b"0", "pyd": payload, "pickle": payload})
    write_manifest({"shards": writer.shards}, shards_dir)
    loader = build_loader(shards_dir, batch_size=3, transform=None, num_workers=1, need_labels=True)
    batches = list(loader)
    assert sum(int(b["valid"].sum()) for b in batches) == 6 and loader.stats == {}
    assert not marker.exists()
    # the hazard is real: webdataset's default decoders do unpickle these members
    import webdataset as wds

    next(iter(wds.WebDataset(str(shards_dir / "p-000000.tar"), shardshuffle=False).decode()))
    assert marker.exists()


@pytest.mark.parametrize("name", ["gray", "palette", "rgba", "la", "cmyk", "sixteen", "exif"])
def test_unusual_modes_decode_to_rgb(name):
    data = unusual_images()[name]
    image = decode_image(data)
    assert image.dtype == torch.uint8 and image.shape[0] == 3
    assert image.shape[1:] == ((40, 20) if name == "exif" else (20, 24))


def test_sixteen_bit_is_rescaled_not_clipped(images):
    from PIL import Image

    values = np.array([[0, 257 * 100, 65535, 32896]], dtype=np.uint16)
    image = decode_image(images.encode(Image.fromarray(values), "PNG"))
    assert image[0, 0].tolist() == [0, 100, 255, 128] and torch.equal(image[0], image[2])


def test_exif_orientation_applied(images):
    from sslvit.data import eval_transform
    from sslvit.data.worker import decode_for

    reduced = decode_for(eval_transform(32, crop_pct=1.0), images.exif(size=(800, 400)), 10**9)  # DCT 1/8
    for image in (decode_image(images.exif()), decode_image(images.exif(size=(400, 200))), reduced):
        image = image.float()
        h = image.shape[1]
        top, bottom = image[:, : h // 2].mean((1, 2)), image[:, h // 2 :].mean((1, 2))
        assert top[0] > 200 and top[2] < 50  # orientation 6: the left (red) half ends up on top
        assert bottom[2] > 200 and bottom[0] < 50


def test_decompression_bomb_refused_before_decoding(images):
    data = images.encode(images.rgb(0, (64, 64)), "PNG")
    with pytest.raises(SampleError) as err:
        decode_image(data, max_pixels=64 * 63)
    assert err.value.reason == "too_large"


def test_labels_from_a_json_field_and_out_of_range_labels_are_counted(tmp_path, images):
    import json

    with ShardWriter(tmp_path, "j", max_count=100) as writer:
        for i in range(8):
            label = 7 if i == 5 else i % 3  # sample 5 is outside [0, 3)
            writer.write(f"s{i}", {"jpg": images.jpeg(i), "json": json.dumps({"ann": {"y": label}}).encode()})
        writer.write("nofield", {"jpg": images.jpeg(9), "json": b'{"ann": {}}'})
    write_manifest({"shards": writer.shards}, tmp_path)
    loader = build_loader(tmp_path, batch_size=3, transform=None, num_workers=2, need_labels=True,
                          label_key="ann.y", num_classes=3)
    batches = list(loader)
    labels = {k: int(lab) for b in batches for k, lab, v in zip(b["key"], b["label"], b["valid"], strict=True) if v}
    assert labels == {f"s{i}": i % 3 for i in range(8) if i != 5}
    assert loader.stats == {"label_out_of_range": 1, "missing_label": 1}
    assert all(0 <= int(lab) < 3 for b in batches for lab in b["label"])  # never reaches the loss
