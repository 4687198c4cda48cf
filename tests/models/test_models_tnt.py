"""TNT (Transformer in Transformer): timm parity (names, counts, outputs, FLOPs), masks, config,
layer ids, resizing, the position switches and state-dict ownership."""

from __future__ import annotations

import json

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file
from timm.models.tnt import TNT as TimmTNT
from torch.utils.flop_counter import FlopCounterMode

from sslvit.models import build_model, create_model, list_models, model_defaults
from sslvit.models.encoder import CAPABILITIES
from sslvit.models.tnt import TNT

# parameter counts with a 1000-class head of timm 1.0.31's tnt_{s,b}_patch16_224 (published: 23.8 M
# and 65.4 M on the timm model cards; the TNT paper rounds TNT-S to 23.8 M as well)
KNOWN_PARAMS = {"tnt_s_patch16_224": 23_768_584, "tnt_b_patch16_224": 65_428_680}
PICO = dict(img_size=32, patch_size=4, embed_dim=32, inner_dim=8, depth=2, num_heads_inner=2,
            num_heads_outer=2, first_stride=2)
# TNT-S widths and heads with timm's default 4x4 pixel tokens per 16 px patch, at 32 px and one block
SMALL16 = dict(img_size=32, patch_size=16, embed_dim=384, inner_dim=24, depth=1, num_heads_outer=6)
TIMM_ONLY = ("outer_pos", "inner_pos", "arch")


def pico(**kw) -> TNT:
    torch.manual_seed(0)
    return create_model("tnt_pico_patch4_32", **kw).eval()


def timm_twin(ours: TNT, **kw) -> TimmTNT:
    """timm's TNT built from our config, with our (random) weights loaded."""
    cfg = {k: v for k, v in ours.get_config().items() if k not in (*TIMM_ONLY, "family")}
    model = TimmTNT(**{**cfg, **kw}).eval()
    model.load_state_dict(ours.state_dict(), strict=True)
    return model


