"""PoolFormer: timm's names / shapes / counts / outputs, masks, config round trip, layer ids, FLOPs."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file
from timm.layers import GroupNorm1
from timm.models.metaformer import MetaFormer
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from sslvit.models import build_model, create_model, list_models, model_defaults
from sslvit.models.poolformer import TIMM_VARIANTS, PoolFormer

STANDARD = sorted(TIMM_VARIANTS)
# parameter counts with a 1000-class head, as timm publishes them for the sail_in1k weights
KNOWN_PARAMS = {
    "poolformer_s12": 11_915_176,
    "poolformer_s24": 21_388_968,
    "poolformer_s36": 30_862_760,
    "poolformer_m36": 56_172_520,
    "poolformer_m48": 73_473_448,
}
SMALL_PARAMS = {"poolformer_nano_32": 1_146_240, "poolformer_pico_32": 26_968}  # no classifier


def timm_poolformer_v1(depths: list[int], dims: list[int], num_classes: int, ls: float = 1e-5) -> MetaFormer:
    """timm's MetaFormer class with the arguments of its poolformer_* entry points, at any size."""
    return MetaFormer(
        depths=depths,
        dims=dims,
        downsample_norm=None,
        mlp_act=nn.GELU,
        mlp_bias=True,
        norm_layers=GroupNorm1,
        layer_scale_init_values=ls,
        res_scale_init_values=None,
        use_mlp_head=False,
        num_classes=num_classes,
    )


def shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


