"""SimMIM: mask token replaces hidden embeddings, L1 on hidden pixels only, block masks."""

from __future__ import annotations

import torch


def test_masker_is_block_wise_with_the_configured_cells(make_objective):
    simmim = make_objective("simmim", mask_patch_size=8, mask_ratio=0.5)
    assert simmim.masker.cell_patches == 2 and simmim.masker.cells == (2, 2)
    mask = simmim.masker(3, torch.Generator().manual_seed(0))["mask"]
    assert (mask.sum(1) == 8).all()


def test_l1_on_hidden_pixels_known_value(make_objective, make_batch):
    simmim = make_objective("simmim").eval()
    batch = make_batch(simmim, n=2)
    images, mask = simmim.normalize(batch["image"]), batch["mask"]
    assert simmim.loss_from_prediction(images, images, mask).item() == 0.0
    hidden = simmim.mask_to_pixels(mask).bool().expand_as(images)
    expected = images.abs()[hidden].mean()
    torch.testing.assert_close(simmim.loss_from_prediction(torch.zeros_like(images), images, mask), expected)
    visible_changed = torch.where(hidden, images, images + 5)
    torch.testing.assert_close(
        simmim.loss_from_prediction(torch.zeros_like(images), visible_changed, mask), expected
    )


def test_hidden_patches_reach_the_encoder_as_the_mask_token(make_objective, make_batch):
    simmim = make_objective("simmim").eval()
    batch = make_batch(simmim, n=2)
    images, mask = simmim.normalize(batch["image"]), batch["mask"]
    embedded = simmim.encoder.embed(images)
    tokens = torch.where(mask[..., None], simmim.mask_token.expand_as(embedded), embedded)
    z = simmim.encoder.forward_features(tokens)[:, 1:]
    torch.testing.assert_close(simmim.predict(images, mask), simmim.unpatchify(simmim.decoder(z)))
    assert simmim.predict(images, mask).shape == images.shape
    # what hides under the mask never reaches the prediction
    changed = torch.where(simmim.mask_to_pixels(mask).bool(), images + 3, images)
    torch.testing.assert_close(simmim.predict(changed, mask), simmim.predict(images, mask))


def test_prediction_of_visible_pixels_is_free(make_objective, make_batch):
    simmim = make_objective("simmim")
    batch = make_batch(simmim, n=2)
    images = simmim.normalize(batch["image"])
    pred = torch.randn_like(images, requires_grad=True)
    simmim.loss_from_prediction(pred, images, batch["mask"]).backward()
    visible = ~simmim.mask_to_pixels(batch["mask"]).bool().expand_as(pred)
    assert (pred.grad[visible] == 0).all() and (pred.grad[~visible] != 0).all()