def images(n: int = 2, size: int = 32, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_registry_and_variant_defaults() -> None:
    assert list_models("tnt") == ["tnt_b_patch16_224", "tnt_nano_patch4_32", "tnt_pico_patch4_32", "tnt_s_patch16_224"]
    assert model_defaults("tnt_s_patch16_224") == dict(
        img_size=224, patch_size=16, in_chans=3, embed_dim=384, inner_dim=24, depth=12, num_heads_inner=4,
        num_heads_outer=6, mlp_ratio=4.0, qkv_bias=False, first_stride=4)
    assert model_defaults("tnt_pico_patch4_32") == {**PICO}
    assert TNT.family == "tnt" and TNT.supports == {"token_drop", "mask_token", "attention_maps"}
    assert set(TNT.lacks) == {"patch_tokens"} and "inner pixel tokens" in TNT.lacks["patch_tokens"]
    assert TNT.supports | set(TNT.lacks) == set(CAPABILITIES)


@pytest.mark.parametrize("name", sorted(KNOWN_PARAMS))
def test_standard_variants_match_timm_names_shapes_and_counts(name: str) -> None:
    with torch.device("meta"):
        ours = create_model(name, num_classes=1000)
        theirs = timm.create_model(name, pretrained=False, num_classes=1000)
        spec = ours.timm_spec()
        rebuilt = timm.create_model(spec["architecture"], pretrained=False, **spec["model_args"])
    shapes = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert shapes == {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
    assert shapes == {k: tuple(v.shape) for k, v in rebuilt.state_dict().items()}
    assert ours.num_params() == sum(p.numel() for p in theirs.parameters()) == KNOWN_PARAMS[name]
    assert spec["architecture"] == name and spec["exact"] is True
    assert ours.no_weight_decay() == theirs.no_weight_decay() == {"cls_token", "patch_pos", "pixel_pos"}


def test_small_variants_sizes_and_timm_spec() -> None:
    nano, small = create_model("tnt_nano_patch4_32"), pico()
    assert nano.num_params() == 1_394_944 and small.num_params() == 33_792
    assert nano.pixel_embed.num_pixel == small.pixel_embed.num_pixel == 4  # 2x2 pixel tokens per 4 px patch
    spec = small.timm_spec()
    assert spec["architecture"] == "tnt_s_patch16_224" and spec["exact"] is False
    theirs = timm.create_model(spec["architecture"], pretrained=False, **spec["model_args"])
    assert {k: v.shape for k, v in theirs.state_dict().items()} == {k: v.shape for k, v in small.state_dict().items()}
    assert "position" in pico(outer_pos=False).timm_spec() and isinstance(pico(inner_pos=False).timm_spec(), str)


@pytest.mark.parametrize("cfg", [dict(PICO, num_classes=10), dict(PICO, num_classes=10, global_pool="avg"),
                                 dict(SMALL16, num_classes=5)], ids=["pico", "pico_avg", "small16"])
def test_timm_weights_give_timm_outputs(cfg: dict) -> None:
    torch.manual_seed(0)
    theirs = TimmTNT(**cfg).eval()
    ours = TNT(**cfg).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = images(2, cfg["img_size"])
    with torch.no_grad():
        tokens, ref = ours.forward_features(x), theirs.forward_features(x)
        torch.testing.assert_close(tokens, ref, atol=1e-5, rtol=1e-5)
        pooled = ours.forward_head(tokens, pre_logits=True)
        torch.testing.assert_close(pooled, theirs.forward_head(ref, pre_logits=True), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=1e-5)
        n, length = x.shape[0], theirs.num_patches
        pixels = theirs.pixel_embed(x, theirs.pixel_pos).reshape(n, length, -1)
        torch.testing.assert_close(ours.embed(x), theirs.norm2_proj(theirs.proj(theirs.norm1_proj(pixels))),
                                   atol=1e-5, rtol=1e-5)
        inter = theirs.forward_intermediates(x, indices=cfg["depth"], norm=True, output_fmt="NLC",
                                             return_prefix_tokens=True, intermediates_only=True)
        for got, (patch, prefix) in zip(ours.forward_blocks(x, cfg["depth"]), inter, strict=True):
            torch.testing.assert_close(got, torch.cat([prefix, patch], dim=1), atol=1e-5, rtol=1e-5)
    assert pooled.shape == (2, cfg["embed_dim"])


@pytest.mark.parametrize("switch", ["outer_pos", "inner_pos"])
def test_position_tables_switch_off(switch: str) -> None:
    ours = pico(num_classes=3, **{switch: False})
    table = {"outer_pos": "patch_pos", "inner_pos": "pixel_pos"}[switch]
    other = ({"patch_pos", "pixel_pos"} - {table}).pop()
    names = dict(ours.named_parameters())
    assert table not in names and other in names
    assert ours.no_weight_decay() == {"cls_token", other}
    assert (ours.pos_table() is None) == (switch == "outer_pos")
    # timm with that table zeroed computes the same function
    theirs = TimmTNT(**PICO, num_classes=3).eval()
    state = {**ours.state_dict(), table: torch.zeros_like(theirs.state_dict()[table])}
    theirs.load_state_dict(state, strict=True)
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=1e-5)
    ours.set_img_size(48)
    assert ours.forward_features(images(1, 48)).shape == (1, 1 + 144, 32)


@pytest.mark.parametrize("name,dim,depth", [("tnt_pico_patch4_32", 32, 2), ("tnt_nano_patch4_32", 128, 6)])
def test_output_shapes(name: str, dim: int, depth: int) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=10).eval()
    x = images()
    assert model.patch_grid == model.feature_grid == (8, 8) and model.output_stride == 4
    assert model.embed_dim == model.num_features == dim and model.num_prefix_tokens == 1
    with torch.no_grad():
        tokens = model.forward_features(x)
        blocks = model.forward_blocks(x, last_k=depth)
        attn_tokens, maps = model.forward_with_attention(x)
        assert tokens.shape == (2, 65, dim) and model.embed(x).shape == (2, 64, dim)
        assert len(blocks) == model.num_feature_blocks == depth and all(b.shape == (2, 65, dim) for b in blocks)
        torch.testing.assert_close(blocks[-1], tokens)
        assert model.pool(tokens).shape == model.pool(tokens, "avg").shape == (2, dim)
        assert model.pool(tokens, "token+avg").shape == (2, 2 * dim)
        assert model(x).shape == (2, 10)
        heads = model.blocks[0].attn_out.num_heads
        assert len(maps) == depth and all(m.shape == (2, heads, 65, 65) for m in maps)
        torch.testing.assert_close(maps[0].sum(-1), torch.ones(2, heads, 65))
        torch.testing.assert_close(attn_tokens, tokens, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="last_k"):
        model.forward_blocks(x, last_k=depth + 1)