@torch.no_grad()
def randomize(module: nn.Module, seed: int = 0) -> nn.Module:
    """Fresh values for every parameter (layer scales near 1, not timm's 1e-5, so blocks matter)."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in module.named_parameters():
        noise = torch.randn(p.shape, generator=gen)
        if p.ndim > 1:
            p.copy_(noise / p[0].numel() ** 0.5)
        elif name.endswith(("scale", "norm.weight", "norm1.weight", "norm2.weight")):
            p.copy_(1 + 0.3 * noise)
        else:
            p.copy_(0.1 * noise)
    return module


def timm_random(name_or_model: str | Callable[[], nn.Module], **kwargs) -> nn.Module:
    """A timm model with random values, built on meta first (timm's own init is slow at full size)."""
    with torch.device("meta"):
        model = (
            timm.create_model(name_or_model, pretrained=False, **kwargs)
            if isinstance(name_or_model, str)
            else name_or_model()
        )
    return randomize(model.to_empty(device="cpu")).eval()


def ours_from(name: str, state: dict[str, torch.Tensor], **overrides) -> PoolFormer:
    """Our variant built on meta, then given ``state`` (strict)."""
    with torch.device("meta"):
        model = create_model(name, **overrides)
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()


def pico(**overrides) -> PoolFormer:
    return randomize(create_model("poolformer_pico_32", **overrides)).eval()


def test_registry_and_defaults() -> None:
    assert set(list_models("poolformer")) == set(STANDARD) | {"poolformer_nano_32", "poolformer_pico_32"}
    assert model_defaults("poolformer_m36") == dict(img_size=224, **TIMM_VARIANTS["poolformer_m36"])
    for name, count in SMALL_PARAMS.items():
        model = create_model(name)
        assert model.num_params() == count and model.img_size == (32, 32) and model.num_classes == 0
        assert isinstance(model.head.fc, nn.Identity) and model.head.out_features == 0


@pytest.mark.parametrize("name", STANDARD)
def test_state_dict_and_counts_equal_timm(name: str) -> None:
    with torch.device("meta"):
        ours = create_model(name, num_classes=1000)
        theirs = timm.create_model(name, pretrained=False, num_classes=1000)
    assert shapes(ours) == shapes(theirs)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert ours.num_params() == KNOWN_PARAMS[name] == sum(p.numel() for p in theirs.parameters())
    assert ours.timm_spec() == {"architecture": name, "model_args": {}, "exact": True}


def test_s12_outputs_equal_timm() -> None:
    # 112 px (a quarter of 224's cost): the grid 28 -> 14 -> 7 -> 4 also checks the rounding up
    theirs = timm_random("poolformer_s12", num_classes=1000)
    ours = ours_from("poolformer_s12", theirs.state_dict(), num_classes=1000, img_size=112)
    assert (ours.patch_grid, ours.feature_grid, ours.output_stride) == ((28, 28), (4, 4), 32)
    x = torch.randn(1, 3, 112, 112)
    with torch.no_grad():
        fmap = theirs.forward_features(x)
        tokens = ours.forward_features(x)
        torch.testing.assert_close(tokens, fmap.flatten(2).transpose(1, 2), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(
            ours.forward_head(tokens, pre_logits=True),
            theirs.forward_head(fmap, pre_logits=True),
            atol=1e-5,
            rtol=1e-5,
        )
        torch.testing.assert_close(ours.forward_head(tokens), theirs.forward_head(fmap), atol=1e-5, rtol=1e-5)
    assert tokens.shape == (1, 16, 512)


def test_pico_outputs_equal_timm_class_with_pico_args() -> None:
    cfg = model_defaults("poolformer_pico_32")
    theirs = timm_random(lambda: timm_poolformer_v1(cfg["depths"], cfg["dims"], num_classes=10))
    ours = ours_from("poolformer_pico_32", theirs.state_dict(), num_classes=10)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        fmap = theirs.forward_features(x)
        tokens = ours.forward_features(x)
        torch.testing.assert_close(tokens, fmap.flatten(2).transpose(1, 2), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(
            ours.pool(tokens), theirs.forward_head(fmap, pre_logits=True), atol=1e-5, rtol=1e-5
        )
        torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=1e-5)
        last = ours.forward_blocks(x, last_k=2)[-1]
        torch.testing.assert_close(
            ours.pool(last), theirs.forward_head(fmap, pre_logits=True), atol=1e-5, rtol=1e-5
        )


def test_drop_path_rates_equal_timm() -> None:
    with torch.device("meta"):
        ours = create_model("poolformer_s12", drop_path_rate=0.1)
        theirs = timm.create_model("poolformer_s12", pretrained=False, drop_path_rate=0.1)
    mine = [getattr(b.drop_path1, "p", 0.0) for s in ours.stages for b in s.blocks]
    timms = [getattr(b.drop_path1, "drop_prob", 0.0) for s in theirs.stages for b in s.blocks]
    assert mine == pytest.approx(timms) and len(mine) == 12
    assert mine[0] == 0.0 and mine[-1] == pytest.approx(0.1)


def test_timm_spec_for_other_channels_and_sizes() -> None:
    with torch.device("meta"):
        gray = create_model("poolformer_s24", in_chans=1)
        spec = gray.timm_spec()
        assert spec == {"architecture": "poolformer_s24", "model_args": {"in_chans": 1}, "exact": False}
        assert shapes(timm.create_model(spec["architecture"], **spec["model_args"], num_classes=0)) == shapes(
            gray
        )
        reason = create_model("poolformer_nano_32").timm_spec()
        assert isinstance(reason, str) and "fix depths" in reason
        with pytest.raises(TypeError):  # why: the entry points pass depths themselves
            timm.create_model("poolformer_s12", depths=[2, 4, 2], dims=[48, 96, 192])


@pytest.mark.parametrize(
    ("name", "dims", "last_depth"), [("poolformer_nano_32", (48, 192), 2), ("poolformer_pico_32", (8, 32), 2)]
)
def test_small_variant_shapes(name: str, dims: tuple[int, int], last_depth: int) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=10).eval()
    assert (model.patch_size, model.patch_grid, model.output_stride, model.feature_grid) == (
        4,
        (8, 8),
        16,
        (2, 2),
    )
    assert (model.embed_dim, model.num_features, model.num_prefix_tokens, model.global_pool) == (
        *dims,
        0,
        "avg",
    )
    assert model.num_feature_blocks == last_depth
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert model.embed(x).shape == (2, 64, dims[0])
        tokens = model.forward_features(x)
        assert tokens.shape == (2, 4, dims[1])
        blocks = model.forward_blocks(x, last_k=last_depth)
        assert [b.shape for b in blocks] == [(2, 4, dims[1])] * last_depth
        assert torch.equal(blocks[-1], tokens) and not torch.equal(blocks[0], tokens)
        assert torch.equal(model.forward_blocks(x, 1)[0], tokens)
        assert model.pool(tokens).shape == (2, dims[1]) and model(x).shape == (2, 10)
        torch.testing.assert_close(model.forward_features(model.embed(x)), tokens)
    with pytest.raises(ValueError, match="last_k"):
        model.forward_blocks(x, last_k=last_depth + 1)


def test_pool_is_mean_then_head_norm_and_refuses_token_pools() -> None:
    model = pico()
    tokens = torch.randn(2, 4, 32)
    expected = nn.functional.layer_norm(
        tokens.mean(1), (32,), model.head.norm.weight, model.head.norm.bias, 1e-6
    )
    torch.testing.assert_close(model.pool(tokens), expected)
    torch.testing.assert_close(model.forward_head(tokens, pre_logits=True), expected)
    for how in ("token", "token+avg"):
        with pytest.raises(ValueError, match="class token"):
            model.pool(tokens, how)
    with pytest.raises(ValueError, match="unknown pool"):
        model.pool(tokens, "max")


def test_mask_token_hides_pixels_of_hidden_patches() -> None:
    model = pico()
    torch.manual_seed(2)
    x = torch.randn(2, 3, 32, 32)
    mask = torch.zeros(2, 64, dtype=torch.bool)
    mask[:, [9, 10, 17, 18, 40]] = True  # patches (1,1), (1,2), (2,1), (2,2), (5,0)
    token = torch.randn(1, 1, 8)
    pix = mask.reshape(2, 1, 8, 1, 8, 1).expand(2, 3, 8, 4, 8, 4).reshape(2, 3, 32, 32)
    other = torch.where(pix, torch.randn_like(x) * 5, x)  # new pixels in hidden patches only
    with torch.no_grad():
        out = model.forward_features(x, mask, token)
        assert out.shape == (2, 4, 32)
        assert torch.equal(model.forward_features(other, mask, token), out)  # hidden pixels never reach it
        assert not torch.equal(model.forward_features(x, mask, token + 1), out)  # the mask token does
        assert not torch.equal(model.forward_features(x), out)
        # why blanking is needed: the overlapping 7x7 stem lets hidden pixels into visible stem tokens
        visible = ~mask[0]
        assert not torch.equal(model.embed(other)[0, visible], model.embed(x)[0, visible])


def test_unsupported_masks_and_attention_raise_with_reasons() -> None:
    model = pico()
    x, mask = torch.randn(1, 3, 32, 32), torch.zeros(1, 64, dtype=torch.bool)
    mask[:, :16] = True
    assert model.supports == {"mask_token"}
    assert set(model.lacks) == {"token_drop", "patch_tokens", "attention_maps"}
    with pytest.raises(ValueError, match="token_drop.*full grid"):
        model.forward_features(x, mask)
    with pytest.raises(ValueError, match=r"expected \(N, 64\)"):
        model.forward_features(x, mask[:, :32], torch.zeros(1, 1, 8))
    with pytest.raises(ValueError, match="needs images"):
        model.forward_features(model.embed(x), mask, torch.zeros(1, 1, 8))
    with pytest.raises(ValueError, match="set_img_size"):
        model.forward_features(torch.randn(1, 3, 48, 48))
    with pytest.raises(NotImplementedError, match="no attention"):
        model.forward_with_attention(x)


def test_every_parameter_gets_a_gradient_under_mask_token() -> None:
    model = pico(num_classes=5).train()
    token = nn.Parameter(torch.zeros(1, 1, 8))
    mask = torch.zeros(2, 64, dtype=torch.bool)
    mask[:, ::3] = True
    logits = model.forward_head(model.forward_features(torch.randn(2, 3, 32, 32), mask, token))
    logits.square().sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == [] and token.grad.abs().sum() > 0


def test_config_and_safetensors_round_trip(tmp_path) -> None:
    model = pico(num_classes=3, drop_path_rate=0.1)
    cfg = model.get_config()
    assert json.loads(json.dumps(cfg)) == cfg
    assert cfg == dict(
        img_size=32,
        in_chans=3,
        num_classes=3,
        drop_path_rate=0.1,
        arch="poolformer_pico_32",
        depths=[1, 1, 2],
        dims=[8, 16, 32],
        layer_scale_init_value=1e-5,
        family="poolformer",
    )
    rebuilt = build_model(cfg).eval()
    assert type(rebuilt) is PoolFormer and rebuilt.get_config() == cfg and shapes(rebuilt) == shapes(model)
    save_file(model.state_dict(), tmp_path / "m.safetensors")
    rebuilt.load_state_dict(load_file(tmp_path / "m.safetensors"), strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))
        assert torch.equal(rebuilt.forward_features(x), model.forward_features(x))


