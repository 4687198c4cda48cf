"""JPEGs decoded on the accelerator: nvJPEG through ``torchvision.io.decode_jpeg(device="cuda")``.

``data.jpeg_decode: nvjpeg`` moves the decode (the loader's largest cost, see benchmarks/loader.py)
off the CPU. The readers still read the shards, open each JPEG's header and draw its crop box and
flip with the sample's own generator (the same draws as the CPU path, so the same boxes and flips);
instead of pixels they send the JPEG's bytes with the box and the flip (:class:`Encoded`). The main
process decodes the batch's JPEGs in one call on the device, cuts each box out, resizes it
(antialiased bicubic, as on the CPU) and flips it there, so batches arrive as uint8 tensors already
on the device. Samples nvJPEG is not given (PNGs and other formats, CMYK JPEGs, JPEGs with an EXIF
rotation) are decoded by the readers as before and sent as pixels.

The pixels differ from the CPU path's by the decoders' rounding (nvJPEG's IDCT is not libjpeg's)
and because the CPU path may decode at a reduced DCT scale; with ``device="cpu"`` the same code
decodes with libjpeg-turbo in the main process, which is how it is tested on a machine without a
GPU (its output equals the readers' wherever they decode at full scale). It takes the pretraining
transforms (a crop box, then horizontal flips); transforms with other tensor ops (RandAugment,
random erasing) stay on the CPU path, said when the loader is built.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F

from sslvit.data.decode import exif_orientation, open_image, oriented_size
from sslvit.data.transforms import Box, ImageTransform

_PROBE = torch.tensor([[[0, 1]]], dtype=torch.uint8)  # (1, 1, 2): flipped iff its first pixel is 1


class Encoded(NamedTuple):
    """A JPEG left for the device: its bytes (uint8 (n,)), its crop box in full-size pixels, the flip."""

    data: torch.Tensor
    box: Box
    flip: bool


def unsupported_ops(transform: object) -> list[str]:
    """The tensor ops of ``transform`` the device path cannot apply (empty: it can take it)."""
    if not isinstance(transform, ImageTransform):
        return [type(transform).__name__]
    ops = transform.ops.transforms if transform.ops is not None else []
    return [type(op).__name__ for op in ops if not isinstance(op, v2.RandomHorizontalFlip)]


def encode_for(transform: ImageTransform, data: bytes, max_pixels: int) -> Encoded | None:
    """The box and flip of one sample, drawn as :func:`sslvit.data.worker.decode_for` draws them
    (the box from the header, then the ops on a probe: the same calls on the generator), or None
    when nvJPEG should not have this image (not a plain RGB / greyscale JPEG)."""
    image = open_image(data, max_pixels)
    if image.format != "JPEG" or image.mode not in ("RGB", "L") or exif_orientation(image) != 1:
        return None
    width, height = oriented_size(image)
    box = transform.sample_box(width, height)
    flip = bool(transform.ops(_PROBE)[0, 0, 0] == 1) if transform.ops is not None else False
    return Encoded(torch.frombuffer(bytearray(data), dtype=torch.uint8), box, flip)


def decode_batch(items: list[Encoded | torch.Tensor], size: tuple[int, int], device: torch.device | str) -> torch.Tensor:
    """A batch's samples (Encoded JPEGs, or uint8 (3, h, w) pixels the readers made) -> uint8
    (B, 3, h, w) on ``device``: the JPEGs decoded there in one call, cut, resized, flipped."""
    with warnings.catch_warnings():  # torchvision 0.29 marks its decoders deprecated (in favour of TorchCodec)
        warnings.simplefilter("ignore", DeprecationWarning)
        from torchvision.io import ImageReadMode, decode_jpeg

        device = torch.device(device)
        out = torch.empty((len(items), 3, *size), dtype=torch.uint8, device=device)
        jpegs = [i for i, item in enumerate(items) if isinstance(item, Encoded)]
        decoded = decode_jpeg([items[i].data for i in jpegs], mode=ImageReadMode.RGB, device=device) if jpegs else []
    for i, pixels in zip(jpegs, decoded, strict=True):  # pixels: uint8 (3, H, W) on the device
        top, left, height, width = items[i].box
        crop = pixels[:, top:top + height, left:left + width]
        if device.type == "cpu":  # the (h, w, 3) layout the CPU resize is fastest on, as ImageTransform.apply
            crop = crop.permute(1, 2, 0).contiguous().permute(2, 0, 1)
        image = F.resize(crop, list(size), interpolation=InterpolationMode.BICUBIC, antialias=True)
        out[i] = image.flip(-1) if items[i].flip else image
    for i, item in enumerate(items):
        if not isinstance(item, Encoded):
            out[i] = item.to(device, non_blocking=True)
    return out
