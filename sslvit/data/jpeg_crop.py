"""JPEG region decoding: only the crop box of a JPEG is decoded, at the DCT scale the stream chose.

The crop box is drawn from the header before any pixel is decoded (see
:func:`sslvit.data.worker.decode_for`), so the decoder can leave out what the crop never shows.
``sslvit.data._jpegcrop`` (a small C extension over libjpeg-turbo, built at install when a C
compiler and libjpeg's headers are there) skips the rows above the box, leaves the columns beside
it from the nearest iMCU boundary on, and stops after its last row; on ImageNet-like JPEGs with
RandomResizedCrop(scale=(0.2, 1)) that is about a quarter of the decoding work.

The pixels are those of decoding the whole image at the same DCT scale and cutting the box out,
bit for bit: the decoder widens the region by :data:`MARGIN` pixels (clipped to the image) so that
the chroma upsampling at its edges sees the same neighbours as in the whole image, and returns the
box alone (tests/data/test_data_jpeg_crop.py compares both over 4:2:0, 4:2:2,
4:4:4, greyscale, progressive and odd-sized JPEGs at every scale).

A JPEG is decoded whole instead (by :func:`sslvit.data.decode.load_rgb`) when the extension is not
built (said once by the loader, with the reason), when ``SSLVIT_JPEG_CROP=0`` is set, for CMYK
images and images with an EXIF rotation, and for a file that does not end with the JPEG end
marker or that met a corrupt-data warning: a truncated or damaged file is then judged as before
(skipped and counted), never by the part of it a crop happened to read.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image

try:
    from sslvit.data._jpegcrop import decode_region as _decode_region
except ImportError as exn:  # the optional extension was not built at install
    _decode_region = None
    _IMPORT_ERROR = str(exn)
else:
    _IMPORT_ERROR = ""

Box = tuple[int, int, int, int]  # (top, left, height, width)
MARGIN = 2  # pixels decoded around the box: the chroma upsampling's reach at any DCT scale
_EOI = b"\xff\xd9"


def enabled() -> bool:
    """Whether JPEG boxes are decoded as regions here (the extension is built and not switched off)."""
    return _decode_region is not None and os.environ.get("SSLVIT_JPEG_CROP", "1") != "0"


def unavailable_reason() -> str:
    """Why JPEGs are decoded whole here ("" when region decoding is on)."""
    if _decode_region is None:
        return (f"the extension sslvit.data._jpegcrop was not built ({_IMPORT_ERROR}); install a C compiler "
                "and libjpeg-turbo's headers (Debian/Ubuntu: apt install libjpeg-dev; conda: conda install "
                "libjpeg-turbo) and install sslvit again")
    if not enabled():
        return "SSLVIT_JPEG_CROP=0 is set"
    return ""


def applies_to(image: Image.Image, data: bytes, orientation: int) -> bool:
    """Whether ``image`` (opened from ``data``; EXIF ``orientation``) is decoded as a region."""
    return (enabled() and image.format == "JPEG" and image.mode in ("RGB", "L") and orientation == 1
            and data[-64:].rstrip(b"\x00\r\n ").endswith(_EOI))


def decode_box(data: bytes, reduce: int, box: Box) -> tuple[torch.Tensor, Box] | None:
    """Decode the part of a JPEG that ``box`` needs.

    ``box``: (top, left, height, width) in pixels of the JPEG decoded at 1/``reduce``
    (``ceil(side / reduce)`` per side, as libjpeg sizes it). Returns (the box's pixels, uint8
    (3, h, w) over (h, w, 3) memory, and the whole of it as a box), or None when the file should be
    decoded whole (a corrupt-data warning, an error), which then decides whether it is usable.
    """
    top, left, box_h, box_w = box
    try:
        buffer, warnings = _decode_region(data, reduce, top, left, box_h, box_w, MARGIN)
    except ValueError:
        return None
    if warnings:
        return None
    pixels = torch.from_numpy(np.frombuffer(buffer, dtype=np.uint8).reshape(box_h, box_w, 3))
    return pixels.permute(2, 0, 1), (0, 0, box_h, box_w)  # (3, h, w) over (h, w, 3) memory
