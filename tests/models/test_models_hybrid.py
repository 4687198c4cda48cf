"""Hybrid ViT (ResNet-v2 stem + ViT): timm's names and numbers, masks, config, layer ids, FLOPs."""

from __future__ import annotations

import json
from functools import partial

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file
from timm.layers import GroupNormAct as TimmGroupNormAct
from timm.layers import HybridEmbed as TimmHybridEmbed
from timm.layers import StdConv2dSame as TimmStdConv2dSame
from timm.layers.pool2d_same import MaxPool2dSame as TimmMaxPool2dSame
from timm.models.resnetv2 import ResNetV2 as TimmResNetV2
from timm.models.vision_transformer import VisionTransformer as TimmVisionTransformer
from torch import nn

from sslvit.checkpoint import detect_family
from sslvit.models import build_model, create_model, list_models, model_defaults
from sslvit.models.encoder import CAPABILITIES
from sslvit.models.hybrid import HybridVisionTransformer
from sslvit.models.layers import block_flops
from sslvit.models.resnetv2 import MaxPool2dSame, StdConv2dSame, pad_same
from sslvit.models.vit import VisionTransformer

# parameter counts with a 1000-class head as timm 1.0.31 builds them (its model cards round them:
# 36.4M, 101.4M, 98.7M, 99.0M, 329.0M)
KNOWN_PARAMS = {
    "vit_small_r26_s32_224": 36_431_912,
    "vit_small_r26_s32_384": 36_468_392,
    "vit_base_r26_s32_224": 101_383_976,
    "vit_base_r50_s16_224": 98_659_112,
    "vit_base_r50_s16_384": 98_950_952,
    "vit_large_r50_s32_224": 328_994_856,
}
SMALL = ("vit_nano_r_s4_32", "vit_pico_r_s4_32")


def _mask(n: int, num_patches: int, hidden: int, seed: int = 0) -> torch.Tensor:
    """bool (n, num_patches), ``hidden`` random patches True per row."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(n, num_patches, dtype=torch.bool)
    for row in mask:
        row[torch.randperm(num_patches, generator=g)[:hidden]] = True
    return mask


def _pixel_mask(model: HybridVisionTransformer, mask: torch.Tensor) -> torch.Tensor:
    """bool (N, L) over the patch grid -> bool (N, 1, H, W), True on hidden pixels."""
    (gh, gw), p = model.patch_grid, model.patch_size
    return mask.reshape(-1, 1, gh, gw).repeat_interleave(p, 2).repeat_interleave(p, 3)


def _timm_pico(num_classes: int) -> nn.Module:
    """timm's own classes assembled into the pico variant (ResNetV2 stem without its max-pool)."""
    backbone = TimmResNetV2(
        layers=[1, 1], channels=[16, 32], stem_chs=8, num_classes=0, global_pool="", preact=False, stem_type="same",
        conv_layer=partial(TimmStdConv2dSame, eps=1e-8), norm_layer=partial(TimmGroupNormAct, num_groups=4),
    )
    backbone.stem.pool = nn.Identity()
    return TimmVisionTransformer(img_size=32, patch_size=1, embed_layer=partial(TimmHybridEmbed, backbone=backbone),
                                 embed_dim=32, depth=2, num_heads=2, num_classes=num_classes)


def test_registry_and_defaults() -> None:
    assert set(list_models("hybrid")) == {*KNOWN_PARAMS, *SMALL}
    assert model_defaults("vit_base_r50_s16_224") == dict(img_size=224, backbone_layers=[3, 4, 9], embed_dim=768,
                                                          depth=12, num_heads=12)
    assert HybridVisionTransformer.family == "hybrid"
    assert HybridVisionTransformer.supports == {"token_drop", "mask_token", "attention_maps"}
    assert set(HybridVisionTransformer.lacks) == set(CAPABILITIES) - HybridVisionTransformer.supports
    assert "leaks" in HybridVisionTransformer.lacks["patch_tokens"]


