"""Decoding of shard members: images to uint8 RGB tensors, class labels to ints.

Every failure is raised as :class:`SampleError` carrying a short machine-readable ``reason``
(``empty_image``, ``undecodable_image``, ``too_large``, ``bad_label``, ``label_out_of_range``, ...). The stream counts
samples by that reason and moves on; nothing here lets a single bad sample stop a run.

Images are decoded to ``uint8 (3, H, W)`` tensors from any PIL mode (L, LA, P, PA, RGBA, CMYK,
YCbCr, I;16, I, F, 1), with the EXIF orientation applied. The pixel count is checked from the
header, before any pixel is decoded, so decompression bombs never allocate. JPEGs can be decoded
at a reduced scale (libjpeg DCT scaling, a factor 2, 4 or 8) through PIL's ``draft`` when the
caller says the output needs fewer pixels than the source has. RGB and greyscale JPEGs without an
EXIF rotation are decoded by simplejpeg when it is installed (libjpeg-turbo, the same pixels as
PIL, at any of those scales, into a channels-last array the resize is fastest on); otherwise
full-size JPEGs go through torchvision.io (libjpeg-turbo straight into a tensor) and the rest
through PIL. The loader decodes a JPEG only as far as its crop box needs, when it can
(:mod:`sslvit.data.jpeg_crop`); what is here decodes whole images.
"""

from __future__ import annotations

import io
import json
import struct
import warnings

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

try:
    import simplejpeg
except ImportError:  # optional: JPEGs then decode through torchvision.io / PIL (said by the loader)
    simplejpeg = None

DEFAULT_MAX_PIXELS = 89_478_485  # PIL's own decompression-bomb threshold (Image.MAX_IMAGE_PIXELS)
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff", "ppm", "pgm", "pbm")
LABEL_EXTENSIONS = ("cls", "label", "target")
_ROTATING_ORIENTATIONS = (5, 6, 7, 8)
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, IndexError, TypeError, KeyError,
                  ZeroDivisionError, RuntimeError, struct.error)


