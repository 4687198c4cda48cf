"""Fine-tuning: one step moves every layer by its decayed learning rate; validation counts right."""

import re

import torch
from torch import nn

from sslvit.evaluate.common import load_config
from sslvit.evaluate.finetune import FinetuneConfig, evaluate_classifier, prepare_finetune
from sslvit.training.optim import param_groups, set_lr

PEAK, DECAY = 1e-3, 0.5


def _config(checkpoint, digits, tmp_path, *overrides):
    return load_config(FinetuneConfig, None, [
        f"finetune.checkpoint={checkpoint}", f"data.train_shards={digits['train']}",
        f"data.val_shards={digits['val']}", "data.batch_size=32", "data.num_workers=0",
        "model.drop_path_rate=0.0", "objective.mixup_alpha=0.0", "objective.cutmix_alpha=0.0",
        f"optim.lr={PEAK}", f"optim.layer_decay={DECAY}", "optim.weight_decay=0.0", "optim.warmup_steps=0",
        "optim.schedule=constant", "train.steps=1", "train.progress=false", "train.trackers=[]",
        f"train.out_dir={tmp_path / 'runs'}", "train.name=ft", *overrides])


def _layer(name: str, depth: int) -> int:
    if name.startswith(("patch_embed", "cls_token", "pos_embed")):
        return 0
    match = re.match(r"blocks\.(\d+)\.", name)
    return int(match.group(1)) + 1 if match else depth + 1


def test_one_step_moves_every_layer_by_its_decayed_lr(pico_checkpoint, digits, tmp_path):
    from sslvit.training import train

    cfg, encoder, describe = prepare_finetune(_config(pico_checkpoint, digits, tmp_path))
    depth = len(encoder.blocks)
    assert describe["num_classes"] == 10 and encoder.head.out_features == 10
    expected = {n: PEAK * DECAY ** (depth + 1 - _layer(n, depth)) for n, _ in encoder.named_parameters()}
    assert len(set(expected.values())) == depth + 2  # layers 0 .. depth + 1

    # The optimizer's parameter groups carry exactly these learning rates.
    groups = param_groups(encoder, weight_decay=0.0, layer_decay=DECAY)
    set_lr(torch.optim.AdamW(groups, lr=0.0), PEAK)
    for group in groups:
        for name in group["names"]:
            assert abs(group["lr"] - expected[name]) < 1e-12, name

    # One real step: Adam's first update is lr * g / (|g| + eps), so the largest change of each
    # tensor equals the learning rate its layer was given.
    before = {n: p.detach().clone() for n, p in encoder.named_parameters()}
    result = train(cfg, encoder=encoder)
    assert result.steps == 1
    for name, param in encoder.named_parameters():
        delta = (param.detach().cpu() - before[name]).abs()
        assert delta.max() > 0, f"{name} did not move"
        torch.testing.assert_close(delta.max().item(), expected[name], rtol=1e-3, atol=0.0, msg=name)


def test_a_run_repeats_exactly_and_its_head_follows_the_seed(pico_checkpoint, digits, tmp_path):
    from safetensors.torch import load_file

    from sslvit.training import train

    weights, heads = [], []
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        cfg, encoder, _ = prepare_finetune(_config(pico_checkpoint, digits, tmp_path, "train.steps=2",
                                                   "model.drop_path_rate=0.1", f"train.seed={seed}",
                                                   f"train.name={name}"))
        heads.append(encoder.head.weight.detach().clone())
        weights.append(load_file(str(train(cfg, encoder=encoder).model_path)))
    torch.testing.assert_close(heads[0], heads[1], rtol=0, atol=0)
    assert not torch.equal(heads[0], heads[2])
    assert weights[0].keys() == weights[1].keys()
    for key in weights[0]:
        torch.testing.assert_close(weights[0][key], weights[1][key], rtol=0, atol=0, msg=key)
    assert not torch.equal(weights[0]["head.weight"], weights[2]["head.weight"])


def test_higher_resolution_resamples_position_embeddings(pico_checkpoint, digits, tmp_path):
    cfg, encoder, _ = prepare_finetune(_config(pico_checkpoint, digits, tmp_path, "data.image_size=48"))
    assert encoder.pos_embed.shape == (1, 1 + 12 * 12, 32)
    assert cfg.model.img_size == 48 and cfg.objective.num_classes == 10
    assert encoder(torch.randn(2, 3, 48, 48)).shape == (2, 10)


class _FirstRow(nn.Module):
    """Logits = the first pixel row of channel 0: (N, 3, H, W) -> (N, 4)."""

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return x[:, 0, 0, :4] + self.dummy


def test_evaluate_classifier_counts_valid_samples_only():
    images = torch.zeros(6, 3, 8, 8, dtype=torch.uint8)
    predicted = [0, 1, 2, 3, 1, 2]
    for i, c in enumerate(predicted):
        images[i, 0, 0, c] = 255
        images[i, 0, 0, (c + 1) % 4] = 128  # the runner-up class
    labels = torch.tensor([0, 1, 2, 0, 2, 0])  # 3 right; #3 and #4 runner-up; #5 wrong
    valid = torch.tensor([True, True, True, True, True, False])  # #5 is padding
    loader = [{"image": images[:3], "label": labels[:3], "valid": valid[:3]},
              {"image": images[3:], "label": labels[3:], "valid": valid[3:]}]
    model = _FirstRow().train()
    result = evaluate_classifier(model, loader, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    assert result == {"top1": 60.0, "top5": 100.0, "samples": 5}
    assert model.training  # mode restored


def test_every_backbone_fine_tunes_with_its_own_layer_ids(digits, tmp_path):
    """One step on each family's pico variant: each parameter's group has the lr of its own layer id,
    and every parameter moves, by at most that lr (Adam's first step is lr * g / (|g| + eps))."""
    from sslvit.checkpoint import save_model
    from sslvit.models import create_model, list_models
    from sslvit.training import train

    for name in ("swin_pico_patch2_window4_32", "poolformer_pico_32", "tnt_pico_patch4_32", "vit_pico_r_s4_32"):
        assert name in list_models()
        torch.manual_seed(0)
        model = create_model(name)
        checkpoint = save_model(model, tmp_path / name / "model.safetensors", model.get_config())
        cfg, encoder, _ = prepare_finetune(_config(checkpoint, digits, tmp_path, f"train.name=ft-{name}"))
        top = encoder.num_layers
        expected = {n: PEAK * DECAY ** (top - encoder.layer_id(n)) for n, _ in encoder.named_parameters()}
        assert len(set(expected.values())) >= 4, "several layers, several learning rates"
        groups = param_groups(encoder, weight_decay=0.0, layer_decay=DECAY)
        set_lr(torch.optim.AdamW(groups, lr=0.0), PEAK)
        for group in groups:
            for pname in group["names"]:
                assert abs(group["lr"] - expected[pname]) < 1e-12, f"{name}: {pname}"
        before = {n: p.detach().clone() for n, p in encoder.named_parameters()}
        assert train(cfg, encoder=encoder).steps == 1
        for pname, param in encoder.named_parameters():
            delta = (param.detach().cpu() - before[pname]).abs().max().item()
            if name.startswith("poolformer") and pname.endswith("norm1.bias"):
                # the pooling mixer is pool(x) - x: a constant shift before it cancels, so this bias
                # has no gradient by construction (in timm's PoolFormer too)
                assert delta < expected[pname] * 1e-3
                continue
            assert 0 < delta <= expected[pname] * 1.001 + 2.5e-7, f"{name}: {pname} moved {delta}"
