"""Turn whatever users have (paths, bytes, uploads, PIL images, arrays) into model-ready pixels.

Shop photos come in every size, mode and state of repair. Everything here either returns an
RGB image or raises ``ImageLoadError`` naming the source and the reason: a bad file never takes
the process down.
"""

from __future__ import annotations

import io
import logging
import os
import stat
import struct
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any, BinaryIO, cast

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from .errors import BadArgumentError, ImageLoadError

log = logging.getLogger(__name__)

Source = str | os.PathLike[str] | bytes | bytearray | BinaryIO | Image.Image | np.ndarray
Box = tuple[int, int, int, int]

DEFAULT_MAX_PIXELS = 64_000_000
# No photo file is this large; a bigger "image" (or /dev/zero) would only exhaust memory.
MAX_FILE_BYTES = 256 * 1024 * 1024
"""Decompression-bomb guard: 64 MP covers any phone or studio photo (a 200 MP sensor needs more)."""

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"})
WHITE = (255, 255, 255)
_RESAMPLE = Image.Resampling.BILINEAR

# A truncated file must be an error, not a half-grey image.
ImageFile.LOAD_TRUNCATED_IMAGES = False


def describe(source: object) -> str:
    """A short name for a source, for error messages and skip reports."""
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    if isinstance(source, (bytes, bytearray)):
        return f"<{len(source)} bytes>"
    if isinstance(source, Image.Image):
        return f"<PIL image {source.mode} {source.width}x{source.height}>"
    if isinstance(source, np.ndarray):
        return f"<array {source.dtype} {'x'.join(map(str, source.shape))}>"
    name = getattr(source, "name", None)
    return f"<file {name}>" if isinstance(name, str) else f"<{type(source).__name__}>"


def load_image(
    source: Source,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    draft_size: int | None = None,
) -> Image.Image:
    """Decode ``source`` to an upright RGB image.

    ``draft_size`` lets JPEGs decode at a reduced scale (never below that size on either side),
    which is most of the cost of ingesting large photos. ``max_pixels=None`` disables the guard.
    """
    name = describe(source)
    if isinstance(source, np.ndarray):
        return _from_array(source, name, max_pixels)
    if isinstance(source, Image.Image):
        _check_pixels(source.size, name, max_pixels)
        return _to_rgb(_upright(source, name), name)
    return _decode(_read_bytes(source, name), name, max_pixels, draft_size)


def prepare_image(image: Image.Image, size: int, resize: str = "squash") -> np.ndarray:
    """Fit an RGB image to the model input as uint8 ``(size, size, 3)``.

    ``squash`` stretches to a square like Keras' ``load_img(target_size=...)`` (bilinear, where
    Keras defaults to nearest, which aliases badly on large photos); ``pad`` first pads to a
    white square, keeping the garment's proportions.
    """
    if resize == "pad":
        side = max(image.size)
        canvas = Image.new("RGB", (side, side), WHITE)
        canvas.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
        image = canvas
    elif resize != "squash":
        raise ValueError(f"resize must be 'squash' or 'pad', not {resize!r}")
    if image.size != (size, size):
        image = image.resize((size, size), _RESAMPLE)
    return np.asarray(image, dtype=np.uint8)


def check_box(box: object) -> Box:
    """``(left, top, right, bottom)`` as four whole numbers with left < right and top < bottom:
    what can be checked before the image is decoded."""
    try:
        values = tuple(cast("Iterable[Any]", box))  # anything else raises TypeError, caught here
    except TypeError:
        values = ()
    whole = all(isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) for v in values)
    if len(values) != 4 or not whole:
        raise BadArgumentError(
            f"a box is four whole numbers of pixels (left, top, right, bottom), got {box!r}"
        )
    left, top, right, bottom = (int(v) for v in values)
    if min(left, top) < 0 or left >= right or top >= bottom:
        raise BadArgumentError(
            f"the box {(left, top, right, bottom)} is empty or has a negative corner; it needs "
            "0 <= left < right and 0 <= top < bottom (pixels of the upright image)"
        )
    return left, top, right, bottom


def parse_box(text: str) -> Box:
    """``"LEFT,TOP,RIGHT,BOTTOM"`` (a command-line argument, a form field) as a checked box."""
    try:
        numbers = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise BadArgumentError(
            f"a box is four whole numbers LEFT,TOP,RIGHT,BOTTOM, got {text[:40]!r}"
        ) from None
    return check_box(numbers)


def crop(image: Image.Image, box: object, name: str = "the image") -> Image.Image:
    """The region ``box`` of an upright image; a box reaching outside it is refused, not clipped
    (a silently clipped box would search for something the caller did not point at)."""
    left, top, right, bottom = check_box(box)
    if right > image.width or bottom > image.height:
        raise BadArgumentError(
            f"the box {(left, top, right, bottom)} reaches outside {name}, which is "
            f"{image.width}x{image.height} pixels upright (after its EXIF orientation); keep "
            f"right <= {image.width} and bottom <= {image.height}"
        )
    return image.crop((left, top, right, bottom))