class SampleError(Exception):
    """A sample that cannot be used; ``reason`` names the counter it is reported under."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def open_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Parse an image header (no pixels are decoded) and enforce the pixel limit.

    Raises SampleError("empty_image" | "undecodable_image" | "too_large").
    """
    if not data:
        raise SampleError("empty_image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exn:
        raise SampleError("too_large", str(exn)) from None
    except (UnidentifiedImageError, *_DECODE_ERRORS) as exn:
        raise SampleError("undecodable_image", str(exn)[:200]) from None
    width, height = image.size
    if width <= 0 or height <= 0:
        raise SampleError("undecodable_image", f"size {image.size}")
    if width * height > max_pixels:
        raise SampleError("too_large", f"{width}x{height} > {max_pixels} pixels")
    return image


def exif_orientation(image: Image.Image) -> int:
    """The EXIF orientation tag (1..8) from the header; 1 when absent or unreadable."""
    try:
        value = image.getexif().get(0x0112, 1)
        return int(value) if 1 <= int(value) <= 8 else 1
    except Exception:
        return 1


def oriented_size(image: Image.Image) -> tuple[int, int]:
    """(width, height) as displayed, i.e. after the EXIF orientation is applied."""
    width, height = image.size
    if exif_orientation(image) in _ROTATING_ORIENTATIONS:
        return height, width
    return width, height


def _to_rgb_array(image: Image.Image) -> np.ndarray:
    """Any PIL mode -> uint8 (H, W, 3) array; high-bit-depth modes are rescaled, not clipped."""
    mode = image.mode
    if mode == "RGB":
        return np.asarray(image)
    if mode.startswith("I;16") or mode in ("I", "F"):
        arr = np.asarray(image).astype(np.float64)
        if mode == "F":
            peak = 1.0 if arr.size and np.nanmax(arr) <= 1.0 else 255.0
        else:
            peak = 65535.0 if mode.startswith("I;16") or (arr.size and arr.max() > 255) else 255.0
        arr = np.clip(np.nan_to_num(arr) * (255.0 / peak) + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(arr[:, :, None], 3, axis=2)
    if mode in ("P", "PA") and ("transparency" in image.info or mode == "PA"):
        image = image.convert("RGBA")
    return np.asarray(image.convert("RGB"))


def load_rgb(image: Image.Image, data: bytes, reduce: int = 1) -> tuple[torch.Tensor, int]:
    """Decode an opened image (``data``: its bytes) to uint8 (3, H, W) RGB, EXIF orientation applied.

    ``reduce`` in {1, 2, 4, 8} asks for JPEG DCT scaling (decoded size ceil(size / reduce)); it
    is ignored for other formats. Full-size JPEGs go through libjpeg-turbo straight into a tensor
    (torchvision.io) when available; everything else through PIL. Returns (tensor, reduction).
    """
    reduce = reduce if image.format == "JPEG" and reduce in (2, 4, 8) else 1
    if image.format == "JPEG" and image.mode in ("RGB", "L") and simplejpeg is not None \
            and exif_orientation(image) == 1:
        return _decode_simplejpeg(data, image.size, reduce), reduce
    if image.format == "JPEG" and reduce == 1 and image.mode in ("RGB", "L", "CMYK"):
        fast = _decode_jpeg_fast(data)
        if fast is not None:
            return fast, 1
    try:
        if reduce > 1:
            width, height = image.size
            image.draft(image.mode if image.mode in ("L", "CMYK") else "RGB",
                        (max(1, width // reduce), max(1, height // reduce)))
            reduce = int(image.decoderconfig[0]) if image.decoderconfig else 1
        image.load()
    except _DECODE_ERRORS as exn:
        raise SampleError("undecodable_image", str(exn)[:200]) from None
    try:
        if exif_orientation(image) != 1:
            image = ImageOps.exif_transpose(image)
    except Exception:
        pass
    arr = _to_rgb_array(image)
    return torch.from_numpy(arr if arr.flags.writeable else arr.copy()).permute(2, 0, 1), reduce


def _decode_simplejpeg(data: bytes, size: tuple[int, int], reduce: int) -> torch.Tensor:
    """uint8 (3, H, W) view of simplejpeg's (H, W, 3) output (libjpeg-turbo, the accurate IDCT and
    fancy upsampling as PIL uses; ``reduce`` in {1, 2, 4, 8} as a DCT scale). The channels-last
    layout is kept: torch's antialiased uint8 resize runs about 2x faster on it than on a
    contiguous (3, H, W) tensor. Raises SampleError on corrupt data."""
    width, height = size
    try:
        arr = simplejpeg.decode_jpeg(data, colorspace="RGB", min_height=-(-height // reduce),
                                     min_width=-(-width // reduce))
    except ValueError as exn:
        raise SampleError("undecodable_image", str(exn)[:200]) from None
    return torch.from_numpy(arr).permute(2, 0, 1)


def jpeg_decoder() -> str:
    """Which library decodes JPEGs here: "simplejpeg" (fastest), else "torchvision.io"/"PIL"."""
    return "simplejpeg" if simplejpeg is not None else "torchvision.io / PIL"


def _decode_jpeg_fast(data: bytes) -> torch.Tensor | None:
    """uint8 (3, H, W) from torchvision.io's decoder (same libjpeg-turbo output as PIL, one copy
    fewer); None when it is unavailable. Raises SampleError on corrupt data."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            from torchvision.io import ImageReadMode, decode_jpeg

            return decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8),
                               mode=ImageReadMode.RGB, apply_exif_orientation=True)
    except (ImportError, AttributeError):
        return None
    except RuntimeError as exn:
        raise SampleError("undecodable_image", str(exn)[-200:]) from None


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """Bytes of any supported image -> uint8 (3, H, W) RGB tensor at full resolution."""
    return load_rgb(open_image(data, max_pixels), data)[0]


def _label_value(value: object, num_classes: int | None, class_names: list[str] | None, shown: str) -> int:
    if isinstance(value, bool):
        raise SampleError("bad_label", shown)
    if isinstance(value, str):
        text = value.strip()
        try:
            value = int(text)
        except ValueError:
            if class_names and text in class_names:
                return class_names.index(text)
            raise SampleError("bad_label", shown) from None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int):
        raise SampleError("bad_label", shown)
    if value < 0 or (num_classes is not None and num_classes > 0 and value >= num_classes):
        raise SampleError("label_out_of_range", f"{value} outside [0, {num_classes})")
    return value


def parse_label(data: bytes | None, num_classes: int | None = None, class_names: list[str] | None = None) -> int:
    """ASCII class id (as in ``{key}.cls``; else a name that ``class_names`` holds) -> int >= 0.

    Raises SampleError("missing_label") when absent, SampleError("bad_label") when it is neither an
    integer nor a known class name, SampleError("label_out_of_range") when it is negative or not
    below ``num_classes`` (when known).
    """
    if data is None:
        raise SampleError("missing_label")
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise SampleError("bad_label", repr(data[:40])) from None
    return _label_value(text, num_classes, class_names, repr(data[:40]))


def json_label(data: bytes | None, label_key: str, num_classes: int | None = None,
               class_names: list[str] | None = None) -> int:
    """The label at dotted path ``label_key`` (``"meta.label"``) of a ``.json`` member -> int >= 0.

    The value may be an integer, an integer string, or else one of ``class_names``. Raises
    SampleError("missing_label") when the member or the field is absent, "bad_label" when it is
    not a label, "label_out_of_range" as :func:`parse_label`.
    """
    if data is None:
        raise SampleError("missing_label", "no .json member")
    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise SampleError("bad_label", "unreadable .json member") from None
    for part in label_key.split("."):
        if not isinstance(value, dict) or part not in value:
            found = sorted(value) if isinstance(value, dict) else type(value).__name__
            raise SampleError("missing_label", f".json has no {label_key!r} (at {part!r}: {found})")
        value = value[part]
    return _label_value(value, num_classes, class_names, f"{label_key}={value!r}"[:80])


def find_member(sample: dict[str, bytes], extensions: tuple[str, ...]) -> bytes | None:
    """The first member of a raw sample whose extension is in ``extensions`` (or None)."""
    for ext in extensions:
        if ext in sample:
            return sample[ext]
    return None
