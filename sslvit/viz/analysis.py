"""The numbers behind the pictures: attention distance, position-embedding similarity, filter PCs, rollout.

Conventions for the attention analyses (ViT paper, figure 7 and appendix D.7):

* mean attention distance of a head: for each *patch* query, the sum over *patch* keys of attention
  weight x euclidean distance between the two patch centres in pixels, averaged over the query
  patches and the images. Prefix tokens (the class token) have no position, so they are left out on
  both sides: the query's attention row is restricted to the patch keys and renormalised to sum to 1.
* attention rollout (Abnar & Zuidema, 2020): heads averaged, the residual path added as 0.5 A + 0.5 I,
  rows renormalised, and the layers multiplied from the first to the last.
"""

from __future__ import annotations

import torch
from torch import nn


def patch_centers(grid: tuple[int, int], patch_size: int) -> torch.Tensor:
    """Pixel coordinates (row, col) of each patch centre, row-major: grid (gh, gw) -> (gh * gw, 2) float64."""
    rows, cols = torch.meshgrid(torch.arange(grid[0]), torch.arange(grid[1]), indexing="ij")
    return (torch.stack([rows, cols], dim=-1).reshape(-1, 2).to(torch.float64) + 0.5) * patch_size


def mean_attention_distance(
    attn: torch.Tensor, grid: tuple[int, int], patch_size: int, num_prefix_tokens: int = 0
) -> torch.Tensor:
    """Mean attention distance in pixels of each head.

    attn: (N, heads, T, T) rows = queries, T = prefix + gh * gw -> (heads,) float64. Prefix tokens are
    excluded and each query's attention over the patch keys is renormalised (see the module docstring).
    """
    p = num_prefix_tokens
    a = attn[:, :, p:, p:].to(torch.float64)  # (N, H, L, L)
    a = a / a.sum(dim=-1, keepdim=True).clamp_min(1e-12)
    centers = patch_centers(grid, patch_size)
    dist = torch.cdist(centers, centers)  # (L, L)
    return (a * dist).sum(dim=-1).mean(dim=(0, 2))


@torch.no_grad()
def attention_maps(model: nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
    """Attention of every block: images (N, C, H, W), normalised -> [(N, heads, T, T)] * depth."""
    model.eval()
    _, maps = model.forward_with_attention(images)
    return [m.float() for m in maps]


def attention_distances(
    maps: list[torch.Tensor], grid: tuple[int, int], patch_size: int, num_prefix_tokens: int
) -> torch.Tensor:
    """Mean attention distance of every head of every block: [(N, H, T, T)] * depth -> (depth, H) pixels."""
    return torch.stack([mean_attention_distance(m, grid, patch_size, num_prefix_tokens) for m in maps])


def pos_embed_similarity(patch_pos: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Cosine similarity of each patch's position embedding with every other.

    patch_pos: (L, D) or (1, L, D) patch positions only (no prefix), L = gh * gw, row-major ->
    (gh, gw, gh, gw): ``sim[i, j]`` is the map of patch (i, j) against all positions.
    """
    pos = patch_pos.reshape(-1, patch_pos.shape[-1]).to(torch.float64)
    pos = pos / pos.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return (pos @ pos.T).reshape(grid[0], grid[1], grid[0], grid[1])


def patch_embed_components(weight: torch.Tensor, k: int = 28) -> tuple[torch.Tensor, torch.Tensor]:
    """Principal components of the patch-embedding filters.

    weight: (D, C, p, p) conv filters (one per embedding channel) -> components (k', C, p, p) with unit
    norm, ordered by explained variance, and the explained-variance ratios (k',); k' = min(k, D, C p p).
    """
    d = weight.shape[0]
    x = weight.detach().reshape(d, -1).to(torch.float64)
    x = x - x.mean(dim=0, keepdim=True)
    _, s, vh = torch.linalg.svd(x, full_matrices=False)
    k = min(k, vh.shape[0])
    var = s**2
    return vh[:k].reshape(k, *weight.shape[1:]), (var[:k] / var.sum().clamp_min(1e-12))


def attention_rollout(maps: list[torch.Tensor], residual: float = 0.5) -> torch.Tensor:
    """Attention rollout: [(N, heads, T, T)] * depth -> (N, T, T), each row a distribution over tokens."""
    n, _, t, _ = maps[0].shape
    eye = torch.eye(t, dtype=torch.float64)
    out = eye.expand(n, t, t).clone()
    for m in maps:
        a = residual * eye + (1 - residual) * m.to(torch.float64).mean(dim=1)
        a = a / a.sum(dim=-1, keepdim=True)
        out = a @ out
    return out


def rollout_maps(rollout: torch.Tensor, grid: tuple[int, int], num_prefix_tokens: int) -> torch.Tensor:
    """Per-image share of each patch in the rollout: rollout (N, T, T) -> (N, gh, gw), each map sums to 1.

    With a class token, the class token's row restricted to the patches (renormalised); without one,
    the mean over the patch queries.
    """
    p = num_prefix_tokens
    rel = rollout[:, 0, p:] if p else rollout[:, p:, p:].mean(dim=1)
    rel = rel / rel.sum(dim=-1, keepdim=True).clamp_min(1e-12)
    return rel.reshape(-1, grid[0], grid[1])
