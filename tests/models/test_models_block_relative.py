"""``pos_embed='block_relative'``: BEiT's relative position bias with one table per block (SimMIM's
ViT fine-tune, timm Beit's ``use_rel_pos_bias``), and a ``shared_relative`` checkpoint loaded into it."""

from __future__ import annotations

import copy

import pytest
import torch

from sslvit import load_checkpoint, save_model
from sslvit.models import create_model
from sslvit.models.rel_pos_bias import expand_shared_table, relative_bias
from sslvit.training.optim import param_groups

TABLE = "relative_position_bias_table"


def _pico(**kw) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("vit_pico_patch4", **kw).eval()


def _from_timm_beit(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm Beit's state dict in sslvit's names: q_bias / v_bias -> qkv.bias (zero key bias),
    gamma_1 / gamma_2 -> ls1.gamma / ls2.gamma, the non-persistent index buffers left out."""
    out = {}
    for key, value in state.items():
        if key.endswith(("relative_position_index", "k_bias", "v_bias")):
            continue
        if key.endswith("q_bias"):
            block = key.removesuffix("q_bias")
            out[f"{block}qkv.bias"] = torch.cat([value, torch.zeros_like(value), state[f"{block}v_bias"]])
            continue
        out[key.replace("gamma_1", "ls1.gamma").replace("gamma_2", "ls2.gamma")] = value
    return out


def test_block_relative_equals_timm_beit_with_per_block_bias():
    import timm

    ours = _pico(pos_embed="block_relative", layer_scale_init=0.1, fc_norm=True, global_pool="avg", num_classes=5)
    theirs = timm.create_model("beit_base_patch16_224", pretrained=False, img_size=32, patch_size=4, embed_dim=32,
                               depth=2, num_heads=2, num_classes=5, use_abs_pos_emb=False, use_rel_pos_bias=True,
                               use_shared_rel_pos_bias=False, init_values=0.1, global_pool="avg").eval()
    tables = {k for k in ours.state_dict() if TABLE in k}
    assert tables == {f"blocks.{i}.attn.{TABLE}" for i in range(2)}
    assert ours.rel_pos_bias is None and ours.pos_embed is None
    torch.manual_seed(1)
    with torch.no_grad():
        for name, value in theirs.state_dict().items():
            if value.is_floating_point() and not name.endswith("k_bias"):
                value.normal_(0, 0.5)  # every block its own, different table
    state = _from_timm_beit(theirs.state_dict())
    assert not torch.equal(state[f"blocks.0.attn.{TABLE}"], state[f"blocks.1.attn.{TABLE}"])
    ours.load_state_dict(state)
    assert torch.equal(ours.blocks[0].attn.relative_position_index, theirs.blocks[0].attn.relative_position_index)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)
        # and the tables matter: without block 1's, the logits move
        ours.blocks[1].attn.relative_position_bias_table.zero_()
        assert (ours(x) - theirs(x)).abs().max() > 1e-2


def test_block_relative_bias_follows_dropped_tokens():
    """With hidden patches dropped (MAE-style), each block biases the kept tokens' logits with its own
    table's entries of exactly those tokens."""
    model = _pico(pos_embed="block_relative")
    with torch.no_grad():
        for block in model.blocks:
            block.attn.relative_position_bias_table.normal_()
    x = torch.randn(2, 3, 32, 32)
    mask = torch.zeros(2, 64, dtype=torch.bool)
    mask[0, 20:52] = True
    mask[1, ::2] = True
    reference = copy.deepcopy(model)
    for block in reference.blocks:
        block.attn.relative_position_bias_table = None  # the bias is handed in instead
    with torch.no_grad():
        kept = model.forward_features(x, mask)
        tokens = reference.prepare_tokens(x, mask)  # (2, 33, D)
        ids = torch.cat([torch.zeros(2, 1, dtype=torch.long), (~mask).nonzero()[:, 1].view(2, 32) + 1], dim=1)
        for block, own in zip(reference.blocks, model.blocks, strict=True):
            full = relative_bias(own.attn.relative_position_bias_table, own.attn.relative_position_index)  # (h, 65, 65)
            picked = torch.stack([full[:, i][:, :, i] for i in ids])  # (2, h, 33, 33)
            tokens = block(tokens, None, picked)
        expected = reference.norm(tokens)
        # nothing dropped: the same as no mask
        none_hidden = model.forward_features(x, torch.zeros(2, 64, dtype=torch.bool))
    assert kept.shape == (2, 33, 32)
    torch.testing.assert_close(kept, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(none_hidden, model.forward_features(x), rtol=1e-5, atol=1e-5)


def test_block_relative_refusals():
    with pytest.raises(ValueError, match="at most one prefix token"):
        create_model("vit_pico_patch4", pos_embed="block_relative", distilled=True)
    with pytest.raises(ValueError, match="cannot be resampled"):
        _pico(pos_embed="block_relative").set_img_size(64)


def test_shared_relative_checkpoint_loads_with_its_table_in_every_block(tmp_path, capsys):
    shared = _pico(pos_embed="shared_relative", layer_scale_init=0.1)
    with torch.no_grad():
        shared.rel_pos_bias.relative_position_bias_table.normal_()
    path = save_model(shared, tmp_path / "shared.safetensors", shared.get_config())
    capsys.readouterr()
    model = load_checkpoint(path, pos_embed="block_relative")
    said = capsys.readouterr().out
    assert said.count("\n") == 1 and "copied into each of the 2 blocks" in said
    assert model.pos_embed_kind == "block_relative" and model.rel_pos_bias is None
    for block, pretrained in zip(model.blocks, shared.blocks, strict=True):
        assert torch.equal(block.attn.relative_position_bias_table, shared.rel_pos_bias.relative_position_bias_table)
        assert torch.equal(block.ls1.gamma, pretrained.ls1.gamma)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():  # the same function until fine-tuning makes the tables differ
        torch.testing.assert_close(model.forward_features(x), shared.forward_features(x), rtol=1e-5, atol=1e-5)


def test_simmim_release_state_dict_is_expanded_as_remap_pretrained_keys_vit():
    """SimMIM's pretrained file: ``encoder.``-prefixed, with the shared table and its index buffer;
    the plain state dict is read as shared_relative and loads into a block_relative model."""
    shared = _pico(pos_embed="shared_relative")
    with torch.no_grad():
        shared.rel_pos_bias.relative_position_bias_table.normal_()
    state = {f"encoder.{k}": v for k, v in shared.state_dict().items()}
    state["encoder.rel_pos_bias.relative_position_index"] = shared.rel_pos_bias.relative_position_index
    expanded = expand_shared_table(state, 2, prefix="encoder.")
    assert not any("rel_pos_bias" in k for k in expanded)
    assert torch.equal(expanded[f"encoder.blocks.1.attn.{TABLE}"], state[f"encoder.rel_pos_bias.{TABLE}"])
    assert expanded[f"encoder.blocks.0.attn.{TABLE}"].data_ptr() != expanded[f"encoder.blocks.1.attn.{TABLE}"].data_ptr()
    assert expand_shared_table(expanded, 2, prefix="encoder.") is expanded  # nothing shared left: unchanged

    from sslvit.checkpoint import infer_model_config, load_encoder_weights

    plain = {k.removeprefix("encoder."): v for k, v in state.items()}
    assert infer_model_config(plain)["pos_embed"] == "shared_relative"
    assert infer_model_config(expand_shared_table(plain, 2))["pos_embed"] == "block_relative"
    model = _pico(pos_embed="block_relative")
    load_encoder_weights(model, plain)
    assert torch.equal(model.blocks[0].attn.relative_position_bias_table, shared.rel_pos_bias.relative_position_bias_table)


def test_block_tables_take_their_blocks_lr_and_weight_decay_as_simmim():
    """SimMIM's get_vit_layer puts blocks.i.* in layer i + 1 and its no_weight_decay (pos_embed,
    cls_token) leaves the 2-D per-block tables decayed."""
    model = _pico(pos_embed="block_relative", fc_norm=True, global_pool="avg", num_classes=3)
    groups = param_groups(model, 0.05, layer_decay=0.65)
    where = {name: (g["lr_scale"], g["weight_decay"]) for g in groups for name in g["names"]}
    assert where[f"blocks.0.attn.{TABLE}"] == pytest.approx((0.65**2, 0.05))
    assert where[f"blocks.1.attn.{TABLE}"] == pytest.approx((0.65, 0.05))
    assert where["cls_token"] == pytest.approx((0.65**3, 0.0))
    assert where["fc_norm.weight"] == pytest.approx((1.0, 0.0)) and where["head.weight"] == pytest.approx((1.0, 0.05))
