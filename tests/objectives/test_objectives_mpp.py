"""Masked patch prediction: 3-bit colour targets, the corruption of embeddings, the ablation targets."""

from __future__ import annotations

import math

import pytest
import torch

from sslvit.objectives.mpp import color3bit_4x4_target, color3bit_target


def solid(rgb: tuple[float, float, float], size: int = 8) -> torch.Tensor:
    return torch.tensor(rgb).view(1, 3, 1, 1).expand(1, 3, size, size).clone()


@pytest.mark.parametrize(
    "rgb, cls",
    [
        ((1.0, 0.0, 0.0), 448),
        ((1.0, 1.0, 1.0), 511),
        ((0.0, 0.0, 0.0), 0),
        ((0.5, 0.5, 0.5), 292),
        ((0.0, 1.0, 0.0), 56),
        ((0.0, 0.0, 1.0), 7),
        ((0.124, 0.126, 0.99), 0 * 64 + 1 * 8 + 7),
    ],
)
def test_color3bit_of_known_colours(rgb, cls):
    target = color3bit_target(solid(rgb), patch_size=4)
    assert target.dtype == torch.int64 and target.shape == (1, 4)
    assert (target == cls).all()


def test_color3bit_uses_each_patch_mean():
    img = torch.zeros(1, 3, 8, 8)
    img[:, 0, :4, :4] = 1.0  # top-left patch red
    img[:, :, :4, 4:6] = 1.0  # top-right patch: half white -> mean 0.5 in every channel
    img[:, :, 4:, :4] = 0.5  # bottom-left mid grey
    assert color3bit_target(img, 4).tolist() == [[448, 292, 292, 0]]
    uint8_grey = torch.full((1, 3, 4, 4), 128, dtype=torch.uint8).float() / 255
    assert color3bit_target(uint8_grey, 4).tolist() == [[292]]


def test_color3bit_4x4_gives_16_targets_per_patch():
    img = torch.zeros(1, 3, 8, 8)
    img[:, 2, 0, 0] = 1.0  # one blue pixel in the first 2x2 cell of patch 0 -> mean 0.25 -> 2
    img[:, :, 4:, 4:] = 1.0
    target = color3bit_4x4_target(img, patch_size=8)
    assert target.shape == (1, 1, 16)
    assert target[0, 0, 0].item() == 2 and (target[0, 0, 1:10] == 0).all()
    assert target[0, 0, 10].item() == 511 and target[0, 0, 15].item() == 511
    assert color3bit_4x4_target(img, 4).shape == (1, 4, 16)


def test_corruption_of_patch_embeddings(make_objective, make_batch):
    mpp = make_objective("mpp")
    batch = make_batch(mpp, n=3)
    tokens = torch.randn(3, 16, 32)
    action, source = batch["mpp_action"], batch["mpp_source"]
    out = mpp.corrupt(tokens, action, source)
    for n in range(3):
        for i in range(16):
            a = int(action[n, i])
            if a == 1:
                assert torch.equal(out[n, i], mpp.mask_token[0, 0])
            elif a == 2:
                assert int(source[n, i]) != i and torch.equal(out[n, i], tokens[n, source[n, i]])
            else:
                assert torch.equal(out[n, i], tokens[n, i])


def test_loss_is_cross_entropy_over_corrupted_patches(make_objective, make_batch):
    mpp = make_objective("mpp").eval()
    batch = make_batch(mpp, n=2)
    with torch.no_grad():
        torch.nn.init.zeros_(mpp.head.weight)
        torch.nn.init.zeros_(mpp.head.bias)
        loss, metrics = mpp(batch)
    assert loss.item() == pytest.approx(math.log(512), rel=1e-5)  # uniform prediction over 512 colours
    assert 0.0 <= float(metrics["acc"]) <= 1.0


@pytest.mark.parametrize("target", ["color3bit", "color3bit_4x4", "l2_patch"])
def test_loss_counts_corrupted_patches_only(make_objective, make_batch, target):
    mpp = make_objective("mpp", mpp_target=target)
    batch = make_batch(mpp, n=2)
    mask = batch["mask"]
    images01 = batch["image"].float() / 255
    out = torch.randn(2, 16, mpp.head.out_features)
    base, _ = mpp.loss_from_output(out, images01, mask)
    corrupted = mpp.mask_to_pixels(mask).bool().expand_as(images01)
    other = torch.zeros_like(images01)  # black: class 0, while random patches average mid-grey
    same, _ = mpp.loss_from_output(out, torch.where(corrupted, images01, other), mask)
    moved, _ = mpp.loss_from_output(out, torch.where(corrupted, other, images01), mask)
    assert torch.equal(same, base)
    assert not torch.allclose(moved, base)


@pytest.mark.parametrize("target, width", [("color3bit", 512), ("color3bit_4x4", 16 * 512), ("l2_patch", 48)])
def test_target_options_size_the_head(make_objective, make_batch, target, width):
    mpp = make_objective("mpp", mpp_target=target)
    assert mpp.head.out_features == width
    loss, metrics = mpp(make_batch(mpp))
    assert torch.isfinite(loss) and ("acc" in metrics) == (target != "l2_patch")
