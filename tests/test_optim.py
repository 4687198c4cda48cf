import math

import pytest
import torch
from torch import nn

from sslvit.models.encoder import block_layer_id
from sslvit.training.optim import build_optimizer, lr_at, param_groups, set_lr


class TinyEncoder(nn.Module):
    """Only what the optimiser reads of an encoder: parameters, ``layer_id`` and ``num_layers``."""

    def __init__(self, depth: int = 3):
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, 4))
        self.pos_embed = nn.Parameter(torch.zeros(1, 5, 4))
        self.patch_embed = nn.Linear(4, 4)
        self.blocks = nn.ModuleList(nn.Sequential(nn.LayerNorm(4), nn.Linear(4, 4)) for _ in range(depth))
        self.norm = nn.LayerNorm(4)
        self.head = nn.Linear(4, 2)
        self.num_layers = depth + 1

    def layer_id(self, name: str) -> int:
        return block_layer_id(name, "blocks", self.num_layers, ("patch_embed", "pos_embed", "cls_token"))


def mae_adjust_learning_rate(epoch: float, lr: float, min_lr: float, warmup_epochs: float, epochs: float) -> float:
    """facebookresearch/mae util/lr_sched.py ``adjust_learning_rate`` at a fractional epoch."""
    if epoch < warmup_epochs:
        return lr * epoch / warmup_epochs
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * (epoch - warmup_epochs) / (epochs - warmup_epochs)))


def test_lr_equals_mae_schedule_at_every_step():
    """MAE sets the lr before each step from ``data_iter_step / len(data_loader) + epoch``: 0 at step 0."""
    steps_per_epoch, epochs, warmup_epochs = 7, 12, 3
    total = steps_per_epoch * epochs
    for step in range(total):
        official = mae_adjust_learning_rate(step / steps_per_epoch, 2.4e-3, 1e-6, warmup_epochs, epochs)
        ours = lr_at(step, 2.4e-3, total, warmup_epochs * steps_per_epoch, min_lr=1e-6)
        assert ours == pytest.approx(official, rel=1e-12, abs=1e-18), step
    assert lr_at(0, 1.0, 100, 10) == 0.0


def test_warmup_from_warmup_lr_and_multistep_as_timm():
    """timm's MultiStepLRScheduler with warmup_lr_init (SimMIM's ViT recipe): linear from warmup_lr,
    then the peak x gamma per milestone reached (milestones in steps from step 0)."""
    assert lr_at(0, 1e-3, 100, 10, warmup_lr=5e-7) == 5e-7
    assert lr_at(5, 1e-3, 100, 10, warmup_lr=5e-7) == pytest.approx(5e-7 + (1e-3 - 5e-7) * 0.5)
    values = [lr_at(s, 1e-3, 100, 10, schedule="multistep", milestones=(70,), gamma=0.1) for s in (10, 69, 70, 99)]
    assert values == pytest.approx([1e-3, 1e-3, 1e-4, 1e-4])
    assert lr_at(95, 1.0, 100, 0, schedule="multistep", milestones=(90, 50), gamma=0.5) == 0.25


def test_no_decay_list_replaces_the_default_exemptions():
    """``no_decay=()`` is timm's add_weight_decay (MAE pretraining): only 1-D tensors exempt."""
    default = {n: g["weight_decay"] for g in param_groups(TinyEncoder(), 0.05) for n in g["names"]}
    mae = {n: g["weight_decay"] for g in param_groups(TinyEncoder(), 0.05, no_decay=()) for n in g["names"]}
    simmim = {n: g["weight_decay"] for g in param_groups(TinyEncoder(), 0.05, no_decay=("pos_embed",))
              for n in g["names"]}
    assert default["cls_token"] == default["pos_embed"] == 0.0
    assert mae["cls_token"] == mae["pos_embed"] == 0.05 and mae["norm.weight"] == mae["head.bias"] == 0.0
    assert simmim["cls_token"] == 0.05 and simmim["pos_embed"] == 0.0
    assert mae["head.weight"] == default["head.weight"] == 0.05


