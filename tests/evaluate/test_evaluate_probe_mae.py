"""``sslvit probe --protocol mae``: MAE's linear probe (LARS, its crops, its schedule and head), and
the fast protocol that stays the default and says what it is."""

from __future__ import annotations

import json
import math

import pytest
import torch

from sslvit.cli import main
from sslvit.config import ConfigError
from sslvit.data.transforms import ImageTransform, probe_transform
from sslvit.evaluate import probe_mae
from sslvit.evaluate.linear_probe import FAST_NOTE, ProbeConfig, run_linear_probe
from sslvit.evaluate.probe_mae import MaeProbeOptions, probe_head
from sslvit.training.lars import LARS


def _reference_lars(params, grads_per_step, lr, weight_decay, momentum=0.9, trust=0.001):
    """MAE's util/lars.py step, written out: the trust ratio on matrices, plain momentum on the rest."""
    params = [p.clone() for p in params]
    mus = [torch.zeros_like(p) for p in params]
    for grads in grads_per_step:
        for i, (p, g) in enumerate(zip(params, grads, strict=True)):
            d = g.clone()
            if p.ndim > 1:
                d = d + weight_decay * p
                pn, dn = p.norm(), d.norm()
                if pn > 0 and dn > 0:
                    d = d * (trust * pn / dn)
            mus[i] = momentum * mus[i] + d
            params[i] = p - lr * mus[i]
    return params


def test_lars_is_maes_update():
    gen = torch.Generator().manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(5, 3, generator=gen, dtype=torch.float64))
    bias = torch.nn.Parameter(torch.randn(3, generator=gen, dtype=torch.float64))
    zero = torch.nn.Parameter(torch.zeros(4, 2, dtype=torch.float64))  # |p| = 0: the plain step
    start = [weight.detach().clone(), bias.detach().clone(), zero.detach().clone()]
    steps = [[torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in start] for _ in range(4)]
    opt = LARS([weight, bias, zero], lr=0.7, weight_decay=0.05)
    for grads in steps:
        for p, g in zip((weight, bias, zero), grads, strict=True):
            p.grad = g.clone()
        opt.step()
    expected = _reference_lars(start, steps, lr=0.7, weight_decay=0.05)
    for got, want in zip((weight, bias, zero), expected, strict=True):
        torch.testing.assert_close(got.detach(), want, rtol=1e-12, atol=1e-12)
    # the matrix moved by lr x trust x |p| per step at most times the momentum sum, the bias by lr x |g|
    assert (weight.detach() - start[0]).norm() < 0.7 * 0.001 * start[0].norm() * 4 * 4
    assert (bias.detach() - start[1]).norm() > 0.5


def _mae_crop_reference(width, height, scale, ratio):
    """MAE's util/crop.py RandomResizedCrop.get_params (after BYOL's TF code), written out."""
    area = height * width
    target_area = area * torch.empty(1).uniform_(scale[0], scale[1]).item()
    log_ratio = torch.log(torch.tensor(ratio))
    aspect_ratio = torch.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1])).item()
    w = min(int(round(math.sqrt(target_area * aspect_ratio))), width)
    h = min(int(round(math.sqrt(target_area / aspect_ratio))), height)
    i = torch.randint(0, height - h + 1, size=(1,)).item()
    j = torch.randint(0, width - w + 1, size=(1,)).item()
    return i, j, h, w


def test_the_probe_crop_is_maes_one_draw_crop():
    transform = probe_transform(32)
    assert transform.geometry == "random_resized_crop_once" and transform.scale == (0.08, 1.0)
    clamped = 0
    for seed in range(300):
        torch.manual_seed(seed)
        want = _mae_crop_reference(60, 20, (0.08, 1.0), (3 / 4, 4 / 3))
        torch.manual_seed(seed)
        assert transform.sample_box(60, 20) == want, seed
        clamped += want[2] == 20
    assert clamped > 10, "a wide image clamps some boxes to its height (where torchvision would redraw)"
    torch.manual_seed(1)
    loop = ImageTransform(32, "random_resized_crop", scale=(0.08, 1.0))
    assert [loop.sample_box(60, 20) for _ in range(50)] != [transform.sample_box(60, 20) for _ in range(50)]


def test_the_head_is_maes():
    head = probe_head(384, 1000, 0.01, seed=0)
    bn, linear = head
    assert isinstance(bn, torch.nn.BatchNorm1d) and not bn.affine and bn.eps == 1e-6
    assert linear.weight.std().item() == pytest.approx(0.01, rel=0.02) and linear.bias.abs().max() == 0


