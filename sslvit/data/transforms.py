"""Image transforms for pretraining, probing, fine-tuning and evaluation.

Every transform maps an image to a ``uint8 (3, H, W)`` tensor: images stay uint8 through the
loader and the host-to-device copy, and :func:`normalize` turns a batch into normalised floats on
whatever device it has reached.

A transform is an :class:`ImageTransform`: a crop box chosen from the source size (random resized
crop, resize-and-centre-crop, or the whole image), one antialiased bicubic resize of that box to
the output size, then tensor ops (flip and colour jitter from ``torchvision.transforms.v2``,
:class:`RandAugment` and :class:`RandomErasing` as in timm's fine-tuning recipe). Because the box
is known before any pixel is decoded, the stream can decode JPEGs at a reduced DCT scale when the
box holds at least 2x (4x, 8x) the output's pixels per side, and skip the full-size decode. All
randomness comes from torch's global RNG, which the stream seeds per sample, so augmentations are
reproducible.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F

from sslvit.data.stats import IMAGENET_MEAN, IMAGENET_STD

Box = tuple[int, int, int, int]  # (top, left, height, width) in source pixels


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    height, width = size
    return int(height), int(width)


class ImageTransform:
    """Crop box -> bicubic antialiased resize -> tensor ops; output uint8 (3, out_h, out_w).

    geometry: "random_resized_crop" (``scale``, ``ratio`` as in torchvision: up to ten draws, then a
    centre fallback), "random_resized_crop_once" (one draw clamped to the image: MAE's linear-probe
    ``util/crop.py``, after BYOL's TF code), "center" (resize the shorter side to ``size / crop_pct``
    then centre crop ``size``), or "none" (whole image resized).
    """

    def __init__(self, size: int | Sequence[int], geometry: str = "random_resized_crop",
                 scale: tuple[float, float] = (0.2, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3),
                 crop_pct: float = 0.875, ops: Sequence[Callable] = ()) -> None:
        if geometry not in ("random_resized_crop", "random_resized_crop_once", "center", "none"):
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
        if self.geometry == "random_resized_crop_once":
            return _one_draw_crop_box(width, height, self.scale, self.ratio)
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
        crop = image[..., top:top + height, left:left + width]
        if crop.dim() == 3 and crop.dtype == torch.uint8:
            # (3, h, w) laid out as (h, w, 3): torch's antialiased uint8 resize reads that layout
            # directly, about 1.3x faster than a strided window of a larger image; same pixels
            crop = crop.permute(1, 2, 0).contiguous().permute(2, 0, 1)
        out = F.resize(crop, list(self.size), interpolation=InterpolationMode.BICUBIC, antialias=True)
        return self.ops(out) if self.ops is not None else out

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        """uint8 (3, H, W) (or a PIL image) -> uint8 (3, out_h, out_w)."""
        if not isinstance(image, torch.Tensor):
            image = F.pil_to_tensor(image.convert("RGB"))
        return self.apply(image, self.sample_box(image.shape[-1], image.shape[-2]))


def _one_draw_crop_box(width: int, height: int, scale: tuple[float, float], ratio: tuple[float, float]) -> Box:
    """MAE's ``util/crop.py`` RandomResizedCrop parameters: one area and aspect draw, the box clamped
    to the image (the same RNG calls in the same order)."""
    target_area = height * width * torch.empty(1).uniform_(scale[0], scale[1]).item()
    log_ratio = torch.log(torch.tensor(ratio))
    aspect = torch.exp(torch.empty(1).uniform_(log_ratio[0].item(), log_ratio[1].item())).item()
    w = min(int(round(math.sqrt(target_area * aspect))), width)
    h = min(int(round(math.sqrt(target_area / aspect))), height)
    top = int(torch.randint(0, height - h + 1, size=(1,)).item())
    left = int(torch.randint(0, width - w + 1, size=(1,)).item())
    return top, left, max(1, h), max(1, w)


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


def _fill_of(mean: Sequence[float]) -> list[float]:
    """Per-channel fill value (0..255) for pixels that geometric ops move in: the data mean."""
    return [float(min(255, round(255 * m))) for m in mean]


def _coin(p: float = 0.5) -> bool:
    return torch.rand(()).item() < p


def _signed(value: float) -> float:
    return -value if _coin() else value


_LEVEL_DENOM = 10.0  # a magnitude of 10 is each op's strongest setting


def _enhance_increasing(level: float) -> float:
    """Blend factor in [0.1, 1.9], moving away from 1 (no change) as the level grows."""
    return max(0.1, 1.0 + _signed(level / _LEVEL_DENOM * 0.9))


def _solarize_add(image: torch.Tensor, add: int, threshold: int = 128) -> torch.Tensor:
    """Add ``add`` to pixels below ``threshold`` (clamped at 255); uint8 (3, H, W)."""
    raised = image.clamp(max=255 - add) + add  # saturating uint8 add
    return torch.where(image < threshold, raised, image)


def _solarize(image: torch.Tensor, threshold: int) -> torch.Tensor:
    return image if threshold >= 256 else F.solarize(image, threshold)


class RandAugment:
    """RandAugment on uint8 (3, H, W) tensors, following timm's ``rand-m{M}-n{N}-mstd{S}-inc{0,1}-p{P}``.

    Per image, ``num_ops`` ops are drawn with replacement from the 15 ops of timm's RandAugment;
    each is applied with probability ``prob`` at a magnitude drawn from N(``magnitude``,
    ``magnitude_std``) clipped to [0, 10]. ``increasing`` picks the ops whose strength grows with
    the magnitude (posterize, solarize and the colour / contrast / brightness / sharpness blends).
    Geometric ops (rotate <= 30 deg, shear <= 0.3, translate <= 0.45 of the side) fill with ``fill``
    and resample bilinearly (torchvision's tensor kernels have no bicubic). All randomness comes
    from torch's global RNG, so the stream's per-sample seeding makes it reproducible.
    """

    INCREASING_OPS = ("AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing",
                      "SolarizeIncreasing", "SolarizeAdd", "ColorIncreasing", "ContrastIncreasing",
                      "BrightnessIncreasing", "SharpnessIncreasing", "ShearX", "ShearY", "TranslateXRel",
                      "TranslateYRel")
    OPS = ("AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "SolarizeAdd", "Color",
           "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")

    def __init__(self, num_ops: int = 2, magnitude: float = 9.0, magnitude_std: float = 0.5,
                 increasing: bool = True, prob: float = 0.5, fill: Sequence[float] = (124.0, 116.0, 104.0),
                 translate_pct: float = 0.45) -> None:
        if num_ops < 0 or not 0.0 <= prob <= 1.0 or magnitude_std < 0:
            raise ValueError(f"RandAugment: num_ops {num_ops} must be >= 0, prob {prob} in [0, 1], "
                             f"magnitude_std {magnitude_std} >= 0")
        self.num_ops, self.magnitude, self.magnitude_std = num_ops, float(magnitude), float(magnitude_std)
        self.increasing, self.prob = increasing, prob
        self.fill, self.translate_pct = [float(f) for f in fill], translate_pct
        self.ops = self.INCREASING_OPS if increasing else self.OPS

    @classmethod
    def from_string(cls, spec: str, size: int | Sequence[int] = 224,
                    fill: Sequence[float] = (124.0, 116.0, 104.0)) -> RandAugment:
        """``"rand-m9-mstd0.5-inc1"`` (timm's syntax: m magnitude, n ops, mstd, inc, p) -> RandAugment."""
        parts = spec.split("-")
        if parts[0] != "rand":
            raise ValueError(f"rand_augment {spec!r}: expected 'rand-m9-mstd0.5-inc1' style (starting 'rand')")
        keys = {"m": "magnitude", "n": "num_ops", "mstd": "magnitude_std", "inc": "increasing", "p": "prob"}
        kwargs: dict = {"increasing": False, "magnitude": _LEVEL_DENOM, "magnitude_std": 0.0}
        for part in parts[1:]:
            key = part.rstrip("0123456789.")
            try:
                value = float(part[len(key):])
            except ValueError:
                value = None
            if key not in keys or value is None:
                raise ValueError(f"rand_augment {spec!r}: cannot read {part!r}; known parts: "
                                 "m<magnitude> n<ops> mstd<std> inc<0|1> p<prob>")
            kwargs[keys[key]] = int(value) if key == "n" else bool(value) if key == "inc" else value
        return cls(fill=fill, **kwargs)

    def __repr__(self) -> str:
        return (f"RandAugment(n={self.num_ops}, m={self.magnitude}, mstd={self.magnitude_std}, "
                f"inc={int(self.increasing)}, p={self.prob})")

    def _magnitude(self) -> float:
        m = self.magnitude
        if self.magnitude_std > 0:
            m = m + self.magnitude_std * torch.randn(()).item()
        return max(0.0, min(m, _LEVEL_DENOM))

    def apply_op(self, image: torch.Tensor, name: str, level: float) -> torch.Tensor:
        """One op at ``level`` in [0, 10] on uint8 (3, H, W) -> uint8 (3, H, W)."""
        frac = level / _LEVEL_DENOM
        geometric = dict(interpolation=InterpolationMode.BILINEAR, fill=self.fill)
        if name == "AutoContrast":
            return F.autocontrast(image)
        if name == "Equalize":
            return F.equalize(image)
        if name == "Invert":
            return F.invert(image)
        if name == "Rotate":
            return F.rotate(image, _signed(frac * 30.0), **geometric)
        if name == "Posterize":
            return F.posterize(image, int(frac * 4))
        if name == "PosterizeIncreasing":
            return F.posterize(image, 4 - int(frac * 4))
        if name == "Solarize":
            return _solarize(image, min(256, int(frac * 256)))
        if name == "SolarizeIncreasing":
            return _solarize(image, 256 - min(256, int(frac * 256)))
        if name == "SolarizeAdd":
            return _solarize_add(image, min(128, int(frac * 110)))
        if name.endswith("Increasing"):
            factor = _enhance_increasing(level)
        else:
            factor = frac * 1.8 + 0.1
        if name.startswith("Color"):
            return F.adjust_saturation(image, factor)
        if name.startswith("Contrast"):
            return F.adjust_contrast(image, factor)
        if name.startswith("Brightness"):
            return F.adjust_brightness(image, factor)
        if name.startswith("Sharpness"):
            return F.adjust_sharpness(image, factor)
        height, width = image.shape[-2:]
        if name in ("ShearX", "ShearY"):
            degrees = math.degrees(math.atan(_signed(frac * 0.3)))
            shear = [degrees, 0.0] if name == "ShearX" else [0.0, degrees]
            return F.affine(image, angle=0.0, translate=[0, 0], scale=1.0, shear=shear, center=[0, 0], **geometric)
        if name in ("TranslateXRel", "TranslateYRel"):
            shift = _signed(frac * self.translate_pct)
            move = [shift * width, 0.0] if name == "TranslateXRel" else [0.0, shift * height]
            return F.affine(image, angle=0.0, translate=move, scale=1.0, shear=[0.0, 0.0], **geometric)
        raise ValueError(f"unknown RandAugment op {name!r}")

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        """uint8 (3, H, W) -> uint8 (3, H, W)."""
        for index in torch.randint(len(self.ops), (self.num_ops,)).tolist():
            if self.prob < 1.0 and not _coin(self.prob):
                continue
            image = self.apply_op(image, self.ops[index], self._magnitude())
        return image


class RandomErasing:
    """Random erasing (Zhong et al.; timm's ``RandomErasing(mode="pixel", max_count=1)``) on uint8.

    With probability ``prob``, one rectangle of 2%-33% of the image area and aspect ratio in
    [0.3, 1/0.3] (10 tries to fit) is filled with per-pixel noise that is N(0, 1) after
    normalisation by ``mean`` / ``std``, i.e. ``(mean + std * z) * 255`` rounded and clamped to
    0..255. uint8 (3, H, W) -> uint8 (3, H, W).
    """

    def __init__(self, prob: float = 0.25, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD, area: tuple[float, float] = (0.02, 1 / 3),
                 ratio: tuple[float, float] = (0.3, 1 / 0.3)) -> None:
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"random erasing probability {prob} outside [0, 1]")
        self.prob, self.area = prob, area
        self.log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1) * 255.0
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1) * 255.0

    def __repr__(self) -> str:
        return f"RandomErasing(p={self.prob}, area={tuple(round(a, 4) for a in self.area)}, mode='pixel')"

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        """uint8 (3, H, W) -> uint8 (3, H, W), one rectangle replaced by noise with probability ``prob``."""
        if not _coin(self.prob):
            return image
        channels, height, width = image.shape
        for _ in range(10):
            target = torch.empty(()).uniform_(*self.area).item() * height * width
            aspect = math.exp(torch.empty(()).uniform_(*self.log_ratio).item())
            h, w = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
            if w < width and h < height:
                top = int(torch.randint(0, height - h + 1, ()).item())
                left = int(torch.randint(0, width - w + 1, ()).item())
                noise = self.mean + self.std * torch.randn(channels, h, w)  # (3, h, w) in 0..255 units
                out = image.clone()
                out[:, top : top + h, left : left + w] = noise.round_().clamp_(0, 255).to(torch.uint8)
                return out
        return image