@pytest.mark.parametrize("name", ["vit_small_r26_s32_224", "vit_base_r50_s16_224", "vit_base_r50_s16_384"])
def test_state_dict_equals_timm(name: str) -> None:
    with torch.device("meta"):
        ours = create_model(name, num_classes=1000)
        theirs = timm.create_model(name, pretrained=False, num_classes=1000)
    ours_keys = [(k, tuple(v.shape)) for k, v in ours.state_dict().items()]
    assert ours_keys == [(k, tuple(v.shape)) for k, v in theirs.state_dict().items()]
    assert ours.num_params() == sum(p.numel() for p in theirs.parameters()) == KNOWN_PARAMS[name]


def test_r50_recipes_build_timms_vit_base_r50_s16_384() -> None:
    """supervised_vit_base_r50_s16_in21k builds timm's R50+ViT-B/16 with 21,843 classes and the
    pre-logits layer; finetune_vit_base_r50_s16_384 turns it into timm's vit_base_r50_s16_384 (the
    architecture of vit_base_r50_s16_384.orig_in21k_ft_in1k): one linear 1000-class head, 24 x 24 grid."""
    from pathlib import Path

    from sslvit.evaluate.common import load_config
    from sslvit.evaluate.finetune import FinetuneConfig, set_head_type
    from sslvit.training.config import load
    from sslvit.training.run import build_encoder

    configs = Path(__file__).resolve().parents[2] / "sslvit" / "configs"
    pretrain = load(configs / "supervised_vit_base_r50_s16_in21k.yaml")
    finetune = load_config(FinetuneConfig, configs / "finetune_vit_base_r50_s16_384.yaml",
                           ["finetune.checkpoint=unused.safetensors"])
    with torch.device("meta"):
        ours = build_encoder(pretrain)
        in21k = timm.create_model("vit_base_r50_s16_224", pretrained=False, num_classes=21843)
        in1k = timm.create_model("vit_base_r50_s16_384", pretrained=False)
    shapes = [(k, tuple(v.shape)) for k, v in ours.state_dict().items()]
    head = [("pre_logits.fc.weight", (768, 768)), ("pre_logits.fc.bias", (768,))]
    assert [s for s in shapes if not s[0].startswith("pre_logits")] == [
        (k, tuple(v.shape)) for k, v in in21k.state_dict().items()]
    assert [s for s in shapes if s[0].startswith("pre_logits")] == head
    assert ours.num_params() == sum(p.numel() for p in in21k.parameters()) + 768 * 768 + 768
    set_head_type(ours, finetune.objective.num_classes, finetune.model.head_type)
    ours.set_img_size(finetune.data.image_size)
    assert [(k, tuple(v.shape)) for k, v in ours.state_dict().items()] == [
        (k, tuple(v.shape)) for k, v in in1k.state_dict().items()]
    assert ours.state_dict()["pos_embed"].shape == (1, 1 + 24 * 24, 768)
    assert ours.num_params() == KNOWN_PARAMS["vit_base_r50_s16_384"]
    assert ours.timm_spec()["architecture"] == "vit_base_r50_s16_384" and ours.timm_spec()["exact"] is True


@pytest.mark.parametrize("name", sorted(KNOWN_PARAMS))
def test_parameter_counts_on_meta_device(name: str) -> None:
    with torch.device("meta"):
        model = create_model(name, num_classes=1000)
    assert model.num_params() == KNOWN_PARAMS[name]
    assert model.patch_size == (16 if "s16" in name else 32)
    assert model.patch_filters().shape == (64, 3, 7, 7)


def test_small_variant_sizes() -> None:
    nano, pico = (create_model(n) for n in SMALL)
    assert nano.num_params() == 1_272_352 and pico.num_params() == 32_456
    assert nano.patch_size == pico.patch_size == 4 and nano.patch_grid == pico.patch_grid == (8, 8)
    filters = pico.patch_filters().reshape(8, -1)
    assert filters.shape == (8, 3 * 7 * 7) and not filters.requires_grad
    torch.testing.assert_close(filters.mean(1), torch.zeros(8), atol=1e-6, rtol=0)
    torch.testing.assert_close(filters.var(1, unbiased=False), torch.ones(8), atol=1e-4, rtol=0)


