"""The fine-tune recipe: each stage's transform, RandAugment and random erasing reaching the batches,
the shipped MAE recipe, and labels beyond the head refused before training."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from accelerate import PartialState
from PIL import Image

from sslvit.config import ConfigError
from sslvit.data.shards import SourceItem, write_shards
from sslvit.data.transforms import ImageTransform, RandAugment, RandomErasing
from sslvit.evaluate.common import load_config
from sslvit.evaluate.finetune import FinetuneConfig, prepare_finetune
from sslvit.training import config as config_lib
from sslvit.training.data import resolve_train_data

ROOT = Path(__file__).resolve().parents[2]
GRAY = 200
RECIPE = "rand-m9-mstd0.5-inc1"


def _png(value: int, size: int = 32) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (value, value, value)).save(buf, "PNG")
    return buf.getvalue()


def _gray_shards(root: Path, count: int = 16, num_classes: int = 2) -> str:
    """``count`` uniform gray (GRAY) 32 px images, labels cycling over ``num_classes`` named classes."""
    items = [SourceItem(name=f"g{i}.png", data=_png(GRAY), label=i % num_classes) for i in range(count)]
    write_shards(items, root, class_names=[f"c{c}" for c in range(num_classes)], progress=False)
    return str(root)


def _finetune_cfg(checkpoint, train, val, tmp_path, *overrides) -> FinetuneConfig:
    return load_config(FinetuneConfig, None, [
        f"finetune.checkpoint={checkpoint}", f"data.train_shards={train}", f"data.val_shards={val}",
        "data.batch_size=8", "data.num_workers=0", "data.image_size=32", "train.steps=1",
        "train.progress=false", "train.trackers=[]", f"train.out_dir={tmp_path / 'runs'}",
        "data.mean=[0.485,0.456,0.406]", "data.std=[0.229,0.224,0.225]", *overrides])  # gray images: std 0


def _ops(transform: ImageTransform) -> list:
    return list(transform.ops.transforms) if transform.ops is not None else []


def _epoch_images(loader) -> torch.Tensor:
    """Every valid image of one epoch: uint8 (N, 3, H, W)."""
    images = [b["image"][b["valid"]] for b in loader.iterate(0)]
    return torch.cat(images)


def test_each_stage_uses_its_own_transform(pico_checkpoint, digits, tmp_path, monkeypatch):
    from sslvit.evaluate.features import features_for_config, make_eval_loader
    from sslvit.evaluate.linear_probe import ProbeConfig

    state = PartialState()
    # pretraining (MAE): RandomResizedCrop(data.crop_scale) + flip, nothing else
    pretrain = config_lib.load(None, [f"data.train_shards={digits['train']}", "data.crop_scale=[0.2,1.0]"])
    data = resolve_train_data(pretrain, state)
    assert data.stage == "pretrain"
    transform = data.make_loader().cfg.transform
    assert transform.geometry == "random_resized_crop" and transform.scale == (0.2, 1.0)
    assert [type(op).__name__ for op in _ops(transform)] == ["RandomHorizontalFlip"]

    # fine-tune training: the recipe's RandomResizedCrop(0.08, 1) + flip + RandAugment + erasing
    cfg = load_config(FinetuneConfig, ROOT / "sslvit" / "configs" / "finetune_mae_vit_base.yaml", [
        f"finetune.checkpoint={pico_checkpoint}", f"data.train_shards={digits['train']}",
        f"data.val_shards={digits['val']}", "data.image_size=32", "data.num_workers=0", "data.batch_size=8",
        "objective.num_classes=10"])
    data = resolve_train_data(cfg, state)
    assert data.stage == "finetune"
    transform = data.make_loader().cfg.transform
    assert transform.geometry == "random_resized_crop" and transform.scale == (0.08, 1.0)
    flip, augment, erase = _ops(transform)
    assert type(flip).__name__ == "RandomHorizontalFlip"
    assert isinstance(augment, RandAugment) and isinstance(erase, RandomErasing)
    assert (augment.num_ops, augment.magnitude, augment.magnitude_std, augment.increasing, augment.prob) == (
        2, 9.0, 0.5, True, 0.5)
    assert augment.ops == RandAugment.INCREASING_OPS and len(augment.ops) == 15
    assert erase.prob == 0.25
    # an explicit transform wins over the stage's
    explicit = ImageTransform(32, "none")
    assert data.make_loader(transform=explicit).cfg.transform is explicit

    # fine-tune validation: resize + centre crop, no random ops
    val = make_eval_loader(digits["val"], 32, 8, 0, None, cfg.finetune.eval_crop_pct).cfg.transform
    assert val.geometry == "center" and val.crop_pct == 0.875 and val.ops is None

    # the linear probe's features: the same eval transform (captured where the loader is built)
    seen = []

    class Stop(Exception):
        pass

    def capture(spec, **kwargs):
        seen.append(kwargs["transform"])
        raise Stop

    monkeypatch.setattr("sslvit.evaluate.features.build_loader", capture)
    with pytest.raises(Stop):
        features_for_config(ProbeConfig(checkpoint=str(pico_checkpoint), train=digits["train"], val=digits["val"],
                                        out_dir=str(tmp_path / "eval"), num_workers=0, cache=False))
    assert seen[0].geometry == "center" and seen[0].ops is None


def test_finetune_batches_are_rand_augmented_and_erased(pico_checkpoint, tmp_path):
    """Uniform gray images stay uniform under crop, resize and flip: any other pixel value comes
    from RandAugment (fill, inversion, solarize, posterize, brightness...) or random erasing."""
    shards = _gray_shards(tmp_path / "gray")
    state = PartialState()

    def changed(*overrides: str) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = _finetune_cfg(pico_checkpoint, shards, shards, tmp_path, "objective.num_classes=2", *overrides)
        images = _epoch_images(resolve_train_data(cfg, state).make_loader())
        assert images.shape == (16, 3, 32, 32)
        off = (images.int() - GRAY).abs() > 1  # (N, 3, H, W): pixels no crop / flip could give
        return off.flatten(1).any(1), off.any(1).flatten(1).float().mean(1)

    plain, _ = changed("finetune.rand_augment=", "finetune.reprob=0.0")
    assert not plain.any(), "crop + resize + flip keep a uniform image uniform"
    erased, area = changed("finetune.rand_augment=", "finetune.reprob=1.0")
    assert erased.all() and ((area >= 0.01) & (area <= 0.34)).all(), area  # one 2%..33% rectangle each
    augmented, _ = changed(f"finetune.rand_augment={RECIPE}-p1.0", "finetune.reprob=0.0")
    assert augmented.sum() >= 8, augmented  # 2 ops each; only 5 of the 15 leave flat gray unchanged
    recipe, _ = changed(f"finetune.rand_augment={RECIPE}", "finetune.reprob=0.25")
    assert recipe.any()
    # and the same sample differs between epochs (the augmentation is drawn per epoch)
    cfg = _finetune_cfg(pico_checkpoint, shards, shards, tmp_path, "objective.num_classes=2",
                        f"finetune.rand_augment={RECIPE}-p1.0", "finetune.reprob=1.0", "data.shuffle_buffer=0")
    loader = resolve_train_data(cfg, state).make_loader()
    first, second = (torch.cat([b["image"] for b in loader.iterate(e)]) for e in (0, 1))
    assert not torch.equal(first, second)


def test_shipped_recipe_matches_mae_finetune_md(pico_checkpoint, digits):
    cfg = load_config(FinetuneConfig, ROOT / "sslvit" / "configs" / "finetune_mae_vit_base.yaml",
                      [f"finetune.checkpoint={pico_checkpoint}"])
    o, ob, d = cfg.optim, cfg.objective, cfg.data
    assert (o.base_lr, o.layer_decay, o.weight_decay, o.warmup_epochs, o.min_lr, o.betas) == (
        5e-4, 0.65, 0.05, 5, 1e-6, (0.9, 0.999))
    assert (cfg.model.drop_path_rate, cfg.model.global_pool, cfg.train.epochs) == (0.1, "avg", 100)
    assert (ob.mixup_alpha, ob.cutmix_alpha, ob.label_smoothing, ob.num_classes) == (0.8, 1.0, 0.1, 1000)
    assert (cfg.finetune.rand_augment, cfg.finetune.reprob, cfg.finetune.eval_crop_pct) == (RECIPE, 0.25, 0.875)
    assert d.batch_size * 8 == 1024 and tuple(d.crop_scale) == (0.08, 1.0) and d.hflip  # 8 GPUs x 128
    with pytest.raises(ConfigError, match="rand_augment"):
        prepare_finetune(load_config(FinetuneConfig, None, [
            f"finetune.checkpoint={pico_checkpoint}", f"data.train_shards={digits['train']}",
            "finetune.rand_augment=rand-m9-q3"]))


def test_labels_beyond_the_head_are_refused_before_training(pico_checkpoint, tmp_path):
    shards = _gray_shards(tmp_path / "five", count=10, num_classes=5)
    three = _gray_shards(tmp_path / "three", count=6, num_classes=3)
    # fine-tune: a 3-class head over shards whose manifest has 5 classes (train, then val)
    with pytest.raises(ConfigError) as err:
        prepare_finetune(_finetune_cfg(pico_checkpoint, shards, three, tmp_path, "objective.num_classes=3"))
    assert "3 classes" in str(err.value) and "(5 classes)" in str(err.value) and str(tmp_path / "five") in str(err.value)
    with pytest.raises(ConfigError, match="five"):
        prepare_finetune(_finetune_cfg(pico_checkpoint, three, shards, tmp_path, "objective.num_classes=3"))
    cfg, encoder, describe = prepare_finetune(_finetune_cfg(pico_checkpoint, three, three, tmp_path))
    assert describe["num_classes"] == 3 and encoder.head.out_features == 3
    # supervised pretraining: model.num_classes (or objective.num_classes) vs the manifest
    pretrain = config_lib.load(None, [f"data.train_shards={shards}", "objective.name=supervised",
                                      "model.num_classes=4", f"train.out_dir={tmp_path / 'runs'}"])
    with pytest.raises(ConfigError) as err:
        resolve_train_data(pretrain, PartialState())
    assert "model.num_classes" in str(err.value) and "4 classes" in str(err.value) and "up to 4" in str(err.value)
    stats = ["data.mean=[0.5,0.5,0.5]", "data.std=[0.25,0.25,0.25]"]  # uniform gray images have std 0
    ok = config_lib.load(None, [f"data.train_shards={shards}", "objective.name=supervised", "model.num_classes=5",
                                *stats])
    assert resolve_train_data(ok, PartialState()).num_classes == 5
    # a masked-image objective ignores labels: no check
    assert resolve_train_data(config_lib.load(None, [f"data.train_shards={shards}", "model.num_classes=2", *stats]),
                              PartialState()).num_classes is None


def test_a_manifest_std_of_zero_is_refused(tmp_path):
    shards = _gray_shards(tmp_path / "flat", count=4)
    with pytest.raises(ConfigError, match=r"data.std: the manifest of .*flat gives std \[0.0, 0.0, 0.0\]"):
        resolve_train_data(config_lib.load(None, [f"data.train_shards={shards}"]), PartialState())


def test_labels_beyond_the_head_are_skipped_when_the_manifest_does_not_know(tmp_path):
    items = [SourceItem(name=f"g{i}.png", data=_png(GRAY), label=i % 5) for i in range(10)]
    write_shards(items, tmp_path / "nameless", progress=False)  # labels 0..4, no class names in the manifest
    cfg = config_lib.load(None, [f"data.train_shards={tmp_path / 'nameless'}", "objective.name=supervised",
                                 "model.num_classes=3", "data.num_workers=0", "data.batch_size=4",
                                 "data.mean=[0.5,0.5,0.5]", "data.std=[0.25,0.25,0.25]"])
    data = resolve_train_data(cfg, PartialState())
    assert data.num_classes == 3
    loader = data.make_loader()
    labels = torch.cat([b["label"][b["valid"]] for b in loader.iterate(0)])
    assert sorted(labels.tolist()) == [0, 0, 1, 1, 2, 2]
    assert loader.stats.get("label_out_of_range") == 4, loader.stats


def test_fc_norm_fine_tune_is_mae_global_pool(tmp_path):
    """``model.fc_norm=true`` with ``global_pool=avg`` is MAE's ``global_pool`` fine-tune: the mean of
    the raw patch tokens normalised by a fresh ``fc_norm``, the pretrained ``norm`` dropped; it equals
    timm's average-pool ViT (fc_norm) holding the same weights, and the head starts at std 2e-5."""
    import timm

    from sslvit.checkpoint import load_checkpoint, save_model
    from sslvit.evaluate.finetune import init_head
    from sslvit.models import create_model

    torch.manual_seed(0)
    pretrained = create_model("vit_pico_patch4")
    with torch.no_grad():
        pretrained.norm.weight.mul_(3.0).add_(0.5)  # a final norm far from identity, to see it dropped
    path = save_model(pretrained, tmp_path / "model.safetensors", pretrained.get_config())
    model = load_checkpoint(path, num_classes=10, global_pool="avg", fc_norm=True)
    init_head(model, 2e-5)
    state = model.state_dict()
    assert "norm.weight" not in state and torch.equal(state["fc_norm.weight"], torch.ones(32))
    assert 1e-5 < model.head.weight.std().item() < 3e-5 and not model.head.bias.any()
    reference = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=4, embed_dim=32,
                                  depth=2, num_heads=2, num_classes=10, global_pool="avg", fc_norm=True)
    missing, unexpected = reference.load_state_dict(state, strict=False)
    assert not missing and not unexpected
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        ours = model.forward_head(model.forward_features(images), pre_logits=True)
        theirs = reference.forward_head(reference.forward_features(images), pre_logits=True)
        tokens = pretrained.forward_features(images)  # the pretrained norm applied to every token
        old = tokens[:, 1:].mean(dim=1)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    assert (ours - old).abs().max() > 0.1  # the old form (norm on every token, then the mean) differs