def pretrain_transform(size: int = 224, scale: tuple[float, float] = (0.2, 1.0),
                       hflip: bool = True) -> ImageTransform:
    """MAE pretraining: RandomResizedCrop(scale) bicubic + horizontal flip -> uint8 (3, size, size)."""
    return ImageTransform(size, "random_resized_crop", scale=scale,
                          ops=[v2.RandomHorizontalFlip()] if hflip else [])


def finetune_transform(size: int = 224, scale: tuple[float, float] = (0.08, 1.0), hflip: bool = True,
                       rand_augment: str | None = "rand-m9-mstd0.5-inc1", reprob: float = 0.25,
                       mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                       color_jitter: float | None = None) -> ImageTransform:
    """Fine-tuning (MAE's FINETUNE.md recipe): RandomResizedCrop(scale) bicubic + flip + RandAugment
    (``rand_augment``: a timm-style string such as ``"rand-m9-mstd0.5-inc1"``; None or "" = off) +
    random erasing with probability ``reprob`` (per-pixel noise drawn around ``mean`` / ``std``),
    all on uint8 tensors -> uint8 (3, size, size). ``color_jitter`` is off (None) as in the recipe,
    whose RandAugment replaces it."""
    ops: list[Callable] = [v2.RandomHorizontalFlip()] if hflip else []
    if color_jitter:
        ops.append(v2.ColorJitter(color_jitter, color_jitter, color_jitter))
    if rand_augment:
        ops.append(RandAugment.from_string(rand_augment, size=size, fill=_fill_of(mean)))
    if reprob > 0:
        ops.append(RandomErasing(reprob, mean, std))
    return ImageTransform(size, "random_resized_crop", scale=scale, ops=ops)


def probe_transform(size: int = 224, scale: tuple[float, float] = (0.08, 1.0), hflip: bool = True) -> ImageTransform:
    """Linear-probe training, MAE's ``main_linprobe.py``: its one-draw RandomResizedCrop(scale)
    bicubic + horizontal flip, no RandAugment, no erasing -> uint8 (3, size, size)."""
    return ImageTransform(size, "random_resized_crop_once", scale=scale,
                          ops=[v2.RandomHorizontalFlip()] if hflip else [])


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
