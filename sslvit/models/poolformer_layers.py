"""Building blocks of PoolFormer (MetaFormer v1), named as in timm's ``metaformer.py``.

Every module works on channel-first feature maps (N, C, H, W): the stem and downsampling
convolutions, the pooling token mixer, the 1x1-convolution MLP, GroupNorm with one group (a
LayerNorm over C, H and W together) and the per-channel layer scale ``layer_scale{1,2}.scale``.
"""

from __future__ import annotations

import torch
from torch import nn

from sslvit.models.layers import DropPath

STEM_KERNEL, STEM_STRIDE, STEM_PADDING = 7, 4, 2  # fixed in timm's Stem for every MetaFormer
DOWN_KERNEL, DOWN_STRIDE, DOWN_PADDING = 3, 2, 1  # timm's Downsampling between stages
MLP_RATIO = 4  # fixed in timm's MetaFormerBlock


def conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    """Output length of a convolution along one axis of length ``size``."""
    return (size + 2 * padding - kernel) // stride + 1


class GroupNorm1(nn.GroupNorm):
    """GroupNorm with a single group: x (N, C, H, W) normalised over (C, H, W) -> (N, C, H, W)."""

    def __init__(self, num_channels: int, eps: float = 1e-5):
        super().__init__(1, num_channels, eps=eps)


class Stem(nn.Module):
    """7x7 convolution, stride 4, padding 2: x (N, C_in, H, W) -> (N, C, H/4, W/4); no norm (v1)."""

    def __init__(self, in_chans: int, dim: int):
        super().__init__()
        self.conv = nn.Conv2d(in_chans, dim, STEM_KERNEL, stride=STEM_STRIDE, padding=STEM_PADDING)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, C_in, H, W) -> (N, C, (H - 3) // 4 + 1, (W - 3) // 4 + 1), i.e. H/4 when 4 divides H."""
        return self.conv(x)


class Downsampling(nn.Module):
    """3x3 convolution, stride 2, padding 1: x (N, C_in, H, W) -> (N, C_out, ceil(H/2), ceil(W/2))."""

    def __init__(self, in_chans: int, out_chans: int):
        super().__init__()
        self.conv = nn.Conv2d(in_chans, out_chans, DOWN_KERNEL, stride=DOWN_STRIDE, padding=DOWN_PADDING)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, C_in, H, W) -> (N, C_out, ceil(H/2), ceil(W/2))."""
        return self.conv(x)


class Scale(nn.Module):
    """Per-channel learned scale (parameter ``scale`` (C,)) on (N, C, H, W) maps."""

    def __init__(self, dim: int, init_value: float):
        super().__init__()
        self.scale = nn.Parameter(torch.full((dim,), float(init_value)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, C, H, W) -> (N, C, H, W), channel c times scale[c]."""
        return x * self.scale.view(-1, 1, 1)


class Pooling(nn.Module):
    """The PoolFormer token mixer: average pooling minus the input (no parameters)."""

    def __init__(self, pool_size: int = 3):
        super().__init__()
        self.pool = nn.AvgPool2d(pool_size, stride=1, padding=pool_size // 2, count_include_pad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, C, H, W) -> (N, C, H, W)."""
        return self.pool(x) - x


class ConvMlp(nn.Module):
    """1x1 convolution -> GELU -> 1x1 convolution, as timm's ``Mlp(use_conv=True)``."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, C, H, W) -> (N, C, H, W) through (N, hidden, H, W)."""
        return self.fc2(self.act(self.fc1(x)))


class PoolFormerBlock(nn.Module):
    """x + ls1(pool(norm1(x))), then x + ls2(mlp(norm2(x))); layer scale optional (None = off)."""

    def __init__(self, dim: int, layer_scale_init_value: float | None, drop_path: float = 0.0):
        super().__init__()
        self.norm1 = GroupNorm1(dim)
        self.token_mixer = Pooling()
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.layer_scale1 = (
            Scale(dim, layer_scale_init_value) if layer_scale_init_value is not None else nn.Identity()
        )
        self.res_scale1 = nn.Identity()  # PoolFormer v1 has no residual scale (v2 / ConvFormer do)
        self.norm2 = GroupNorm1(dim)
        self.mlp = ConvMlp(dim, MLP_RATIO * dim)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.layer_scale2 = (
            Scale(dim, layer_scale_init_value) if layer_scale_init_value is not None else nn.Identity()
        )
        self.res_scale2 = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, C, H, W) -> (N, C, H, W)."""
        x = self.res_scale1(x) + self.layer_scale1(self.drop_path1(self.token_mixer(self.norm1(x))))
        return self.res_scale2(x) + self.layer_scale2(self.drop_path2(self.mlp(self.norm2(x))))


class PoolFormerStage(nn.Module):
    """Optional downsampling (only where the width changes, as in timm), then the blocks."""

    def __init__(
        self, in_dim: int, dim: int, depth: int, layer_scale_init_value: float | None, drop_paths: list[float]
    ):
        super().__init__()
        self.downsample = nn.Identity() if in_dim == dim else Downsampling(in_dim, dim)
        self.blocks = nn.Sequential(
            *[PoolFormerBlock(dim, layer_scale_init_value, drop_paths[j]) for j in range(depth)]
        )

    @property
    def downsamples(self) -> bool:
        """Whether the stage halves the grid (timm skips the downsampling where the width is unchanged)."""
        return isinstance(self.downsample, Downsampling)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, C_in, H, W) -> (N, C, H', W'), H' = ceil(H/2) when it downsamples, else H."""
        return self.blocks(self.downsample(x))


class PoolFormerHead(nn.Module):
    """timm's head layout: ``norm`` (LayerNorm over channels, applied to the pooled vector) and ``fc``.

    The norm is applied by :meth:`PoolFormer.pool` (after the global average, as timm does); this
    module's forward is the classifier alone: (N, C) -> (N, num_classes), identity without classes.
    """

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.fc: nn.Module = nn.Identity()
        self.set_classes(num_classes)

    def set_classes(self, num_classes: int) -> None:
        """A fresh classifier (timm's init: truncated normal std 0.02, zero bias), identity for 0."""
        dim = self.norm.normalized_shape[0]
        if num_classes <= 0:
            self.fc = nn.Identity()
            return
        fc = nn.Linear(dim, num_classes, device=self.norm.weight.device, dtype=self.norm.weight.dtype)
        nn.init.trunc_normal_(fc.weight, std=0.02)
        nn.init.zeros_(fc.bias)
        self.fc = fc

    @property
    def in_features(self) -> int:
        """Width of the pooled features."""
        return self.norm.normalized_shape[0]

    @property
    def out_features(self) -> int:
        """Classes of the classifier (0 without one)."""
        return self.fc.out_features if isinstance(self.fc, nn.Linear) else 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: pooled, normalised features (N, C) -> (N, num_classes), or (N, C) unchanged without classes."""
        return self.fc(x)