def test_sincos_pretraining_fine_tunes_a_learned_table(tmp_path):
    """MAE pretrains with a frozen sin-cos table and fine-tunes it as a parameter (timm's ViT):
    ``model.pos_embed=learned`` loads the table's values into a trainable one."""
    from sslvit.checkpoint import load_checkpoint, save_model
    from sslvit.models import create_model

    pretrained = create_model("vit_pico_patch4", pos_embed="sincos")
    path = save_model(pretrained, tmp_path / "model.safetensors", pretrained.get_config())
    model = load_checkpoint(path, num_classes=10, pos_embed="learned")
    assert isinstance(model.pos_embed, torch.nn.Parameter) and model.pos_embed.requires_grad
    assert torch.equal(model.pos_embed.detach(), pretrained.pos_embed)
    frozen = load_checkpoint(path, num_classes=10)
    assert "pos_embed" not in dict(frozen.named_parameters())


@pytest.mark.parametrize("name", ["swin_pico_patch2_window4_32", "poolformer_pico_32", "tnt_pico_patch4_32"])
def test_head_init_std_reaches_every_familys_head(name):
    from sslvit.evaluate.finetune import init_head
    from sslvit.models import create_model

    encoder = create_model(name, num_classes=10)
    init_head(encoder, 2e-5)
    linears = [m for m in encoder.head.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(m.weight.abs().max() < 1e-4 and not m.bias.any() for m in linears)
    with pytest.raises(ConfigError, match="head_init_std"):
        init_head(create_model(name, num_classes=0), 2e-5)
