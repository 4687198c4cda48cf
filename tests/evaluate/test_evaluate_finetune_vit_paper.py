"""The ViT paper's fine-tune (finetune_vit_base_r50_s16_384): the pre-trained head, pre-logits layer
included, replaced by one zero-initialised linear layer; SGD with momentum; the position table
resampled to the new grid."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sslvit.checkpoint import save_model
from sslvit.config import ConfigError
from sslvit.evaluate.common import load_config
from sslvit.evaluate.finetune import FinetuneConfig, init_head, prepare_finetune, run_finetune, set_head_type
from sslvit.models import create_model

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "sslvit" / "configs" / "finetune_vit_base_r50_s16_384.yaml"


@pytest.fixture
def hybrid_pre_logits(tmp_path: Path) -> tuple[torch.nn.Module, Path]:
    """A 32 px hybrid pretrained with the paper's pre-logits head on 5 classes, saved as an sslvit encoder."""
    torch.manual_seed(0)
    model = create_model("vit_pico_r_s4_32", num_classes=5, head_type="pre_logits")
    return model, save_model(model, tmp_path / "ckpt" / "model.safetensors", model.get_config())


def _recipe(checkpoint: Path, digits: dict[str, str], tmp_path: Path, *overrides: str) -> FinetuneConfig:
    return load_config(FinetuneConfig, RECIPE, [
        f"finetune.checkpoint={checkpoint}", f"data.train_shards={digits['train']}",
        f"data.val_shards={digits['val']}", "data.image_size=48", "data.batch_size=8", "data.num_workers=0",
        "objective.num_classes=10", "finetune.eval_batch_size=64", "train.progress=false", "train.trackers=[]",
        f"train.out_dir={tmp_path / 'runs'}", *overrides])


def test_the_recipe_drops_the_pre_logits_head_and_zeroes_the_new_one(hybrid_pre_logits, digits, tmp_path):
    pretrained, path = hybrid_pre_logits
    assert pretrained.pre_logits is not None
    cfg, encoder, _ = prepare_finetune(_recipe(path, digits, tmp_path))
    state = encoder.state_dict()
    assert encoder.pre_logits is None and not any(k.startswith("pre_logits") for k in state)
    assert encoder.get_config()["head_type"] == "linear" and cfg.model.head_type == "linear"
    assert encoder.head.weight.shape == (10, 32) and not encoder.head.weight.any() and not encoder.head.bias.any()
    # the trunk is the pretrained one; the 8 x 8 position grid resampled to 48 px / stride 4 = 12 x 12
    assert torch.equal(state["blocks.1.mlp.fc2.weight"], pretrained.state_dict()["blocks.1.mlp.fc2.weight"])
    assert torch.equal(state["pos_embed"][:, :1], pretrained.pos_embed[:, :1].detach())
    assert state["pos_embed"].shape == (1, 1 + 144, 32) and cfg.model.img_size == 48
    assert (cfg.optim.name, cfg.optim.momentum, cfg.optim.lr, cfg.optim.layer_decay) == ("sgd", 0.9, 0.03, None)


def test_the_recipe_trains_with_sgd_momentum(hybrid_pre_logits, digits, tmp_path, monkeypatch):
    """One step of the shipped recipe (shortened): the loop builds SGD with optim.momentum."""
    import sslvit.training.run as run_module

    built: list[torch.optim.Optimizer] = []
    original = run_module.build_optimizer

    def recording(*args, **kwargs):
        built.append(original(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(run_module, "build_optimizer", recording)
    _, path = hybrid_pre_logits
    metrics = run_finetune(_recipe(path, digits, tmp_path, "train.steps=2", "optim.warmup_steps=1",
                                   "optim.momentum=0.7"))
    assert len(built) == 1 and isinstance(built[0], torch.optim.SGD)
    assert {g["momentum"] for g in built[0].param_groups} == {0.7}
    assert {g["weight_decay"] for g in built[0].param_groups} == {0.0}
    assert metrics["recipe"]["steps"] == 2 and metrics["recipe"]["peak_lr"] == 0.03
    assert 0.0 <= metrics["val_top1"] <= 100.0


def test_head_init_std_zero_means_zeros_and_negative_is_refused():
    model = create_model("vit_pico_patch4", num_classes=3)
    init_head(model, 0.0)
    assert not model.head.weight.any() and not model.head.bias.any()
    init_head(model, 0.02)
    assert 0.01 < model.head.weight.std().item() < 0.03
    with pytest.raises(ConfigError, match="finetune.head_init_std"):
        init_head(model, -0.01)
    assert load_config(FinetuneConfig, None, ["finetune.head_init_std=0"]).finetune.head_init_std == 0.0
    with pytest.raises(ConfigError, match="finetune.head_init_std"):
        load_config(FinetuneConfig, None, ["finetune.head_init_std=-1"])


def test_head_type_is_refused_for_a_family_without_it():
    vit = create_model("vit_pico_patch4", num_classes=3)
    set_head_type(vit, 4, "pre_logits")
    assert vit.pre_logits is not None and vit.head.weight.shape == (4, 32)
    with pytest.raises(ConfigError, match="model.head_type: .* no head_type option"):
        set_head_type(create_model("swin_pico_patch2_window4_32", num_classes=3), 3, "linear")
