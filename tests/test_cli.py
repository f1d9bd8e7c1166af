"""The `fashionrec` command end to end, as a user types it: real processes, real files."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fashionrec_onnx.catalog import Catalog
from fashionrec_onnx.cli import build_parser, main
from fashionrec_onnx.quality.datasets import SAMPLE_DIR

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
    assert set(hits[0]) == {"rank", "key", "path", "distance", "similarity", "metadata", "product", "photos"}
    assert hits[0]["product"] is None and hits[0]["photos"] == []  # the catalog has no product field


def test_check_prints_recall_against_exact_knn(indexed: Path) -> None:
    result = fashionrec("check", "--catalog", indexed, "-k", "5")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "recall@5 of HNSW vs exact KNN: " in result.stdout
    recall = float(result.stdout.split("KNN: ")[1].split()[0])
    assert recall >= 0.99


def test_info_reports_the_catalog(indexed: Path) -> None:
    result = fashionrec("info", "--catalog", indexed, "--json")
    info = json.loads(result.stdout)
    assert info["items"] == 1000 and info["dim"] == 2048 and info["weights"] == "random:seed=0"
    assert len(info["categories"]) == 10


def test_remove_then_rebuild(indexed: Path, tmp_path: Path) -> None:
    result = fashionrec("remove", "bag/test-00598.png", "--catalog", indexed)
    assert result.returncode == 0 and "removed 1 of 1 keys; 999 items left" in result.stdout
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


# -- bad arguments: argparse's usage line and one error line, exit code 2, nothing created -----

SAMPLE_IMAGE = SAMPLE_DIR / "dress" / "test-00013.png"


def run(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    """The command in this process, as `fashionrec ARGS...`: exit code, stdout, stderr."""
    code = main([str(arg) for arg in args])
    out, err = capsys.readouterr()
    return code, out, err


def assert_error(code: int, err: str, needle: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and needle in errors[0], err


@pytest.fixture()
def small_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    for path in sorted((SAMPLE_DIR / "bag").glob("*.png"))[:3]:
        (folder / path.name).write_bytes(path.read_bytes())
    return folder


@pytest.mark.parametrize(
    "command, option, value",
    [
        ("search", "-k", "0"),
        ("search", "-k", "-1"),
        ("search", "--threads", "0"),
        ("check", "-k", "0"),
        ("check", "--sample", "0"),
        ("check", "--min-recall", "2"),
        ("index", "--M", "1"),
        ("index", "--ef", "0"),
        ("index", "--ef-construction", "0"),
        ("index", "--batch-size", "0"),
        ("index", "--threads", "0"),
        ("import-fashion-mnist", "--limit", "-1"),
        ("reduce", "--dim", "-3"),
        ("rebuild", "--ef", "0"),
    ],
)
def test_a_bad_number_is_refused_before_anything_is_opened(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    small_folder: Path,
    small_model: Path,
    command: str,
    option: str,
    value: str,
) -> None:
    catalog = tmp_path / "catalog"
    args = {
        "search": [SAMPLE_IMAGE],
        "index": [small_folder, "--model", small_model],
        "import-fashion-mnist": ["--model", small_model],
        "reduce": [],
    }.get(command, [])
    if command in ("search", "check", "reduce", "rebuild"):  # an existing catalog, untouched
        run(capsys, "index", small_folder, "--catalog", catalog, "--model", small_model, "--quiet")
    before = sorted(tmp_path.rglob("*"))
    code, out, err = run(capsys, command, *args, "--catalog", catalog, option, value)
    assert_error(code, err, f"argument {option}: must be a ")
    assert err.startswith(f"usage: fashionrec {command}")
    assert sorted(tmp_path.rglob("*")) == before


def test_a_query_too_long_for_a_file_name_is_one_error_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, small_folder: Path, small_model: Path
) -> None:
    run(capsys, "index", small_folder, "--catalog", tmp_path / "c", "--model", small_model, "--quiet")
    code, out, err = run(capsys, "search", "a" * 5000, "--catalog", tmp_path / "c")
    assert_error(code, err, "is neither a key")
    assert "(5000 characters)" in err and len(err) < 300


def test_a_catalog_path_too_long_for_the_file_system_is_one_error_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = run(capsys, "info", "--catalog", "c" * 5000)
    assert_error(code, err, "File name too long")
    assert len(err) < 300


def test_deeply_nested_json_metadata_is_one_error_line_naming_file_and_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, small_folder: Path, small_model: Path
) -> None:
    metadata = tmp_path / "labels.jsonl"
    metadata.write_text('{"key": "x.png", "v": ' + "[" * 100_000 + "]" * 100_000 + "}\n")
    code, out, err = run(
        capsys, "index", small_folder, "--catalog", tmp_path / "c", "--model", small_model,
        "--metadata", metadata,
    )  # fmt: skip
    assert_error(code, err, f"{metadata}, line 1: the JSON is nested too deeply")


def test_metadata_warnings_are_shown_on_stderr(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, small_folder: Path, small_model: Path
) -> None:
    first = sorted(small_folder.iterdir())[0].name
    metadata = tmp_path / "labels.csv"
    metadata.write_text(f"key,category\n{first},Bag\n{first},Dress\n")
    code, out, err = run(
        capsys, "index", small_folder, "--catalog", tmp_path / "c", "--model", small_model,
        "--metadata", metadata, "--quiet",
    )  # fmt: skip
    assert code == 0, err
    assert "WARNING" in err and "the last row wins" in err


def test_a_file_name_that_is_not_utf8_is_skipped_with_a_warning_and_the_rest_indexed(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, small_folder: Path, small_model: Path
) -> None:
    (small_folder / os.fsdecode(b"caf\xe9.png")).write_bytes(SAMPLE_IMAGE.read_bytes())
    args = ["index", small_folder, "--catalog", tmp_path / "c", "--model", small_model, "--quiet"]
    for expected in ("3 added", "3 unchanged"):  # and the same on every rerun
        code, out, err = run(capsys, *args)
        assert code == 1 and "Traceback" not in err, err  # 1: ran, but a file was skipped
        assert expected in out
        assert "skipped caf\\xe9.png: the file name is not valid UTF-8" in out


def test_a_key_that_is_not_utf8_is_refused_as_an_argument(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, out, err = run(capsys, "remove", os.fsdecode(b"caf\xe9.png"), "--catalog", tmp_path / "c")
    assert_error(code, err, "argument KEY: 'caf\\xe9.png' is not valid UTF-8")


# -- newcomer friction: failed indexing, empty catalogs, unknown keys ---------------------


@pytest.mark.parametrize("folder", ["missing", "images/test-00001.png", "empty"])
def test_a_failed_index_leaves_no_catalog_behind(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, small_model: Path, folder: str
) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "test-00001.png").write_bytes(SAMPLE_IMAGE.read_bytes())
    (tmp_path / "empty").mkdir()
    code, out, err = run(
        capsys, "index", tmp_path / folder, "--catalog", tmp_path / "c", "--model", small_model
    )
    assert_error(code, err, str(tmp_path / folder))
    assert not (tmp_path / "c").exists()


def test_searching_an_empty_catalog_says_it_is_empty(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, small_model: Path
) -> None:
    Catalog.create(tmp_path / "c", small_model).close()
    code, out, err = run(capsys, "search", SAMPLE_IMAGE, "--catalog", tmp_path / "c")
    assert code == 1
    assert f"the catalog {tmp_path / 'c'} is empty" in err and out == ""


def test_removing_unknown_keys_names_them_and_exits_1(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, small_folder: Path, small_model: Path
) -> None:
    run(capsys, "index", small_folder, "--catalog", tmp_path / "c", "--model", small_model, "--quiet")
    first = sorted(small_folder.iterdir())[0].name
    code, out, err = run(capsys, "remove", first, "no-such-key", "--catalog", tmp_path / "c")
    assert code == 1
    assert out.splitlines() == ["removed 1 of 2 keys; 2 items left", "  not in the catalog: no-such-key"]


# -- help ---------------------------------------------------------------------------------

COMMANDS = sorted(build_parser()._subparsers._group_actions[0].choices)  # type: ignore[union-attr]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_help_has_a_description_and_an_example(
    capsys: pytest.CaptureFixture[str], command: str
) -> None:
    code, out, err = run(capsys, command, "--help")
    assert code == 0
    description = out.split("\n\n")[1]
    assert description.strip() and not description.startswith(("positional", "options"))
    assert f"examples:\n  fashionrec {command}" in out


@pytest.mark.parametrize("command", [c for c in COMMANDS if c != "export"])  # export/ has its own
def test_every_option_has_help_and_shows_its_default(command: str) -> None:
    parser = build_parser()._subparsers._group_actions[0].choices[command]  # type: ignore[union-attr]
    for action in parser._actions:
        assert action.help, f"{command} {action.option_strings or action.dest} has no help"
        unset = action.default is None or action.default is False or action.default == argparse.SUPPRESS
        if action.option_strings and not unset and action.default not in ([], ""):
            assert "(default: " in parser.formatter_class(command)._get_help_string(action)


def test_the_filter_help_says_how_to_give_several_values(capsys: pytest.CaptureFixture[str]) -> None:
    out = " ".join(run(capsys, "search", "--help")[1].split())
    assert "--filter category=Dress --filter category=Bag" in out
    assert "any of those values" in out and "different fields must all match" in out


def test_a_filter_on_an_unknown_field_is_an_error_listing_the_fields(indexed: Path) -> None:
    result = fashionrec("search", "dress/test-00013.png", "--catalog", indexed, "--filter", "categroy=Dress")
    assert_one_line_error(result, "'categroy'")
    assert "category" in result.stderr and "split" in result.stderr


@pytest.mark.parametrize("value, suggestion", [("dress", "'Dress'"), ("Dress,Bag", "")])
def test_a_filter_value_no_item_has_is_a_warning_with_close_values(
    indexed: Path, value: str, suggestion: str
) -> None:
    query = "dress/test-00013.png"
    result = fashionrec("search", query, "--catalog", indexed, "--filter", f"category={value}")
    assert result.returncode == 0
    assert f"no item has category={value!r}" in result.stderr and suggestion in result.stderr


# -- each fact said once -------------------------------------------------------------------------


@pytest.fixture()
def folder_with_a_broken_file(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    for name in ("test-00013.png", "test-00029.png", "test-00032.png"):
        (folder / name).write_bytes((SAMPLE_DIR / "dress" / name).read_bytes())
    (folder / "broken.png").write_text("not an image")
    return folder


def test_index_reports_a_skipped_file_once_not_also_in_a_log_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, small_model: Path, folder_with_a_broken_file: Path
) -> None:
    catalog = tmp_path / "c"
    index = ["index", folder_with_a_broken_file, "--catalog", catalog, "--model", small_model, "--quiet"]
    code, out, err = run(capsys, *index)
    assert code == 1 and "skipped broken.png: not an image" in out
    assert "could not be indexed" not in err and err.strip() == "", err
    code, out, err = run(capsys, "-v", *index)
    assert code == 1 and "could not be indexed" in err  # --verbose shows the library's records


def test_duplicates_and_collapsed_searches_print_no_info_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, small_model: Path, folder_with_a_broken_file: Path
) -> None:
    catalog = tmp_path / "c"
    run(capsys, "index", folder_with_a_broken_file, "--catalog", catalog, "--model", small_model, "--quiet")
    code, out, err = run(capsys, "duplicates", "--catalog", catalog)
    assert code == 0 and "groups of near-duplicates" in out and err == ""
    code, out, err = run(capsys, "search", "test-00013.png", "--catalog", catalog, "--collapse-duplicates")
    assert code == 0 and err == ""


def test_check_help_names_the_oracle_as_it_is(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "a blocked matrix product over the stored vectors, held to scikit-learn's" in text
