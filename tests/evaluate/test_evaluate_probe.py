"""The linear probe: separable features reach 100%, and model selection never sees the val split."""

import torch

from sslvit.evaluate import linear_probe
from sslvit.evaluate.linear_probe import ProbeConfig, StackedProbe, fit_probe, holdout_split, run_linear_probe

FAST = dict(epochs=15, warmup_epochs=2, probe_batch_size=64, lrs=(0.001, 0.1, 1.0), weight_decays=(0.0, 0.01))


def _clusters(n: int, num_classes: int, dim: int, noise: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Features (n, dim): class centres on the first axes plus Gaussian noise; labels (n,)."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % num_classes
    centres = torch.zeros(num_classes, dim)
    centres[torch.arange(num_classes), torch.arange(num_classes)] = 1.0
    return centres[y] + noise * torch.randn(n, dim, generator=gen), y


def _fake_features(train, val):
    describe = {"checkpoint": {"path": "none", "sha256": "0"}, "data": {}, "features": {}}
    return lambda cfg: {"train": {"x": train[0], "y": train[1]}, "val": {"x": val[0], "y": val[1]},
                        "describe": describe, "is_main": True}


def test_separable_features_reach_100_percent(tmp_path, monkeypatch):
    train = _clusters(200, 5, 16, 0.05, seed=0)
    val = _clusters(100, 5, 16, 0.05, seed=1)
    monkeypatch.setattr("sslvit.evaluate.linear_probe.features_for_config", _fake_features(train, val))
    metrics = run_linear_probe(ProbeConfig(checkpoint="x", out_dir=str(tmp_path), **FAST))
    assert metrics["val_top1"] == 100.0 and metrics["val_top5"] == 100.0
    assert (tmp_path / "linear_probe.json").is_file()
    assert metrics["chosen"]["lr"] in FAST["lrs"]
    assert len(metrics["sweep"]) == 6 and metrics["protocol"]["holdout_size"] == 20


def test_selection_ignores_the_validation_split(tmp_path, monkeypatch):
    # Noisy features so the sweep points differ on the held-out part of the training split.
    train = _clusters(300, 6, 24, 0.45, seed=0)
    val_x, val_y = _clusters(120, 6, 24, 0.45, seed=1)
    seen: list[torch.Tensor] = []
    real_train, real_predict = linear_probe.train_heads, linear_probe.predict
    monkeypatch.setattr(linear_probe, "train_heads", lambda x, *a, **k: seen.append(x) or real_train(x, *a, **k))
    monkeypatch.setattr(linear_probe, "predict", lambda p, x, *a: seen.append(x) or real_predict(p, x, *a))
    results = {}
    for name, labels in {"true": val_y, "adversarial": (val_y + 1) % 6}.items():
        monkeypatch.setattr("sslvit.evaluate.linear_probe.features_for_config", _fake_features(train, (val_x, labels)))
        results[name] = run_linear_probe(ProbeConfig(checkpoint="x", out_dir=str(tmp_path / name), **FAST))
    true, adversarial = results["true"], results["adversarial"]
    assert true["chosen"] == adversarial["chosen"]
    assert true["sweep"] == adversarial["sweep"]
    assert len({round(s["holdout_top1"], 3) for s in true["sweep"]}) > 1, "the sweep points must differ"
    assert true["val_top1"] > 65.0 and adversarial["val_top1"] < 20.0
    # Every tensor that trained or scored a sweep head came from the training split; the only
    # validation-split call is the final evaluation of the chosen head.
    train_rows = {tuple(r.tolist()) for r in train[0]}
    val_calls = [x for x in seen if x.shape[0] == val_x.shape[0] and torch.equal(x, val_x)]
    assert len(val_calls) == 2  # one final evaluation per run
    for x in seen:
        if not torch.equal(x, val_x):
            assert all(tuple(r.tolist()) in train_rows for r in x)


def test_fit_probe_takes_only_training_features():
    x, y = _clusters(60, 3, 8, 0.1, seed=0)
    fitted = fit_probe(x, y, 3, ProbeConfig(**FAST))
    assert set(fitted) == {"probe", "lr", "weight_decay", "sweep", "holdout_size"}
    assert isinstance(fitted["probe"], StackedProbe) and fitted["probe"].weight.shape == (1, 8, 3)


def test_holdout_is_stratified_and_disjoint():
    y = torch.tensor([0] * 50 + [1] * 30 + [2] * 2)
    fit, held = holdout_split(y, 0.1, seed=3)
    assert sorted(torch.cat([fit, held]).tolist()) == list(range(82))
    assert torch.bincount(y[held], minlength=3).tolist() == [5, 3, 1]


def test_batchnorm_has_no_affine_parameters_and_heads_are_stacked():
    probe = StackedProbe(dim=10, num_classes=4, num_heads=6)
    assert {n for n, _ in probe.named_parameters()} == {"weight", "bias"}
    assert probe.bn.weight is None and probe.bn.bias is None
    assert probe(torch.randn(5, 10)).shape == (6, 5, 4)


def test_heads_train_independently():
    # Head 0 ends up the same whether it is trained alone or stacked with other heads.
    x, y = _clusters(64, 4, 8, 0.3, seed=0)
    cfg = ProbeConfig(epochs=3, warmup_epochs=1, probe_batch_size=32, seed=0)
    stacked = linear_probe.train_heads(x, y, 4, torch.tensor([0.5, 0.05, 3.0]), torch.tensor([0.0, 0.1, 0.0]), cfg)
    alone = linear_probe.train_heads(x, y, 4, torch.tensor([0.5]), torch.tensor([0.0]), cfg)
    torch.testing.assert_close(stacked.weight[0], alone.weight[0], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(stacked.bias[0], alone.bias[0], rtol=1e-4, atol=1e-6)
    assert not torch.allclose(stacked.weight[0], stacked.weight[1], atol=1e-3)
