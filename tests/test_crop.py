"""Crop: search for one region of a photo (the garment, not the street around it)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fashionrec_onnx import BadArgumentError, Catalog, Embedder, load_image
from fashionrec_onnx.cli import main
from fashionrec_onnx.quality.datasets import SAMPLE_DIR

DRESS = SAMPLE_DIR / "dress" / "test-00013.png"
BAG = sorted((SAMPLE_DIR / "bag").glob("*.png"))[0]
DRESS_BOX = (10, 20, 94, 104)  # where the dress is in the street photo


@pytest.fixture(scope="module")
def street(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A "street photo" (a dress and a bag on a noisy background) and its dress region as a file."""
    folder = tmp_path_factory.mktemp("street")
    rng = np.random.default_rng(0)
    canvas = Image.fromarray(rng.integers(0, 255, (130, 200, 3), dtype=np.uint8), "RGB")
    canvas.paste(Image.open(DRESS).convert("RGB").resize((84, 84)), DRESS_BOX[:2])
    canvas.paste(Image.open(BAG).convert("RGB").resize((84, 84)), (110, 30))
    photo = folder / "street.png"
    canvas.save(photo)
    cropped = folder / "dress-region.png"
    canvas.crop(DRESS_BOX).save(cropped)
    return photo, cropped


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory, small_model: Path) -> Catalog:
    """100 sample images (10 per category)."""
    folder = tmp_path_factory.mktemp("images")
    for category in sorted(p for p in SAMPLE_DIR.iterdir() if p.is_dir()):
        (folder / category.name).mkdir()
        for path in sorted(category.glob("*.png"))[:10]:
            (folder / category.name / path.name).write_bytes(path.read_bytes())
    catalog = Catalog.create(tmp_path_factory.mktemp("crop") / "catalog", small_model)
    catalog.index_folder(folder, progress=False)
    yield catalog
    catalog.close()


@pytest.fixture(scope="module")
def embedder(small_model: Path) -> Embedder:
    with Embedder(small_model) as embedder:
        yield embedder


def test_a_box_embeds_the_region_exactly_as_the_cropped_file(
    embedder: Embedder, street: tuple[Path, Path]
) -> None:
    photo, cropped = street
    region = embedder.embed_one(photo, box=DRESS_BOX)
    np.testing.assert_array_equal(region, embedder.embed_one(cropped))
    assert not np.array_equal(region, embedder.embed_one(photo))


def test_every_input_type_takes_a_box(embedder: Embedder, street: tuple[Path, Path]) -> None:
    photo, cropped = street
    expected = embedder.embed_one(cropped)
    pixels = np.asarray(Image.open(photo))
    for source in (str(photo), photo.read_bytes(), Image.open(photo), pixels):
        np.testing.assert_array_equal(embedder.embed_one(source, box=DRESS_BOX), expected)


def test_the_box_is_in_pixels_of_the_upright_image(embedder: Embedder, tmp_path: Path) -> None:
    """A phone photo stored on its side with an EXIF orientation: the box is in what viewers show."""
    upright = Image.open(DRESS).convert("RGB").resize((40, 60))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    sideways = tmp_path / "sideways.png"
    upright.transpose(Image.Transpose.ROTATE_90).save(sideways, exif=exif)  # stored 60 wide, 40 high
    assert load_image(sideways).size == (40, 60)
    box = (5, 10, 35, 55)  # bottom 55 is only inside the upright image
    expected = tmp_path / "expected.png"
    upright.crop(box).save(expected)
    np.testing.assert_array_equal(embedder.embed_one(sideways, box=box), embedder.embed_one(expected))


@pytest.mark.parametrize(
    "box",
    [(0, 0, 0, 10), (5, 0, 4, 10), (0, 9, 10, 9), (-1, 0, 10, 10), (0, 0, 10), (0.0, 0, 10, 10),
     (True, 0, 10, 10), "0,0,10,10", 5],
)  # fmt: skip
def test_a_malformed_box_is_refused_before_the_image_is_read(embedder: Embedder, box: object) -> None:
    with pytest.raises(BadArgumentError, match="box"):
        embedder.embed_one(io.BytesIO(b"never read"), box=box)  # type: ignore[arg-type]


def test_a_box_reaching_outside_the_image_names_the_image_size(
    embedder: Embedder, street: tuple[Path, Path]
) -> None:
    photo, _ = street
    with pytest.raises(BadArgumentError, match=r"reaches outside .*street.png, which is 200x130 pixels"):
        embedder.embed_one(photo, box=(150, 0, 201, 50))


def test_search_with_a_box_equals_search_with_the_cropped_file(
    catalog: Catalog, street: tuple[Path, Path]
) -> None:
    photo, cropped = street
    for method in (catalog.search, catalog.exact_search):
        assert method(photo, k=8, box=DRESS_BOX) == method(cropped, k=8)
    assert catalog.search(photo, k=8, box=DRESS_BOX) != catalog.search(photo, k=8)


def test_a_box_on_a_key_or_a_vector_is_refused(catalog: Catalog) -> None:
    key = catalog.keys()[0]
    with pytest.raises(BadArgumentError, match="is a key"):
        catalog.search(key, box=(0, 0, 5, 5))
    with pytest.raises(BadArgumentError, match="cannot apply to a catalog key or a vector"):
        catalog.search(catalog.vector(key), box=(0, 0, 5, 5))


def run(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    code = main([str(arg) for arg in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_box_searches_the_region(
    capsys: pytest.CaptureFixture[str], catalog: Catalog, street: tuple[Path, Path]
) -> None:
    photo, cropped = street
    box = ("--box", "10,20,94,104")
    code, out, err = run(capsys, "search", photo, "--catalog", catalog.path, *box, "--json")
    assert code == 0, err
    expected = run(capsys, "search", cropped, "--catalog", catalog.path, "--json")[1]
    assert json.loads(out) == json.loads(expected)


def test_cli_box_outside_the_image_is_one_error_line(
    capsys: pytest.CaptureFixture[str], catalog: Catalog, street: tuple[Path, Path]
) -> None:
    code, out, err = run(capsys, "search", street[0], "--catalog", catalog.path, "--box", "0,0,500,50")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("error: the box (0, 0, 500, 50) reaches outside")


@pytest.mark.parametrize("value", ["1,2,3", "a,b,c,d", "5,0,5,10", "-1,0,4,4"])
def test_cli_malformed_box_is_refused_by_argparse(
    capsys: pytest.CaptureFixture[str], catalog: Catalog, street: tuple[Path, Path], value: str
) -> None:
    code, out, err = run(capsys, "search", street[0], "--catalog", catalog.path, f"--box={value}")
    assert code == 2 and out == ""
    assert err.startswith("usage: fashionrec search") and "argument --box: " in err
