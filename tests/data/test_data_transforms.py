"""Transforms: uint8 outputs, reproducibility, reduced-scale JPEG decoding, normalize."""

from __future__ import annotations

import pytest
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import InterpolationMode

from sslvit.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    decode_image,
    eval_transform,
    finetune_transform,
    normalize,
    pretrain_transform,
    probe_transform,
)
from sslvit.data.worker import decode_for


@pytest.mark.parametrize("make", [pretrain_transform, finetune_transform, probe_transform, eval_transform])
def test_transforms_return_uint8_and_are_reproducible(make, images):
    image = decode_image(images.jpeg(3, (64, 48)))
    transform = make(32)
    torch.manual_seed(0)
    a = transform(image)
    torch.manual_seed(0)
    b = transform(image)
    assert a.dtype == torch.uint8 and a.shape == (3, 32, 32) and torch.equal(a, b)


def test_eval_transform_matches_resize_then_center_crop(images):
    smooth = images.rgb(4, (12, 9)).resize((120, 90), resample=3)  # bicubic: no pixel-level noise
    image = decode_image(images.encode(smooth, "PNG"))
    ours = eval_transform(56, crop_pct=0.875)(image).float()
    resized = v2.Resize(64, interpolation=InterpolationMode.BICUBIC, antialias=True)(image)
    reference = v2.CenterCrop(56)(resized).float()
    shifted = v2.functional.crop(resized, 4, 10, 56, 56).float()  # 4 px off centre
    error = (ours - reference).abs().mean()
    assert error < 8.0 and error < 0.5 * (shifted - reference).abs().mean()


def test_random_resized_crop_covers_the_scale_range():
    transform = pretrain_transform(32, scale=(0.2, 1.0))
    torch.manual_seed(0)
    areas = [h * w / (400 * 300) for h, w in (transform.sample_box(400, 300)[2:] for _ in range(300))]
    assert 0.19 < min(areas) < 0.3 and 0.9 < max(areas) <= 1.0


def test_reduced_scale_jpeg_decode_is_close_to_full_decode(images):
    data = images.encode(images.rgb(0, (64, 48)).resize((960, 720)), "JPEG", quality=95)
    transform = eval_transform(64, crop_pct=1.0)  # box 720x720 -> 64: DCT scale 1/8 allowed
    assert transform.reduction(transform.sample_box(960, 720)) == 8
    reduced = decode_for(transform, data, 10**9).float()
    full = transform(decode_image(data)).float()
    assert reduced.shape == full.shape == (3, 64, 64)
    assert (reduced - full).abs().mean() < 4.0


def test_reduction_never_goes_below_output_size():
    transform = pretrain_transform(224)
    assert transform.reduction((0, 0, 447, 500)) == 1
    assert transform.reduction((0, 0, 448, 900)) == 2
    assert transform.reduction((0, 0, 1800, 1792)) == 8


def test_normalize_uint8_and_float_agree():
    images = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    out = normalize(images)
    expected = (images.float() / 255 - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(
        IMAGENET_STD).view(1, 3, 1, 1)
    assert out.dtype == torch.float32 and torch.allclose(out, expected, atol=1e-6)
    assert torch.allclose(normalize(images.float() / 255), expected, atol=1e-6)
    single = normalize(images[0], mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    assert single.shape == (3, 4, 4) and single.min() >= -1 and single.max() <= 1
    assert normalize(torch.full((1, 3, 1, 1), 255, dtype=torch.uint8), (0, 0, 0), (1, 1, 1)).eq(1.0).all()


def test_rand_augment_string_and_point_ops_match_timm():
    """``rand-m9-mstd0.5-inc1`` parses as timm reads it, and the ops that are exact in both (no
    resampling, no random sign) give timm's PIL pixels at the recipe's magnitude."""
    import numpy as np
    from PIL import Image
    from timm.data import auto_augment as timm_aa

    from sslvit.data.transforms import RandAugment

    ra = RandAugment.from_string("rand-m9-mstd0.5-inc1")
    timm_ra = timm_aa.rand_augment_transform("rand-m9-mstd0.5-inc1", {})
    assert (ra.num_ops, ra.magnitude, ra.magnitude_std, ra.prob) == (timm_ra.num_layers, 9.0, 0.5, 0.5)
    assert list(ra.ops) == [op.name for op in timm_ra.ops]
    assert RandAugment.from_string("rand-n3-m5").ops == RandAugment.OPS  # inc0 (timm's default)
    for bad in ("rand-m9-q3", "augmix-m9", "rand-mx"):
        with pytest.raises(ValueError, match="rand_augment"):
            RandAugment.from_string(bad)

    pixels = np.random.default_rng(0).integers(0, 256, (24, 24, 3), dtype=np.uint8)
    tensor = torch.from_numpy(pixels).permute(2, 0, 1).contiguous()
    for name in ("AutoContrast", "Equalize", "Invert", "PosterizeIncreasing", "SolarizeIncreasing", "SolarizeAdd",
                 "Posterize", "Solarize", "Brightness"):
        level_fn = timm_aa.LEVEL_TO_ARG[name]
        args = level_fn(9.0, {}) if level_fn is not None else ()
        theirs = np.asarray(timm_aa.NAME_TO_OP[name](Image.fromarray(pixels), *args))
        ours = ra.apply_op(tensor, name, 9.0).permute(1, 2, 0).numpy()
        diff = np.abs(ours.astype(int) - theirs.astype(int)).max()
        assert diff <= (1 if name == "Brightness" else 0), f"{name}: max difference {diff}"


def test_random_erasing_fills_one_rectangle_with_normalised_noise():
    from sslvit.data.transforms import RandomErasing

    image = torch.full((3, 64, 64), 7, dtype=torch.uint8)
    erase = RandomErasing(1.0, mean=(0.5, 0.5, 0.5), std=(0.1, 0.1, 0.1))
    torch.manual_seed(0)
    out = erase(image)
    changed = (out != 7).any(0)  # (64, 64)
    rows, cols = changed.any(1).nonzero().flatten(), changed.any(0).nonzero().flatten()
    box = out[:, rows.min() : rows.max() + 1, cols.min() : cols.max() + 1].float()
    assert 0.02 * 64 * 64 <= box[0].numel() <= 64 * 64 / 3 + 64  # one rectangle, 2%..33% of the area
    assert abs(box.mean().item() - 127.5) < 3 and abs(box.std().item() - 25.5) < 3  # N(0, 1) once normalised
    assert torch.equal(RandomErasing(0.0)(image), image) and torch.equal(image, torch.full_like(image, 7))
