"""The `fashionrec` command end to end, as a user types it: real processes, real files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fashionrec_onnx.datasets import SAMPLE_DIR

FASHIONREC = str(Path(sys.executable).with_name("fashionrec"))


def fashionrec(*args: object, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [FASHIONREC, *map(str, args)], capture_output=True, text=True, timeout=600, cwd=cwd, env=os.environ
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], needle: str) -> None:
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and needle in errors[0], result.stderr


@pytest.fixture(scope="module")
def indexed(tmp_path_factory: pytest.TempPathFactory, small_model: Path) -> Path:
    catalog = tmp_path_factory.mktemp("cli") / "catalog"
    result = fashionrec(
        "index",
        SAMPLE_DIR,
        "--catalog",
        catalog,
        "--model",
        small_model,
        "--metadata",
        SAMPLE_DIR / "labels.csv",
    )
    assert result.returncode == 0, result.stderr
    assert "1000 added" in result.stdout
    return catalog


def test_index_again_embeds_nothing(indexed: Path) -> None:
    result = fashionrec("index", SAMPLE_DIR, "--catalog", indexed, "--quiet")
    assert result.returncode == 0
    assert "0 added, 0 updated, 1000 unchanged" in result.stdout


def test_search_by_image_prints_ranked_hits_with_the_image_itself_first(indexed: Path) -> None:
    result = fashionrec("search", SAMPLE_DIR / "dress" / "test-00013.png", "--catalog", indexed)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 5
    assert lines[0].split()[:3] == ["1", "1.0000", "dress/test-00013.png"]


def test_search_json_by_key_with_filter(indexed: Path) -> None:
    result = fashionrec(
        "search",
        "dress/test-00013.png",
        "--catalog",
        indexed,
        "-k",
        "3",
        "--filter",
        "category=Bag",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    hits = json.loads(result.stdout)
    assert len(hits) == 3
    assert {h["metadata"]["category"] for h in hits} == {"Bag"}
    assert set(hits[0]) == {"rank", "key", "path", "distance", "similarity", "metadata"}


def test_check_prints_recall_against_exact_knn(indexed: Path) -> None:
    result = fashionrec("check", "--catalog", indexed, "-k", "5")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "recall@5 of HNSW vs exact sklearn KNN: " in result.stdout
    recall = float(result.stdout.split("KNN: ")[1].split()[0])
    assert recall >= 0.99


def test_info_reports_the_catalog(indexed: Path) -> None:
    result = fashionrec("info", "--catalog", indexed, "--json")
    info = json.loads(result.stdout)
    assert info["items"] == 1000 and info["dim"] == 2048 and info["weights"] == "random:seed=0"
    assert len(info["categories"]) == 10


def test_remove_then_rebuild(indexed: Path, tmp_path: Path) -> None:
    result = fashionrec("remove", "bag/test-00598.png", "missing-key", "--catalog", indexed)
    assert result.returncode == 0 and "removed 1 of 2 keys; 999 items left" in result.stdout
    rebuilt = fashionrec("rebuild", "--catalog", indexed)
    assert rebuilt.returncode == 0 and "999 stored vectors" in rebuilt.stdout
    assert fashionrec("check", "--catalog", indexed).returncode == 0


def test_unreadable_files_are_listed_and_exit_code_is_1(tmp_path: Path, small_model: Path) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / "ok.png").write_bytes((SAMPLE_DIR / "dress" / "test-00013.png").read_bytes())
    (folder / "bad.jpg").write_text("not a jpeg")
    result = fashionrec("index", folder, "--catalog", tmp_path / "c", "--model", small_model, "--quiet")
    assert result.returncode == 1
    assert "1 added" in result.stdout and "skipped bad.jpg: not an image" in result.stdout


def test_errors_are_one_line_with_exit_code_2(tmp_path: Path, indexed: Path) -> None:
    assert_one_line_error(fashionrec("search", "x.png", "--catalog", tmp_path / "none"), "no catalog at")
    assert_one_line_error(fashionrec("search", "nope", "--catalog", indexed), "neither a key")
    assert_one_line_error(fashionrec("index", SAMPLE_DIR, "--catalog", tmp_path / "new"), "--model")
    assert_one_line_error(
        fashionrec("search", "dress/test-00013.png", "--catalog", indexed, "--filter", "oops"), "key=value"
    )


def test_a_second_shop_folder_needs_its_own_key_prefix(tmp_path: Path, small_model: Path) -> None:
    shops = [tmp_path / "shop-a", tmp_path / "shop-b"]
    for shop in shops:
        (shop / "bag").mkdir(parents=True)
        for path in sorted((SAMPLE_DIR / "bag").glob("*.png"))[:3]:
            (shop / "bag" / path.name).write_bytes(path.read_bytes())
    catalog = tmp_path / "catalog"
    first_shop = fashionrec("index", shops[0], "--catalog", catalog, "--model", small_model, "--quiet")
    assert first_shop.returncode == 0
    assert_one_line_error(fashionrec("index", shops[1], "--catalog", catalog, "--quiet"), "--key-prefix")
    result = fashionrec("index", shops[1], "--catalog", catalog, "--key-prefix", "shop-b/", "--quiet")
    assert result.returncode == 0 and "3 added" in result.stdout
    first = sorted((SAMPLE_DIR / "bag").glob("*.png"))[0].name
    keys = fashionrec("search", f"shop-b/bag/{first}", "--catalog", catalog, "-k", "6", "--json")
    assert {hit["key"].split("/")[0] for hit in json.loads(keys.stdout)} == {"bag", "shop-b"}


def test_import_fashion_mnist_indexes_real_labelled_images(
    tmp_path: Path, small_model: Path, fashion_mnist_dir: Path
) -> None:
    catalog = tmp_path / "fm"
    result = fashionrec(
        "import-fashion-mnist", "--catalog", catalog, "--model", small_model, "--limit", "120",
        "--source", fashion_mnist_dir, "--quiet",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "120 added" in result.stdout
    assert (catalog / "images" / "labels.csv").exists()
    info = json.loads(fashionrec("info", "--catalog", catalog, "--json").stdout)
    assert info["items"] == 120 and len(info["categories"]) == 10
