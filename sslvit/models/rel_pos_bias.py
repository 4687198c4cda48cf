"""BEiT's 2-D relative position bias, shared by all blocks or one per block (SimMIM's ViT:
``USE_SHARED_RPB`` / ``USE_RPB``).

One learned table ``relative_position_bias_table`` ((2 gh - 1) (2 gw - 1) + 3, heads) holds a bias
per head for every 2-D offset between two patches, plus three entries for the class token (class to
patch, patch to class, class to class); ``relative_position_index`` (T, T), T = 1 + gh gw, picks the
entry of each query-key pair. Names and index follow timm's ``beit.py``: the shared table is
``rel_pos_bias.*`` (:class:`SharedRelativeBias`), a per-block one ``blocks.{i}.attn.*`` (the
attention module owns it, :func:`add_relative_bias`), so the tables move between sslvit, timm's
Beit and the SimMIM / BEiT releases without renaming.
"""

from __future__ import annotations

import torch
from torch import nn


def relative_position_index(grid: tuple[int, int], class_token: bool) -> torch.Tensor:
    """int64 (T, T), T = class_token + gh * gw: the table row of each (query, key) pair.

    Patch pairs index their offset ``(dy + gh - 1) * (2 gw - 1) + (dx + gw - 1)``; with a class
    token, row 0 (class -> patch) is entry ``n - 3``, column 0 (patch -> class) ``n - 2`` and
    (0, 0) ``n - 1``, n = (2 gh - 1) (2 gw - 1) + 3, as BEiT's ``gen_relative_position_index``.
    """
    gh, gw = grid
    coords = torch.stack(torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")).flatten(1)  # (2, L)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)  # (L, L, 2): (dy, dx)
    patch = (rel[..., 0] + gh - 1) * (2 * gw - 1) + (rel[..., 1] + gw - 1)  # (L, L)
    if not class_token:
        return patch
    n = (2 * gh - 1) * (2 * gw - 1) + 3
    index = torch.zeros(1 + gh * gw, 1 + gh * gw, dtype=torch.long)
    index[1:, 1:] = patch
    index[0, 0:] = n - 3
    index[0:, 0] = n - 2
    index[0, 0] = n - 1
    return index


def table_rows(grid: tuple[int, int], class_token: bool) -> int:
    """Rows of the table: (2 gh - 1) (2 gw - 1) offsets, plus 3 class-token entries."""
    return (2 * grid[0] - 1) * (2 * grid[1] - 1) + (3 if class_token else 0)


def add_relative_bias(module: nn.Module, grid: tuple[int, int], num_heads: int, class_token: bool) -> None:
    """Give ``module`` a zero-initialised (SimMIM / BEiT) ``relative_position_bias_table``
    (rows, heads) and the non-persistent ``relative_position_index`` (T, T) buffer of ``grid``."""
    module.relative_position_bias_table = nn.Parameter(torch.zeros(table_rows(grid, class_token), num_heads))
    module.register_buffer("relative_position_index", relative_position_index(grid, class_token), persistent=False)


def relative_bias(table: torch.Tensor, index: torch.Tensor, token_ids: torch.Tensor | None = None) -> torch.Tensor:
    """The logit bias of a table (rows, heads) and its index (T, T) -> (heads, T, T); with
    ``token_ids`` int64 (N, T') (positions among the T tokens of the kept ones, prefix included)
    -> (N, heads, T', T')."""
    t, heads = index.shape[0], table.shape[1]
    bias = table[index.view(-1)].view(t, t, heads).permute(2, 0, 1)  # (heads, T, T)
    if token_ids is None:
        return bias
    if token_ids.ndim != 2:
        raise ValueError(f"token_ids must be (N, T') positions among the {t} tokens, got {tuple(token_ids.shape)}")
    picked = bias[:, token_ids[:, :, None], token_ids[:, None, :]]  # (heads, N, T', T')
    return picked.permute(1, 0, 2, 3)


def expand_shared_table(state: dict[str, torch.Tensor], depth: int, prefix: str = "") -> dict[str, torch.Tensor]:
    """``state`` with a shared ``rel_pos_bias.relative_position_bias_table`` copied into every
    block's ``blocks.{i}.attn.relative_position_bias_table`` (i < ``depth``) and removed, as SimMIM's
    ``utils.remap_pretrained_keys_vit``; any stored ``relative_position_index`` of it is dropped
    (the model rebuilds its own). A state without the shared table comes back as it is."""
    shared = f"{prefix}rel_pos_bias.relative_position_bias_table"
    if shared not in state:
        return state
    out = {k: v for k, v in state.items() if k not in (shared, f"{prefix}rel_pos_bias.relative_position_index")}
    for i in range(depth):
        out[f"{prefix}blocks.{i}.attn.relative_position_bias_table"] = state[shared].clone()
    return out


class SharedRelativeBias(nn.Module):
    """The bias every block adds to its attention logits: (heads, T, T), or (N, heads, T', T') for
    the kept tokens of each sample."""

    def __init__(self, grid: tuple[int, int], num_heads: int, class_token: bool = True):
        super().__init__()
        gh, gw = grid
        self.grid, self.num_heads, self.class_token = (gh, gw), num_heads, class_token
        add_relative_bias(self, self.grid, num_heads, class_token)

    def forward(self, token_ids: torch.Tensor | None = None) -> torch.Tensor:
        """-> (heads, T, T); with ``token_ids`` int64 (N, T') (positions among the T tokens of the
        kept ones, prefix included) -> (N, heads, T', T')."""
        return relative_bias(self.relative_position_bias_table, self.relative_position_index, token_ids)