def test_layer_ids_of_s12() -> None:
    with torch.device("meta"):
        model = create_model("poolformer_s12", num_classes=1000)
    assert model.num_layers == 13
    ids = [model.layer_id(n) for n, _ in model.named_parameters()]
    assert ids == sorted(ids) and ids[0] == 0 and ids[-1] == 13 and set(ids) == set(range(14))
    assert model.layer_id("stem.conv.weight") == model.layer_id("encoder.stem.conv.bias") == 0
    assert model.layer_id("stages.0.blocks.1.mlp.fc1.weight") == 2
    assert (
        model.layer_id("stages.2.downsample.conv.weight")
        == model.layer_id("stages.2.blocks.0.norm1.weight")
        == 5
    )
    assert model.layer_id("stages.3.blocks.1.layer_scale2.scale") == 12
    assert model.layer_id("head.norm.weight") == model.layer_id("encoder.head.fc.bias") == 13
    assert model.no_weight_decay() == set() and model.pos_table() is None
    assert model.patch_filters() is model.stem.conv.weight and model.patch_filters().shape == (64, 3, 7, 7)


def test_set_img_size_and_reset_classifier() -> None:
    model = pico(num_classes=4)
    model.set_img_size(48)
    assert (model.img_size, model.patch_grid, model.feature_grid, model.num_patches) == (
        (48, 48),
        (12, 12),
        (3, 3),
        144,
    )
    assert model.get_config()["img_size"] == 48
    mask = torch.zeros(2, 144, dtype=torch.bool)
    mask[:, 5:50] = True
    with torch.no_grad():
        x = torch.randn(2, 3, 48, 48)
        assert model.forward_features(x).shape == (2, 9, 32)
        assert model.forward_features(x, mask, torch.zeros(1, 1, 8)).shape == (2, 9, 32)
        assert model(x).shape == (2, 4)
    model.set_img_size((32, 64))
    assert model.feature_grid == (2, 4) and model.get_config()["img_size"] == [32, 64]
    with pytest.raises(ValueError, match="multiple"):
        model.set_img_size(30)
    norm = model.head.norm.weight
    model.reset_classifier(7)
    assert model.head.fc.out_features == 7 and model.head.out_features == 7 and model.head.norm.weight is norm
    assert model.num_classes == model.get_config()["num_classes"] == 7
    model.reset_classifier(0)
    assert isinstance(model.head.fc, nn.Identity) and model(torch.randn(1, 3, 32, 64)).shape == (1, 32)


