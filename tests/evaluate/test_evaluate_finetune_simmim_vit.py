"""The SimMIM ViT-B fine-tune recipe on a small SimMIM-style (shared_relative, layer scale) encoder:
the model it builds is the official fine-tune model (one bias table per block copied from the
shared one, mean pooling + fresh fc_norm, the checkpoint's layer scale, head x 0.001) and its
optimiser groups are SimMIM's."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sslvit import save_model
from sslvit.evaluate.common import load_config
from sslvit.evaluate.finetune import FinetuneConfig, prepare_finetune
from sslvit.models import create_model
from sslvit.training.optim import param_groups

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "sslvit" / "configs" / "finetune_simmim_vit_base.yaml"


@pytest.fixture
def simmim_checkpoint(tmp_path: Path) -> tuple[Path, torch.nn.Module]:
    """vit_pico_patch4 as simmim_vit_base pretrains it: shared bias, layer scale 0.1, BEiT init."""
    torch.manual_seed(0)
    model = create_model("vit_pico_patch4", pos_embed="shared_relative", layer_scale_init=0.1, weight_init="beit")
    with torch.no_grad():
        model.rel_pos_bias.relative_position_bias_table.normal_()
        for block in model.blocks:
            block.ls1.gamma.uniform_(0.05, 0.2)
    return save_model(model, tmp_path / "ckpt" / "model.safetensors", model.get_config()), model


def test_recipe_builds_simmims_fine_tune_model(simmim_checkpoint, digits, tmp_path, capsys):
    path, pretrained = simmim_checkpoint
    cfg = load_config(FinetuneConfig, RECIPE, [
        f"finetune.checkpoint={path}", f"data.train_shards={digits['train']}", f"data.val_shards={digits['val']}",
        "data.image_size=32", "data.num_workers=0", "data.batch_size=8", "objective.num_classes=10",
        "model.name=vit_pico_patch4", f"train.out_dir={tmp_path / 'runs'}"])
    capsys.readouterr()
    cfg, encoder, _ = prepare_finetune(cfg)
    said = capsys.readouterr().out
    assert "copied into each of the 2 blocks" in said and "fresh fc_norm" in said
    assert encoder.pos_embed_kind == "block_relative" and encoder.global_pool == "avg"
    shared = pretrained.rel_pos_bias.relative_position_bias_table
    for block, source in zip(encoder.blocks, pretrained.blocks, strict=True):
        assert torch.equal(block.attn.relative_position_bias_table, shared)
        assert torch.equal(block.ls1.gamma, source.ls1.gamma) and torch.equal(block.ls2.gamma, source.ls2.gamma)
        assert block.drop_path1.p == pytest.approx(0.1 * (block is encoder.blocks[1]))
    assert isinstance(encoder.norm, torch.nn.Identity)
    assert torch.equal(encoder.fc_norm.weight, torch.ones(32)) and torch.equal(encoder.fc_norm.bias, torch.zeros(32))
    head = encoder.head.weight.detach()
    assert head.shape == (10, 32) and torch.equal(encoder.head.bias, torch.zeros(10))
    assert 1e-5 < float(head.std()) < 3e-5  # SimMIM: trunc_normal_(std=.02) x init_scale 0.001
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():  # mean of the patch tokens, fc_norm, head; the blocks as pretrained
        tokens = pretrained.blocks[1](pretrained.blocks[0](pretrained.prepare_tokens(x), None, pretrained.rel_pos_bias()),
                                      None, pretrained.rel_pos_bias())
        expected = encoder.head(encoder.fc_norm(tokens[:, 1:].mean(1)))
        torch.testing.assert_close(encoder.eval()(x), expected, rtol=1e-5, atol=1e-6)
    groups = param_groups(encoder, cfg.optim.weight_decay, cfg.optim.layer_decay, cfg.optim.no_decay)
    scale = {name: g["lr_scale"] for g in groups for name in g["names"]}
    assert scale["patch_embed.proj.weight"] == pytest.approx(0.65**3)  # get_vit_layer: 0.65 ** (depth + 1 - layer)
    assert scale["blocks.0.attn.relative_position_bias_table"] == pytest.approx(0.65**2)
    assert scale["head.weight"] == scale["fc_norm.weight"] == 1.0
    o = cfg.optim
    assert (o.lr, o.warmup_lr, o.min_lr, o.warmup_epochs, o.warmup_prefix, o.clip_grad) == (
        5e-3, 1e-6, 1e-6, 20, False, 5.0)
