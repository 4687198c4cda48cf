"""Every backbone behind the one encoder interface: each supported objective trains every parameter,
unsupported pairs fail before any work naming the pairs that work, checkpoints round-trip bitwise,
layer ids grow with depth, foreign state dicts are recognised by family, and the evaluators and the
Hub export see only the interface."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from sslvit.checkpoint import detect_family, infer_model_config, load_checkpoint, save_model
from sslvit.config import ConfigError
from sslvit.models import FAMILIES, build_model, create_model, list_models, model_family
from sslvit.objectives import build_objective, objective_class, objective_config, objectives

PICO = {model_family(n): n for n in list_models() if "pico" in n}
CONFIGS = {
    "mae": dict(decoder_depth=1, decoder_dim=16, decoder_heads=2),
    "simmim": dict(mask_patch_size=8),
    "mpp": {},
    "supervised": dict(num_classes=5),
    "data2vec2": dict(top_k=2, num_masks=2, decoder_dim=32, decoder_layers=1, decoder_groups=8),
}
PAIRS = [
    (family, name)
    for family in sorted(PICO)
    for name in sorted(objectives())
    if objective_class(name).unsupported_reason(FAMILIES[family]) is None
]
REFUSED = [
    (family, name)
    for family in sorted(PICO)
    for name in sorted(objectives())
    if objective_class(name).unsupported_reason(FAMILIES[family]) is not None
]


def test_every_family_has_a_pico_variant_and_the_table_of_pairs_is_the_designed_one():
    assert set(PICO) == {"vit", "hybrid", "tnt", "swin", "poolformer"}
    works = {(f, n) for f, n in PAIRS}
    for family in PICO:
        assert {(family, "supervised"), (family, "simmim")} <= works
    assert {f for f, n in works if n == "mae"} == {"vit", "hybrid", "tnt"}
    assert {f for f, n in works if n == "mpp"} == {"vit"}
    assert {f for f, n in works if n == "data2vec2"} == {"vit", "hybrid", "tnt"}


def _batch(objective, n: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    batch = {
        "image": torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8),
        "label": torch.arange(n) % 5,
        "valid": torch.ones(n, dtype=torch.bool),
    }
    if objective.masker is not None:
        batch.update(objective.masker(n, g))
    return batch


@pytest.mark.parametrize("family, name", PAIRS)
def test_every_parameter_trains_under_every_supported_objective(family: str, name: str):
    torch.manual_seed(0)
    objective = build_objective(objective_config(name, **CONFIGS[name]), create_model(PICO[family])).train()
    # the encoder's own pooled-feature path (its head norm, for PoolFormer) is trained by the
    # evaluators, not by pixel objectives: it must be the only thing a pretraining loss leaves out
    pool_only = set() if name == "supervised" else _pool_only_parameters(copy.deepcopy(objective.encoder))
    assert pool_only <= {"head.norm.weight", "head.norm.bias"}
    # ... and exactly what the objective tells the trainer to freeze
    assert {f"encoder.{n}" for n in pool_only} == objective.untrained_parameters()
    loss, _ = objective(_batch(objective))
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    for key, param in objective.named_parameters():
        if key.startswith("teacher."):  # data2vec2's EMA teacher: frozen, updated after each step
            assert not param.requires_grad and param.grad is None, key
            continue
        if key.removeprefix("encoder.") in pool_only:
            assert param.grad is None, key
            continue
        assert param.grad is not None and torch.isfinite(param.grad).all(), key
        assert param.grad.abs().sum() > 0, key


def _pool_only_parameters(encoder) -> set[str]:
    """Parameters reached by ``forward_head(pre_logits=True)`` but not by ``forward_features``."""
    x = torch.randn(2, 3, 32, 32)
    reached = []
    for out in (
        lambda: encoder.forward_features(x),
        lambda: encoder.forward_head(encoder.forward_features(x), True),
    ):
        encoder.zero_grad(set_to_none=True)
        out().float().square().sum().backward()
        reached.append({n for n, p in encoder.named_parameters() if p.grad is not None})
    encoder.zero_grad(set_to_none=True)
    return reached[1] - reached[0]


@pytest.mark.parametrize("family, name", REFUSED)
def test_unsupported_pairs_fail_naming_the_reason_and_the_pairs_that_work(family: str, name: str):
    with pytest.raises(ConfigError) as err:
        build_objective(objective_config(name, **CONFIGS[name]), create_model(PICO[family]))
    text = str(err.value)
    assert f"objective {name!r} cannot train a {family!r} backbone" in text
    assert FAMILIES[family].lacks[sorted(objective_class(name).requires)[0]] in text
    assert "Pairs that work: data2vec2: vit, hybrid, tnt; mae: vit, hybrid, tnt; mpp: vit; simmim:" in text


def test_an_unsupported_pair_is_refused_before_the_run_directory_exists(tmp_path: Path):
    from dataclasses import replace

    from sslvit.objectives import objective_config
    from sslvit.training import train
    from sslvit.training.config import load

    argv = ["model.name=swin_pico_patch2_window4_32", f"train.out_dir={tmp_path / 'runs'}", "train.steps=1"]
    with pytest.raises(ConfigError, match="'mae' cannot train a 'swin' backbone"):
        load(None, [*argv, "objective.name=mae"])
    # a config changed in code skips load's checks; train repeats them
    cfg = replace(load(None, [*argv, "objective.name=simmim"]), objective=objective_config("mae"))
    with pytest.raises(ConfigError, match="'mae' cannot train a 'swin' backbone"):
        train(cfg)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("family", sorted(PICO))
def test_checkpoint_round_trip_is_bitwise_and_plain_state_dicts_find_their_variant(
    family: str, tmp_path: Path
):
    torch.manual_seed(0)
    model = create_model(PICO[family], num_classes=3).eval()
    path = save_model(model, tmp_path / "model.safetensors", model.get_config())
    again = load_checkpoint(path)
    x = torch.randn(2, 3, 32, 32)
    assert type(again) is type(model) and again.get_config() == model.get_config()
    assert torch.equal(again(x), model(x))
    rebuilt = build_model(model.get_config())
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {
        k: v.shape for k, v in model.state_dict().items()
    }
    state = model.state_dict()
    assert detect_family(state) == family
    assert infer_model_config(state)["arch"] == PICO[family]


@pytest.mark.parametrize("family", sorted(PICO))
def test_layer_ids_start_at_zero_grow_with_depth_and_end_at_the_head(family: str):
    model = create_model(PICO[family], num_classes=3)
    ids = {n: model.layer_id(n) for n, _ in model.named_parameters()}
    assert min(ids.values()) == 0 and max(ids.values()) == model.num_layers
    assert all(ids[n] == model.num_layers for n in ids if n.startswith("head"))
    assert model.layer_id(f"encoder.{next(iter(ids))}") == ids[next(iter(ids))]
    order = list(ids.values())
    assert order == sorted(order), "parameters come in depth order, so their layer ids never decrease"
    assert len(set(order)) >= 3


@pytest.mark.parametrize("family", sorted(PICO))
def test_evaluator_features_and_hub_config_use_only_the_interface(family: str, tmp_path: Path):
    from sslvit.evaluate.features import encode
    from sslvit.hub.export import hub_config, read_encoder

    torch.manual_seed(0)
    model = create_model(PICO[family]).eval()
    x = torch.randn(2, 3, 32, 32)
    feats = encode(model, x)
    torch.testing.assert_close(feats, model.forward_head(model.forward_features(x), pre_logits=True))
    assert encode(model, x, last_k=2).shape == (2, 2 * model.num_features)
    path = save_model(model, tmp_path / "model.safetensors", model.get_config())
    config = hub_config(read_encoder(path))
    assert config["sslvit"]["model"]["family"] == family
    spec = model.timm_spec()
    if isinstance(spec, dict):
        assert config["architecture"] == spec["architecture"] and config["sslvit"]["timm"]["loadable"]
    else:
        assert config["sslvit"]["timm"]["reason"] == spec


def test_model_options_a_family_does_not_take_are_refused_naming_the_key():
    from sslvit.training import check_model_config
    from sslvit.training.config import load

    with pytest.raises(ConfigError, match=r"model.pos_embed: the swin family \(swin_pico_patch2_window4_32\)"):
        check_model_config(load(None, ["model.name=swin_pico_patch2_window4_32", "objective.name=simmim",
                                       "model.pos_embed=sincos"]))
    with pytest.raises(ConfigError, match="model.name: unknown model 'vit_nope'; close matches: "):
        check_model_config(load(None, ["model.name=vit_nope"]))
    check_model_config(load(None, ["model.name=vit_pico_r_s4_32", "model.pos_embed=sincos"]))
