"""Near-duplicates: copies planted in a real catalog are found through the graph, and a
collapsed search shows one image per group."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fashionrec_onnx import BadArgumentError, Catalog
from fashionrec_onnx.cli import main
from fashionrec_onnx.quality.datasets import SAMPLE_DIR
from fashionrec_onnx.quality.evaluation import group_precision_recall, pair_precision_recall, pairs_of_groups

# Measured on this set (200 sample images, 30 planted copies, the 64 px test model with random
# weights): recall 1.0 and precision 1.0 at the calibrated threshold. The floors leave room for
# another onnxruntime or hnswlib build. Slight crops are not found with random weights (see the
# duplicates benchmark), so none is planted here.
RECALL_FLOOR = 0.9
PRECISION_FLOOR = 0.9


def plant(original: Path, kind: str) -> Path:
    """A near-duplicate of ``original`` next to it: JPEG-recompressed, resized or re-saved."""
    image = Image.open(original).convert("RGB")
    if kind == "jpeg":
        target = original.with_name(f"{original.stem}-copy.jpg")
        image.save(target, quality=70)
    elif kind == "resized":
        target = original.with_name(f"{original.stem}-large.png")
        image.resize((56, 56), Image.Resampling.BICUBIC).save(target)
    else:
        target = original.with_name(f"{original.stem}-resaved.png")
        image.save(target, optimize=True)
    return target


def sample_folder(folder: Path, per_category: int) -> list[Path]:
    originals = []
    for category in sorted(p for p in SAMPLE_DIR.iterdir() if p.is_dir()):
        (folder / category.name).mkdir(parents=True)
        for path in sorted(category.glob("*.png"))[:per_category]:
            originals.append(Path(shutil.copy(path, folder / category.name / path.name)))
    return originals


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory, small_model: Path) -> tuple[Catalog, set, tuple]:
    """200 sample images, 30 of them with a planted copy, and one with two copies (a group of 3)."""
    folder = tmp_path_factory.mktemp("planted") / "images"
    originals = sample_folder(folder, 20)
    truth: set[tuple[str, str]] = set()

    def key(path: Path) -> str:
        return path.relative_to(folder).as_posix()

    for number, original in enumerate(originals[3::6][:30]):
        copy = plant(original, ("jpeg", "resized", "resaved")[number % 3])
        truth.add(tuple(sorted((key(original), key(copy)))))
    trio_original = originals[1]
    trio = (key(trio_original), key(plant(trio_original, "jpeg")), key(plant(trio_original, "resized")))
    truth |= {tuple(sorted(pair)) for pair in [(trio[0], trio[1]), (trio[0], trio[2]), (trio[1], trio[2])]}
    catalog = Catalog.create(folder.parent / "catalog", small_model)
    catalog.index_folder(folder, progress=False)
    yield catalog, truth, tuple(sorted(trio))
    catalog.close()


def test_planted_copies_are_found_at_the_calibrated_threshold(planted: tuple[Catalog, set, tuple]) -> None:
    catalog, truth, _ = planted
    report = catalog.duplicates()
    assert report.calibrated and 0.9 < report.threshold < 1.0
    precision, recall = group_precision_recall((group.keys for group in report), truth)
    assert recall >= RECALL_FLOOR and precision >= PRECISION_FLOOR, (precision, recall)


def test_a_pca_graph_finds_the_copies_too(planted: tuple[Catalog, set, tuple], tmp_path: Path) -> None:
    """On a reduced catalog the graph's candidates are re-scored with the full vectors."""
    catalog, truth, _ = planted
    keys = catalog.keys()
    with Catalog.create(tmp_path / "reduced", catalog.embedder) as reduced:
        reduced.add_many(keys, catalog.vectors(keys))
        reduced.reduce(32)
        report = reduced.duplicates()
        full = catalog.duplicates()
    assert report.threshold == pytest.approx(full.threshold, abs=1e-6)
    precision, recall = group_precision_recall((group.keys for group in report), truth)
    assert recall >= RECALL_FLOOR and precision >= PRECISION_FLOOR, (precision, recall)


