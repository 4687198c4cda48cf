"""VisionTransformer: shapes per variant family, names, config round trip, attention paths, FLOPs."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from sslvit.models import SIZES, build_model, create_model, list_models, model_defaults
from sslvit.models.vit import VisionTransformer

TINY = dict(embed_dim=16, depth=1, num_heads=2)

# parameter counts with a 1000-class head, as published for the timm / DeiT / MAE releases
KNOWN_PARAMS = {
    "vit_tiny_patch16": 5_717_416,
    "vit_small_patch16": 22_050_664,
    "vit_base_patch16": 86_567_656,
    "vit_base_patch32": 88_224_232,
    "vit_large_patch16": 304_326_632,
    "vit_huge_patch14": 632_045_800,
}


VIT_NAMES = list_models("vit")


def test_registry_holds_every_family() -> None:
    names = list_models("vit")
    for size in ("tiny", "small", "base", "large", "huge"):
        for patch in (14, 16, 32):
            assert f"vit_{size}_patch{patch}" in names
    assert {"vit_nano_patch4", "vit_pico_patch4"} <= set(names)


@pytest.mark.parametrize("name", sorted(n for n in VIT_NAMES if n.startswith("vit_") and "patch4" not in n))
def test_standard_variant_defaults_and_tiny_shapes(name: str) -> None:
    size, patch = name.split("_")[1], int(name.split("patch")[1])
    defaults = model_defaults(name)
    assert {k: defaults[k] for k in ("embed_dim", "depth", "num_heads")} == SIZES[size]
    assert defaults["patch_size"] == patch and defaults["img_size"] == 224
    model = create_model(name, img_size=2 * patch, num_classes=3, **TINY).eval()
    x = torch.randn(2, 3, 2 * patch, 2 * patch)
    assert model.forward_features(x).shape == (2, 1 + 4, 16)
    assert model(x).shape == (2, 3)
    assert model.arch == name and model.get_config()["arch"] == name


@pytest.mark.parametrize("name", sorted(KNOWN_PARAMS))
def test_full_size_parameter_counts_on_meta_device(name: str) -> None:
    with torch.device("meta"):
        model = create_model(name, num_classes=1000)
    assert model.num_params() == KNOWN_PARAMS[name]


def test_flops_of_vit_b16() -> None:
    with torch.device("meta"):
        model = create_model("vit_base_patch16")
    # 17.56 G multiply-adds per 224 px image, the figure usually quoted for ViT-B/16
    assert model.flops_per_image() == pytest.approx(2 * 17.5638e9, rel=1e-4)
    assert model.flops_per_image(visible_patches=49) < model.flops_per_image() / 3


@pytest.mark.parametrize(
    "kwargs, tokens",
    [
        (dict(), 1 + 64),
        (dict(class_token=False, global_pool="avg"), 64),
        (dict(pos_embed="learned_2d", pos_embed_2d_mode="concat"), 1 + 64),
        (dict(pos_embed="sincos", layer_scale_init=1e-5, drop_path_rate=0.1), 1 + 64),
        (dict(pos_embed="none", head_type="pre_logits", num_classes=7), 1 + 64),
    ],
)
def test_small_variants_forward(kwargs: dict, tokens: int) -> None:
    for name in ("vit_nano_patch4", "vit_pico_patch4"):
        model = create_model(name, **{**kwargs, **({"depth": 1} if name == "vit_nano_patch4" else {})}).eval()
        x = torch.randn(2, 3, 32, 32)
        dim = model.embed_dim
        assert model.forward_features(x).shape == (2, tokens, dim)
        out = model(x)
        assert out.shape == (2, kwargs.get("num_classes", 0) or dim)
        assert model.forward_head(model.forward_features(x), pre_logits=True).shape == (2, dim)


def test_nano_and_pico_defaults() -> None:
    nano, pico = create_model("vit_nano_patch4"), create_model("vit_pico_patch4")
    assert (nano.embed_dim, len(nano.blocks), nano.blocks[0].attn.num_heads) == (128, 6, 4)
    assert (pico.embed_dim, len(pico.blocks), pico.blocks[0].attn.num_heads) == (32, 2, 2)
    assert nano.patch_embed.grid_size == (8, 8) and nano.num_params() < 1_500_000


def test_parameter_names_follow_the_vit_convention() -> None:
    model = create_model("vit_pico_patch4", depth=1, num_classes=5)
    expected = {
        "cls_token",
        "pos_embed",
        "patch_embed.proj.weight",
        "patch_embed.proj.bias",
        "norm.weight",
        "norm.bias",
        "head.weight",
        "head.bias",
    }
    for part in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"):
        expected |= {f"blocks.0.{part}.weight", f"blocks.0.{part}.bias"}
    assert set(model.state_dict()) == expected
    scaled = create_model(
        "vit_pico_patch4", depth=1, layer_scale_init=0.1, head_type="pre_logits", num_classes=5
    )
    assert {"blocks.0.ls1.gamma", "blocks.0.ls2.gamma", "pre_logits.fc.weight"} <= set(scaled.state_dict())
    two_d = create_model("vit_pico_patch4", depth=1, pos_embed="learned_2d")
    assert {"pos_embed_row", "pos_embed_col", "pos_embed_prefix"} <= set(two_d.state_dict())
    assert "pos_embed" in create_model("vit_pico_patch4", pos_embed="sincos").state_dict()


def test_no_weight_decay_and_layer_ids() -> None:
    model = create_model("vit_pico_patch4", num_classes=3)
    assert model.no_weight_decay() == {"cls_token", "pos_embed"}
    assert model.layer_id("patch_embed.proj.weight") == 0 and model.layer_id("encoder.cls_token") == 0
    assert model.layer_id("blocks.0.attn.qkv.weight") == 1 and model.layer_id("blocks.1.mlp.fc2.bias") == 2
    assert model.layer_id("norm.weight") == 3 and model.layer_id("head.weight") == 3


def test_config_round_trip_and_safetensors_reload(tmp_path) -> None:
    torch.manual_seed(0)
    model = create_model(
        "vit_pico_patch4", pos_embed="learned_2d", num_classes=4, layer_scale_init=0.5
    ).eval()
    config = model.get_config()
    assert config["arch"] == "vit_pico_patch4"
    save_file(model.state_dict(), str(tmp_path / "m.safetensors"))
    fresh = build_model(config).eval()
    assert fresh.get_config() == config
    fresh.load_state_dict(load_file(str(tmp_path / "m.safetensors")))
    x = torch.randn(3, 3, 32, 32)
    assert torch.equal(model(x), fresh(x))


def test_attention_slow_path_matches_fast_path() -> None:
    model = create_model("vit_pico_patch4").eval()
    x = torch.randn(2, 3, 32, 32)
    tokens, maps = model.forward_with_attention(x)
    torch.testing.assert_close(tokens, model.forward_features(x), atol=1e-5, rtol=1e-5)
    assert len(maps) == 2 and maps[0].shape == (2, 2, 65, 65)
    torch.testing.assert_close(maps[1].sum(-1), torch.ones(2, 2, 65))


def test_masked_forward_drops_hidden_patches_after_position_embedding() -> None:
    model = create_model("vit_pico_patch4", depth=1).eval()
    x = torch.randn(2, 3, 32, 32)
    mask = torch.zeros(2, 64, dtype=torch.bool)
    mask[0, 10:] = True
    mask[1, :54] = True
    out = model.forward_features(x, mask)
    tokens = model.patch_embed(x) + model.pos_embed[:, 1:]
    kept = torch.stack([tokens[0, :10], tokens[1, 54:]])
    cls = (model.cls_token + model.pos_embed[:, :1]).expand(2, -1, -1)
    expected = model.norm(model.blocks[0](torch.cat([cls, kept], dim=1)))
    torch.testing.assert_close(out, expected)
    with pytest.raises(ValueError, match="same number"):
        uneven = torch.zeros(2, 64, dtype=torch.bool)
        uneven[0, :3] = True
        uneven[1, :5] = True
        model.forward_features(x, uneven)


def test_token_input_equals_image_input() -> None:
    model = create_model("vit_pico_patch4").eval()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(model.forward_features(model.patch_embed(x)), model.forward_features(x))
    with pytest.raises(ValueError, match="resize_pos_embed"):
        model(torch.randn(1, 3, 48, 48))


def test_bad_arguments_fail_early() -> None:
    with pytest.raises(ValueError):
        VisionTransformer(img_size=32, patch_size=4, class_token=False, global_pool="token")
    with pytest.raises(ValueError):
        VisionTransformer(img_size=30, patch_size=4)
    with pytest.raises(KeyError, match="vit_base_patch16"):
        create_model("vit_base_patch15")
