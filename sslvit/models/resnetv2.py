"""The ResNet-v2 stem of the hybrid ViT: BiT's weight-standardised convolutions and GroupNorm.

Only the layout the ViT hybrids use is implemented: non-pre-activation bottlenecks (conv -> norm ->
ReLU, the residual added before the last ReLU), TensorFlow "SAME" padding everywhere (the output
is ceil(size / stride); an odd padding puts the extra pixel on the bottom / right; the stem's
max-pool pads with -inf) and no final norm or head. Parameter names follow timm's ``ResNetV2``
(``preact=False, stem_type="same"``) so its weights load unchanged: ``stem.{conv,norm}``,
``stages.{i}.blocks.{j}.{downsample.conv,downsample.norm,conv1,norm1,conv2,norm2,conv3,norm3}``.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

STEM_KERNEL = 7


def make_divisible(v: float, divisor: int = 8) -> int:
    """Round a channel count to a multiple of ``divisor`` (never down by more than 10 %), as timm does."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


def resnet_stride(num_stages: int, stem_pool: bool = True) -> int:
    """Total downsampling of the stem: the stride-2 convolution, the pool, stride 2 from stage 2 on."""
    return 2 * (2 if stem_pool else 1) * 2 ** max(num_stages - 1, 0)


def same_padding(size: int, kernel: int, stride: int) -> int:
    """Total padding along one axis for which a (kernel, stride) window gives ceil(size / stride) outputs."""
    return max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)


def pad_same(x: torch.Tensor, kernel: int, stride: int, value: float = 0.0) -> torch.Tensor:
    """TensorFlow "SAME" padding, the odd pixel at the bottom / right.

    x: (N, C, H, W) -> (N, C, H + ph, W + pw), ph = same_padding(H, kernel, stride).
    """
    ph, pw = (same_padding(s, kernel, stride) for s in x.shape[-2:])
    if ph == pw == 0:
        return x
    return F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), value=value)


class StdConv2dSame(nn.Conv2d):
    """Bias-free convolution of standardised filters (each filter to zero mean, unit variance) with
    "SAME" padding. Strided convolutions pad from the input size; stride-1 ones statically."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int, stride: int = 1, eps: float = 1e-8):
        static = stride == 1 and kernel_size % 2 == 1
        super().__init__(in_chs, out_chs, kernel_size, stride=stride, padding=kernel_size // 2 if static else 0,
                         bias=False)
        self.dynamic_pad = not static
        self.eps = eps

    def standardized_weight(self) -> torch.Tensor:
        """The filters (out, in, k, k), each standardised over (in, k, k) with the biased variance."""
        w = self.weight.reshape(1, self.out_channels, -1)
        # batch_norm over the flattened filters is the standardisation, computed as timm / BiT do
        return F.batch_norm(w, None, None, training=True, momentum=0.0, eps=self.eps).reshape_as(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, C_in, H, W) -> (N, C_out, ceil(H / s), ceil(W / s))."""
        if self.dynamic_pad:
            x = pad_same(x, self.kernel_size[0], self.stride[0])
        return F.conv2d(x, self.standardized_weight(), None, self.stride, self.padding)

    def flops(self, h: int, w: int) -> tuple[int, int, int]:
        """Multiply-adds x 2 on an (h, w) input, and the output size -> (flops, h_out, w_out)."""
        s, k = self.stride[0], self.kernel_size[0]
        ho, wo = math.ceil(h / s), math.ceil(w / s)
        return 2 * ho * wo * self.out_channels * self.in_channels * k * k, ho, wo


