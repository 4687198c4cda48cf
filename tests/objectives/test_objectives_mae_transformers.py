"""MAE against an independent implementation: transformers' ``ViTMAEForPreTraining`` holding the
same weights, fed the same images and mask, gives the same loss, prediction and gradients (fp64)."""

from __future__ import annotations

import pytest
import torch

from sslvit.models import create_model
from sslvit.objectives import build_objective, objective_config

transformers = pytest.importorskip("transformers", minversion="5.0")


def hf_state(mae, ours: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """sslvit MAE tensors (``ours``, default its state dict) under transformers 5's
    ``ViTMAEForPreTraining`` names (qkv split in three); names ``ours`` lacks are left out."""
    ours = mae.state_dict() if ours is None else ours
    ours = {**{k: None for k in mae.state_dict()}, **ours}
    out = {
        "vit.embeddings.cls_token": ours["encoder.cls_token"],
        "vit.embeddings.position_embeddings": ours["encoder.pos_embed"],
        "vit.embeddings.patch_embeddings.projection.weight": ours["encoder.patch_embed.proj.weight"],
        "vit.embeddings.patch_embeddings.projection.bias": ours["encoder.patch_embed.proj.bias"],
        "vit.layernorm.weight": ours["encoder.norm.weight"],
        "vit.layernorm.bias": ours["encoder.norm.bias"],
        "decoder.mask_token": ours["mask_token"],
        "decoder.decoder_pos_embed": ours["decoder_pos_embed"],
    }
    for part in ("decoder_embed", "decoder_norm", "decoder_pred"):
        for kind in ("weight", "bias"):
            out[f"decoder.{part}.{kind}"] = ours[f"{part}.{kind}"]
    for ours_prefix, theirs_prefix, depth in (("encoder.blocks", "vit.layers", len(mae.encoder.blocks)),
                                              ("decoder_blocks", "decoder.decoder_layers", len(mae.decoder_blocks))):
        for i in range(depth):
            a, b = f"{ours_prefix}.{i}", f"{theirs_prefix}.{i}"
            for kind in ("weight", "bias"):
                qkv = ours[f"{a}.attn.qkv.{kind}"]
                q, k, v = qkv.chunk(3) if qkv is not None else (None, None, None)
                out.update({f"{b}.attention.q_proj.{kind}": q, f"{b}.attention.k_proj.{kind}": k,
                            f"{b}.attention.v_proj.{kind}": v,
                            f"{b}.attention.o_proj.{kind}": ours[f"{a}.attn.proj.{kind}"],
                            f"{b}.layernorm_before.{kind}": ours[f"{a}.norm1.{kind}"],
                            f"{b}.layernorm_after.{kind}": ours[f"{a}.norm2.{kind}"],
                            f"{b}.mlp.fc1.{kind}": ours[f"{a}.mlp.fc1.{kind}"],
                            f"{b}.mlp.fc2.{kind}": ours[f"{a}.mlp.fc2.{kind}"]})
    return {k: v for k, v in out.items() if v is not None}


@pytest.mark.parametrize("norm_pix_loss", [True, False])
def test_loss_prediction_and_gradients_equal_transformers_vitmae(norm_pix_loss):
    torch.manual_seed(0)
    encoder = create_model("vit_pico_patch4", pos_embed="sincos")  # 32 px, 4 px patches, width 32, depth 2
    mae = build_objective(objective_config("mae", mask_ratio=0.75, norm_pix_loss=norm_pix_loss, decoder_depth=1,
                                           decoder_dim=16, decoder_heads=2), encoder, (0.0,) * 3, (1.0,) * 3)
    config = transformers.ViTMAEConfig(
        image_size=32, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=128, decoder_hidden_size=16, decoder_num_hidden_layers=1, decoder_num_attention_heads=2,
        decoder_intermediate_size=64, mask_ratio=0.75, norm_pix_loss=norm_pix_loss, layer_norm_eps=1e-6,
        hidden_act="gelu", qkv_bias=True, attn_implementation="sdpa")  # eager softmaxes in float32
    theirs = transformers.ViTMAEForPreTraining(config)
    state = hf_state(mae)
    assert set(state) == set(theirs.state_dict())
    theirs.load_state_dict(state)
    mae, theirs = mae.double().train(), theirs.double().train()

    images = torch.rand(3, 3, 32, 32).double()  # float32 values: sslvit reads images as float32 in [0, 1]
    noise = torch.rand(3, 64, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    keep = noise.argsort(dim=1)[:, : 64 - mae.masker.num_masked]  # what transformers keeps for this noise
    mask = torch.ones(3, 64, dtype=torch.bool).scatter_(1, keep, False)
    # transformers keeps patches in the order of the noise, sslvit in index order; a noise that is
    # increasing over the kept indices makes the two orders the same
    order = torch.where(mask, 2.0 + noise, noise.new_zeros(()).expand_as(noise))
    order = torch.where(mask, order, torch.arange(64, dtype=torch.float64).expand(3, -1) / 64)

    loss, _ = mae({"image": images, "mask": mask})
    out = theirs(pixel_values=images, noise=order)
    assert torch.equal(out.mask.bool(), mask)
    torch.testing.assert_close(loss, out.loss, rtol=1e-7, atol=0)  # sslvit sums the loss in float32
    pred = mae.decode(mae.encoder.forward_features(mae.normalize(images), mask), mask)
    torch.testing.assert_close(pred, out.logits, rtol=1e-9, atol=1e-10)

    loss.backward()
    out.loss.backward()
    grads = {n: p.grad for n, p in theirs.named_parameters() if p.grad is not None}
    ours = hf_state(mae, {n: p.grad for n, p in mae.named_parameters() if p.grad is not None})
    assert set(grads) == set(ours) and len(grads) == len(list(theirs.parameters())) - 2  # all but the sin-cos tables
    for name, grad in grads.items():
        torch.testing.assert_close(ours[name], grad, rtol=1e-6, atol=1e-9, msg=name)
