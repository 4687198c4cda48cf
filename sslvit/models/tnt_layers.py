"""Building blocks of TNT (Transformer in Transformer): pixel embedding, qk/v attention, TNT block.

Attribute names follow timm's ``tnt.py`` (``pixel_embed.proj``, ``attn_in.qk``, ``attn_in.v``,
``norm1_proj``, ``proj``, ``norm2_proj``, ``attn_out``, ``mlp`` ...) so timm's weights load as is.
Only timm's current (non-legacy) layout is implemented: each patch is cut out of the image first
and its pixel tokens come from a convolution over that patch alone (zero padding at the patch
border), so a patch's inner tokens see none of its neighbours' pixels.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from sslvit.models.layers import DropPath, Mlp, attention


def cut_patches(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Cut images into non-overlapping patches (what ``nn.Unfold(p, stride=p)`` does, kept 5-D).

    images: (N, C, H, W) -> (N, L, C, p, p), L = (H / p) * (W / p) row-major over the patch grid.
    """
    n, c, h, w = images.shape
    p = patch_size
    x = images.reshape(n, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(n, (h // p) * (w // p), c, p, p)


class PixelEmbed(nn.Module):
    """Patches -> inner pixel tokens: a 7x7 convolution with stride ``stride`` over each patch.

    A patch of p x p pixels gives ``ceil(p / stride)`` ** 2 pixel tokens of width ``in_dim``.
    """

    def __init__(self, img_size: tuple[int, int], patch_size: int, in_chans: int, in_dim: int, stride: int):
        super().__init__()
        self.patch_size = int(patch_size)
        self.in_dim = int(in_dim)
        self.new_patch_size = [math.ceil(self.patch_size / stride)] * 2
        self.num_pixel = self.new_patch_size[0] * self.new_patch_size[1]
        self.proj = nn.Conv2d(in_chans, in_dim, kernel_size=7, padding=3, stride=stride)
        self.set_img_size(img_size)

    def set_img_size(self, img_size: tuple[int, int]) -> None:
        """Set the expected input size (H, W); both must be multiples of the patch size."""
        h, w = int(img_size[0]), int(img_size[1])
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(f"image size {(h, w)} is not a multiple of patch size {self.patch_size}")
        self.img_size = (h, w)
        self.grid_size = (h // self.patch_size, w // self.patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]

    def forward(self, patches: torch.Tensor, pixel_pos: torch.Tensor | None) -> torch.Tensor:
        """patches: (N, L', C, p, p), pixel_pos: (1, in_dim, s, s) or None -> (N * L', s * s, in_dim)."""
        n, length, c, p, _ = patches.shape
        x = self.proj(patches.reshape(n * length, c, p, p))
        if pixel_pos is not None:
            x = x + pixel_pos
        return x.reshape(n * length, self.in_dim, -1).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention with timm TNT's separate ``qk`` and ``v`` projections."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = False):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"attention dim {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qk = nn.Linear(dim, dim * 2, bias=qkv_bias)
        self.v = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x: (B, T, D) -> q, k, v: each (B, heads, T, D / heads)."""
        b, t, _ = x.shape
        q, k = self.qk(x).reshape(b, t, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        v = self.v(x).reshape(b, t, self.num_heads, self.head_dim).transpose(1, 2)
        return q, k, v

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, T, D) -> (B, T, D)."""
        q, k, v = self._qkv(x)
        return self.proj(attention(q, k, v).transpose(1, 2).reshape(x.shape))

    def forward_with_attention(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Slow path: x: (B, T, D) -> out (B, T, D), attention weights (B, heads, T, T)."""
        q, k, v = self._qkv(x)
        attn = ((q * self.head_dim**-0.5) @ k.transpose(-2, -1)).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(x.shape)), attn


class Block(nn.Module):
    """TNT block: an inner transformer over each patch's pixel tokens, their projection added to
    the patch tokens, then an outer transformer over the class and patch tokens."""

    def __init__(
        self,
        dim: int,
        dim_out: int,
        num_pixel: int,
        num_heads_in: int,
        num_heads_out: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        drop_path: float = 0.0,
    ):
        super().__init__()
        self.norm_in = nn.LayerNorm(dim)
        self.attn_in = Attention(dim, num_heads_in, qkv_bias)
        self.norm_mlp_in = nn.LayerNorm(dim)
        self.mlp_in = Mlp(dim, dim * 4)
        self.norm1_proj = nn.LayerNorm(dim * num_pixel)
        self.proj = nn.Linear(dim * num_pixel, dim_out, bias=False)
        self.norm2_proj = nn.LayerNorm(dim_out)
        self.norm_out = nn.LayerNorm(dim_out)
        self.attn_out = Attention(dim_out, num_heads_out, qkv_bias)
        self.drop_path = DropPath(drop_path)
        self.norm_mlp = nn.LayerNorm(dim_out)
        self.mlp = Mlp(dim_out, int(dim_out * mlp_ratio))

    def _inner(self, pixels: torch.Tensor, patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """pixels (B * L, P, d), patches (B, 1 + L, D) -> pixels (B * L, P, d), patches (B, 1 + L, D)
        with the projected pixel tokens added to the patch tokens (class token untouched)."""
        pixels = pixels + self.drop_path(self.attn_in(self.norm_in(pixels)))
        pixels = pixels + self.drop_path(self.mlp_in(self.norm_mlp_in(pixels)))
        b, t, _ = patches.shape
        inner = self.norm2_proj(self.proj(self.norm1_proj(pixels.reshape(b, t - 1, -1))))
        return pixels, torch.cat([patches[:, :1], patches[:, 1:] + inner], dim=1)

    def forward(self, pixels: torch.Tensor, patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """pixels (B * L, P, d), patches (B, 1 + L, D) -> the same shapes."""
        pixels, patches = self._inner(pixels, patches)
        patches = patches + self.drop_path(self.attn_out(self.norm_out(patches)))
        return pixels, patches + self.drop_path(self.mlp(self.norm_mlp(patches)))

    def forward_with_attention(
        self, pixels: torch.Tensor, patches: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """As :meth:`forward`, plus the outer attention weights (B, heads, 1 + L, 1 + L)."""
        pixels, patches = self._inner(pixels, patches)
        out, attn = self.attn_out.forward_with_attention(self.norm_out(patches))
        patches = patches + self.drop_path(out)
        return pixels, patches + self.drop_path(self.mlp(self.norm_mlp(patches))), attn
