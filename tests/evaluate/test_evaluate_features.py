"""Frozen features: pooling options, the last-k concatenation, padding samples dropped, the cache."""

import pytest
import torch

from sslvit.evaluate.features import encode, extract_features
from sslvit.models import create_model


@pytest.fixture
def model():
    torch.manual_seed(0)
    return create_model("vit_pico_patch4").eval()


def test_pooling_matches_the_encoder(model):
    x = torch.randn(3, 3, 32, 32)
    tokens = model.forward_features(x)
    torch.testing.assert_close(encode(model, x, "token"), tokens[:, 0])
    torch.testing.assert_close(encode(model, x, "avg"), tokens[:, 1:].mean(dim=1))
    assert encode(model, x, "token+avg").shape == (3, 64)
    assert torch.equal(model.pool(tokens, "token+avg")[:, :32], tokens[:, 0])
    torch.testing.assert_close(encode(model, x), tokens[:, 0])  # auto: the encoder's own pooling


def test_last_k_concatenates_normed_block_outputs(model):
    x = torch.randn(2, 3, 32, 32)
    feats = encode(model, x, "token", last_k=2)
    assert feats.shape == (2, 64)
    with torch.no_grad():
        h = model.patch_embed(x) + model.pos_embed[:, 1:]
        h = torch.cat([(model.cls_token + model.pos_embed[:, :1]).expand(2, -1, -1), h], dim=1)
        first = model.blocks[0](h)
        expected_first = model.norm(first)[:, 0]
    torch.testing.assert_close(feats[:, :32], expected_first, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(feats[:, 32:], model.forward_features(x)[:, 0], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="last_k"):
        encode(model, x, last_k=3)


def test_token_pool_needs_a_class_token():
    avg_model = create_model("vit_pico_patch4", class_token=False, global_pool="avg")
    with pytest.raises(ValueError, match="class token"):
        encode(avg_model, torch.randn(1, 3, 32, 32), "token")


def test_extraction_normalises_and_drops_padding(model):
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8, generator=gen)
    loader = [
        {"image": images[:3], "label": torch.tensor([0, 1, 2]), "valid": torch.tensor([True, True, True])},
        {"image": images[3:], "label": torch.tensor([3, 3]), "valid": torch.tensor([True, False])},
    ]
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    x, y = extract_features(model, loader, mean, std, pool="avg")
    assert x.shape == (4, 32) and y.tolist() == [0, 1, 2, 3]
    normed = (images[:4].float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(x, encode(model, normed, "avg"), rtol=1e-5, atol=1e-5)
