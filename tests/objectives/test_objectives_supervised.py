"""Supervised: label smoothing and BCE known values, MixUp / CutMix in training only, accuracy."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F


def test_head_is_sized_from_the_config(make_objective):
    sup = make_objective("supervised", num_classes=7)
    assert sup.encoder.num_classes == 7 and sup.encoder.head.out_features == 7
    with pytest.raises(ValueError, match="num_classes"):
        make_objective("supervised", num_classes=0)


def test_known_loss_values(make_objective):
    labels = torch.tensor([0, 3])
    zeros = torch.zeros(2, 5)
    ce = make_objective("supervised", label_smoothing=0.1)
    assert ce.loss_per_sample(zeros, labels, None).tolist() == pytest.approx([math.log(5)] * 2)
    logits = torch.randn(2, 5)
    smooth = 0.9 * F.one_hot(labels, 5) + 0.1 / 5
    expected = -(smooth * logits.log_softmax(-1)).sum(-1)
    torch.testing.assert_close(ce.loss_per_sample(logits, labels, None), expected)
    torch.testing.assert_close(ce.loss_per_sample(logits, labels, F.one_hot(labels, 5).float()), expected)
    bce = make_objective("supervised", loss="bce", label_smoothing=0.0)
    assert bce.loss_per_sample(zeros, labels, None).tolist() == pytest.approx([5 * math.log(2)] * 2)
    target = F.one_hot(labels, 5).float()
    expected = F.binary_cross_entropy_with_logits(logits, target, reduction="none").sum(-1)
    torch.testing.assert_close(bce.loss_per_sample(logits, labels, None), expected)


def test_accuracy_and_loss_match_a_direct_computation(make_objective, make_batch):
    sup = make_objective("supervised", label_smoothing=0.0).eval()
    batch = make_batch(sup, n=6)
    loss, metrics = sup(batch)
    with torch.no_grad():
        logits = sup.encoder(sup.normalize(batch["image"]))
    torch.testing.assert_close(loss, F.cross_entropy(logits, batch["label"]))
    expected_acc = (logits.argmax(-1) == batch["label"]).float().mean()
    torch.testing.assert_close(metrics["acc1"], expected_acc)


def test_unknown_labels_are_ignored(make_objective, make_batch):
    sup = make_objective("supervised").eval()
    batch = make_batch(sup, n=4)
    unknown = {**batch, "label": torch.tensor([0, 1, 2, -1])}
    real = {k: v[:3] for k, v in batch.items()}
    with torch.no_grad():
        torch.testing.assert_close(sup(unknown)[0], sup(real)[0])


@pytest.mark.parametrize(
    "mix", [dict(mixup_alpha=0.8), dict(cutmix_alpha=1.0), dict(mixup_alpha=0.8, cutmix_alpha=1.0)]
)
def test_mixing_only_in_training(make_objective, make_batch, mix):
    sup = make_objective("supervised", **mix)
    plain = make_objective("supervised")
    batch = make_batch(sup, n=4)
    with torch.no_grad():
        sup.eval()
        eval_loss, eval_metrics = sup(batch)
        torch.testing.assert_close(eval_loss, plain.eval()(batch)[0])
        assert "acc1" in eval_metrics
        sup.train()
        torch.manual_seed(1)
        train_loss, train_metrics = sup(batch)
    assert "acc1" not in train_metrics and torch.isfinite(train_loss)
    soft = sup.mix(torch.rand(4, 3, 16, 16), torch.tensor([0, 1, 2, 3]))[1]
    assert soft.shape == (4, 5)
    torch.testing.assert_close(soft.sum(-1), torch.ones(4))
