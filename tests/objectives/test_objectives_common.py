"""Properties every objective shares: gradients reach every parameter, padding is ignored, state keys."""

from __future__ import annotations

import pytest
import torch

from sslvit.models import create_model
from sslvit.objectives import OBJECTIVES, build_objective, objective_config

CASES = [
    ("mae", {}, {}),
    ("mae", {"pos_embed": "learned_2d", "layer_scale_init": 0.1}, {"norm_pix_loss": False}),
    ("mae", {"class_token": False, "global_pool": "avg", "pos_embed": "sincos"}, {}),
    ("simmim", {}, {}),
    ("mpp", {}, {}),
    ("mpp", {}, {"mpp_target": "color3bit_4x4"}),
    ("mpp", {"class_token": False, "global_pool": "avg"}, {"mpp_target": "l2_patch"}),
    ("supervised", {"head_type": "pre_logits", "pos_embed": "learned_2d", "pos_embed_2d_mode": "concat"}, {}),
    (
        "supervised",
        {"global_pool": "avg", "layer_scale_init": 0.1},
        {"loss": "bce", "mixup_alpha": 0.8, "cutmix_alpha": 1.0},
    ),
]


@pytest.mark.parametrize("name, encoder_kwargs, cfg_kwargs", CASES)
def test_every_parameter_gets_a_finite_nonzero_gradient(
    name, encoder_kwargs, cfg_kwargs, make_objective, make_batch
):
    objective = make_objective(name, encoder_kwargs, **cfg_kwargs).train()
    batch = make_batch(objective)
    if name == "mpp":
        assert (batch["mpp_action"] == 1).any() and (batch["mpp_action"] == 2).any()
    loss, metrics = objective(batch)
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert all(isinstance(v, float) or (v.ndim == 0 and not v.requires_grad) for v in metrics.values())
    loss.backward()
    params = dict(objective.named_parameters())
    assert any(k.startswith("encoder.blocks.") for k in params)
    for key, param in params.items():
        assert param.grad is not None, key
        assert torch.isfinite(param.grad).all(), key
        assert param.grad.abs().sum() > 0, key


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_padding_samples_do_not_change_the_loss(name, make_objective, make_batch):
    objective = make_objective(name).eval()
    batch = make_batch(objective, n=4)
    padded = {k: v.clone() for k, v in batch.items()}
    padded["valid"][3] = False
    padded["image"][3] = 255 - padded["image"][3]
    real = {k: v[:3] for k, v in batch.items()}
    with torch.no_grad():
        torch.testing.assert_close(objective(padded)[0], objective(real)[0], rtol=1e-5, atol=1e-6)
        all_padding = {**padded, "valid": torch.zeros(4, dtype=torch.bool)}
        assert objective(all_padding)[0].item() == 0.0


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_state_dict_holds_encoder_and_own_parameters(name, make_objective):
    objective = make_objective(name)
    keys = set(objective.state_dict())
    encoder_keys = {k for k in keys if k.startswith("encoder.")}
    assert {f"encoder.{k}" for k in objective.encoder.state_dict()} == encoder_keys
    own = keys - encoder_keys
    expected = {
        "mae": {
            "mask_token",
            "decoder_embed.weight",
            "decoder_pos_embed",
            "decoder_pred.weight",
            "decoder_norm.weight",
        },
        "simmim": {"mask_token", "decoder.weight", "decoder.bias"},
        "mpp": {"mask_token", "head.weight", "head.bias"},
        "supervised": set(),
        "data2vec2": {"decoder.blocks.0.weight", "decoder.proj.weight", "teacher.cls_token", "teacher.norm.weight"},
    }[name]
    assert expected <= own
    assert "pixel_mean" not in keys


def test_masks_drawn_when_the_batch_has_none(make_objective, make_batch):
    objective = make_objective("mpp")
    batch = make_batch(objective)
    loss, _ = objective({"image": batch["image"]})
    assert torch.isfinite(loss)


def test_flops_order_of_the_objectives():
    encoder_flops = {}
    for name in OBJECTIVES:
        cfg = objective_config(name, **({"num_classes": 1000} if name == "supervised" else {}))
        with torch.device("meta"):
            objective = build_objective(cfg, create_model("vit_base_patch16"))
        encoder_flops[name] = objective.flops_per_image()
    # MAE: 1 + 49 tokens through ViT-B (8.9 GFLOPs) plus an 8 x 512 decoder on 197 tokens (10.6 GFLOPs)
    assert encoder_flops["mae"] == pytest.approx(19.56e9, rel=1e-3)
    assert encoder_flops["supervised"] == pytest.approx(35.13e9, rel=1e-3)
    assert encoder_flops["simmim"] == pytest.approx(encoder_flops["supervised"], rel=0.02)


def test_unknown_objective_is_an_error():
    cfg = objective_config("mae")
    cfg.name = "byol"
    with pytest.raises(ValueError, match="unknown objective 'byol'; known: data2vec2, mae, mpp, simmim, supervised"):
        build_objective(cfg, create_model("vit_pico_patch4"))


def test_an_objective_takes_only_its_own_config_section():
    with pytest.raises(TypeError, match="SimMIMConfig"):
        build_objective(_renamed("mae", "simmim"), create_model("vit_pico_patch4"))


def _renamed(src: str, dst: str):
    cfg = objective_config(src)
    cfg.name = dst
    return cfg
