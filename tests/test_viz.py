"""The numbers behind the pictures, checked against values computed independently, and the figure files."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest
import torch

from sslvit.models import create_model
from sslvit.models.pos_embed import sincos_2d
from sslvit.viz import (
    attention_rollout,
    mean_attention_distance,
    patch_embed_components,
    pos_embed_similarity,
    rollout_maps,
)


def _analytic_mean_pairwise_distance(grid: tuple[int, int], patch: int) -> float:
    """Mean over all ordered (query, key) patch pairs, self-pairs included, of the centre distance (px)."""
    cells = list(itertools.product(range(grid[0]), range(grid[1])))
    pairs = list(itertools.product(cells, cells))
    return sum(patch * math.dist(a, b) for a, b in pairs) / len(pairs)


@pytest.mark.parametrize("prefix", [0, 1])
def test_attention_to_self_has_zero_distance(prefix: int) -> None:
    grid, heads = (3, 4), 2
    t = prefix + grid[0] * grid[1]
    attn = torch.eye(t).expand(2, heads, t, t)
    assert torch.equal(
        mean_attention_distance(attn, grid, 16, prefix), torch.zeros(heads, dtype=torch.float64)
    )


@pytest.mark.parametrize("prefix", [0, 1])
def test_uniform_attention_gives_mean_pairwise_patch_distance(prefix: int) -> None:
    grid, patch, heads = (3, 4), 8, 3
    t = prefix + grid[0] * grid[1]
    attn = torch.full((2, heads, t, t), 1.0 / t)  # uniform over every token, class token included
    expected = _analytic_mean_pairwise_distance(grid, patch)
    got = mean_attention_distance(attn, grid, patch, prefix)
    assert torch.allclose(got, torch.full((heads,), expected, dtype=torch.float64), rtol=0, atol=1e-9)


def test_distance_mixes_heads_per_head() -> None:
    grid, patch = (2, 2), 10
    local = torch.eye(4)
    right = torch.tensor([[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1], [0, 0, 1, 0]], dtype=torch.float)
    attn = torch.stack([local, right])[None]  # head 0 attends to itself, head 1 to its horizontal neighbour
    assert mean_attention_distance(attn, grid, patch).tolist() == [0.0, 10.0]


@pytest.mark.parametrize("grid", [(7, 7), (4, 6)])
def test_sincos_similarity_peaks_at_own_position(grid: tuple[int, int]) -> None:
    sim = pos_embed_similarity(sincos_2d(grid, 64), grid)
    flat = sim.reshape(grid[0] * grid[1], -1)
    assert torch.equal(flat.argmax(dim=1), torch.arange(flat.shape[0]))
    assert torch.allclose(flat.diagonal(), torch.ones(flat.shape[0], dtype=torch.float64))
    off = flat - 2 * torch.eye(flat.shape[0], dtype=torch.float64)
    assert bool((off.amax(dim=1) < flat.diagonal() - 1e-6).all())  # a strict peak, no ties


def test_model_sincos_table_similarity() -> None:
    model = create_model("vit_pico_patch4", pos_embed="sincos")
    _, patch_pos = model.get_pos_embed()
    sim = pos_embed_similarity(patch_pos, (8, 8))
    assert sim.shape == (8, 8, 8, 8)
    assert torch.equal(sim.reshape(64, 64).argmax(dim=1), torch.arange(64))


def test_patch_embed_components_recover_a_rank_one_filter_bank() -> None:
    torch.manual_seed(0)
    pattern = torch.randn(3, 4, 4)
    weight = torch.randn(32)[:, None, None, None] * pattern + 0.3  # every filter = scale x pattern + offset
    comps, explained = patch_embed_components(weight, k=28)
    assert comps.shape == (28, 3, 4, 4) and explained.shape == (28,)
    cosine = (comps[0].flatten() @ pattern.flatten().double()) / pattern.norm().double()
    assert abs(abs(float(cosine)) - 1) < 1e-6 and abs(float(explained[0]) - 1) < 1e-9
    gram = comps.flatten(1) @ comps.flatten(1).T
    assert torch.allclose(gram, torch.eye(28, dtype=torch.float64), atol=1e-8)


def test_rollout_rows_are_distributions_and_identity_is_fixed() -> None:
    t, grid = 5, (2, 2)
    eye = torch.eye(t).expand(2, 3, t, t)
    assert torch.allclose(attention_rollout([eye, eye]), torch.eye(t, dtype=torch.float64).expand(2, t, t))
    attn = torch.softmax(torch.randn(2, 3, t, t), dim=-1)
    roll = attention_rollout([attn, attn, attn])
    assert torch.allclose(roll.sum(-1), torch.ones(2, t, dtype=torch.float64))
    one = attention_rollout([attn])
    assert torch.allclose(one, 0.5 * torch.eye(t, dtype=torch.float64) + 0.5 * attn.double().mean(1))
    maps = rollout_maps(roll, grid, num_prefix_tokens=1)
    assert maps.shape == (2, 2, 2) and torch.allclose(
        maps.flatten(1).sum(1), torch.ones(2, dtype=torch.float64)
    )
    expected = roll[:, 0, 1:] / roll[:, 0, 1:].sum(-1, keepdim=True)  # class-token row over the patches
    assert torch.allclose(maps.flatten(1), expected)


def test_visualize_writes_every_figure(tmp_path: Path) -> None:
    from sslvit.checkpoint import save_model
    from sslvit.config import to_dict
    from sslvit.objectives import build_objective, objective_config
    from sslvit.viz import visualize

    torch.manual_seed(0)
    encoder = create_model("vit_pico_patch4")
    cfg = objective_config("mae", decoder_depth=1, decoder_dim=16, decoder_heads=2)
    objective = build_objective(cfg, encoder)
    extra = {"objective": to_dict(cfg), "config": {"data": {"mean": [0.5] * 3, "std": [0.25] * 3}}}
    run = tmp_path / "run"
    save_model(encoder, run / "model.safetensors", encoder.get_config(), kind="encoder", extra=extra)
    save_model(objective, run / "objective.safetensors", encoder.get_config(), kind="objective", extra=extra)
    images = torch.randint(
        0, 256, (6, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    figures = visualize(run / "model.safetensors", tmp_path / "fig", images=images, num_show=4)
    assert sorted(figures) == [
        "attention_distance",
        "attention_rollout",
        "mae_reconstructions",
        "patch_embed_pcs",
        "pos_embed_similarity",
    ]
    for name, png in figures.items():
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 2000, name
    dist = json.loads((tmp_path / "fig" / "attention_distance.json").read_text())
    assert len(dist["distance_px"]) == 2 and len(dist["distance_px"][0]) == 2 and dist["num_images"] == 6
    assert all(0 < d < 32 * math.sqrt(2) for row in dist["distance_px"] for d in row)
    pcs = json.loads((tmp_path / "fig" / "patch_embed_pcs.json").read_text())
    assert len(pcs["explained_variance_ratio"]) == 28
    rec = json.loads((tmp_path / "fig" / "mae_reconstructions.json").read_text())
    assert rec["mask_ratio"] == 0.75 and rec["num_images"] == 4
