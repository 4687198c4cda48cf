"""Swin Transformer: timm's names and counts, equality with timm, masks, geometry, config, layer ids."""

from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file
from timm.models.swin_transformer import SwinTransformer as TimmSwin
from torch.utils.flop_counter import FlopCounterMode

from sslvit.models import build_model, create_model, list_models
from sslvit.models.swin import SwinTransformer

STANDARD = ("swin_tiny_patch4_window7_224", "swin_small_patch4_window7_224", "swin_base_patch4_window7_224")
# parameter counts with a 1000-class head, as published with the Swin / timm releases
KNOWN_PARAMS = {
    "swin_tiny_patch4_window7_224": 28_288_354,
    "swin_small_patch4_window7_224": 49_606_258,
    "swin_base_patch4_window7_224": 87_768_224,
}
# GFLOPs (multiply-adds) per 224 px image published in the Swin paper, Table 1
KNOWN_GMACS = {
    "swin_tiny_patch4_window7_224": 4.5,
    "swin_small_patch4_window7_224": 8.7,
    "swin_base_patch4_window7_224": 15.4,
}
PICO = "swin_pico_patch2_window4_32"
NANO = "swin_nano_patch2_window4_32"
PICO_TIMM_ARGS = dict(
    patch_size=2, window_size=4, embed_dim=8, depths=(2, 2, 2), num_heads=(1, 2, 4), drop_path_rate=0.0
)


def _pico_pair(img_size: int = 32, num_classes: int = 10) -> tuple[SwinTransformer, TimmSwin]:
    """Our pico with the weights of a random-init timm model of the same architecture."""
    torch.manual_seed(0)
    theirs = TimmSwin(img_size=img_size, num_classes=num_classes, **PICO_TIMM_ARGS).eval()
    ours = create_model(PICO, img_size=img_size, num_classes=num_classes).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    return ours, theirs


def test_registry_and_capabilities() -> None:
    assert set(list_models("swin")) == {*STANDARD, "swin_base_patch4_window6_192", NANO, PICO}
    assert SwinTransformer.supports == {"mask_token"}
    assert set(SwinTransformer.lacks) == {"token_drop", "patch_tokens", "attention_maps"}


@pytest.mark.parametrize("name", STANDARD)
def test_state_dict_and_counts_equal_timm_on_meta(name: str) -> None:
    with torch.device("meta"):
        ours = create_model(name, num_classes=1000)
        theirs = timm.create_model(name, pretrained=False, num_classes=1000)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {
        k: v.shape for k, v in theirs.state_dict().items()
    }
    assert ours.num_params() == KNOWN_PARAMS[name]
    assert ours.flops_per_image() / 2e9 == pytest.approx(KNOWN_GMACS[name], abs=0.05)
    assert (ours.patch_size, ours.output_stride, ours.feature_grid, ours.num_features) == (
        4,
        32,
        (7, 7),
        theirs.num_features,
    )
    spec = ours.timm_spec()
    assert spec == {
        "architecture": name,
        "model_args": {"num_classes": 1000, "drop_path_rate": 0.0},
        "exact": True,
    }


def test_small_variant_counts() -> None:
    with torch.device("meta"):
        nano, pico = create_model(NANO), create_model(PICO)
    assert nano.num_params() == 1_490_694 and pico.num_params() == 37_334


@pytest.mark.parametrize("img_size", [32, 48])  # 48: windows padded (6 x 6 grid, window 4) in the last stage
def test_timm_weights_give_timm_outputs(img_size: int) -> None:
    ours, theirs = _pico_pair(img_size)
    x = torch.randn(2, 3, img_size, img_size)
    with torch.no_grad():
        tokens, their_tokens = ours.forward_features(x), theirs.forward_features(x)
        torch.testing.assert_close(tokens, their_tokens.flatten(1, 2), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(
            ours.forward_head(tokens, pre_logits=True),
            theirs.forward_head(their_tokens, pre_logits=True),
            atol=1e-5,
            rtol=1e-5,
        )
        torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=1e-5)
    # the analytic count equals what torch's counter sees (conv, linears, window attention on the padded grid)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        ours(x[:1])
    assert ours.flops_per_image() == counter.get_total_flops()


def test_timm_spec_builds_the_same_architecture() -> None:
    ours, _ = _pico_pair()
    spec = ours.timm_spec()
    assert spec["exact"] is False
    theirs = timm.create_model(spec["architecture"], pretrained=False, **spec["model_args"]).eval()
    theirs.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("name", "width", "depth_last"), [(PICO, 32, 2), (NANO, 192, 2)])
