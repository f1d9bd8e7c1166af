"""Near-duplicates judged by pixels: copies at half size and with 1-3% cut off each side, which
random-weight embeddings miss (or confuse with look-alikes), are found by the default rule;
the thumbnails' side file is a cache (old catalogs, read-only opens, changed and damaged files)."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_duplicates import sample_folder

from fashionrec_onnx import Catalog
from fashionrec_onnx.catalog import thumbnails
from fashionrec_onnx.quality.evaluation import group_precision_recall

V2_CATALOGS = Path(__file__).parent / "data" / "v2-catalogs"


def downscaled(original: Path) -> Path:
    target = original.with_name(f"{original.stem}-half.png")
    image = Image.open(original).convert("RGB")
    image.resize((image.width // 2, image.height // 2), Image.Resampling.BICUBIC).save(target)
    return target


def cropped(original: Path, seed: int) -> Path:
    """The image at 4x with 1-3 pixels (0.9-2.7%) cut off each side, as the benchmark plants."""
    target = original.with_name(f"{original.stem}-crop.png")
    left, top, right, bottom = (int(v) for v in np.random.default_rng(seed).integers(1, 4, 4))
    large = Image.open(original).convert("RGB").resize((112, 112), Image.Resampling.BICUBIC)
    large.crop((left, top, 112 - right, 112 - bottom)).save(target)
    return target


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory, small_model: Path) -> tuple[Path, Path, set]:
    """300 sample images (30 a category: plenty of look-alikes), 40 with a half-size or a
    slightly cropped copy; the catalog indexed from the folder."""
    folder = tmp_path_factory.mktemp("pixels") / "images"
    originals = sample_folder(folder, 30)
    truth: set[tuple[str, str]] = set()
    for number, original in enumerate(originals[5::7][:40]):
        copy = downscaled(original) if number % 2 else cropped(original, number)
        keys = (original.relative_to(folder).as_posix(), copy.relative_to(folder).as_posix())
        truth.add(tuple(sorted(keys)))
    with Catalog.create(folder.parent / "catalog", small_model) as catalog:
        catalog.index_folder(folder, progress=False)
    return folder, folder.parent / "catalog", truth


def test_half_size_and_cropped_copies_are_found_by_default(planted: tuple[Path, Path, set]) -> None:
    _, root, truth = planted
    with Catalog.open(root) as catalog:
        report = catalog.duplicates()
        # the embeddings alone (the calibrated threshold the default used before) miss them
        before = catalog.duplicates(report.threshold)
        items = len(catalog)
    precision, recall = group_precision_recall((group.keys for group in report), truth)
    assert report.by_pixels == items and precision >= 0.95 and recall >= 0.95, (precision, recall)
    _, recall_before = group_precision_recall((group.keys for group in before), truth)
    assert recall_before < 0.8
    assert (root / thumbnails.FILE_NAME).is_file()


def test_the_second_run_reads_the_stored_thumbnails(
    planted: tuple[Path, Path, set], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, root, truth = planted
    with Catalog.open(root) as catalog:
        first = [group.keys for group in catalog.duplicates()]

        def no_reading(*args: object, **kwargs: object) -> None:
            raise AssertionError("an image was read although its thumbnail is stored")

        monkeypatch.setattr(thumbnails, "load_image", no_reading)
        assert [group.keys for group in catalog.duplicates()] == first


def test_a_changed_image_file_gets_a_new_thumbnail_when_indexed_again(
    planted: tuple[Path, Path, set], tmp_path: Path
) -> None:
    """The thumbnail follows the item as indexed, like its vector: a file changed since is
    judged as it was until `index` sees the change, then by its new pixels."""
    folder, root, truth = planted
    copy_root = Path(shutil.copytree(root, tmp_path / "catalog"))
    with Catalog.open(copy_root) as catalog:
        found = {key for group in catalog.duplicates() for key in group.keys}
        # a planted copy the rule finds (recall 0.95 may miss one or two), chosen the same way
        # in every process: a set of strings iterates in a per-process hash order
        planted_copies = (key for pair in sorted(truth) if set(pair) <= found for key in pair)
        copy = next(key for key in planted_copies if key.endswith(("-half.png", "-crop.png")))
        copy_path = catalog.image_path(copy)
        assert copy_path is not None
        saved, times = copy_path.read_bytes(), copy_path.stat()
        try:
            Image.new("RGB", Image.open(copy_path).size, (255, 255, 255)).save(copy_path)
            os.utime(copy_path, ns=(1, 1))  # a new time as well as new bytes
            assert copy in {key for group in catalog.duplicates() for key in group.keys}
            catalog.index_folder(folder, progress=False)
            assert copy not in {key for group in catalog.duplicates() for key in group.keys}
        finally:  # bytes and times back: the planted folder is shared by this module's tests
            copy_path.write_bytes(saved)
            os.utime(copy_path, ns=(times.st_atime_ns, times.st_mtime_ns))


def test_after_indexing_duplicates_opens_no_image_file(
    planted: tuple[Path, Path, set], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, small_model: Path
) -> None:
    """Indexing keeps each image's thumbnail (made from the pixels decoded for the model): the
    images folder moved away, `duplicates` gives the same answer, by pixels, reading nothing."""
    folder, _, truth = planted
    images = Path(shutil.copytree(folder, tmp_path / "images"))
    with Catalog.create(tmp_path / "catalog", small_model) as catalog:
        catalog.index_folder(images, progress=False)
        assert (catalog.path / thumbnails.FILE_NAME).is_file()
    images.rename(tmp_path / "moved")

    def no_reading(*args: object, **kwargs: object) -> None:
        raise AssertionError("an image was read although indexing kept its thumbnail")

    monkeypatch.setattr(thumbnails, "load_image", no_reading)
    with Catalog.open(tmp_path / "catalog", readonly=True) as catalog:
        report = catalog.duplicates()
        assert report.by_pixels == len(catalog)
    precision, recall = group_precision_recall((group.keys for group in report), truth)
    assert precision >= 0.95 and recall >= 0.95, (precision, recall)


def test_a_damaged_side_file_is_made_anew(planted: tuple[Path, Path, set], tmp_path: Path) -> None:
    _, root, truth = planted
    copy_root = Path(shutil.copytree(root, tmp_path / "catalog"))
    (copy_root / thumbnails.FILE_NAME).write_bytes(b"not a database" * 100)
    with Catalog.open(copy_root) as catalog:
        report = catalog.duplicates()
    precision, recall = group_precision_recall((group.keys for group in report), truth)
    assert precision >= 0.95 and recall >= 0.95
    with Catalog.open(copy_root) as catalog:
        assert catalog.duplicates().by_pixels == len(catalog)


def test_a_read_only_catalog_compares_pixels_without_writing(
    planted: tuple[Path, Path, set], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _, root, truth = planted
    copy_root = Path(shutil.copytree(root, tmp_path / "catalog"))
    (copy_root / thumbnails.FILE_NAME).unlink(missing_ok=True)
    logged = caplog.at_level(logging.INFO, logger="fashionrec_onnx.catalog.thumbnails")
    with logged, Catalog.open(copy_root, readonly=True) as catalog:
        report = catalog.duplicates()
    precision, recall = group_precision_recall((group.keys for group in report), truth)
    assert precision >= 0.95 and recall >= 0.95
    assert not (copy_root / thumbnails.FILE_NAME).exists()
    assert f"{report.by_pixels} images read for their thumbnails, not kept" in caplog.text


def test_cli_duplicates_answers_from_a_catalog_it_does_not_write(
    planted: tuple[Path, Path, set], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`fashionrec duplicates` opens the catalog read-only: with the thumbnails kept at indexing
    or without them (read for the run), the same groups, and no file of the catalog changes."""
    from fashionrec_onnx.cli import main

    _, root, truth = planted
    copy_root = Path(shutil.copytree(root, tmp_path / "catalog"))
    answers = []
    for side_file in (True, False):
        if not side_file:
            (copy_root / thumbnails.FILE_NAME).unlink()
        before = {
            p.name: p.stat().st_mtime_ns
            for p in copy_root.iterdir()
            if p.suffix in (".sqlite", ".float32", ".hnsw")
        }
        assert main(["duplicates", "--catalog", str(copy_root), "--json"]) == 0
        answers.append(json.loads(capsys.readouterr().out))
        after = {p.name: p.stat().st_mtime_ns for p in copy_root.iterdir()}
        assert {name: after.get(name) for name in before} == before  # SQLite's -wal/-shm may appear
        assert side_file or thumbnails.FILE_NAME not in after
    assert answers[0] == answers[1] and answers[0]["judged_by_pixels"] == answers[0]["items"]