def test_options_of_the_protocol_that_does_not_run_are_refused():
    with pytest.raises(ConfigError, match=r"^lrs: an option of --protocol fast.*mae\.\*"):
        run_linear_probe(ProbeConfig(checkpoint="x", protocol="mae", lrs=(0.1,)))
    with pytest.raises(ConfigError, match=r"^mae\.epochs: an option of --protocol mae"):
        run_linear_probe(ProbeConfig(checkpoint="x", mae=MaeProbeOptions(epochs=5)))
    with pytest.raises(ConfigError, match=r"mae\.batch_size"):
        run_linear_probe(ProbeConfig(checkpoint="x", protocol="mae", mae=MaeProbeOptions(batch_size=0)))


def test_the_mae_protocol_on_digits(pico_checkpoint, digits, tmp_path, monkeypatch):
    features, lrs = [], []
    real_features, real_set_lr = probe_mae._step_features, probe_mae.set_lr
    monkeypatch.setattr(probe_mae, "_step_features", lambda *a: features.append(real_features(*a)) or features[-1])
    monkeypatch.setattr(probe_mae, "set_lr", lambda opt, lr: lrs.append(lr) or real_set_lr(opt, lr))
    # 20 steps instead of MAE's 7,000: a larger trust ratio lets the head move in so few
    opts = MaeProbeOptions(batch_size=256, epochs=4, warmup_epochs=1, blr=0.5, trust_coefficient=0.5)
    cfg = ProbeConfig(checkpoint=str(pico_checkpoint), train=digits["train"], val=digits["val"], protocol="mae",
                      mae=opts, num_workers=0, out_dir=str(tmp_path))
    metrics = run_linear_probe(cfg)
    # 1,437 training images: 5 full steps of 256 an epoch (MAE's drop_last), 20 in all
    assert metrics["protocol"]["name"] == "mae" and metrics["protocol"]["steps"] == 20
    assert metrics["protocol"]["steps_per_epoch"] == 5 and metrics["num_train"] == 1280
    assert metrics["data"]["train_samples"]["skipped"] == {"dropped_last": 157}
    # MAE's adjust_learning_rate at every step: 0 at step 0, the peak blr x 256 / 256 after one epoch
    peak = 0.5
    want = [peak * s / 5 if s < 5 else peak * 0.5 * (1 + math.cos(math.pi * (s - 5) / 15)) for s in range(20)]
    assert lrs == pytest.approx(want, rel=1e-12, abs=0)
    # every epoch crops anew: the same position of two epochs sees different features
    assert len(features) == 20 and all(f.shape == (256, 32) for f in features)
    assert not torch.allclose(features[0], features[5])
    assert [h["epoch"] for h in metrics["history"]] == [0, 1, 2, 3]
    losses = [h["loss"] for h in metrics["history"]]
    assert losses == sorted(losses, reverse=True) and losses[-1] < losses[0] - 0.1
    assert metrics["val_top1"] > 25.0, "above chance (10%) after 20 steps"
    written = json.loads((tmp_path / "linear_probe_mae.json").read_text())
    assert written["val_top1"] == metrics["val_top1"] and written["protocol"]["optimizer"] == "lars"
    assert not (tmp_path / "linear_probe.json").exists()


def test_the_fast_protocol_says_it_is_not_the_papers(pico_checkpoint, digits, tmp_path, capsys):
    code = main(["probe", "--checkpoint", str(pico_checkpoint), "--train", digits["val"], "--val", digits["val"],
                 "--epochs", "2", "--warmup_epochs", "0", "--lrs", "[0.1]", "--weight_decays", "[0.0]",
                 "--num_workers", "0", "--out_dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0 and FAST_NOTE in out and "not a paper's protocol" in FAST_NOTE
    assert json.loads((tmp_path / "linear_probe.json").read_text())["protocol"]["name"] == "fast"


def test_a_split_smaller_than_the_batch_names_the_key(pico_checkpoint, digits, tmp_path, capsys):
    code = main(["probe", "--protocol", "mae", "--checkpoint", str(pico_checkpoint), "--train", digits["val"],
                 "--val", digits["val"], "--num_workers", "0", "--out_dir", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and err.startswith("sslvit probe: error: no full batch: 360 samples")
    assert "--mae.batch_size" in err


def test_the_defaults_are_the_table_in_docs_recipes():
    from pathlib import Path

    import yaml

    text = (Path(__file__).resolve().parents[2] / "docs" / "recipes.md").read_text()
    section = text.split("## `sslvit probe --protocol mae` (linear probe)", 1)[1].split("\n## ", 1)[0]
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in section.splitlines()
            if line.startswith("| ") and not line.startswith("| setting")]
    defaults, checked = ProbeConfig(), 0
    assert len(rows) >= 15
    for _, key, ours, official, marker, _ in rows:
        assert marker == "=" and ours == official, (key, ours, official)
        if key != "-":
            value = defaults
            for part in key.split("."):
                value = getattr(value, part)
            value = list(value) if isinstance(value, tuple) else value
            assert value == yaml.safe_load(ours), key
            checked += 1
    assert checked == 12
