"""Metadata that does not match is never silent: how many rows matched an image, which rows fit
none (with their line), which fit several (given to none), and the rule that decides."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fashionrec_onnx import Catalog
from fashionrec_onnx.cli import main
from fashionrec_onnx.feeds.metadata_match import RULE, match_metadata
from fashionrec_onnx.feeds.scan import read_metadata

SKUS = ["SKU-100", "SKU-101", "SKU-102"]
PHOTOS = [f"{sku}/{side}.png" for sku in SKUS for side in ("front", "back")]


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.fixture()
def shop(tmp_path: Path) -> Path:
    """A folder per SKU, a front and a back photo in each (the issue's user case)."""
    rng = np.random.default_rng(0)
    for relative in PHOTOS:
        (tmp_path / "shop" / relative).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "shop" / relative)
    return tmp_path / "shop"


def test_rows_keyed_by_product_folder_match_no_image_and_the_report_says_what_keys_look_like(
    tmp_path: Path,
) -> None:
    rows = read_metadata(write_csv(tmp_path / "p.csv", "sku,colour\n" + "".join(f"{s},red\n" for s in SKUS)))
    values, report = match_metadata(rows, PHOTOS)
    assert values == {} and report.problem
    assert (report.rows, report.matched_rows, report.unmatched_count) == (3, 0, 3)
    assert report.key_column == "sku" and [str(row) for row in report.unmatched] == [
        "line 2: 'SKU-100'", "line 3: 'SKU-101'", "line 4: 'SKU-102'"
    ]  # fmt: skip
    text = "\n".join(report.lines())
    assert "0 matched an image" in text and "'SKU-100/front.png'" in text and RULE in text
    assert "3 row keys name folders ('SKU-100'), not images" in text


def test_a_row_that_fits_several_images_is_given_to_none_and_listed_with_them(tmp_path: Path) -> None:
    rows = read_metadata(write_csv(tmp_path / "m.csv", "key,view\nfront,front view\nSKU-100/back.png,back\n"))
    values, report = match_metadata(rows, PHOTOS)
    assert values == {"SKU-100/back.png": {"view": "back"}}
    assert report.problem and report.ambiguous_count == 1 and report.matched_rows == 1
    ambiguous = report.ambiguous[0]
    assert str(ambiguous.row) == "line 2: 'front'" and ambiguous.count == 3
    assert "row line 2: 'front' fits 3 images (SKU-100/front.png, SKU-101/front.png, SKU-102/front.png)" in (
        "\n".join(report.lines())
    )


def test_a_row_naming_the_relative_path_wins_over_a_row_naming_the_file(tmp_path: Path) -> None:
    rows = read_metadata(write_csv(tmp_path / "m.csv", "key,view\nfront.png,any\nSKU-101/front.png,this\n"))
    values, report = match_metadata(rows, PHOTOS)
    assert values["SKU-101/front.png"] == {"view": "this"}
    assert report.ambiguous[0].count == 2  # front.png still fits the two other fronts


def test_rows_that_all_match_are_no_problem_and_images_without_a_row_are_counted(tmp_path: Path) -> None:
    rows = read_metadata(write_csv(tmp_path / "m.csv", "key,view\nSKU-100/front.png,a\nSKU-101/back.png,b\n"))
    values, report = match_metadata(rows, PHOTOS)
    assert len(values) == 2 and not report.problem
    assert (report.matched_rows, report.images_without_row) == (2, 4)


def test_index_folder_puts_the_match_in_the_report_and_copies_no_ambiguous_row(
    tmp_path: Path, small_model: Path, shop: Path
) -> None:
    metadata = write_csv(tmp_path / "m.csv", "key,view\nfront,front view\nSKU-100/back.png,back\nnope,x\n")
    with Catalog.create(tmp_path / "c", small_model) as catalog:
        report = catalog.index_folder(shop, metadata=metadata, progress=False)
        assert report.added == 6 and report.metadata is not None
        assert (report.metadata.matched_rows, report.metadata.ambiguous_count) == (1, 1)
        assert [row.key for row in report.metadata.unmatched] == ["nope"]
        assert catalog.get("SKU-100/back.png").metadata == {"view": "back"}
        assert catalog.get("SKU-101/front.png").metadata == {}


def test_cli_index_with_rows_keyed_by_sku_exits_1_and_says_no_row_matched(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, small_model: Path, shop: Path
) -> None:
    metadata = write_csv(tmp_path / "products.csv", "sku,colour\n" + "".join(f"{s},red\n" for s in SKUS))
    code = main(
        ["index", str(shop), "--catalog", str(tmp_path / "c"), "--model", str(small_model),
         "--metadata", str(metadata), "--quiet"]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 1
    assert f"metadata {metadata} 3 rows, keyed by column 'sku': 0 matched an image" in out
    assert "rows matching no image: line 2: 'SKU-100', line 3: 'SKU-101', line 4: 'SKU-102'" in out
    assert "the images' relative paths look like 'SKU-100/back.png'" in out


def test_cli_index_with_an_ambiguous_row_exits_1_and_names_its_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, small_model: Path, shop: Path
) -> None:
    metadata = write_csv(tmp_path / "views.csv", "key,view\nSKU-100/back.png,back\nfront,front view\n")
    code = main(
        ["index", str(shop), "--catalog", str(tmp_path / "c"), "--model", str(small_model),
         "--metadata", str(metadata), "--quiet"]
    )  # fmt: skip
    assert code == 1
    assert "row line 3: 'front' fits 3 images" in capsys.readouterr().out
