"""Mask generators: exact ratios, block structure, the MPP 80/10/10 split, determinism."""

from __future__ import annotations

import pytest
import torch

from sslvit.objectives.masking import BlockMasker, MPPCorruption, RandomMasker


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize(
    "grid, ratio, hidden", [((14, 14), 0.75, 147), ((8, 8), 0.75, 48), ((4, 6), 0.5, 12)]
)
def test_random_mask_ratio_is_exact_per_sample(grid, ratio, hidden) -> None:
    mask = RandomMasker(grid, ratio)(64, gen())["mask"]
    assert mask.dtype == torch.bool and mask.shape == (64, grid[0] * grid[1])
    assert (mask.sum(1) == hidden).all()
    assert len({tuple(row.tolist()) for row in mask}) == 64  # samples differ


def test_masks_are_reproducible_from_the_generator() -> None:
    masker = RandomMasker((8, 8), 0.6)
    assert torch.equal(masker(4, gen(3))["mask"], masker(4, gen(3))["mask"])
    assert not torch.equal(masker(4, gen(3))["mask"], masker(4, gen(4))["mask"])


def test_random_mask_covers_positions_uniformly() -> None:
    freq = RandomMasker((4, 4), 0.25)(4000, gen())["mask"].float().mean(0)
    assert torch.allclose(freq, torch.full((16,), 0.25), atol=0.03)


def test_block_mask_hides_whole_cells_with_exact_ratio() -> None:
    masker = BlockMasker((14, 14), 0.6, mask_patch_size=32, model_patch_size=16)
    assert masker.fallback is None and masker.cells == (7, 7) and masker.cell_patches == 2
    mask = masker(16, gen())["mask"]
    assert (mask.sum(1) == 30 * 4).all()  # ceil(49 * 0.6) cells, as SimMIM's MaskGenerator
    cells = mask.view(16, 7, 2, 7, 2)
    assert (cells.all(dim=(2, 4)) == cells.any(dim=(2, 4))).all()  # each 2x2 cell all or nothing


def test_block_mask_exact_when_ratio_fits_the_cells() -> None:
    mask = BlockMasker((8, 8), 0.5, mask_patch_size=8, model_patch_size=4)(8, gen())["mask"]
    assert (mask.float().mean(1) == 0.5).all()


@pytest.mark.parametrize(
    "grid, mask_patch, patch, cell",
    [((8, 8), 32, 4, 4), ((16, 16), 24, 14, 1), ((2, 2), 64, 16, 1), ((6, 6), 32, 4, 3)],
)
def test_block_mask_falls_back_with_a_warning(grid, mask_patch, patch, cell) -> None:
    with pytest.warns(UserWarning, match="px cells"):
        masker = BlockMasker(grid, 0.5, mask_patch_size=mask_patch, model_patch_size=patch)
    assert masker.cell_patches == cell and masker.fallback
    mask = masker(4, gen())["mask"]
    assert mask.shape == (4, grid[0] * grid[1])
    assert (mask.sum(1) == masker.num_masked_cells * cell * cell).all()


def test_mpp_corruption_split_and_sources() -> None:
    out = MPPCorruption((8, 8), ratio=0.5, p_mask=0.8, p_random=0.1)(2000, gen())
    mask, action, source = out["mask"], out["mpp_action"], out["mpp_source"]
    assert (mask.sum(1) == 32).all()
    assert torch.equal(action > 0, mask)
    selected = action[mask]
    shares = [(selected == a).float().mean().item() for a in (1, 2, 3)]
    assert shares == pytest.approx([0.8, 0.1, 0.1], abs=0.01)
    own = torch.arange(64).expand(2000, 64)
    random = action == 2
    assert (source[random] != own[random]).all()
    assert torch.equal(source[~random], own[~random])
    assert source.min() >= 0 and source.max() <= 63
    hits = torch.bincount(source[random], minlength=64).float()
    assert hits.min() > 0.6 * hits.mean()  # sources spread over the grid


def test_bad_ratios_raise() -> None:
    with pytest.raises(ValueError):
        RandomMasker((4, 4), 1.0)
    with pytest.raises(ValueError):
        MPPCorruption((4, 4), 0.5, p_mask=0.9, p_random=0.2)


def test_mask_counts_are_the_official_codes() -> None:
    """MAE hides ``L - int(L * (1 - r))`` (models_mae.random_masking), SimMIM ``ceil(cells * r)``
    cells (MaskGenerator); both differ from ``round`` where these pairs are chosen."""
    assert RandomMasker((7, 7), 0.6).num_masked == 30  # round would hide 29
    assert RandomMasker((14, 14), 0.75).num_masked == 147
    assert RandomMasker((8, 8), 0.75).num_masked == 48  # the default run: unchanged
    assert RandomMasker((7, 7), 0.3).num_masked == 49 - int(49 * 0.7)
    vit_b = BlockMasker((14, 14), 0.6, mask_patch_size=32, model_patch_size=16)
    assert vit_b.num_masked_cells == 30  # 120 of 196 patches hidden (61.2%); round: 29 cells
    assert int(vit_b(2, gen())["mask"].sum(1)[0]) == 120
    swin_192 = BlockMasker((48, 48), 0.6, mask_patch_size=32, model_patch_size=4)
    assert swin_192.num_masked_cells == 22  # ceil(36 * 0.6) = ceil(21.6)
