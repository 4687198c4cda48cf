"""Weighted kNN on constructed feature sets with answers worked out by hand."""

import math

import torch

from sslvit.evaluate.knn import knn_evaluate, knn_scores


def _at(degrees: float) -> list[float]:
    return [math.cos(math.radians(degrees)), math.sin(math.radians(degrees))]


def test_weighted_vote_beats_majority_with_known_scores():
    # One class-0 neighbour straight ahead, two class-1 neighbours at +-60 degrees (cosine 0.5).
    bank = torch.tensor([_at(0), _at(60), _at(-60), _at(180)])
    labels = torch.tensor([0, 1, 1, 2])
    query = torch.tensor([_at(0)])
    scores = knn_scores(bank, labels, query, num_classes=3, k=3, temperature=0.1)
    expected = torch.tensor([[math.exp(10.0), 2 * math.exp(5.0), 0.0]])
    torch.testing.assert_close(scores, expected, rtol=1e-5, atol=0.0)
    assert scores.argmax().item() == 0  # a plain majority vote of the 3 would say class 1
    # A high temperature flattens the weights: now the two class-1 neighbours win.
    flat = knn_scores(bank, labels, query, num_classes=3, k=3, temperature=100.0)
    assert flat.argmax().item() == 1


def test_features_are_normalised_and_k_limits_the_neighbours():
    bank = torch.tensor([_at(10), _at(20), _at(100), _at(110), _at(120)]) * torch.tensor([[1.0], [7.0], [0.1], [3.0], [9.0]])
    labels = torch.tensor([0, 0, 1, 1, 1])
    queries = torch.tensor([_at(0), _at(115)]) * 5.0
    top1 = knn_scores(bank, labels, queries, num_classes=2, k=1, temperature=0.07).argmax(dim=1)
    assert top1.tolist() == [0, 1]
    # k=5 takes everyone: for the first query the three class-1 points at ~90-120 degrees lose to the
    # two class-0 points at 10-20 degrees because of the exp(sim / T) weights.
    all5 = knn_scores(bank, labels, queries, num_classes=2, k=5, temperature=0.07)
    assert all5.argmax(dim=1).tolist() == [0, 1]
    sims = torch.tensor([math.cos(math.radians(a)) for a in (10, 20, 100, 110, 120)])
    w = (sims / 0.07).exp()
    torch.testing.assert_close(all5[0], torch.stack([w[:2].sum(), w[2:].sum()]), rtol=1e-5, atol=1e-12)


def test_knn_evaluate_reports_percent_top1_and_top5():
    bank = torch.eye(4).repeat(3, 1)  # 12 points, 3 per axis
    labels = torch.arange(4).repeat(3)
    queries = torch.eye(4) + 0.05
    truth = torch.tensor([0, 1, 2, 0])  # the last query is labelled wrongly on purpose
    result = knn_evaluate(bank, labels, queries, truth, k=3, temperature=0.07)
    assert result["top1"] == 75.0
    assert result["top5"] == 100.0  # k capped at the 4 classes