def test_same_padding_layers_match_timm_on_odd_sizes() -> None:
    x = torch.randn(2, 3, 15, 18)
    ours, theirs = StdConv2dSame(3, 8, 7, stride=2), TimmStdConv2dSame(3, 8, 7, stride=2, eps=1e-8)
    theirs.load_state_dict(ours.state_dict())
    assert ours(x).shape == (2, 8, 8, 9)
    torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=0)
    torch.testing.assert_close(MaxPool2dSame()(x), TimmMaxPool2dSame(3, 2)(x), rtol=0, atol=0)
    # 32 px under a 7x7 stride-2 window: 5 pixels of padding, 2 on the top / left, 3 on the bottom / right
    padded = pad_same(torch.ones(1, 1, 32, 32), 7, 2)
    assert padded.shape == (1, 1, 37, 37)
    assert padded[0, 0, :, 0].sum() == 0 and padded[0, 0, :, 1].sum() == 0 and padded[0, 0, 2:34, 2].sum() == 32
    assert padded[0, 0, 34:].sum() == 0


@torch.no_grad()
def test_timm_weights_give_timms_outputs() -> None:
    torch.manual_seed(0)
    theirs = _timm_pico(num_classes=5).eval()
    ours = create_model("vit_pico_r_s4_32", num_classes=5).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(2, 3, 32, 32)
    tokens, their_tokens = ours.forward_features(x), theirs.forward_features(x)
    assert tokens.shape == (2, 1 + 64, 32)
    torch.testing.assert_close(tokens, their_tokens, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.forward_head(tokens, pre_logits=True),
                               theirs.forward_head(their_tokens, pre_logits=True), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_timm_spec_builds_timms_r50_hybrid() -> None:
    """The standard R50 stem (SAME padding, max-pool) through timm's own entry point, a narrow ViT on top."""
    with torch.device("meta"):
        ours = create_model("vit_base_r50_s16_224", img_size=32, num_classes=10, embed_dim=64, depth=1, num_heads=2)
    ours = ours.to_empty(device="cpu")
    spec = ours.timm_spec()
    assert spec["architecture"] == "vit_base_r50_s16_224" and spec["exact"] is False
    with torch.device("meta"):  # timm's CPU init of the 12M-parameter stem is slow; fill it here instead
        theirs = timm.create_model(spec["architecture"], pretrained=False, num_classes=10, **spec["model_args"])
    theirs = theirs.to_empty(device="cpu").eval()
    g = torch.Generator().manual_seed(0)
    for name, p in theirs.named_parameters():
        noise = torch.randn(p.shape, generator=g)  # 1-D weights are the norms' scales
        p.copy_(1 + 0.1 * noise if p.ndim == 1 and name.endswith("weight") else (0.1 if p.ndim == 1 else 0.02) * noise)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    ours.eval()
    x = torch.randn(1, 3, 32, 32)
    tokens, their_tokens = ours.forward_features(x), theirs.forward_features(x)
    assert tokens.shape == (1, 1 + 4, 64)
    torch.testing.assert_close(tokens, their_tokens, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.forward_head(tokens), theirs.forward_head(their_tokens), atol=1e-5, rtol=1e-5)


def test_timm_spec_names_and_reasons() -> None:
    with torch.device("meta"):
        base = create_model("vit_base_r50_s16_224")
        base384 = create_model("vit_base_r50_s16_224", img_size=384)
        small = create_model("vit_small_r26_s32_224", mlp_ratio=2.0)
    assert base.timm_spec()["architecture"] == "vit_base_r50_s16_224" and base.timm_spec()["exact"] is True
    assert base384.timm_spec()["architecture"] == "vit_base_r50_s16_384" and base384.timm_spec()["exact"] is True
    assert small.timm_spec()["exact"] is False and small.timm_spec()["model_args"]["mlp_ratio"] == 2.0
    assert "fix the ResNet stem" in create_model("vit_pico_r_s4_32").timm_spec()
    with torch.device("meta"):
        relative = create_model("vit_small_r26_s32_224", pos_embed="relative")
    assert "no timm equivalent" in relative.timm_spec()


@pytest.mark.parametrize("name", SMALL)
@torch.no_grad()
def test_output_shapes(name: str) -> None:
    model = create_model(name, num_classes=7).eval()
    d, depth, heads = model.embed_dim, len(model.blocks), model.blocks[0].attn.num_heads
    x = torch.randn(2, 3, 32, 32)
    tokens = model.forward_features(x)
    assert model.embed(x).shape == (2, 64, d) and tokens.shape == (2, 1 + 64, d) and model.num_features == d
    blocks = model.forward_blocks(x, last_k=2)
    assert [b.shape for b in blocks] == [(2, 65, d)] * 2 and torch.equal(blocks[-1], tokens)
    assert model.num_feature_blocks == depth
    assert model.pool(tokens, "token").shape == model.pool(tokens, "avg").shape == (2, d)
    assert model.pool(tokens, "token+avg").shape == (2, 2 * d)
    assert model(x).shape == (2, 7) and model.forward_head(tokens, pre_logits=True).shape == (2, d)
    out, maps = model.forward_with_attention(x)
    assert torch.allclose(out, tokens, atol=1e-5) and [m.shape for m in maps] == [(2, heads, 65, 65)] * depth
    assert model.pos_table().shape == (1, 64, d)


@torch.no_grad()
def test_masks_hide_pixels_from_visible_tokens() -> None:
    model = create_model("vit_pico_r_s4_32").eval()
    mask = _mask(2, 64, 16)
    x = torch.randn(2, 3, 32, 32)
    x_changed = torch.where(_pixel_mask(model, mask), torch.randn_like(x) * 5, x)
    mask_token = torch.randn(1, 1, model.embed_dim)
    # without blanking, the stem carries hidden pixels into visible neighbours' embeddings
    visible = ~mask
    assert not torch.allclose(model.embed(x)[visible], model.embed(x_changed)[visible])
    dropped = model.forward_features(x, mask)
    assert dropped.shape == (2, 1 + 48, model.embed_dim)
    assert torch.equal(dropped, model.forward_features(x_changed, mask))
    replaced = model.forward_features(x, mask, mask_token)
    assert replaced.shape == (2, 1 + 64, model.embed_dim)
    assert torch.equal(replaced, model.forward_features(x_changed, mask, mask_token))
    out, maps = model.forward_with_attention(x_changed, mask)
    assert torch.allclose(out, dropped, atol=1e-5) and maps[0].shape == (2, 2, 49, 49)
    # tokens without a mask are the images' tokens; with a mask there are no pixels left to blank
    assert torch.allclose(model.forward_features(model.embed(x)), model.forward_features(x), atol=1e-6)
    with pytest.raises(ValueError, match="blanked before"):
        model.forward_features(model.embed(x), mask, mask_token)
    with pytest.raises(ValueError, match="expected"):
        model.forward_features(x, mask[:, :32])


def test_every_parameter_gets_a_gradient() -> None:
    model = create_model("vit_pico_r_s4_32", num_classes=3)
    x, mask = torch.randn(2, 3, 32, 32), _mask(2, 64, 48)
    mask_token = nn.Parameter(torch.zeros(1, 1, model.embed_dim))
    for token in (None, mask_token):
        model.zero_grad(set_to_none=True)
        model.forward_head(model.forward_features(x, mask, token)).square().sum().backward()
        missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
        assert missing == []
    assert mask_token.grad.abs().sum() > 0


def test_config_round_trip_and_safetensors(tmp_path) -> None:
    model = create_model("vit_pico_r_s4_32", num_classes=4, global_pool="avg", drop_path_rate=0.1).eval()
    config = model.get_config()
    assert config["family"] == "hybrid" and config["arch"] == "vit_pico_r_s4_32"
    assert config["backbone_layers"] == [1, 1] and config["backbone_channels"] == [16, 32]
    config = json.loads(json.dumps(config))
    rebuilt = build_model(config).eval()
    assert isinstance(rebuilt, HybridVisionTransformer) and rebuilt.get_config() == config
    save_file(model.state_dict(), tmp_path / "model.safetensors")
    rebuilt.load_state_dict(load_file(tmp_path / "model.safetensors"), strict=True)
    x, mask = torch.randn(2, 3, 32, 32), _mask(2, 64, 16)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))
        assert torch.equal(rebuilt.forward_features(x, mask), model.forward_features(x, mask))