def test_output_shapes(name: str, width: int, depth_last: int) -> None:
    model = create_model(name, num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    assert (model.patch_grid, model.output_stride, model.feature_grid) == ((16, 16), 8, (4, 4))
    with torch.no_grad():
        embedded = model.embed(x)
        tokens = model.forward_features(x)
        blocks = model.forward_blocks(x, last_k=depth_last)
        # tokens from embed are accepted in place of images
        torch.testing.assert_close(model.forward_features(embedded), tokens)
    assert embedded.shape == (2, 256, model.embed_dim)
    assert tokens.shape == (2, 16, width) and model.num_features == width
    assert model.pool(tokens).shape == (2, width) and model.forward_head(tokens).shape == (2, 10)
    assert (
        model.num_feature_blocks == depth_last and [b.shape for b in blocks] == [(2, 16, width)] * depth_last
    )
    torch.testing.assert_close(blocks[-1], tokens)
    with pytest.raises(ValueError, match="last_k"):
        model.forward_blocks(x, last_k=depth_last + 1)
    with pytest.raises(ValueError, match="needs a class token"):
        model.pool(tokens, "token")


def test_mask_token_hides_pixels_and_other_modes_refuse() -> None:
    model = create_model(PICO).eval()
    torch.manual_seed(1)
    x = torch.randn(2, 3, 32, 32)
    mask = torch.rand(2, model.num_patches) < 0.6
    mask_token = torch.randn(1, 1, model.embed_dim)
    tokens = model.forward_features(x, mask, mask_token)
    assert tokens.shape == (2, 16, model.num_features)
    # hidden tokens are the mask token at the input of the stages
    grid = model._grid_tokens(x, mask, mask_token).flatten(1, 2)
    torch.testing.assert_close(grid[mask], mask_token[0].expand(int(mask.sum()), -1))
    # new pixels under hidden patches change nothing at all (every output token mixes whole windows)
    p, (gh, gw) = model.patch_size, model.patch_grid
    hidden_pixels = mask.reshape(2, 1, gh, 1, gw, 1).expand(-1, 3, -1, p, -1, p).reshape(2, 3, 32, 32)
    other = torch.where(hidden_pixels, torch.randn_like(x) * 5, x)
    assert torch.equal(model.forward_features(other, mask, mask_token), tokens)
    # ... while a visible patch's pixels do
    visible = torch.where(~hidden_pixels, x + 1.0, x)
    assert not torch.allclose(model.forward_features(visible, mask, mask_token), tokens)
    with pytest.raises(ValueError, match="shifted-window attention needs every token"):
        model.forward_features(x, mask)
    with pytest.raises(NotImplementedError, match="inside local"):
        model.forward_with_attention(x)
    with pytest.raises(ValueError, match="expected"):
        model.forward_features(x, mask[:, :-1], mask_token)


def test_every_parameter_gets_a_gradient_under_mask_token() -> None:
    model = create_model(PICO, num_classes=5)
    mask = torch.rand(2, model.num_patches) < 0.5
    mask_token = torch.zeros(1, 1, model.embed_dim, requires_grad=True)
    x = torch.randn(2, 3, 32, 32)
    model.forward_head(model.forward_features(x, mask, mask_token)).square().sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == [] and mask_token.grad.abs().sum() > 0


def test_config_rebuild_and_safetensors_round_trip(tmp_path) -> None:
    model = create_model(PICO, num_classes=7, drop_path_rate=0.1).eval()
    config = model.get_config()
    assert config["family"] == "swin" and config["arch"] == PICO and config["depths"] == [2, 2, 2]
    rebuilt = build_model(config).eval()
    assert rebuilt.get_config() == config
    save_file(model.state_dict(), tmp_path / "swin.safetensors")
    rebuilt.load_state_dict(load_file(tmp_path / "swin.safetensors"), strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x)) and torch.equal(
            rebuilt.forward_features(x), model.forward_features(x)
        )
    # non-persistent buffers stay out of the state dict, as in timm
    assert not any("relative_position_index" in k or "attn_mask" in k for k in model.state_dict())


def test_layer_ids_follow_simmim() -> None:
    with torch.device("meta"):
        model = create_model(STANDARD[0], num_classes=1000)
    names = [n for n, _ in model.named_parameters()]
    ids = [model.layer_id(n) for n in names]
    assert model.num_layers == 13 and ids[0] == 0 and ids == sorted(ids) and set(ids) == set(range(14))
    assert model.layer_id("patch_embed.norm.weight") == 0 and model.layer_id("encoder.mask_token") == 0
    assert model.layer_id("layers.0.blocks.1.attn.qkv.weight") == 2
    assert model.layer_id("layers.2.downsample.reduction.weight") == 4  # SimMIM: end of stage 1
    assert model.layer_id("layers.2.blocks.0.mlp.fc1.weight") == 5
    assert model.layer_id("encoder.layers.3.blocks.1.norm1.bias") == 12
    assert model.layer_id("norm.weight") == model.layer_id("head.fc.weight") == 13
    nwd = model.no_weight_decay()
    assert len(nwd) == 12 and all(n.endswith("relative_position_bias_table") for n in nwd)


def test_set_img_size_matches_timm_and_crops_tables() -> None:
    ours, theirs = _pico_pair()
    ours.set_img_size(64)
    theirs.set_input_size(img_size=(64, 64), window_size=4)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=1e-5)
    assert ours.forward_features(x).shape == (1, 64, 32) and ours.feature_grid == (8, 8)
    # down to 16 px: the last stage's grid is 2 x 2, its window shrinks to 2 and keeps its biases
    attn = ours.layers[2].blocks[0].attn
    bias_before = attn.position_bias()[:, [0, 1, 4, 5]][
        :, :, [0, 1, 4, 5]
    ]  # top-left 2 x 2 of the 4 x 4 window
    ours.set_img_size(16)
    assert attn.window == (2, 2) and attn.relative_position_bias_table.shape == (9, 4)
    torch.testing.assert_close(attn.position_bias(), bias_before, rtol=0, atol=0)
    assert ours.forward_features(torch.randn(1, 3, 16, 16)).shape == (1, 4, 32)
    assert {k: v.shape for k, v in build_model(ours.get_config()).state_dict().items()} == {
        k: v.shape for k, v in ours.state_dict().items()
    }
    with pytest.raises(ValueError, match="bias table covers"):
        ours.set_img_size(32)
    with pytest.raises(ValueError, match="output stride"):
        ours.set_img_size(20)


def test_owns_state_dict() -> None:
    with torch.device("meta"):
        swin = create_model(PICO).state_dict()
        vit = create_model("vit_pico_patch4").state_dict()
    assert SwinTransformer.owns_state_dict(swin)
    assert not SwinTransformer.owns_state_dict(vit)
