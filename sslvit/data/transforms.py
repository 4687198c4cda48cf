"""Image transforms for pretraining, probing, fine-tuning and evaluation.

Every transform maps an image to a ``uint8 (3, H, W)`` tensor: images stay uint8 through the
loader and the host-to-device copy, and :func:`normalize` turns a batch into normalised floats on
whatever device it has reached.

A transform is an :class:`ImageTransform`: a crop box chosen from the source size (random resized
crop, resize-and-centre-crop, or the whole image), one antialiased bicubic resize of that box to
the output size, then tensor ops from ``torchvision.transforms.v2`` (flip, RandAugment, colour
jitter). Because the box is known before any pixel is decoded, the stream can decode JPEGs at a
reduced DCT scale when the box holds at least 2x (4x, 8x) the output's pixels per side, and skip
the full-size decode. All randomness comes from torch's global RNG, which the stream seeds per
sample, so augmentations are reproducible.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
Box = tuple[int, int, int, int]  # (top, left, height, width) in source pixels


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    height, width = size
    return int(height), int(width)


class ImageTransform:
    """Crop box -> bicubic antialiased resize -> tensor ops; output uint8 (3, out_h, out_w).

    geometry: "random_resized_crop" (``scale``, ``ratio`` as in torchvision), "center" (resize the
    shorter side to ``size / crop_pct`` then centre crop ``size``), or "none" (whole image resized).
    """

    def __init__(self, size: int | Sequence[int], geometry: str = "random_resized_crop",
                 scale: tuple[float, float] = (0.2, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3),
                 crop_pct: float = 0.875, ops: Sequence[Callable] = ()) -> None:
        if geometry not in ("random_resized_crop", "center", "none"):
            raise ValueError(f"unknown geometry {geometry!r}")
        self.size = _pair(size)
        self.geometry = geometry
        self.scale = scale
        self.ratio = ratio
        self.crop_pct = crop_pct
        self.ops = v2.Compose(list(ops)) if ops else None

    def __repr__(self) -> str:
        return (f"ImageTransform(size={self.size}, geometry={self.geometry!r}, scale={self.scale}, "
                f"ratio={tuple(round(r, 4) for r in self.ratio)}, ops={self.ops})")

    def sample_box(self, width: int, height: int) -> Box:
        """Choose the crop box (top, left, h, w) for a source of ``width`` x ``height``."""
        if self.geometry == "none":
            return 0, 0, height, width
        if self.geometry == "center":
            out_h, out_w = self.size
            resize = min(out_h, out_w) / self.crop_pct
            factor = min(width, height) / resize
            crop_h, crop_w = min(height, round(out_h * factor)), min(width, round(out_w * factor))
            return (height - crop_h) // 2, (width - crop_w) // 2, max(1, crop_h), max(1, crop_w)
        return _random_resized_crop_box(width, height, self.scale, self.ratio)

    def reduction(self, box: Box) -> int:
        """Largest DCT scale-down (1, 2, 4, 8) that leaves the box at least the output size."""
        factor = min(box[2] / self.size[0], box[3] / self.size[1])
        for reduce in (8, 4, 2):
            if factor >= reduce:
                return reduce
        return 1

    def apply(self, image: torch.Tensor, box: Box) -> torch.Tensor:
        """uint8 (3, H, W) and a box in its pixels -> uint8 (3, out_h, out_w)."""
        top, left, height, width = box
        out = F.resized_crop(image, top, left, height, width, list(self.size),
                             interpolation=InterpolationMode.BICUBIC, antialias=True)
        return self.ops(out) if self.ops is not None else out

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        """uint8 (3, H, W) (or a PIL image) -> uint8 (3, out_h, out_w)."""
        if not isinstance(image, torch.Tensor):
            image = F.pil_to_tensor(image.convert("RGB"))
        return self.apply(image, self.sample_box(image.shape[-1], image.shape[-2]))


def _random_resized_crop_box(width: int, height: int, scale: tuple[float, float],
                             ratio: tuple[float, float]) -> Box:
    """torchvision's RandomResizedCrop parameter sampling (same RNG calls, same fallback)."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1]).item()
        aspect = math.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1]).item())
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, size=(1,)).item())
            left = int(torch.randint(0, width - w + 1, size=(1,)).item())
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, max(1, h), max(1, w)


def pretrain_transform(size: int = 224, scale: tuple[float, float] = (0.2, 1.0),
                       hflip: bool = True) -> ImageTransform:
    """MAE pretraining: RandomResizedCrop(scale) bicubic + horizontal flip -> uint8 (3, size, size)."""
    return ImageTransform(size, "random_resized_crop", scale=scale,
                          ops=[v2.RandomHorizontalFlip()] if hflip else [])


def finetune_transform(size: int = 224, scale: tuple[float, float] = (0.08, 1.0), hflip: bool = True,
                       rand_augment: tuple[int, int] | None = (2, 9),
                       color_jitter: float | None = None) -> ImageTransform:
    """Supervised / fine-tune: RandomResizedCrop + flip + optional RandAugment(num_ops, magnitude)
    and colour jitter, all on uint8 tensors -> uint8 (3, size, size)."""
    ops: list[Callable] = [v2.RandomHorizontalFlip()] if hflip else []
    if color_jitter:
        ops.append(v2.ColorJitter(color_jitter, color_jitter, color_jitter))
    if rand_augment is not None:
        num_ops, magnitude = rand_augment
        ops.append(v2.RandAugment(num_ops=num_ops, magnitude=magnitude,
                                  interpolation=InterpolationMode.BILINEAR))
    return ImageTransform(size, "random_resized_crop", scale=scale, ops=ops)


def probe_transform(size: int = 224) -> ImageTransform:
    """Linear probe training (as in MAE): RandomResizedCrop(0.08, 1) + flip, no RandAugment."""
    return finetune_transform(size, rand_augment=None)


def eval_transform(size: int = 224, crop_pct: float = 0.875) -> ImageTransform:
    """Evaluation: resize the shorter side to size / crop_pct, centre crop -> uint8 (3, size, size)."""
    return ImageTransform(size, "center", crop_pct=crop_pct)


def normalize(images: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN,
              std: Sequence[float] = IMAGENET_STD, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 (N, 3, H, W) or (3, H, W) in 0..255, or float in [0, 1] -> (x - mean) / std as float.

    ``mean``/``std`` are per channel in [0, 1] units. Runs on the tensor's device.
    """
    shape = (1, -1, 1, 1) if images.dim() == 4 else (-1, 1, 1)
    m = torch.as_tensor(mean, dtype=dtype, device=images.device).view(shape)
    s = torch.as_tensor(std, dtype=dtype, device=images.device).view(shape)
    if images.dtype == torch.uint8:  # one new tensor, two in-place passes
        return images.to(dtype).sub_(m * 255.0).div_(s * 255.0)
    return (images.to(dtype) - m) / s