def _read_bytes(source: Source, name: str) -> bytes:
    if isinstance(source, (bytes, bytearray)):
        data = bytes(source)
    elif isinstance(source, (str, os.PathLike)):
        data = _read_file(Path(source).expanduser(), name)
    elif hasattr(source, "read"):
        try:
            data = source.read()
        except OSError as exc:
            raise ImageLoadError(name, f"cannot read ({exc})") from None
        if not isinstance(data, (bytes, bytearray)):
            raise ImageLoadError(name, "file object must be opened in binary mode")
    else:
        raise ImageLoadError(
            name, "unsupported input type; pass a path, bytes, a binary file, a PIL image or an array"
        )
    if not data:
        raise ImageLoadError(name, "empty (0 bytes)")
    return bytes(data)


def _read_file(path: Path, name: str) -> bytes:
    """A regular file's bytes. Devices, FIFOs and sockets are refused before they are opened
    (reading one could block forever or never end), and so is a file too large to be a photo."""
    try:
        info = path.stat()
        if stat.S_ISDIR(info.st_mode):
            raise ImageLoadError(name, "is a directory, not an image file")
        if not stat.S_ISREG(info.st_mode):
            raise ImageLoadError(name, "not a regular file")
        if info.st_size > MAX_FILE_BYTES:
            raise ImageLoadError(name, f"file of {info.st_size:,} bytes is larger than {MAX_FILE_BYTES:,}")
        with path.open("rb") as handle:
            return handle.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise ImageLoadError(name, "file not found") from None
    except OSError as exc:
        raise ImageLoadError(name, f"cannot read file ({exc.strerror or exc})") from None


def _decode(data: bytes, name: str, max_pixels: int | None, draft_size: int | None) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            _check_pixels(image.size, name, max_pixels)
            if getattr(image, "n_frames", 1) > 1:
                image.seek(0)  # animated GIF/WebP/TIFF: the first frame is the product shot
            if draft_size and image.format == "JPEG":
                image.draft("RGB", (draft_size, draft_size))
            image.load()
    except ImageLoadError:
        raise
    except UnidentifiedImageError:
        raise ImageLoadError(name, "not an image (unrecognised format)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageLoadError(name, f"too large ({exc})") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError) as exc:
        text = str(exc) or type(exc).__name__
        reason = "truncated" if "truncat" in text.lower() else "corrupt"
        raise ImageLoadError(name, f"{reason} image data ({text})") from None
    except MemoryError:
        raise ImageLoadError(name, "too large to decode in memory") from None
    return _to_rgb(_upright(image, name), name)


def _check_pixels(size: tuple[int, int], name: str, max_pixels: int | None) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise ImageLoadError(name, f"empty image ({width}x{height} pixels)")
    if max_pixels is not None and width * height > max_pixels:
        raise ImageLoadError(
            name,
            f"too large: {width}x{height} = {width * height:,} pixels exceeds the limit of "
            f"{max_pixels:,} (raise max_pixels if this is a real photo)",
        )


def _upright(image: Image.Image, name: str) -> Image.Image:
    """Apply the EXIF orientation phones write instead of rotating pixels."""
    try:
        return ImageOps.exif_transpose(image)
    except Exception as exc:  # broken EXIF blocks should not lose an otherwise good photo
        log.warning("ignoring unreadable EXIF orientation of %s: %s", name, exc)
        return image


def _to_rgb(image: Image.Image, name: str) -> Image.Image:
    mode = image.mode
    try:
        if mode == "RGB":
            return image
        if mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode == "P" and "transparency" in image.info):
            rgba = image.convert("RGBA")
            background = Image.new("RGBA", rgba.size, WHITE + (255,))
            return Image.alpha_composite(background, rgba).convert("RGB")
        if mode.startswith("I") or mode == "F":
            return Image.fromarray(_to_uint8(np.asarray(image)), "L").convert("RGB")
        return image.convert("RGB")
    except (OSError, ValueError) as exc:
        raise ImageLoadError(name, f"unsupported image mode {mode} ({exc})") from None


def _to_uint8(values: np.ndarray) -> np.ndarray:
    """Scale 16/32-bit or float pixels to 0-255 by their type's range, not by clipping."""
    values = values.astype(np.float64)
    top = float(values.max()) if values.size else 0.0
    if top <= 1.0 and values.min() >= 0.0:
        scale = 255.0  # float images in [0, 1]
    elif top <= 255.0:
        scale = 1.0
    elif top <= 65535.0:
        scale = 255.0 / 65535.0
    else:
        scale = 255.0 / top
    pixels: np.ndarray = np.clip(values * scale, 0, 255).round().astype(np.uint8)
    return pixels


def _from_array(array: np.ndarray, name: str, max_pixels: int | None) -> Image.Image:
    if array.dtype != np.uint8:
        raise ImageLoadError(name, f"arrays must be uint8 (0-255), got {array.dtype}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim == 2:
        mode = "L"
    elif array.ndim == 3 and array.shape[2] in (3, 4):
        mode = "RGB" if array.shape[2] == 3 else "RGBA"
    else:
        raise ImageLoadError(name, "arrays must be HxW, HxWx3 (RGB) or HxWx4 (RGBA)")
    _check_pixels((array.shape[1], array.shape[0]), name, max_pixels)
    return _to_rgb(Image.fromarray(np.ascontiguousarray(array), mode), name)
