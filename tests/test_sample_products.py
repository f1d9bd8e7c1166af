"""The bundled sample's products: look-alike images of one category, 1-4 photos each."""

from __future__ import annotations

import csv
from collections import defaultdict

import numpy as np
from PIL import Image

from fashionrec_onnx.quality.datasets import SAMPLE_DIR, group_into_products


def _rows() -> list[dict[str, str]]:
    with (SAMPLE_DIR / "labels.csv").open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_every_sample_product_has_one_to_four_photos_of_one_category() -> None:
    products: dict[str, list[dict[str, str]]] = defaultdict(list)
    for row in _rows():
        products[row["product"]].append(row)
    assert {len(photos) for photos in products.values()} == {1, 2, 3, 4}
    assert all(len({row["category"] for row in photos}) == 1 for photos in products.values())


def test_the_shipped_products_are_what_group_into_products_gives_for_the_sample_images() -> None:
    shipped = _rows()
    pixels = np.stack([np.asarray(Image.open(SAMPLE_DIR / row["key"])) for row in shipped])
    labels = np.array([int(row["label"]) for row in shipped], np.uint8)
    assert group_into_products(pixels, labels) == [row["product"] for row in shipped]
