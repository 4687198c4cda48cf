"""Patch masks made in the loader, as data.

Every masker is a callable ``masker(batch_size, generator) -> dict[str, Tensor]`` over a patch grid
``(gh, gw)`` (L = gh * gw patches, row-major); ``True`` in ``"mask"`` means the patch is hidden or
corrupted. The same generator state gives the same masks, so a resumed run draws identical masks.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import torch


def _choose(batch_size: int, num_items: int, count: int, generator: torch.Generator | None) -> torch.Tensor:
    """Exactly ``count`` of ``num_items`` positions per row, uniformly at random.

    -> bool (batch_size, num_items) with ``count`` True per row.
    """
    noise = torch.rand(batch_size, num_items, generator=generator)
    chosen = torch.argsort(noise, dim=1)[:, :count]
    mask = torch.zeros(batch_size, num_items, dtype=torch.bool)
    return mask.scatter_(1, chosen, True)


@dataclass
class RandomMasker:
    """MAE masks: exactly ``L - int(L * (1 - ratio))`` random patches hidden per sample.

    The count is facebookresearch/mae's ``random_masking`` (``len_keep = int(L * (1 - mask_ratio))``):
    0.75 of 196 hides 147, 0.6 of 49 hides 30 (``round`` would hide 29).
    """

    grid: tuple[int, int]
    ratio: float

    def __post_init__(self) -> None:
        if not 0.0 <= self.ratio < 1.0:
            raise ValueError(f"mask ratio must be in [0, 1), got {self.ratio}")
        self.num_patches = self.grid[0] * self.grid[1]
        self.num_masked = self.num_patches - int(self.num_patches * (1 - self.ratio))

    def __call__(self, batch_size: int, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """-> {"mask": bool (B, L)}."""
        return {"mask": _choose(batch_size, self.num_patches, self.num_masked, generator)}


@dataclass
class BlockMasker:
    """SimMIM / BEiT-style block masks: random cells of ``mask_patch_size`` pixels, upsampled to patches.

    The patch grid is cut into square cells of ``mask_patch_size // model_patch_size`` patches per
    side and exactly ``ceil(num_cells * ratio)`` cells are hidden per sample (the official SimMIM
    ``MaskGenerator``'s count: ViT-B/16 at 224 px, 32 px cells, ratio 0.6 hides 30 of 49 cells, 120
    of 196 patches), so the hidden share of patches is exactly that count over the number of cells. When the cell size is not a multiple of
    the model's patch size, does not tile the grid, or leaves fewer than 2 x 2 cells (e.g. 32 px
    cells on 32 px images), the masker falls back to the largest cell of whole patches (at most
    ``mask_patch_size``) that tiles the grid into at least 2 x 2 cells, one patch per cell at worst,
    and warns; ``cell_patches`` and ``fallback`` say what it chose.
    """

    grid: tuple[int, int]
    ratio: float
    mask_patch_size: int = 32
    model_patch_size: int = 16
    fallback: str | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if not 0.0 <= self.ratio < 1.0:
            raise ValueError(f"mask ratio must be in [0, 1), got {self.ratio}")
        gh, gw = self.grid
        cell = self.mask_patch_size // self.model_patch_size
        if self.mask_patch_size % self.model_patch_size or not self._tiles(cell):
            best = max([c for c in range(1, max(1, cell) + 1) if self._tiles(c)], default=1)
            self.fallback = (
                f"mask_patch_size {self.mask_patch_size} is not a whole number of {self.model_patch_size} px "
                f"patches tiling the {gh}x{gw} patch grid into >= 2x2 cells; using "
                f"{best * self.model_patch_size} px cells"
            )
            warnings.warn(self.fallback, stacklevel=2)
            cell = best
        self.cell_patches = cell
        self.cells = (gh // cell, gw // cell)
        self.num_cells = self.cells[0] * self.cells[1]
        self.num_masked_cells = math.ceil(self.num_cells * self.ratio)

    def _tiles(self, cell: int) -> bool:
        """Whether square cells of ``cell`` patches tile the grid into at least 2 x 2 cells."""
        gh, gw = self.grid
        return gh % cell == 0 and gw % cell == 0 and gh // cell >= 2 and gw // cell >= 2

    def __call__(self, batch_size: int, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """-> {"mask": bool (B, L)}: cells (B, ch * cw) upsampled by ``cell_patches`` to the patch grid."""
        cells = _choose(batch_size, self.num_cells, self.num_masked_cells, generator)
        cells = cells.view(batch_size, *self.cells)
        c = self.cell_patches
        mask = cells.repeat_interleave(c, dim=1).repeat_interleave(c, dim=2)
        return {"mask": mask.reshape(batch_size, -1)}


@dataclass
class MPPCorruption:
    """The ViT paper's masked patch prediction corruption (appendix B.1.2).

    Exactly ``round(ratio * L)`` patches are selected per sample; each selected patch independently
    becomes the learned [mask] embedding (``p_mask``), another random patch of the same image
    (``p_random``) or stays as it is (the rest).
    """

    grid: tuple[int, int]
    ratio: float = 0.5
    p_mask: float = 0.8
    p_random: float = 0.1

    NONE, MASK, RANDOM, KEEP = 0, 1, 2, 3

    def __post_init__(self) -> None:
        if (
            not 0.0 < self.ratio <= 1.0
            or self.p_mask < 0
            or self.p_random < 0
            or self.p_mask + self.p_random > 1
        ):
            raise ValueError(
                f"bad MPP corruption ratio={self.ratio} p_mask={self.p_mask} p_random={self.p_random}"
            )
        self.num_patches = self.grid[0] * self.grid[1]
        if self.num_patches < 2:
            raise ValueError("MPP corruption needs at least 2 patches")
        self.num_masked = int(round(self.ratio * self.num_patches))

    def __call__(self, batch_size: int, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """-> {"mask": bool (B, L) selected, "mpp_action": int64 (B, L) 0 none / 1 mask token /
        2 random other / 3 keep, "mpp_source": int64 (B, L) patch to copy for action 2 (else itself)}."""
        n = self.num_patches
        mask = _choose(batch_size, n, self.num_masked, generator)
        u = torch.rand(batch_size, n, generator=generator)
        action = torch.full((batch_size, n), self.KEEP, dtype=torch.int64)
        action[u < self.p_mask + self.p_random] = self.RANDOM
        action[u < self.p_mask] = self.MASK
        action[~mask] = self.NONE
        own = torch.arange(n).expand(batch_size, n)
        other = torch.randint(0, n - 1, (batch_size, n), generator=generator)
        other = other + (other >= own).long()  # skip the patch itself
        source = torch.where(action == self.RANDOM, other, own)
        return {"mask": mask, "mpp_action": action, "mpp_source": source}
