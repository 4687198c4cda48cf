"""Position embeddings: fixed 2-D sin-cos tables and resampling of learned tables to a new grid.

The sin-cos layout follows MAE's ``get_2d_sincos_pos_embed`` exactly (first half of the channels
encodes the column, second half the row; sines before cosines), so tables match MAE checkpoints.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def sincos_1d(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """Sin-cos embedding of 1-D positions.

    positions: (M,) float -> (M, dim) float64; ``dim`` must be even.
    """
    if dim % 2:
        raise ValueError(f"sin-cos embedding needs an even dim, got {dim}")
    omega = torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0)
    omega = 1.0 / 10000**omega
    out = positions.reshape(-1).to(torch.float64)[:, None] * omega[None, :]
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)


def sincos_2d(grid: tuple[int, int], dim: int) -> torch.Tensor:
    """Fixed 2-D sin-cos position table for a (h, w) patch grid.

    grid: (h, w), dim divisible by 4 -> (h * w, dim) float32, row-major over the grid.
    """
    if dim % 4:
        raise ValueError(f"2-D sin-cos embedding needs dim divisible by 4, got {dim}")
    h, w = grid
    cols, rows = torch.meshgrid(
        torch.arange(w, dtype=torch.float64), torch.arange(h, dtype=torch.float64), indexing="xy"
    )
    emb = torch.cat([sincos_1d(cols, dim // 2), sincos_1d(rows, dim // 2)], dim=1)
    return emb.to(torch.float32)


def resample_grid(table: torch.Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int]) -> torch.Tensor:
    """Bicubic resampling of a per-patch table.

    table: (1, old_h * old_w, D) -> (1, new_h * new_w, D), same dtype.
    """
    if tuple(old_grid) == tuple(new_grid):
        return table
    dim = table.shape[-1]
    x = table.float().reshape(1, old_grid[0], old_grid[1], dim).permute(0, 3, 1, 2)
    x = F.interpolate(x, size=tuple(new_grid), mode="bicubic", align_corners=False, antialias=True)
    return x.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], dim).to(table.dtype)


def resample_pos_embed(
    pos_embed: torch.Tensor,
    new_grid: tuple[int, int],
    num_prefix_tokens: int,
    old_grid: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Resample a 1-D learned position table to a new patch grid; prefix positions are kept as is.

    pos_embed: (1, P + old_h * old_w, D) -> (1, P + new_h * new_w, D). ``old_grid`` defaults to a
    square grid. Returns the input unchanged when the grid does not change.
    """
    num_patches = pos_embed.shape[1] - num_prefix_tokens
    if old_grid is None:
        side = math.isqrt(num_patches)
        if side * side != num_patches:
            raise ValueError(f"{num_patches} patch positions are not a square grid: pass old_grid")
        old_grid = (side, side)
    if old_grid[0] * old_grid[1] != num_patches:
        raise ValueError(f"old_grid {tuple(old_grid)} does not hold {num_patches} positions")
    if tuple(old_grid) == tuple(new_grid):
        return pos_embed
    prefix, patches = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    return torch.cat([prefix, resample_grid(patches, old_grid, new_grid)], dim=1)


def resample_axis(table: torch.Tensor, new_len: int) -> torch.Tensor:
    """Bicubic resampling of a row or column table (2-D learned embeddings).

    table: (1, n, D) -> (1, new_len, D), same dtype.
    """
    if table.shape[1] == new_len:
        return table
    x = table.float().permute(0, 2, 1).unsqueeze(-1)  # (1, D, n, 1)
    x = F.interpolate(x, size=(new_len, 1), mode="bicubic", align_corners=False, antialias=True)
    return x.squeeze(-1).permute(0, 2, 1).to(table.dtype)


def resample_state_pos_embed(
    state: dict[str, torch.Tensor],
    new_grid: tuple[int, int],
    num_prefix_tokens: int,
    old_grid: tuple[int, int] | None = None,
) -> dict[str, torch.Tensor]:
    """A copy of an encoder state dict with every position table resampled to ``new_grid``.

    ``pos_embed``: (1, P + L_old, D) -> (1, P + L_new, D) (square old grid unless ``old_grid``);
    ``pos_embed_row``: (1, old_h, D') -> (1, new_h, D'); ``pos_embed_col``: (1, old_w, D') -> (1, new_w, D').
    """
    out = dict(state)
    if "pos_embed" in out:
        out["pos_embed"] = resample_pos_embed(out["pos_embed"], new_grid, num_prefix_tokens, old_grid)
    if "pos_embed_row" in out:
        out["pos_embed_row"] = resample_axis(out["pos_embed_row"], new_grid[0])
    if "pos_embed_col" in out:
        out["pos_embed_col"] = resample_axis(out["pos_embed_col"], new_grid[1])
    return out
