"""Building blocks of the ViT: patch embedding, attention, MLP, layer scale, drop path, block.

Attributes carry the common ViT parameter names (``proj``, ``qkv``, ``fc1``, ``ls1.gamma`` ...).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sslvit.models.rel_pos_bias import add_relative_bias, relative_bias


def _pair(x: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    return (int(x), int(x)) if isinstance(x, int) else (int(x[0]), int(x[1]))


def block_flops(tokens: int, dim: int, mlp_hidden: int) -> int:
    """Forward FLOPs of one transformer block on ``tokens`` tokens (a multiply-add counts 2).

    Counts the matrix multiplies (qkv, attention scores, attention x values, projection, MLP);
    norms, softmax and activations are left out.
    """
    linear = 2 * tokens * dim * (3 * dim + dim + 2 * mlp_hidden)
    attention = 2 * 2 * tokens * tokens * dim
    return linear + attention


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
    """``F.scaled_dot_product_attention(q, k, v, attn_mask)``, (N, heads, T, d) -> (N, heads, T, d).

    On a CPU under bf16 / fp16 autocast it is computed in fp32 and cast back: torch's CPU
    flash-attention backward in bf16 takes about 12x its fp32 time (9.9 against 0.8 ms a block
    for the default run's encoder), which costs more than the bf16 matmuls save.
    """
    if q.device.type == "cpu" and q.dtype in (torch.bfloat16, torch.float16) and torch.is_autocast_enabled("cpu"):
        if attn_mask is not None and attn_mask.is_floating_point():
            attn_mask = attn_mask.float()
        with torch.autocast("cpu", enabled=False):
            return F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=attn_mask).to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)


class PatchEmbed(nn.Module):
    """Non-overlapping patches -> tokens, as a convolution with stride = patch size."""

    def __init__(self, img_size: int | tuple[int, int], patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        self.patch_size = int(patch_size)
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.set_img_size(img_size)

    def set_img_size(self, img_size: int | tuple[int, int]) -> None:
        """Set the expected input size; it must be a multiple of the patch size."""
        self.img_size = _pair(img_size)
        if self.img_size[0] % self.patch_size or self.img_size[1] % self.patch_size:
            raise ValueError(f"image size {self.img_size} is not a multiple of patch size {self.patch_size}")
        self.grid_size = (self.img_size[0] // self.patch_size, self.img_size[1] // self.patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, C, H, W) -> (N, L, D), L = (H / p) * (W / p), row-major over the patch grid."""
        if tuple(x.shape[-2:]) != self.img_size:
            raise ValueError(
                f"input size {tuple(x.shape[-2:])} != model size {self.img_size}; call resize_pos_embed first"
            )
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention through ``F.scaled_dot_product_attention``.

    With ``rel_positions`` > 0 the block also has the ViT paper's 1-D relative attention
    (appendix D.4): a learned embedding ``rel_pos`` (2 * T - 1, head_dim) per offset between query
    and key positions; the query's dot product with the embedding of each pair's offset is added
    to the attention logits.

    With ``rel_bias_grid`` (gh, gw) it owns BEiT's 2-D relative position bias
    (``relative_position_bias_table`` and ``relative_position_index``, timm Beit's per-block names,
    :mod:`sslvit.models.rel_pos_bias`), added to the logits of every head.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        rel_positions: int = 0,
        rel_bias_grid: tuple[int, int] | None = None,
        rel_bias_class_token: bool = True,
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed dim {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.rel_positions = rel_positions
        self.rel_pos = (
            nn.Parameter(nn.init.trunc_normal_(torch.zeros(2 * rel_positions - 1, self.head_dim), std=0.02))
            if rel_positions
            else None
        )
        self.relative_position_bias_table = None
        if rel_bias_grid is not None:
            add_relative_bias(self, rel_bias_grid, num_heads, rel_bias_class_token)

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x: (N, T, D) -> q, k, v: each (N, heads, T, D / heads)."""
        n, t, d = x.shape
        qkv = self.qkv(x).reshape(n, t, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return qkv.unbind(0)

    def _bias(self, q: torch.Tensor, positions: torch.Tensor | None) -> torch.Tensor | None:
        """Relative-attention logits: q (N, h, T, d), positions int64 (N, T) -> (N, h, T, T) scaled, or None."""
        if self.rel_pos is None:
            return None
        if positions is None:
            positions = torch.arange(q.shape[2], device=q.device).expand(q.shape[0], -1)
        offsets = positions[:, :, None] - positions[:, None, :] + self.rel_positions - 1  # (N, T, T)
        table = self.rel_pos.to(q.dtype)[offsets]  # (N, T, T, d)
        return torch.einsum("nhid,nijd->nhij", q, table) * self.head_dim**-0.5

    def _logit_bias(
        self, q: torch.Tensor, positions: torch.Tensor | None, bias: torch.Tensor | None
    ) -> torch.Tensor | None:
        """What is added to the attention logits: relative attention (``positions``), this block's
        own relative position bias (of the tokens at ``positions``, int64 (N, T), among all of them;
        None = all, in order) and a given ``bias`` ((heads, T, T) or (N, heads, T, T), e.g. a shared
        relative position bias) -> None or broadcastable to (N, heads, T, T)."""
        own = self._bias(q, positions)
        if self.relative_position_bias_table is not None:
            table = relative_bias(self.relative_position_bias_table, self.relative_position_index, positions)
            own = table.to(q.dtype) if own is None else own + table.to(q.dtype)
        if bias is None:
            return own
        bias = bias.to(q.dtype)
        return bias if own is None else own + bias

    def forward(
        self, x: torch.Tensor, positions: torch.Tensor | None = None, bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x: (N, T, D), positions: optional int64 (N, T) for relative attention, bias: optional logit
        bias (heads, T, T) or (N, heads, T, T) -> (N, T, D)."""
        q, k, v = self._qkv(x)
        out = attention(q, k, v, self._logit_bias(q, positions, bias))
        return self.proj(out.transpose(1, 2).reshape(x.shape))

    def forward_with_attention(
        self, x: torch.Tensor, positions: torch.Tensor | None = None, bias: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Slow path: x: (N, T, D) -> out (N, T, D), attention weights (N, heads, T, T)."""
        q, k, v = self._qkv(x)
        logits = (q * self.head_dim**-0.5) @ k.transpose(-2, -1)
        bias = self._logit_bias(q, positions, bias)
        attn = (logits if bias is None else logits + bias).softmax(dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(x.shape)
        return self.proj(out), attn


class Mlp(nn.Module):
    """fc1 -> GELU -> fc2."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, T, D) -> (N, T, D)."""
        return self.fc2(self.act(self.fc1(x)))


class LayerScale(nn.Module):
    """Per-channel learned scale (CaiT); parameter ``gamma``."""

    def __init__(self, dim: int, init_value: float):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_value)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class DropPath(nn.Module):
    """Stochastic depth: drops the residual branch per sample with probability ``p`` in training."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1.0 - self.p)
        return x * keep / (1.0 - self.p)


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path: float = 0.0,
        layer_scale_init: float | None = None,
        norm_eps: float = 1e-6,
        rel_positions: int = 0,
        rel_bias_grid: tuple[int, int] | None = None,
        rel_bias_class_token: bool = True,
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias, rel_positions, rel_bias_grid, rel_bias_class_token)
        self.ls1 = LayerScale(dim, layer_scale_init) if layer_scale_init else nn.Identity()
        self.drop_path1 = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.ls2 = LayerScale(dim, layer_scale_init) if layer_scale_init else nn.Identity()
        self.drop_path2 = DropPath(drop_path)

    def forward(
        self, x: torch.Tensor, positions: torch.Tensor | None = None, bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x: (N, T, D), positions: optional int64 (N, T) (relative attention), bias: optional
        attention-logit bias (heads, T, T) or (N, heads, T, T) -> (N, T, D)."""
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x), positions, bias)))
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))

    def forward_with_attention(
        self, x: torch.Tensor, positions: torch.Tensor | None = None, bias: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (N, T, D) -> (N, T, D), attention weights (N, heads, T, T)."""
        out, attn = self.attn.forward_with_attention(self.norm1(x), positions, bias)
        x = x + self.drop_path1(self.ls1(out))
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x)))), attn
