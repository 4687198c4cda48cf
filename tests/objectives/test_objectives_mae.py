"""MAE: loss only on hidden patches, known loss values, patchify round trip, reconstructions."""

from __future__ import annotations

import torch


def test_patchify_round_trip_and_layout(make_objective):
    mae = make_objective("mae")
    imgs = torch.randn(2, 3, 16, 16)
    x = mae.patchify(imgs)
    assert x.shape == (2, 16, 4 * 4 * 3)
    assert torch.equal(mae.unpatchify(x), imgs)
    # patch 5 is grid row 1, column 1; its first entry is pixel (4, 4), channels last
    assert torch.equal(x[0, 5, :3], imgs[0, :, 4, 4])


def test_loss_target_counts_hidden_patches_only(make_objective, make_batch):
    mae = make_objective("mae").eval()
    batch = make_batch(mae, n=2)
    images, mask = mae.normalize(batch["image"]), batch["mask"]
    pred = torch.randn(2, 16, 48)
    base = mae.loss_from_prediction(pred, images, mask)

    visible_px = mae.mask_to_pixels(~mask).bool().expand_as(images)
    hidden_px = ~visible_px
    changed_visible = torch.where(visible_px, torch.randn_like(images), images)
    changed_hidden = torch.where(hidden_px, torch.randn_like(images), images)
    assert torch.equal(mae.loss_from_prediction(pred, changed_visible, mask), base)
    assert not torch.allclose(mae.loss_from_prediction(pred, changed_hidden, mask), base)


def test_full_loss_changes_with_hidden_pixels(make_objective, make_batch):
    mae = make_objective("mae").eval()
    batch = make_batch(mae, n=2)
    with torch.no_grad():
        base, _ = mae(batch)
        hidden = mae.mask_to_pixels(batch["mask"]).bool().expand_as(batch["image"])
        flipped = {**batch, "image": torch.where(hidden, 255 - batch["image"], batch["image"])}
        assert not torch.allclose(mae(flipped)[0], base)


def test_known_loss_values(make_objective, make_batch):
    mae = make_objective("mae", norm_pix_loss=False).eval()
    batch = make_batch(mae, n=2)
    images, mask = mae.normalize(batch["image"]), batch["mask"]
    target = mae.patchify(images)
    assert mae.loss_from_prediction(target, images, mask).item() == 0.0
    expected = (target**2).mean(-1)[mask].mean()
    torch.testing.assert_close(mae.loss_from_prediction(torch.zeros_like(target), images, mask), expected)

    normed = make_objective("mae", norm_pix_loss=True)
    t = normed.targets(images)
    torch.testing.assert_close(t.mean(-1), torch.zeros(2, 16), atol=1e-5, rtol=0)
    torch.testing.assert_close(t.var(-1), torch.ones(2, 16), atol=1e-3, rtol=0)
    torch.testing.assert_close(
        normed.loss_from_prediction(torch.zeros_like(t), images, mask), (t**2).mean(-1)[mask].mean()
    )


def test_encoder_sees_visible_patches_only(make_objective, make_batch):
    mae = make_objective("mae").eval()
    batch = make_batch(mae, n=2)
    seen = []
    hook = mae.encoder.blocks[0].register_forward_pre_hook(lambda module, args: seen.append(args[0].shape))
    mae(batch)
    hook.remove()
    assert seen == [(2, 1 + 4, 32)]  # cls + 25% of 16 patches
    assert (batch["mask"].sum(1) == 12).all()


def test_reconstruction_pictures(make_objective, make_batch):
    mae = make_objective("mae").eval()
    batch = make_batch(mae, n=2)
    out = mae.reconstruct(batch["image"], batch["mask"])
    assert out["pred"].shape == out["pasted"].shape == out["image"].shape == (2, 3, 16, 16)
    assert out["mask_img"].shape == (2, 1, 16, 16)
    assert out["mask_img"].mean().item() == 0.75
    assert 0 <= out["pred"].min() and out["pred"].max() <= 1
    visible = out["mask_img"] == 0
    assert torch.equal(out["pasted"].masked_select(visible), out["image"].masked_select(visible))
    torch.testing.assert_close(out["image"], batch["image"].float() / 255)
