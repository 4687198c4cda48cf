"""Position embeddings: sin-cos values, resampling, resizing a model to a new image size."""

from __future__ import annotations

import math

import pytest
import torch

from sslvit.models import create_model
from sslvit.models.pos_embed import resample_axis, resample_pos_embed, resample_state_pos_embed, sincos_2d


def test_sincos_2d_known_values() -> None:
    table = sincos_2d((2, 3), 8)  # (h=2, w=3), dim 8: [sin col, cos col] (2 freqs each), then row
    assert table.shape == (6, 8)
    row, col = 1, 2
    vec = table[row * 3 + col]
    freqs = [1.0, 1.0 / 100.0]  # 1 / 10000 ** (i / 2) for i = 0, 1
    expected = [math.sin(col * f) for f in freqs] + [math.cos(col * f) for f in freqs]
    expected += [math.sin(row * f) for f in freqs] + [math.cos(row * f) for f in freqs]
    torch.testing.assert_close(vec, torch.tensor(expected))
    torch.testing.assert_close(table[0], torch.tensor([0.0, 0, 1, 1, 0, 0, 1, 1]))


def test_resample_same_grid_returns_table_unchanged() -> None:
    table = torch.randn(1, 1 + 16, 8)
    assert resample_pos_embed(table, (4, 4), num_prefix_tokens=1) is table


def test_resample_new_grid_keeps_prefix_and_constant_fields() -> None:
    table = torch.randn(1, 1 + 16, 8)
    out = resample_pos_embed(table, (6, 5), num_prefix_tokens=1)
    assert out.shape == (1, 1 + 30, 8)
    assert torch.equal(out[:, :1], table[:, :1])
    constant = torch.ones(1, 16, 4) * 3.0
    torch.testing.assert_close(resample_pos_embed(constant, (7, 7), 0), torch.full((1, 49, 4), 3.0))
    assert resample_axis(torch.ones(1, 4, 2), 6).shape == (1, 6, 2)
    with pytest.raises(ValueError):
        resample_pos_embed(torch.randn(1, 1 + 15, 8), (4, 4), 1)


@pytest.mark.parametrize("kind", ["learned", "learned_2d", "sincos", "none"])
def test_resize_model_to_new_image_size(kind: str) -> None:
    model = create_model("vit_pico_patch4", pos_embed=kind).eval()
    prefix_before, _ = model.get_pos_embed()
    model.resize_pos_embed(48)
    assert model.patch_embed.grid_size == (12, 12) and model.get_config()["img_size"] == 48
    assert model.forward_features(torch.randn(2, 3, 48, 48)).shape == (2, 1 + 144, 32)
    prefix_after, patches = model.get_pos_embed()
    if kind == "none":
        assert patches is None
        return
    assert patches.shape == (1, 144, 32)
    if prefix_before is not None:
        assert torch.equal(prefix_before, prefix_after)
    if kind == "sincos":
        torch.testing.assert_close(patches[0], sincos_2d((12, 12), 32))
    if kind in ("learned", "learned_2d"):
        assert all(p.requires_grad for p in model.parameters())


def test_resize_to_same_size_is_identity() -> None:
    model = create_model("vit_pico_patch4").eval()
    x = torch.randn(1, 3, 32, 32)
    before = model(x)
    model.resize_pos_embed(32)
    assert torch.equal(before, model(x))


def test_state_dict_resampling_matches_resizing_the_model() -> None:
    for kind in ("learned", "learned_2d"):
        model = create_model("vit_pico_patch4", pos_embed=kind)
        state = resample_state_pos_embed(model.state_dict(), (12, 12), num_prefix_tokens=1)
        model.resize_pos_embed(48)
        fresh = create_model("vit_pico_patch4", pos_embed=kind, img_size=48)
        fresh.load_state_dict(state)
        for key, value in model.state_dict().items():
            torch.testing.assert_close(fresh.state_dict()[key], value)