def test_the_report_through_the_storage_seam_is_the_local_report(planted: tuple[Catalog, set, tuple]) -> None:
    """One algorithm for both backends: fed through the seam (`BackendSource`, what a Milvus
    catalog uses, here over the local backend), the pass finds the same groups, pixels and all."""
    from fashionrec_onnx.catalog.duplicates import find
    from fashionrec_onnx.catalog.local_backend import LocalBackend
    from fashionrec_onnx.catalog.remote_duplicates import BackendSource

    catalog, _, _ = planted
    local = catalog.duplicates()
    seam, _ = find(BackendSource(LocalBackend.of(catalog), catalog.params.ef), None, 8)
    assert (seam.items, seam.by_pixels, seam.calibrated) == (local.items, local.by_pixels, True)
    assert local.by_pixels == len(catalog) and len(local) > 20
    assert seam.threshold == pytest.approx(local.threshold, abs=1e-6)
    assert [group.keys for group in seam] == [group.keys for group in local]
    assert [s for g in seam for _, _, s in g.pairs] == pytest.approx(
        [s for g in local for _, _, s in g.pairs]
    )


def test_each_group_lists_its_keys_and_the_similarity_of_every_pair(
    planted: tuple[Catalog, set, tuple],
) -> None:
    catalog, _, trio = planted
    report = catalog.duplicates()
    group = next(group for group in report if trio[0] in group.keys)
    assert group.keys == trio
    assert {tuple(sorted((a, b))) for a, b, _ in group.pairs} == {
        (trio[0], trio[1]), (trio[0], trio[2]), (trio[1], trio[2])
    }  # fmt: skip
    for a, b, similarity in group.pairs:
        expected = float(catalog.vector(a) @ catalog.vector(b))
        assert similarity == pytest.approx(expected, abs=1e-5)
    similarities = [s for _, _, s in group.pairs]
    assert similarities == sorted(similarities, reverse=True) and max(similarities) >= report.threshold


def group_numbers(catalog: Catalog) -> dict[str, int]:
    return {key: number for number, group in enumerate(catalog.duplicates()) for key in group.keys}


def test_a_collapsed_search_never_returns_two_images_of_one_group(
    planted: tuple[Catalog, set, tuple],
) -> None:
    catalog, truth, _ = planted
    group_of = group_numbers(catalog)
    queries = sorted({key for pair in truth for key in pair})
    crowded = 0
    for query in queries:
        image = catalog.image_path(query)
        for method, source in [
            (catalog.search, image),
            (catalog.exact_search, image),
            (catalog.search, query),
        ]:
            hits = method(source, k=10, collapse_duplicates=True)
            assert len(hits) == 10
            groups = [group_of[hit.key] for hit in hits if hit.key in group_of]
            assert len(groups) == len(set(groups)), (query, [hit.key for hit in hits])
        plain = [group_of.get(hit.key) for hit in catalog.search(image, k=10)]
        crowded += len([g for g in plain if g is not None]) > len({g for g in plain if g is not None})
    assert crowded >= len(truth) // 2  # without collapsing, copies do crowd the results


def test_more_like_this_collapsed_leaves_out_copies_of_the_item(planted: tuple[Catalog, set, tuple]) -> None:
    catalog, _, trio = planted
    plain = [hit.key for hit in catalog.more_like_this(trio[0], k=5)]
    assert set(trio[1:]) <= set(plain)  # the copies are the most like it
    collapsed = [hit.key for hit in catalog.more_like_this(trio[0], k=5, collapse_duplicates=True)]
    assert len(collapsed) == 5 and not set(trio) & set(collapsed)


def test_a_copy_added_later_is_collapsed_too(tmp_path: Path, small_model: Path) -> None:
    folder = tmp_path / "images"
    originals = sample_folder(folder, 3)
    with Catalog.create(tmp_path / "catalog", small_model) as catalog:
        catalog.index_folder(folder, progress=False)
        query = originals[0]
        assert catalog.search(query, k=3, collapse_duplicates=True)[0].key == "ankle-boot/test-00000.png"
        catalog.add("late-copy", plant(query, "jpeg"))
        keys = [hit.key for hit in catalog.search(query, k=3, collapse_duplicates=True)]
        assert keys[0] == "ankle-boot/test-00000.png" and "late-copy" not in keys
        assert "late-copy" in [hit.key for hit in catalog.search(query, k=3)]