def test_layer_ids() -> None:
    model = create_model("vit_pico_r_s4_32", num_classes=3)
    ids = {n: model.layer_id(n) for n, _ in model.named_parameters()}
    assert model.num_layers == len(model.blocks) + 1 == 3
    assert all(i == 0 for n, i in ids.items() if n.startswith(("patch_embed.", "cls_token", "pos_embed")))
    assert ids["patch_embed.backbone.stem.conv.weight"] == ids["patch_embed.proj.weight"] == 0
    assert ids["blocks.0.attn.qkv.weight"] == 1 and ids["blocks.1.mlp.fc2.bias"] == 2
    assert ids["norm.weight"] == ids["head.weight"] == model.num_layers
    assert list(ids.values()) == sorted(ids.values()) and set(ids.values()) == {0, 1, 2, 3}
    assert model.layer_id("encoder.blocks.1.norm1.weight") == 2
    assert model.no_weight_decay() == {"cls_token", "pos_embed"}


@torch.no_grad()
def test_set_img_size() -> None:
    model = create_model("vit_pico_r_s4_32").eval()
    model.set_img_size(48)
    assert model.img_size == (48, 48) and model.patch_grid == (12, 12)
    assert model.forward_features(torch.randn(1, 3, 48, 48)).shape == (1, 1 + 144, 32)
    assert model.pos_table().shape == (1, 144, 32)
    assert model.forward_features(torch.randn(1, 3, 48, 48), _mask(1, 144, 36)).shape == (1, 1 + 108, 32)
    assert build_model(model.get_config()).img_size == (48, 48)
    with pytest.raises(ValueError, match="multiple"):
        model.set_img_size(30)


