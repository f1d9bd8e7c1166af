"""Image loading: every input type and mode becomes upright RGB, every broken input a clear error."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fashionrec_onnx import ImageLoadError, load_image, prepare_image


def png_bytes(image: Image.Image, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG", **params)
    return buffer.getvalue()


def jpeg_bytes(image: Image.Image, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=92, **params)
    return buffer.getvalue()


@pytest.fixture()
def photo() -> Image.Image:
    """A small photo-like RGB image: a gradient with a dark garment-shaped block."""
    y, x = np.mgrid[0:60, 0:40]
    pixels = np.stack([x * 6, y * 4, 255 - x * 6], -1).astype(np.uint8)
    pixels[15:50, 10:30] = (40, 60, 90)
    return Image.fromarray(pixels, "RGB")


# --- input types -------------------------------------------------------------------------------


def test_every_input_type_gives_the_same_pixels(tmp_path: Path, photo: Image.Image) -> None:
    path = tmp_path / "photo.png"
    path.write_bytes(png_bytes(photo))
    expected = np.asarray(photo)
    with path.open("rb") as handle:
        sources = [
            str(path),
            path,
            path.read_bytes(),
            bytearray(path.read_bytes()),
            io.BytesIO(path.read_bytes()),
            handle,
            photo,
            expected,
            np.dstack([expected, np.full(expected.shape[:2], 255, np.uint8)]),  # opaque RGBA array
        ]
        for source in sources:
            image = load_image(source)
            assert image.mode == "RGB"
            np.testing.assert_array_equal(np.asarray(image), expected, err_msg=type(source).__name__)


def test_grayscale_array_becomes_three_equal_channels() -> None:
    gray = np.arange(256, dtype=np.uint8).reshape(16, 16)
    rgb = np.asarray(load_image(gray))
    assert rgb.shape == (16, 16, 3)
    for channel in range(3):
        np.testing.assert_array_equal(rgb[..., channel], gray)


@pytest.mark.parametrize(
    "array, reason",
    [
        (np.zeros((10, 10, 3), np.float32), "uint8"),
        (np.zeros((10, 10, 2), np.uint8), "HxW"),
        (np.zeros((2, 10, 10, 3), np.uint8), "HxW"),
        (np.zeros((0, 10, 3), np.uint8), "empty"),
    ],
)
def test_unusable_arrays_are_refused(array: np.ndarray, reason: str) -> None:
    with pytest.raises(ImageLoadError, match=reason):
        load_image(array)


def test_unsupported_source_type_is_refused() -> None:
    with pytest.raises(ImageLoadError, match="unsupported input type"):
        load_image(12345)  # type: ignore[arg-type]


def test_text_mode_file_object_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.png"
    path.write_text("hello")
    with path.open("r") as handle, pytest.raises(ImageLoadError, match="binary mode"):
        load_image(handle)  # type: ignore[arg-type]


# --- modes -------------------------------------------------------------------------------------


def test_rgba_is_composited_on_white() -> None:
    pixels = np.zeros((4, 4, 4), np.uint8)
    pixels[..., 0] = 255  # red...
    pixels[:2, :, 3] = 0  # ...transparent on top
    pixels[2:, :, 3] = 255  # ...opaque below
    rgb = np.asarray(load_image(png_bytes(Image.fromarray(pixels, "RGBA"))))
    assert (rgb[:2] == 255).all()
    assert (rgb[2:] == (255, 0, 0)).all()


def test_la_half_transparent_black_becomes_mid_grey() -> None:
    image = Image.new("LA", (4, 4), (0, 128))
    rgb = np.asarray(load_image(png_bytes(image)))
    assert np.all(np.abs(rgb.astype(int) - 127) <= 1)


def test_palette_with_transparency_shows_white_where_transparent() -> None:
    image = Image.new("P", (4, 4), 0)
    image.putpalette([0, 0, 255] + [255, 0, 0] * 255)
    image.putpixel((0, 0), 1)
    rgb = np.asarray(load_image(png_bytes(image, transparency=0)))
    assert tuple(rgb[0, 0]) == (255, 0, 0)
    assert tuple(rgb[3, 3]) == (255, 255, 255)


def test_palette_without_transparency_keeps_its_colours() -> None:
    image = Image.new("P", (4, 4), 0)
    image.putpalette([10, 20, 30] + [0] * 765)
    assert tuple(np.asarray(load_image(png_bytes(image)))[1, 1]) == (10, 20, 30)


def test_cmyk_jpeg_is_converted() -> None:
    image = Image.new("CMYK", (8, 8), (0, 0, 0, 0))  # no ink: white
    rgb = np.asarray(load_image(jpeg_bytes(image)))
    assert rgb.shape == (8, 8, 3) and rgb.min() >= 240


def test_sixteen_bit_greyscale_is_scaled_not_clipped() -> None:
    values = np.array([[0, 32896, 65535]], np.uint16)
    image = Image.fromarray(values, "I;16")
    rgb = np.asarray(load_image(png_bytes(image)))
    assert list(rgb[0, :, 0]) == [0, 128, 255]


def test_one_bit_image_is_black_and_white() -> None:
    image = Image.new("1", (4, 2), 0)
    image.putpixel((3, 1), 1)
    rgb = np.asarray(load_image(png_bytes(image)))
    assert tuple(rgb[0, 0]) == (0, 0, 0) and tuple(rgb[1, 3]) == (255, 255, 255)


def test_animated_gif_uses_the_first_frame() -> None:
    frames = [Image.new("RGB", (8, 8), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    rgb = np.asarray(load_image(buffer.getvalue()))
    assert rgb[4, 4, 0] > 200 and rgb[4, 4, 2] < 50


def test_exif_orientation_is_applied() -> None:
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20] = (255, 0, 0)  # left half red
    pixels[:, 20:] = (0, 0, 255)  # right half blue
    image = Image.fromarray(pixels, "RGB")
    exif = Image.Exif()
    exif[0x0112] = 6  # the camera was turned: rotate 90 degrees clockwise to view
    upright = np.asarray(load_image(jpeg_bytes(image, exif=exif.tobytes())))
    assert upright.shape == (40, 20, 3)
    assert upright[5, 10, 0] > 200 and upright[5, 10, 2] < 60  # left half is now on top
    assert upright[35, 10, 2] > 200 and upright[35, 10, 0] < 60


# --- size guards and JPEG draft ------------------------------------------------------------------


def test_pixel_limit_refuses_large_images_with_advice(photo: Image.Image) -> None:
    with pytest.raises(ImageLoadError, match="too large.*max_pixels"):
        load_image(png_bytes(photo), max_pixels=1000)
    assert load_image(png_bytes(photo), max_pixels=None).size == photo.size


def huge_declared_png() -> bytes:
    """A valid PNG signature and header claiming 100000 x 100000 pixels, with no real data."""
    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + header
    ihdr = struct.pack(">I", len(header)) + chunk + struct.pack(">I", zlib.crc32(chunk))
    data = zlib.compress(b"\x00" * 100)
    idat = struct.pack(">I", len(data)) + b"IDAT" + data + struct.pack(">I", zlib.crc32(b"IDAT" + data))
    return b"\x89PNG\r\n\x1a\n" + ihdr + idat


def test_jpeg_draft_decodes_large_photos_at_reduced_size_but_never_below_the_target() -> None:
    big = Image.fromarray(np.random.default_rng(0).integers(0, 255, (1500, 1000, 3), np.uint8))
    data = jpeg_bytes(big)
    reduced = load_image(data, draft_size=224)
    assert reduced.width < 1000 and reduced.height < 1500
    assert min(reduced.size) >= 224
    assert load_image(data).size == (1000, 1500)


# --- broken inputs -------------------------------------------------------------------------------


@pytest.fixture()
def broken_corpus(tmp_path: Path, photo: Image.Image) -> dict[str, tuple[Path, str]]:
    """Files users really upload, each with a word its error message must contain."""
    big = photo.resize((400, 600))
    jpeg, png = jpeg_bytes(big), png_bytes(big)
    files = {
        "empty.jpg": (b"", "empty"),
        "truncated.jpg": (jpeg[: len(jpeg) // 2], "truncated"),
        "truncated.png": (png[: len(png) // 2], "truncated"),
        "notes.jpg": (b"this is a text file, not a photo\n" * 5, "not an image"),
        "noise.png": (np.random.default_rng(1).bytes(4096), "not an image"),
        "bomb.png": (huge_declared_png(), "too large"),
    }
    corpus = {}
    for name, (data, reason) in files.items():
        path = tmp_path / name
        path.write_bytes(data)
        corpus[name] = (path, reason)
    return corpus


def test_every_broken_input_raises_image_load_error_naming_source_and_reason(
    broken_corpus: dict[str, tuple[Path, str]],
) -> None:
    for name, (path, reason) in broken_corpus.items():
        with pytest.raises(ImageLoadError) as caught:
            load_image(path)
        assert isinstance(caught.value, ValueError)
        message = str(caught.value)
        assert name in message and reason in message, message
        with pytest.raises(ImageLoadError, match=reason):
            load_image(path.read_bytes())


def test_missing_file_and_directory_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ImageLoadError, match="file not found"):
        load_image(tmp_path / "gone.jpg")
    with pytest.raises(ImageLoadError, match="directory"):
        load_image(tmp_path)


# --- resize --------------------------------------------------------------------------------------


def test_squash_stretches_to_the_square_input(photo: Image.Image) -> None:
    pixels = prepare_image(photo, 32, "squash")
    assert pixels.shape == (32, 32, 3) and pixels.dtype == np.uint8


def test_pad_keeps_proportions_with_white_borders() -> None:
    wide = Image.new("RGB", (80, 20), (0, 0, 0))
    pixels = prepare_image(wide, 40, "pad")
    assert pixels.shape == (40, 40, 3)
    assert (pixels[0] == 255).all() and (pixels[-1] == 255).all()  # padding top and bottom
    assert (pixels[20, 5:35] < 10).all()  # the garment itself in the middle


def test_unknown_resize_method_is_refused(photo: Image.Image) -> None:
    with pytest.raises(ValueError, match="squash"):
        prepare_image(photo, 32, "crop")


def test_special_files_are_refused_without_being_read(tmp_path: Path) -> None:
    """A device that never ends or a FIFO that never answers must not hang or exhaust memory."""
    import os

    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    for special in ("/dev/zero", str(fifo)):
        with pytest.raises(ImageLoadError, match="not a regular file"):
            load_image(special)