def _mask(n: int = 2, hidden: int = 48) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    return torch.stack([torch.randperm(64, generator=g) < hidden for _ in range(n)])


def _change_hidden_pixels(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x (N, 3, 32, 32): new random values in the patches where ``mask`` (N, 64) is True."""
    keep = mask.reshape(-1, 1, 8, 1, 8, 1).expand(-1, 3, -1, 4, -1, 4).reshape(x.shape)
    return torch.where(keep, torch.randn_like(x) * 5, x)


def test_token_drop_drops_outer_and_inner_tokens_of_hidden_patches() -> None:
    model, x, mask = pico(), images(), _mask()
    with torch.no_grad():
        out = model.forward_features(x, mask)
        assert out.shape == (2, 1 + 16, 32)
        assert torch.equal(model.forward_features(_change_hidden_pixels(x, mask), mask), out)
        assert not torch.allclose(model.forward_features(_change_hidden_pixels(x, ~mask), mask), out)
        none_hidden = torch.zeros(2, 64, dtype=torch.bool)
        torch.testing.assert_close(model.forward_features(x, none_hidden), model.forward_features(x))
        # the kept tokens are those of the visible patches: a grid that holds only them gives the same
        # tokens when positions are off (no position to tell the two grids apart)
        flat = pico(outer_pos=False)
        one = mask[:1].clone()
        one[0] = torch.arange(64) >= 16  # keep the first two rows of patches
        torch.testing.assert_close(flat.forward_features(x[:1], one),
                                   _rows_model(flat, 8).forward_features(x[:1, :, :8]), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="same number"):
        model.forward_features(x, torch.stack([mask[0], torch.zeros(64, dtype=torch.bool)]))


def _rows_model(model: TNT, height: int) -> TNT:
    other = build_model({**model.get_config(), "img_size": [height, 32]})
    other.load_state_dict(model.state_dict())
    return other.eval()


def test_mask_token_blanks_hidden_pixels_and_replaces_hidden_tokens() -> None:
    model, x, mask = pico(), images(), _mask(hidden=40)
    token = torch.randn(1, 1, 32)
    with torch.no_grad():
        out = model.forward_features(x, mask, token)
        assert out.shape == (2, 65, 32)
        assert torch.equal(model.forward_features(_change_hidden_pixels(x, mask), mask, token), out)
        assert not torch.allclose(model.forward_features(x, mask, torch.randn(1, 1, 32)), out)
        none_hidden = torch.zeros(2, 64, dtype=torch.bool)
        torch.testing.assert_close(model.forward_features(x, none_hidden, token), model.forward_features(x))
        pixels, tokens = model._prepare(x, mask, token)
        hidden = tokens[:, 1:][mask] - model.patch_pos[0, 1:].expand(2, -1, -1)[mask]
        torch.testing.assert_close(hidden, token[0].expand(hidden.shape[0], -1))
        assert pixels.shape == (2 * 64, 4, 8)


def test_refusals_name_the_reason() -> None:
    model, x = pico(), images()
    with pytest.raises(ValueError, match=r"expected \(N, 64\)"):
        model.forward_features(x, torch.zeros(2, 16, dtype=torch.bool))
    with pytest.raises(ValueError, match="pixel tokens"):
        model.forward_features(model.embed(x))
    with pytest.raises(ValueError, match="set_img_size"):
        model.forward_features(images(1, 48))
    with pytest.raises(ValueError, match="global_pool"):
        pico(global_pool="max")


def test_config_and_safetensors_round_trip(tmp_path) -> None:
    model = pico(num_classes=4, img_size=[32, 48], inner_pos=False, drop_path_rate=0.1)
    config = model.get_config()
    assert json.loads(json.dumps(config)) == config
    assert config["family"] == "tnt" and config["arch"] == "tnt_pico_patch4_32" and config["img_size"] == [32, 48]
    save_file(model.state_dict(), tmp_path / "m.safetensors")
    rebuilt = build_model(config).eval()
    rebuilt.load_state_dict(load_file(tmp_path / "m.safetensors"), strict=True)
    assert rebuilt.get_config() == config and type(rebuilt) is TNT
    x = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))
        assert torch.equal(rebuilt.forward_features(x, _mask_grid(8 * 12)), model.forward_features(x, _mask_grid(8 * 12)))


def _mask_grid(length: int) -> torch.Tensor:
    return (torch.arange(length) % 3 == 0).expand(2, -1)


def test_drop_path_rates_follow_timm() -> None:
    ours = pico(drop_path_rate=0.2)
    theirs = TimmTNT(**PICO, drop_path_rate=0.2)
    assert [b.drop_path.p for b in ours.blocks] == pytest.approx([getattr(b.drop_path, "drop_prob", 0.0) for b in theirs.blocks])


def test_layer_ids() -> None:
    model = pico(num_classes=3)
    ids = {name: model.layer_id(name) for name, _ in model.named_parameters()}
    assert model.num_layers == 3
    for name in ("pixel_embed.proj.weight", "norm1_proj.weight", "proj.weight", "norm2_proj.bias", "cls_token",
                 "patch_pos", "pixel_pos"):
        assert ids[name] == 0
    assert ids["blocks.0.attn_in.qk.weight"] == 1 and ids["blocks.1.proj.weight"] == 2
    assert ids["norm.weight"] == ids["head.bias"] == 3 == model.layer_id("encoder.head.weight")
    order = list(ids.values())
    assert order == sorted(order) and set(order) == {0, 1, 2, 3}


def test_set_img_size_resamples_patch_pos() -> None:
    model = pico()
    cls_pos = model.patch_pos[:, :1].detach().clone()
    model.set_img_size((48, 32))
    assert model.img_size == (48, 32) and model.patch_grid == (12, 8)
    assert model.patch_pos.shape == (1, 1 + 96, 32) and torch.equal(model.patch_pos[:, :1], cls_pos)
    assert model.pos_table().shape == (1, 96, 32)
    x = torch.randn(2, 3, 48, 32)
    with torch.no_grad():
        assert model.forward_features(x).shape == (2, 97, 32)
        assert model.forward_features(x, _mask_grid(96)).shape == (2, 1 + 64, 32)
    assert build_model(model.get_config()).patch_pos.shape == model.patch_pos.shape
    with pytest.raises(ValueError, match="multiple"):
        model.set_img_size(30)


def test_owns_state_dict() -> None:
    assert TNT.owns_state_dict(pico().state_dict())
    assert TNT.owns_state_dict(pico(outer_pos=False, inner_pos=False).state_dict())
    assert not TNT.owns_state_dict(create_model("vit_pico_patch4").state_dict())


def test_flops_match_counted_flops() -> None:
    model = pico(num_classes=10)
    theirs = timm_twin(model)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        theirs(images(1))
    assert model.flops_per_image() == counter.get_total_flops() == 6_124_416
    assert model.flops_per_image(include_head=False) == 6_124_416 - 2 * 32 * 10
    # 48 visible patches cost what a 48-patch grid costs
    assert model.flops_per_image(visible_patches=48) == pico(num_classes=10, img_size=[24, 32]).flops_per_image()
    with torch.device("meta"):
        tnt_s = create_model("tnt_s_patch16_224")
        with FlopCounterMode(display=False) as counter:
            timm.create_model("tnt_s_patch16_224", num_classes=0)(torch.empty(1, 3, 224, 224))
    # 5.22 G multiply-adds, the paper's 5.2 GFLOPs for TNT-S
    assert tnt_s.flops_per_image() == counter.get_total_flops() == 10_432_982_016


@pytest.mark.parametrize("mode", ["token_drop", "mask_token"])
def test_every_parameter_gets_a_gradient(mode: str) -> None:
    model = pico(num_classes=3).train()
    mask, token = _mask(hidden=32), torch.zeros(1, 1, 32, requires_grad=True)
    tokens = model.forward_features(images(), mask, token if mode == "mask_token" else None)
    (model.forward_head(tokens).sum() + tokens.pow(2).mean()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []
    assert (token.grad is not None) == (mode == "mask_token")


def test_reset_classifier() -> None:
    model = pico()
    assert isinstance(model.head, torch.nn.Identity) and model(images()).shape == (2, 32)
    model.reset_classifier(7)
    assert model.head.weight.shape == (7, 32) and model.get_config()["num_classes"] == 7
    model.reset_classifier(0)
    assert isinstance(model.head, torch.nn.Identity) and model.num_classes == 0
