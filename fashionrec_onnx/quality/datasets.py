"""Fashion-MNIST (Zalando, MIT licence): real labelled fashion images, read from IDX files.

The IDX files come from Debian's ``dataset-fashion-mnist`` package, Keras' dataset cache, or any
folder. A 1,000-image sample (100 per category) ships inside the package for the demo and tests.
Regenerate it with ``python -m fashionrec_onnx.quality.datasets``.
"""

from __future__ import annotations

import csv
import gzip
import logging
import os
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import CatalogError

log = logging.getLogger(__name__)

CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
SPLITS = {"train": "train", "test": "t10k"}
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
SAMPLE_DIR = Path(__file__).resolve().parents[1] / "data" / "fashion-mnist-sample"
LICENSE_TEXT = """\
Fashion-MNIST images: Copyright (c) 2017 Zalando SE
https://github.com/zalandoresearch/fashion-mnist

The MIT License (MIT)

Permission is hereby granted, free of charge, to any person obtaining a copy of this software
and associated documentation files (the "Software"), to deal in the Software without
restriction, including without limitation the rights to use, copy, modify, merge, publish,
distribute, sublicense, and/or sell copies of the Software, and to permit persons to whom the
Software is furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all copies or
substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED, INCLUDING
BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND
NONINFRINGEMENT. IN NO EVENT SHALL THE AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM,
DAMAGES OR OTHER LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE SOFTWARE.
"""


def slug(category: str) -> str:
    """A folder name for a category ("T-shirt/top" -> "t-shirt-top")."""
    return category.lower().replace("/", "-").replace(" ", "-")


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (optionally gzipped) into a uint8 array of its declared shape."""
    path = Path(path)
    opener: Callable = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            data = handle.read()
        zero, dtype, ndim = struct.unpack(">HBB", data[:4])
        if zero != 0 or dtype != 0x08:
            raise ValueError("not a uint8 IDX file")
        dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
        return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)
    except (OSError, ValueError, struct.error, EOFError) as exc:
        raise CatalogError(f"cannot read IDX file {path}: {exc}") from exc


def find_source(source: str | os.PathLike[str] | None = None) -> Path:
    """The first folder holding the IDX files: ``source``, Debian's, or Keras' cache."""
    keras_cache = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "datasets" / "fashion-mnist"
    candidates = [Path(source).expanduser()] if source else [DEBIAN_DIR, keras_cache]
    for folder in candidates:
        if any((folder / f"t10k-images-idx3-ubyte{ext}").exists() for ext in (".gz", "")):
            return folder
    where = ", ".join(str(c) for c in candidates)
    raise CatalogError(
        f"no Fashion-MNIST IDX files in {where}. Install the Debian package dataset-fashion-mnist, "
        "or pass --source DIR with t10k-images-idx3-ubyte.gz and the other IDX files."
    )


def load_split(split: str, source: str | os.PathLike[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(images (N, 28, 28) uint8, labels (N,) uint8)`` of the ``train`` or ``test`` split."""
    if split not in SPLITS:
        raise CatalogError(f"split must be one of {', '.join(SPLITS)}, not {split!r}")
    folder = find_source(source)
    prefix = SPLITS[split]

    def file(kind: str) -> Path:
        gz = folder / f"{prefix}-{kind}-ubyte.gz"
        return gz if gz.exists() else folder / f"{prefix}-{kind}-ubyte"

    images, labels = read_idx(file("images-idx3")), read_idx(file("labels-idx1"))
    if len(images) != len(labels):
        raise CatalogError(f"{folder}: {len(images)} images but {len(labels)} labels for {split}")
    return images, labels


def write_images(
    images: np.ndarray, labels: np.ndarray, folder: Path, split: str, offset: int = 0
) -> list[dict[str, str]]:
    """Write PNGs under ``folder/<category>/`` and return one metadata row per image."""
    rows = []
    for number, (image, label) in enumerate(zip(images, labels), start=offset):
        category = CLASSES[int(label)]
        key = f"{slug(category)}/{split}-{number:05d}.png"
        target = folder / key
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image, "L").save(target, optimize=True)
        rows.append({"key": key, "category": category, "label": str(int(label)), "split": split})
    return rows