def test_owns_state_dict() -> None:
    hybrid = create_model("vit_pico_r_s4_32").state_dict()
    vit = create_model("vit_pico_patch4").state_dict()
    assert HybridVisionTransformer.owns_state_dict(hybrid)
    assert not HybridVisionTransformer.owns_state_dict(vit)
    # the plain ViT's check also accepts a hybrid: loaders must ask the hybrid first
    assert VisionTransformer.owns_state_dict(hybrid)


def test_infer_config_from_a_plain_state_dict() -> None:
    pico = create_model("vit_pico_r_s4_32", num_classes=3)
    assert detect_family(pico.state_dict()) == "hybrid"
    assert HybridVisionTransformer.infer_config(pico.state_dict()) == pico.get_config()
    with torch.device("meta"):
        base384 = create_model("vit_base_r50_s16_384", num_classes=1000)
        small320 = create_model("vit_small_r26_s32_224", img_size=320, num_classes=10)
    assert HybridVisionTransformer.infer_config(base384.state_dict()) == base384.get_config()
    config = HybridVisionTransformer.infer_config(small320.state_dict())
    assert (config["arch"], config["img_size"], config["num_classes"]) == ("vit_small_r26_s32_224", 320, 10)
    with pytest.raises(ValueError, match="matches no registered variant"):
        HybridVisionTransformer.infer_config(create_model("vit_pico_r_s4_32", embed_dim=64).state_dict())


def test_flops_count_every_convolution_and_matmul() -> None:
    model = create_model("vit_pico_r_s4_32", num_classes=10).eval()
    counted = []

    def hook(module: nn.Module, inputs: tuple[torch.Tensor], out: torch.Tensor) -> None:
        if isinstance(module, nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1]
            counted.append(2 * out[0].numel() * module.in_channels * k)
        else:
            counted.append(2 * out[0].numel() * module.in_features)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model.embed(torch.randn(1, 3, 32, 32))
    stem = sum(counted)
    assert model.patch_embed.flops() == stem
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
    for h in handles:
        h.remove()
    attention_matmuls = len(model.blocks) * 2 * 2 * 65 * 65 * model.embed_dim
    assert model.flops_per_image() == sum(counted) - stem + attention_matmuls
    saved = len(model.blocks) * (block_flops(65, 32, 128) - block_flops(17, 32, 128))
    assert model.flops_per_image(visible_patches=16) == model.flops_per_image() - saved
    assert model.flops_per_image(include_head=False) == model.flops_per_image() - 2 * 32 * 10