def test_lr_schedule_values():
    assert lr_at(0, 1.0, 100, 10) == 0.0
    assert lr_at(1, 1.0, 100, 10) == pytest.approx(0.1)
    assert lr_at(9, 1.0, 100, 10) == pytest.approx(0.9)
    assert lr_at(10, 1.0, 100, 10) == pytest.approx(1.0)
    assert lr_at(55, 1.0, 100, 10) == pytest.approx(0.5)
    assert lr_at(100, 1.0, 100, 10, min_lr=0.1) == pytest.approx(0.1)
    assert lr_at(32, 2.0, 100, 10, schedule="linear") == pytest.approx(2.0 * (1 - 22 / 90))
    assert lr_at(50, 2.0, 100, 0, schedule="constant") == 2.0
    mid = lr_at(10 + 45 // 2, 1.0, 100, 10)
    assert mid == pytest.approx(0.5 * (1 + math.cos(math.pi * 22 / 90)))


def test_no_weight_decay_on_norms_biases_embeddings_tokens():
    groups = param_groups(TinyEncoder(), weight_decay=0.05)
    decayed = {n for g in groups if g["weight_decay"] > 0 for n in g["names"]}
    plain = {n for g in groups if g["weight_decay"] == 0 for n in g["names"]}
    assert decayed == {
        "patch_embed.weight",
        "blocks.0.1.weight",
        "blocks.1.1.weight",
        "blocks.2.1.weight",
        "head.weight",
    }
    assert {"cls_token", "pos_embed", "norm.weight", "norm.bias", "blocks.0.0.weight", "head.bias"} <= plain


def test_layer_decay_scales():
    depth = 3
    groups = param_groups(TinyEncoder(depth), weight_decay=0.05, layer_decay=0.5)
    scale = {n: g["lr_scale"] for g in groups for n in g["names"]}
    assert scale["pos_embed"] == pytest.approx(0.5**4)
    assert scale["patch_embed.weight"] == pytest.approx(0.5**4)
    assert scale["blocks.0.1.weight"] == pytest.approx(0.5**3)
    assert scale["blocks.2.1.weight"] == pytest.approx(0.5**1)
    assert scale["head.weight"] == pytest.approx(1.0)


def test_layer_decay_follows_the_encoders_own_layer_ids_inside_an_objective():
    from sslvit.models import create_model
    from sslvit.objectives import build_objective, objective_config

    encoder = create_model("vit_pico_patch4")
    objective = build_objective(objective_config("simmim", mask_patch_size=8), encoder)
    scale = {n: g["lr_scale"] for g in param_groups(objective, 0.05, layer_decay=0.5) for n in g["names"]}
    top = encoder.num_layers
    for name, _ in encoder.named_parameters():
        assert scale[f"encoder.{name}"] == pytest.approx(0.5 ** (top - encoder.layer_id(name)))
    # the objective's own head and mask token train at the full rate
    assert scale["decoder.weight"] == scale["mask_token"] == 1.0


def test_set_lr_applies_scale():
    opt = build_optimizer(TinyEncoder(), "adamw", 0.05, (0.9, 0.95), layer_decay=0.5)
    set_lr(opt, 1e-3)
    lrs = sorted({round(g["lr"], 12) for g in opt.param_groups})
    assert lrs == sorted({round(1e-3 * 0.5**k, 12) for k in range(5)})


def test_sgd_takes_momentum_and_l2_decay_on_matrices_only():
    """optim.name=sgd (the ViT paper's fine-tune): heavy-ball momentum, buf = m * buf + g + wd * p,
    p -= lr * buf, with no decay on 1-D parameters and tokens."""
    torch.manual_seed(0)
    model = TinyEncoder(depth=1)
    opt = build_optimizer(model, "sgd", 0.1, (0.9, 0.999), momentum=0.5)
    assert isinstance(opt, torch.optim.SGD)
    assert {g["momentum"] for g in opt.param_groups} == {0.5}
    set_lr(opt, 0.01)
    weight, bias = model.patch_embed.weight, model.patch_embed.bias
    w0, b0 = weight.detach().clone(), bias.detach().clone()
    grads = [torch.randn(4, 4), torch.randn(4, 4)]
    bias_grads = [torch.randn(4), torch.randn(4)]
    for g, gb in zip(grads, bias_grads, strict=True):
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        weight.grad, bias.grad = g.clone(), gb.clone()
        opt.step()
    d1 = grads[0] + 0.1 * w0
    w1 = w0 - 0.01 * d1
    w2 = w1 - 0.01 * (0.5 * d1 + grads[1] + 0.1 * w1)
    torch.testing.assert_close(weight.detach(), w2)
    b2 = b0 - 0.01 * bias_grads[0] - 0.01 * (0.5 * bias_grads[0] + bias_grads[1])
    torch.testing.assert_close(bias.detach(), b2)


def test_sgd_config_and_momentum_range():
    from sslvit.config import ConfigError
    from sslvit.training.config import load

    cfg = load(None, ["optim.name=sgd", "optim.momentum=0.8"])
    assert (cfg.optim.name, cfg.optim.momentum) == ("sgd", 0.8)
    assert load(None).optim.momentum == 0.9
    for bad in ("1.0", "-0.1"):
        with pytest.raises(ConfigError, match="optim.momentum"):
            load(None, ["optim.name=sgd", f"optim.momentum={bad}"])
    with pytest.raises(ValueError, match="optim.momentum"):
        build_optimizer(TinyEncoder(), "sgd", 0.0, (0.9, 0.999), momentum=1.0)