class GroupNormAct(nn.GroupNorm):
    """GroupNorm, then ReLU unless ``act`` is False; parameters ``weight`` and ``bias``."""

    def __init__(self, num_channels: int, num_groups: int, act: bool = True, eps: float = 1e-5):
        if num_channels % num_groups:
            raise ValueError(f"{num_channels} channels cannot be split into {num_groups} norm groups")
        super().__init__(num_groups, num_channels, eps=eps)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, C, H, W) -> (N, C, H, W)."""
        x = F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)
        return F.relu(x) if self.act else x


class MaxPool2dSame(nn.Module):
    """3x3 max-pool with stride 2 and "SAME" padding by -inf (padded pixels never win)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, C, H, W) -> (N, C, ceil(H / 2), ceil(W / 2))."""
        return F.max_pool2d(pad_same(x, 3, 2, value=-math.inf), 3, 2)


class DownsampleConv(nn.Module):
    """Projection shortcut: strided 1x1 convolution and GroupNorm (no ReLU)."""

    def __init__(self, in_chs: int, out_chs: int, stride: int, groups: int):
        super().__init__()
        self.conv = StdConv2dSame(in_chs, out_chs, 1, stride)
        self.norm = GroupNormAct(out_chs, groups, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, C_in, H, W) -> (N, C_out, ceil(H / s), ceil(W / s))."""
        return self.norm(self.conv(x))


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (strided) -> 1x1 bottleneck at a quarter of the output width, plus the shortcut."""

    def __init__(self, in_chs: int, out_chs: int, stride: int, groups: int, project: bool):
        super().__init__()
        mid = make_divisible(out_chs * 0.25)
        self.downsample = DownsampleConv(in_chs, out_chs, stride, groups) if project else None
        self.conv1 = StdConv2dSame(in_chs, mid, 1)
        self.norm1 = GroupNormAct(mid, groups)
        self.conv2 = StdConv2dSame(mid, mid, 3, stride)
        self.norm2 = GroupNormAct(mid, groups)
        self.conv3 = StdConv2dSame(mid, out_chs, 1)
        self.norm3 = GroupNormAct(out_chs, groups, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, C_in, H, W) -> (N, C_out, ceil(H / s), ceil(W / s))."""
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.norm2(self.conv2(self.norm1(self.conv1(x))))
        return F.relu(self.norm3(self.conv3(x)) + shortcut)

    def flops(self, h: int, w: int) -> tuple[int, int, int]:
        """FLOPs of the block's convolutions on an (h, w) input -> (flops, h_out, w_out)."""
        f1, _, _ = self.conv1.flops(h, w)
        f2, ho, wo = self.conv2.flops(h, w)
        f3, _, _ = self.conv3.flops(ho, wo)
        fd = 0 if self.downsample is None else self.downsample.conv.flops(h, w)[0]
        return f1 + f2 + f3 + fd, ho, wo


class ResNetStage(nn.Module):
    """``depth`` bottlenecks; the first one strides and projects the shortcut."""

    def __init__(self, in_chs: int, out_chs: int, stride: int, depth: int, groups: int):
        super().__init__()
        self.blocks = nn.Sequential(*(
            Bottleneck(in_chs if i == 0 else out_chs, out_chs, stride if i == 0 else 1, groups, project=i == 0)
            for i in range(depth)
        ))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, C_in, H, W) -> (N, C_out, ceil(H / s), ceil(W / s))."""
        return self.blocks(x)


class ResNetV2(nn.Module):
    """Stem (7x7 stride-2 convolution, GroupNorm + ReLU, optional 3x3 stride-2 max-pool), then one
    stage per entry of ``layers`` (the first at stride 1, the others at stride 2).

    ``stride`` is the total downsampling (:func:`resnet_stride`).
    """

    def __init__(self, layers: list[int], channels: list[int], in_chans: int = 3, width: int = 64,
                 groups: int = 32, stem_pool: bool = True):
        super().__init__()
        if not layers or len(channels) != len(layers):
            raise ValueError(f"need at least one stage and one channel count per stage, got layers={layers}, "
                             f"channels={channels}")
        width = make_divisible(width)
        stem = OrderedDict(conv=StdConv2dSame(in_chans, width, STEM_KERNEL, 2), norm=GroupNormAct(width, groups))
        if stem_pool:
            stem["pool"] = MaxPool2dSame()
        self.stem = nn.Sequential(stem)
        stages, prev = [], width
        for i, (depth, chs) in enumerate(zip(layers, channels, strict=True)):
            stages.append(ResNetStage(prev, make_divisible(chs), 1 if i == 0 else 2, depth, groups))
            prev = make_divisible(chs)
        self.stages = nn.Sequential(*stages)
        self.num_features = prev
        self.stride = resnet_stride(len(layers), stem_pool)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, C, H, W) -> feature map (N, num_features, ceil(H / stride), ceil(W / stride))."""
        return self.stages(self.stem(x))

    def flops(self, img_size: tuple[int, int]) -> int:
        """Forward FLOPs of every convolution for one image of ``img_size`` (multiply-add = 2)."""
        flops, h, w = self.stem.conv.flops(*img_size)
        if hasattr(self.stem, "pool"):
            h, w = math.ceil(h / 2), math.ceil(w / 2)
        for stage in self.stages:
            for block in stage.blocks:
                f, h, w = block.flops(h, w)
                flops += f
        return flops
