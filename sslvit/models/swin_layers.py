"""Building blocks of the Swin Transformer: windows, window attention, blocks, patch merging, stages.

Everything works channels-last, (N, H, W, C), like timm's Swin; names follow timm
(``attn.qkv``, ``attn.proj``, ``attn.relative_position_bias_table``, ``mlp.fc1``,
``downsample.reduction`` ...). ``relative_position_index`` and ``attn_mask`` are non-persistent
buffers, rebuilt from the geometry, so they are not in the state dict (as in timm).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sslvit.errors import InputError
from sslvit.models.layers import DropPath, Mlp, attention

Pair = tuple[int, int]


def clip_window(resolution: Pair, window: Pair, shifted: bool) -> tuple[Pair, Pair]:
    """timm's rule: along an axis no longer than the window, the window shrinks to the axis and
    does not shift; otherwise it keeps its size and shifts by half of it in odd blocks.

    -> (window, shift), each (h, w).
    """
    win = tuple(min(r, w) for r, w in zip(resolution, window, strict=True))
    shift = tuple(0 if (r <= w or not shifted) else w // 2 for r, w in zip(resolution, window, strict=True))
    return win, shift  # type: ignore[return-value]


def window_partition(x: torch.Tensor, window: Pair) -> torch.Tensor:
    """x: (N, H, W, C) -> windows (N * nW, wh * ww, C), nW = (H / wh) * (W / ww), batch-major."""
    n, h, w, c = x.shape
    x = x.view(n, h // window[0], window[0], w // window[1], window[1], c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window[0] * window[1], c)


def window_reverse(windows: torch.Tensor, window: Pair, h: int, w: int) -> torch.Tensor:
    """windows: (N * nW, wh * ww, C) -> (N, H, W, C), the inverse of :func:`window_partition`."""
    c = windows.shape[-1]
    x = windows.view(-1, h // window[0], w // window[1], window[0], window[1], c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, h, w, c)


def relative_position_index(window: Pair, device: torch.device | None = None) -> torch.Tensor:
    """Index into the bias table of every (query, key) pair of a window -> (A, A) int64, A = wh * ww.

    Pair (i, j) with offset (dy, dx) = pos(i) - pos(j) reads row (dy + wh - 1) * (2 ww - 1) + dx + ww - 1.
    """
    ys, xs = torch.meshgrid(
        torch.arange(window[0], device=device), torch.arange(window[1], device=device), indexing="ij"
    )
    coords = torch.stack([ys.flatten(), xs.flatten()])  # (2, A)
    rel = coords[:, :, None] - coords[:, None, :]  # (2, A, A)
    return (rel[0] + window[0] - 1) * (2 * window[1] - 1) + rel[1] + window[1] - 1


def shifted_window_mask(
    padded: Pair, window: Pair, shift: Pair, device: torch.device | None = None
) -> torch.Tensor:
    """Additive attention mask of the shifted windows over the padded grid -> (nW, A, A) float32.

    After the cyclic roll each axis has three regions, [0, P - w), [P - w, P - s), [P - s, P)
    (one region when s = 0); tokens of different regions in one window get -100 (timm's value).
    """

    def regions(size: int, win: int, sft: int) -> torch.Tensor:
        label = torch.zeros(size, device=device)
        if sft:
            label[size - win : size - sft] = 1
            label[size - sft :] = 2
        return label

    label = (
        regions(padded[0], window[0], shift[0])[:, None] * 3 + regions(padded[1], window[1], shift[1])[None]
    )
    windows = window_partition(label[None, :, :, None], window).squeeze(-1)  # (nW, A)
    diff = windows[:, None, :] - windows[:, :, None]
    return torch.zeros_like(diff).masked_fill(diff != 0, -100.0)


def simmim_offsets(src_side: int, dst_side: int) -> tuple[list[float], list[float]]:
    """SimMIM's positions for resampling a bias table (``remap_pretrained_keys_swin``): the
    ``src_side`` offsets of the checkpoint's table sit at 0, +-1, +-(1 + q), +-(1 + q + q^2) ...,
    the ratio q found by bisection in [1.01, 1.5] so that the outermost lands near ``dst_side // 2``;
    the new table's offsets are the integers -(dst_side // 2) .. dst_side // 2.

    -> (source positions, ``src_side`` floats ascending; target positions, ``dst_side`` floats).
    """
    half = src_side // 2
    left, right, q = 1.01, 1.5, 1.01
    while right - left > 1e-6:
        q = (left + right) / 2.0
        if (1.0 - q**half) / (1.0 - q) > dst_side // 2:
            right = q
        else:
            left = q
    dis, cur = [], 1.0
    for i in range(half):
        dis.append(cur)
        cur += q ** (i + 1)
    t = float(dst_side // 2)
    return [-d for d in reversed(dis)] + [0.0] + dis, [-t + i for i in range(int(2 * t) + 1)]


def _bspline_basis(knots: torch.Tensor, x: torch.Tensor, degree: int = 3) -> torch.Tensor:
    """Cox-de Boor: the B-splines of ``degree`` on ``knots`` (K,) at ``x`` (N,), inside
    [knots[0], knots[-1]] (the right end belongs to the last interval) -> (N, K - degree - 1)."""
    t, xs = knots[:, None].T, x[:, None]  # (1, K), (N, 1)
    basis = ((t[:, :-1] <= xs) & (xs < t[:, 1:])).to(x.dtype)  # (N, K - 1), degree 0
    last = int(torch.nonzero(knots[:-1] < knots[1:]).max())
    basis[x >= knots[-1], last] = 1.0
    for d in range(1, degree + 1):
        n = basis.shape[1] - 1
        lo, hi = t[:, :n], t[:, d : d + n]  # t_i, t_{i+d}
        lo1, hi1 = t[:, 1 : 1 + n], t[:, d + 1 : d + 1 + n]  # t_{i+1}, t_{i+d+1}
        a = torch.where(hi > lo, (xs - lo) / torch.where(hi > lo, hi - lo, 1.0), 0.0)
        b = torch.where(hi1 > lo1, (hi1 - xs) / torch.where(hi1 > lo1, hi1 - lo1, 1.0), 0.0)
        basis = a * basis[:, :n] + b * basis[:, 1:]
    return basis


def cubic_interpolation_matrix(x: list[float], xq: list[float]) -> torch.Tensor:
    """The linear map from values at ``x`` (M ascending points, M >= 4) to the interpolating cubic
    spline's values at ``xq`` -> (Q, M) float64. The spline is FITPACK's for smoothing 0 (scipy's
    ``interp2d(kind='cubic')`` / ``RectBivariateSpline``, one axis): knots at the ends (4-fold) and
    at x[2] .. x[M - 3] (not-a-knot); points outside [x[0], x[M - 1]] take the value at the nearer end,
    as FITPACK's evaluation clamps them."""
    if len(x) < 4:
        raise InputError(f"a cubic spline needs at least 4 points per axis, got {len(x)}")
    pts = torch.tensor(x, dtype=torch.float64)
    knots = torch.cat([pts[:1].repeat(4), pts[2:-2], pts[-1:].repeat(4)])
    query = torch.tensor(xq, dtype=torch.float64).clamp(pts[0], pts[-1])
    collocation = _bspline_basis(knots, pts)  # (M, M)
    return torch.linalg.solve(collocation.T, _bspline_basis(knots, query).T).T


def resample_bias_table(table: torch.Tensor, window: Pair) -> torch.Tensor:
    """A relative-position bias table of a square window resampled to ``window`` (h, w), as
    SimMIM's fine-tuning does (``utils.remap_pretrained_keys_swin``): per head, the (2W - 1, 2W - 1)
    grid of offsets placed at :func:`simmim_offsets` and interpolated with a bicubic spline at the
    integer offsets of the new window (the offsets 0 and +-1 keep their values exactly).

    table: ((2W - 1)^2, heads) -> ((2h - 1) * (2w - 1), heads), the table's dtype; rows (dy, dx)
    row-major, as :func:`relative_position_index` reads them.
    """
    rows, heads = table.shape
    side = round(rows**0.5)
    if side * side != rows or side % 2 == 0:
        raise InputError(
            f"a relative-position bias table of {rows} rows is not the (2W - 1)^2 offsets of a square window"
        )
    if side < 5:
        raise InputError(
            f"a window of {(side + 1) // 2} has a {side} x {side} bias table; SimMIM's bicubic resampling needs "
            "at least 4 offsets per axis (a window of 3 or more)"
        )
    grid = table.detach().to(torch.float64).reshape(side, side, heads)  # (dy, dx, heads)
    maps = [
        cubic_interpolation_matrix(*simmim_offsets(side, 2 * w - 1)).to(grid.device) for w in window
    ]  # (2h - 1, side), (2w - 1, side)
    out = torch.einsum("ay,yxh,bx->abh", maps[0], grid, maps[1])  # (2h - 1, 2w - 1, heads)
    return out.reshape(-1, heads).to(table.dtype)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows, with a learned relative position bias per head."""

    def __init__(self, dim: int, num_heads: int, window: Pair, qkv_bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.window = tuple(window)
        table = torch.empty((2 * window[0] - 1) * (2 * window[1] - 1), num_heads)
        self.relative_position_bias_table = nn.Parameter(nn.init.trunc_normal_(table, std=0.02))
        self.register_buffer(
            "relative_position_index", relative_position_index(window, table.device), persistent=False
        )
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    @torch.no_grad()
    def set_window(self, window: Pair) -> None:
        """Shrink the window to ``window`` (h, w): the bias table keeps the rows of the offsets the
        smaller window still has (its centre); the index is rebuilt on the table's device. Growing
        is refused: the table has no bias for the new offsets."""
        window = tuple(window)
        if window[0] > self.window[0] or window[1] > self.window[1]:
            raise ValueError(f"window {window} is larger than the bias table's window {self.window}")
        old = self.relative_position_bias_table
        if window != self.window:
            grid = old.view(2 * self.window[0] - 1, 2 * self.window[1] - 1, -1)
            dy, dx = self.window[0] - window[0], self.window[1] - window[1]
            grid = grid[dy : grid.shape[0] - dy, dx : grid.shape[1] - dx]
            self.relative_position_bias_table = nn.Parameter(
                grid.reshape(-1, self.num_heads).clone(), old.requires_grad
            )
            self.window = window
        self.register_buffer(
            "relative_position_index", relative_position_index(window, old.device), persistent=False
        )

    def position_bias(self) -> torch.Tensor:
        """The bias of every (query, key) pair -> (heads, A, A)."""
        area = self.window[0] * self.window[1]
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        return bias.view(area, area, -1).permute(2, 0, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (N * nW, A, C), mask: optional additive (nW, A, A) -> (N * nW, A, C)."""
        b, a, c = x.shape
        nw = 1 if mask is None else mask.shape[0]
        qkv = self.qkv(x).view(b // nw, nw, a, 3, self.num_heads, c // self.num_heads)
        q, k, v = qkv.permute(3, 0, 1, 4, 2, 5).unbind(0)  # each (N, nW, heads, A, C / heads)
        bias = self.position_bias().to(q.dtype)
        if mask is not None:
            bias = bias + mask.to(q.dtype)[:, None]  # (nW, heads, A, A)
        out = attention(q, k, v, bias)
        return self.proj(out.permute(0, 1, 3, 2, 4).reshape(b, a, c))


class SwinBlock(nn.Module):
    """Swin block: x + attn(norm1(x)) in (shifted) windows, then x + mlp(norm2(x)); x: (N, H, W, C)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        resolution: Pair,
        window: Pair,
        shifted: bool,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path: float = 0.0,
    ):
        super().__init__()
        self.shifted = shifted
        self.norm1 = nn.LayerNorm(dim)
        win, _ = clip_window(resolution, window, shifted)
        self.attn = WindowAttention(dim, num_heads, win, qkv_bias)
        self.drop_path1 = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path2 = DropPath(drop_path)
        self.set_resolution(resolution, window)

    def set_resolution(self, resolution: Pair, window: Pair) -> None:
        """Set the token grid (h, w) and the configured window; rebuild the window, shift and mask."""
        self.resolution = tuple(resolution)
        win, self.shift = clip_window(self.resolution, window, self.shifted)
        self.attn.set_window(win)
        self.padded = tuple(-(-r // w) * w for r, w in zip(self.resolution, win, strict=True))
        device = self.attn.relative_position_bias_table.device
        mask = shifted_window_mask(self.padded, win, self.shift, device) if any(self.shift) else None
        self.register_buffer("attn_mask", mask, persistent=False)

    def window_attention(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, H, W, C) -> (N, H, W, C): roll, pad, attend per window, unpad, roll back (timm's order)."""
        n, h, w, c = x.shape
        win, shift = self.attn.window, self.shift
        if any(shift):
            x = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2))
        hp, wp = self.padded
        x = F.pad(x, (0, 0, 0, wp - w, 0, hp - h))
        x = self.attn(window_partition(x, win), self.attn_mask)
        x = window_reverse(x, win, hp, wp)[:, :h, :w]
        return torch.roll(x, shifts=shift, dims=(1, 2)) if any(shift) else x

    def flops(self) -> int:
        """Forward FLOPs of the block (qkv / proj on the padded grid, attention inside windows, MLP)."""
        c = self.norm1.normalized_shape[0]
        tokens, padded = self.resolution[0] * self.resolution[1], self.padded[0] * self.padded[1]
        area = self.attn.window[0] * self.attn.window[1]
        return 2 * padded * c * 4 * c + 4 * padded * area * c + 4 * tokens * c * self.mlp.fc1.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, H, W, C) -> (N, H, W, C)."""
        x = x + self.drop_path1(self.window_attention(self.norm1(x)))
        return x + self.drop_path2(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """2 x 2 neighbouring tokens -> one: concatenate (timm's channel order), norm, linear to 2C."""

    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, out_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, H, W, C) -> (N, H/2, W/2, out_dim); H and W are even."""
        n, h, w, c = x.shape
        x = x.reshape(n, h // 2, 2, w // 2, 2, c).permute(0, 1, 3, 4, 2, 5).flatten(3)
        return self.reduction(self.norm(x))


class SwinStage(nn.Module):
    """One stage: optional patch merging at its start (timm's layout), then ``depth`` blocks
    alternating plain and shifted windows."""

    def __init__(
        self,
        dim: int,
        out_dim: int,
        depth: int,
        num_heads: int,
        resolution: Pair,
        window: Pair,
        downsample: bool,
        mlp_ratio: float,
        qkv_bias: bool,
        drop_path: list[float],
    ):
        super().__init__()
        self.downsample = PatchMerging(dim, out_dim) if downsample else nn.Identity()
        self.blocks = nn.Sequential(
            *(
                SwinBlock(
                    out_dim, num_heads, resolution, window, j % 2 == 1, mlp_ratio, qkv_bias, drop_path[j]
                )
                for j in range(depth)
            )
        )

    def set_resolution(self, resolution: Pair, window: Pair) -> None:
        """Grid (h, w) of the stage's blocks (after merging) and the configured window."""
        for block in self.blocks:
            block.set_resolution(resolution, window)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, H, W, C) -> (N, H', W', out_dim), H' = H / 2 with merging, else H."""
        return self.blocks(self.downsample(x))


class SwinPatchEmbed(nn.Module):
    """Non-overlapping patches -> tokens: convolution with stride = patch size, then LayerNorm."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, C, H, W) -> (N, L, D), L = (H / p) * (W / p) row-major."""
        return self.norm(self.proj(x).flatten(2).transpose(1, 2))