def test_a_group_counts_as_every_pair_inside_it() -> None:
    """imagededup's measure: a group of three says three pairs are duplicates."""
    groups = [("a", "b", "c"), ("d", "e")]
    truth = {("a", "b"), ("e", "d"), ("f", "g")}
    assert pairs_of_groups(groups) == {("a", "b"), ("a", "c"), ("b", "c"), ("d", "e")}
    assert pair_precision_recall(pairs_of_groups(groups), truth) == (2 / 4, 2 / 3)
    assert group_precision_recall(groups, truth) == (2 / 4, 2 / 3)


@pytest.mark.parametrize("threshold, neighbours", [(0.0, 8), (1.5, 8), (float("nan"), 8), (0.9, 0)])
def test_a_threshold_or_neighbour_count_out_of_range_is_refused(
    planted: tuple[Catalog, set, tuple], threshold: float, neighbours: int
) -> None:
    with pytest.raises(BadArgumentError):
        planted[0].duplicates(threshold, neighbours=neighbours)


# -- the command ------------------------------------------------------------------------------------


def run(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    code = main([str(arg) for arg in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_duplicates_prints_the_groups_as_text_json_and_csv(
    capsys: pytest.CaptureFixture[str], planted: tuple[Catalog, set, tuple]
) -> None:
    catalog, _, trio = planted
    expected = catalog.duplicates()
    code, out, err = run(capsys, "duplicates", "--catalog", catalog.path)
    assert code == 0, err
    assert out.startswith(f"{len(expected)} groups of near-duplicates")
    assert f"among {len(catalog)} items; {len(catalog)} judged by their pixels\n" in out
    assert "group 1: 3 images\n" in out and trio[0] in out

    code, out, _ = run(capsys, "duplicates", "--catalog", catalog.path, "--json")
    report = json.loads(out)
    assert report["threshold"] == pytest.approx(expected.threshold) and report["calibrated"]
    assert report["judged_by_pixels"] == len(catalog)
    assert [tuple(group["keys"]) for group in report["groups"]] == [group.keys for group in expected]

    code, out, _ = run(capsys, "duplicates", "--catalog", catalog.path, "--csv", "--threshold", "0.9995")
    rows = list(csv.DictReader(io.StringIO(out)))
    given = catalog.duplicates(0.9995)
    assert len(rows) == sum(len(group.pairs) for group in given) > 0
    assert set(rows[0]) == {"group", "key", "other", "similarity"}


def test_cli_search_collapse_duplicates(
    capsys: pytest.CaptureFixture[str], planted: tuple[Catalog, set, tuple]
) -> None:
    catalog, _, trio = planted
    code, out, err = run(
        capsys, "search", trio[0], "--catalog", catalog.path, "--collapse-duplicates", "--json"
    )
    assert code == 0, err
    keys = [hit["key"] for hit in json.loads(out)]
    assert keys == [hit.key for hit in catalog.more_like_this(trio[0], k=5, collapse_duplicates=True)]
    assert np.all([key not in trio for key in keys])


@pytest.mark.parametrize("damage", ["nan", "zeros", "huge"])
def test_a_rotten_stored_vector_is_left_out_and_the_threshold_stays_a_number(
    tmp_path: Path, small_model: Path, damage: str
) -> None:
    """A vector the disk damaged (NaN, zeros, huge) is in no pair and no group, and the calibrated
    threshold comes from the sound items alone."""
    from test_poisoning import ROT, rot, unit_vectors

    vectors = unit_vectors(40)
    vectors[1] = vectors[0]  # one true pair
    with Catalog.create(tmp_path / "catalog", small_model) as catalog:
        catalog.add_many([f"item-{n:02d}" for n in range(40)], vectors)
        rot(catalog, "item-07", ROT[damage])
        report = catalog.duplicates()
        assert np.isfinite(report.threshold) and 0.0 < report.threshold <= 1.0
        assert [group.keys for group in report] == [("item-00", "item-01")]
        assert all(np.isfinite(similarity) for _, _, similarity in report.groups[0].pairs)
        explicit = catalog.duplicates(0.5)
        assert all("item-07" not in group.keys for group in explicit)