def group_into_products(
    features: np.ndarray, categories: np.ndarray, *, largest: int = 4, seed: int = 0
) -> list[str]:
    """Product ids for a dataset that has none (Fashion-MNIST): within each category, images are
    taken in a seeded random order and each unassigned image starts a product of 1 to ``largest``
    photos (drawn uniformly) with its nearest unassigned neighbours by cosine similarity of
    ``features`` (pixels or embeddings). Deterministic for given inputs; ids are
    ``<category slug>-<number>``. Like a shop's several photos of one product, a product's
    photos look alike, so grouped search has real work to do."""
    rng = np.random.default_rng(seed)
    flat = np.asarray(features, np.float32).reshape(len(features), -1)
    flat = flat / np.maximum(np.linalg.norm(flat, axis=1, keepdims=True), 1e-12)
    ids = [""] * len(flat)
    for category in np.unique(categories):
        members = np.flatnonzero(categories == category)
        similarity = flat[members] @ flat[members].T
        free = np.ones(len(members), bool)
        name = (
            slug(CLASSES[int(category)]) if np.issubdtype(type(category), np.integer) else slug(str(category))
        )
        for number, first in enumerate(rng.permutation(len(members))):
            if not free[first]:
                continue
            free[first] = False
            near = np.flatnonzero(free)
            near = near[
                np.argsort(-similarity[first, near], kind="stable")[: int(rng.integers(1, largest + 1)) - 1]
            ]
            free[near] = False
            for position in (first, *near):
                ids[int(members[position])] = f"{name}-{number:05d}"
    return ids


def write_labels(rows: list[dict[str, str]], path: Path) -> None:
    fields = ["key", "category", "label", "split"] + (["product"] if rows and "product" in rows[0] else [])
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def export_split(
    folder: Path, split: str = "test", limit: int | None = None, source: str | os.PathLike[str] | None = None
) -> Path:
    """Write a split (``train``, ``test`` or ``all``) as PNG files plus ``labels.csv``."""
    splits = ["train", "test"] if split == "all" else [split]
    loaded = {name: load_split(name, source) for name in splits}  # before writing anything
    folder.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, str]] = []
    for name, (images, labels) in loaded.items():
        if limit is not None:
            images, labels = images[:limit], labels[:limit]
        rows += write_images(images, labels, folder, name)
    write_labels(rows, folder / "labels.csv")
    (folder / "LICENSE-fashion-mnist.txt").write_text(LICENSE_TEXT)
    return folder / "labels.csv"


def make_sample(
    folder: Path = SAMPLE_DIR, per_class: int = 100, source: str | os.PathLike[str] | None = None
) -> None:
    """The bundled sample: the first ``per_class`` test images of every category, with a
    ``product`` column: `group_into_products` on their pixels (Fashion-MNIST has no products)."""
    images, labels = load_split("test", source)
    picks = np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in range(len(CLASSES))])
    picks.sort()
    rows = []
    for index in picks:
        rows += write_images(images[index : index + 1], labels[index : index + 1], folder, "test", int(index))
    for row, product in zip(rows, group_into_products(images[picks], labels[picks])):
        row["product"] = product
    write_labels(rows, folder / "labels.csv")
    (folder / "LICENSE").write_text(LICENSE_TEXT)


def sample_dir() -> Path:
    """The bundled sample folder (images in category folders, ``labels.csv``, ``LICENSE``)."""
    if not (SAMPLE_DIR / "labels.csv").exists():
        raise CatalogError(f"the bundled sample is missing from {SAMPLE_DIR}; reinstall fashionrec-onnx.")
    return SAMPLE_DIR


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    make_sample()
    log.info("wrote the sample to %s", SAMPLE_DIR)