def test_a_catalog_written_before_thumbnails_falls_back_to_the_embeddings(tmp_path: Path) -> None:
    """The v2 fixture (vectors without image paths, no side file): the default is the calibrated
    embedding threshold, as before, and nothing is written."""
    root = shutil.copytree(V2_CATALOGS / "float32", tmp_path / "catalog")
    expected = json.loads((root / "expected.json").read_text())
    with Catalog.open(root) as catalog:
        report = catalog.duplicates()
        explicit = catalog.duplicates(report.threshold)
        assert len(catalog) == expected["items"]
    assert report.calibrated and report.by_pixels == 0
    assert [group.keys for group in report] == [group.keys for group in explicit]
    assert not (root / thumbnails.FILE_NAME).exists()


def test_same_photo_tells_a_half_size_copy_from_its_look_alike() -> None:
    """The rule on two sample trousers of one template: the copy passes, the other does not."""
    from fashionrec_onnx.quality.datasets import SAMPLE_DIR

    paths = sorted((SAMPLE_DIR / "trouser").glob("*.png"))[:40]
    images = [thumbnails.thumbnail(Image.open(p)) for p in paths]
    half = [thumbnails.thumbnail(Image.open(p).resize((14, 14), Image.Resampling.BICUBIC)) for p in paths]
    assert all(thumbnails.same_photo(image, copy) for image, copy in zip(images, half))
    strangers = sum(
        thumbnails.same_photo(images[i], half[j])
        for i in range(len(paths))
        for j in range(len(paths))
        if i != j
    )
    assert strangers == 0