def test_owns_state_dict() -> None:
    own = pico().state_dict()
    assert PoolFormer.owns_state_dict(own)
    assert PoolFormer.owns_state_dict({f"encoder.{k}": v for k, v in own.items()})
    try:
        vit = create_model("vit_pico_patch4").state_dict()
    except Exception:  # the ViT is being converted elsewhere: its keys by hand
        keys = [
            "patch_embed.proj.weight",
            "cls_token",
            "pos_embed",
            "blocks.0.attn.qkv.weight",
            "norm.weight",
        ]
        vit = dict.fromkeys(keys, torch.zeros(1))
    assert not PoolFormer.owns_state_dict(vit)
    with torch.device("meta"):  # timm's other MetaFormers share the stem / stage layout
        for name in ("poolformerv2_s12", "convformer_s18", "caformer_s18"):
            assert not PoolFormer.owns_state_dict(timm.create_model(name, pretrained=False).state_dict())


def test_flops_equal_torch_flop_counter() -> None:
    for name, device in (("poolformer_pico_32", "cpu"), ("poolformer_s12", "meta")):
        with torch.device(device):
            model = create_model(name, num_classes=1000).eval()
            x = torch.randn(1, 3, *model.img_size)
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(x)
        assert model.flops_per_image() == counter.get_total_flops()
        assert (
            model.flops_per_image(include_head=False)
            == counter.get_total_flops() - 2 * model.num_features * 1000
        )
        assert model.flops_per_image(visible_patches=10) == model.flops_per_image()  # the full grid runs
    # the PoolFormer paper and timm quote 1.8 G multiply-adds for S12 at 224 px
    assert model.flops_per_image() / 2 == pytest.approx(1.8e9, rel=0.02)
