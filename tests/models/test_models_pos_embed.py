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


def test_shared_relative_bias_equals_timm_beit():
    """``pos_embed='shared_relative'``: BEiT's shared relative position bias (SimMIM's ViT), with
    timm's names, index and the same (heads, T, T) bias for the same table."""
    import timm

    from sslvit.models import create_model

    ours = create_model("vit_pico_patch4", pos_embed="shared_relative")
    theirs = timm.create_model("beit_base_patch16_224", pretrained=False, img_size=32, patch_size=4, embed_dim=32,
                               depth=2, num_heads=2, num_classes=0, use_abs_pos_emb=False, use_rel_pos_bias=False,
                               use_shared_rel_pos_bias=True)
    assert ours.pos_embed is None and "rel_pos_bias.relative_position_bias_table" in dict(ours.named_parameters())
    table = torch.randn_like(ours.rel_pos_bias.relative_position_bias_table)
    with torch.no_grad():
        ours.rel_pos_bias.relative_position_bias_table.copy_(table)
        theirs.rel_pos_bias.relative_position_bias_table.copy_(table)
    assert torch.equal(ours.rel_pos_bias(), theirs.rel_pos_bias())
    index = ours.rel_pos_bias.relative_position_index
    assert index.shape == (65, 65) and int(index[1, 2]) == int(index[10, 11])  # same offset, same entry


def test_shared_relative_bias_follows_dropped_tokens_and_every_block():
    from sslvit.models import create_model

    torch.manual_seed(0)
    model = create_model("vit_pico_patch4", pos_embed="shared_relative").eval()
    with torch.no_grad():
        model.rel_pos_bias.relative_position_bias_table.normal_()
    ids = torch.tensor([[0, 3, 5, 9], [0, 1, 2, 64]])
    full = model.rel_pos_bias()
    picked = model.rel_pos_bias(ids)
    assert picked.shape == (2, 2, 4, 4)
    for n in range(2):
        assert torch.equal(picked[n], full[:, ids[n]][:, :, ids[n]])
    x = torch.randn(2, 3, 32, 32)
    mask = torch.zeros(2, 64, dtype=torch.bool)
    mask[:, 32:] = True
    with torch.no_grad():
        kept = model.forward_features(x, mask)
        calls = []
        hooks = [b.attn.register_forward_hook(lambda m, args, out: calls.append(args[2].shape)) for b in model.blocks]
        model.forward_features(x)
        for h in hooks:
            h.remove()
        # the patches carry no absolute position: without the bias two images whose patches are
        # permuted would give the same pooled feature; with it they differ
        perm = model.patch_embed(x)[:, torch.randperm(64)]
        a, b = model.pool(model.forward_features(model.patch_embed(x))), model.pool(model.forward_features(perm))
    assert kept.shape == (2, 33, 32)
    assert calls == [(2, 65, 65)] * 2  # one shared (heads, T, T) bias handed to every block
    assert (a - b).abs().max() > 1e-3
    with pytest.raises(ValueError, match="cannot be resampled"):
        model.set_img_size(64)


def test_beit_weight_init_is_simmims():
    """``weight_init="beit"``: trunc-normal 0.02 linears, zero biases, and
    block i's attn.proj / mlp.fc2 divided by sqrt(2 (i + 1)) (SimMIM's ``fix_init_weight``)."""
    from sslvit.models import create_model

    torch.manual_seed(0)
    model = create_model("vit_base_patch16", img_size=32, weight_init="beit")
    for i, block in enumerate(model.blocks):
        scale = math.sqrt(2.0 * (i + 1))
        assert block.attn.proj.weight.std().item() == pytest.approx(0.02 / scale, rel=0.02)
        assert block.mlp.fc2.weight.std().item() == pytest.approx(0.02 / scale, rel=0.02)
        assert block.attn.qkv.weight.std().item() == pytest.approx(0.02, rel=0.02)
        assert not block.mlp.fc1.bias.any() and not block.attn.proj.bias.any()
    default = create_model("vit_base_patch16", img_size=32)
    assert default.blocks[0].attn.qkv.weight.std().item() == pytest.approx(math.sqrt(2 / (768 + 2304)), rel=0.02)
    with pytest.raises(ValueError, match="weight_init"):
        create_model("vit_pico_patch4", weight_init="kaiming")