def test_the_batched_rule_gives_the_per_pair_answers(planted: tuple[Path, Path, set]) -> None:
    """`pixel_pairs.same_photos` (matrices over stacked pairs) against `same_photo` one pair at a
    time: on every candidate pair of the fixture, and on odd sizes (wide, tall, tiny, a crop)."""
    from fashionrec_onnx.catalog import duplicates, pixel_pairs
    from fashionrec_onnx.catalog.local_duplicates import LocalSource

    _, root, truth = planted
    with Catalog.open(root) as catalog:
        core = catalog._core
        found = duplicates.neighbour_pairs(LocalSource(core), duplicates.NEIGHBOURS)
        items = core.store.items_by_label(core.liveness.labels().tolist())
        with thumbnails.Thumbnails(core.root, readonly=True).signals(list(items.values())) as signals:
            pairs = duplicates.compared_pairs(
                found.size, found.first, found.second, signals, duplicates.NEIGHBOURS
            )
            held = signals.pixels(np.unique(pairs).tolist())
    labels = sorted(held)
    thumbs = [held[label] for label in labels]
    first, second = np.searchsorted(labels, pairs[:, 0]), np.searchsorted(labels, pairs[:, 1])
    batched = pixel_pairs.same_photos(thumbs, first, second)
    one_by_one = [thumbnails.same_photo(thumbs[a], thumbs[b]) for a, b in zip(first, second)]
    assert len(pairs) > 100 and batched.sum() >= 0.9 * len(truth)
    assert batched.tolist() == one_by_one
    rng = np.random.default_rng(0)
    odd = [
        rng.integers(0, 256, shape).astype(np.uint8)
        for shape in [(64, 23), (17, 64), (1, 1), (2, 5), (64, 64)]
    ]
    odd.append(np.asarray(Image.fromarray(odd[-1]).crop((1, 2, 62, 63))))
    everything = np.array([(a, b) for a in range(len(odd)) for b in range(len(odd))])
    batched = pixel_pairs.same_photos(odd, everything[:, 0], everything[:, 1])
    assert batched.tolist() == [thumbnails.same_photo(odd[a], odd[b]) for a, b in everything]


def test_an_image_added_alone_keeps_its_thumbnail(
    tmp_path: Path, small_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`Catalog.add` of one image file keeps its thumbnail (`keep_files`) as folder indexing does,
    so `duplicates` reads nothing while the file is unchanged."""
    from fashionrec_onnx.quality.datasets import SAMPLE_DIR

    paths = sorted(SAMPLE_DIR.glob("*/*.png"))[:3]
    with Catalog.create(tmp_path / "catalog", small_model) as catalog:
        for number, path in enumerate(paths):
            catalog.add(f"item-{number}", path)

        def no_reading(*args: object, **kwargs: object) -> None:
            raise AssertionError("an image was read although its thumbnail is kept")

        monkeypatch.setattr(thumbnails, "load_image", no_reading)
        assert catalog.duplicates().by_pixels == 3
