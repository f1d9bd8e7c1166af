"""What a folder scan and a metadata file yield, and what they report instead of failing or
staying silent: real files, links and permissions on the local file system."""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from fashionrec_onnx.errors import CatalogError
from fashionrec_onnx.feeds.scan import Skipped, read_metadata, scan_folder

NOT_UTF8 = os.fsdecode(b"caf\xe9")  # a Latin-1 name, as an old archive or camera writes it
NOBODY = 65534


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n")  # the scan looks at names, not contents
    return path


def scan(folder: Path) -> tuple[list[str], list[Skipped]]:
    skipped: list[Skipped] = []
    keys = [file.key for file in scan_folder(folder, on_skip=skipped.append)]
    return keys, skipped


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]


@contextlib.contextmanager
def as_nobody() -> Iterator[None]:
    """Permissions bind root only through another user: the scan runs as nobody meanwhile."""
    if os.geteuid() != 0:
        yield
        return
    os.seteuid(NOBODY)
    try:
        yield
    finally:
        os.seteuid(0)


# -- folders ------------------------------------------------------------------------------


def test_a_file_name_that_is_not_utf8_is_skipped_and_the_rest_scanned(tmp_path: Path) -> None:
    touch(tmp_path / "ok.png")
    touch(tmp_path / f"{NOT_UTF8}.png")
    keys, skipped = scan(tmp_path)
    assert keys == ["ok.png"]
    assert [(s.relative, s.folder) for s in skipped] == [("caf\\xe9.png", False)]
    assert "not valid UTF-8" in skipped[0].reason


def test_a_folder_name_that_is_not_utf8_is_skipped_as_a_folder(tmp_path: Path) -> None:
    touch(tmp_path / "ok.png")
    touch(tmp_path / NOT_UTF8 / "inside.png")
    keys, skipped = scan(tmp_path)
    assert keys == ["ok.png"]
    assert [(s.relative, s.folder) for s in skipped] == [("caf\\xe9/", True)]


def test_skipped_entries_are_logged_as_warnings_by_default(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    touch(tmp_path / f"{NOT_UTF8}.png")
    assert list(scan_folder(tmp_path)) == []
    assert warnings(caplog) == ["skipped caf\\xe9.png: the file name is not valid UTF-8: rename it"]


def keys_and_warnings(folder: Path, caplog: pytest.LogCaptureFixture) -> tuple[list[str], list[str]]:
    """What a scan with the default reporting yields, and the warnings it logged."""
    keys = [file.key for file in scan_folder(folder)]
    return keys, [message.removeprefix("skipped ") for message in warnings(caplog)]


@pytest.fixture()
def shared_tmp() -> Iterator[Path]:
    """A folder that another user can reach (pytest's own is root-only when run as root)."""
    with tempfile.TemporaryDirectory() as name:
        Path(name).chmod(0o755)
        yield Path(name)


def test_an_unreadable_subfolder_is_skipped_with_a_warning_and_the_rest_scanned(
    shared_tmp: Path, caplog: pytest.LogCaptureFixture
) -> None:
    touch(shared_tmp / "open" / "a.png")
    touch(shared_tmp / "locked" / "b.png")
    (shared_tmp / "locked").chmod(0)
    try:
        with as_nobody():
            keys, warned = keys_and_warnings(shared_tmp, caplog)
    finally:
        (shared_tmp / "locked").chmod(0o755)
    assert keys == ["open/a.png"]
    assert warned == ["locked/: cannot read this folder (Permission denied)"]


def test_an_unreadable_subfolder_is_reported_as_a_folder(shared_tmp: Path) -> None:
    """So that pruning keeps the items indexed from it before: they are hidden, not gone."""
    touch(shared_tmp / "locked" / "b.png")
    (shared_tmp / "locked").chmod(0)
    try:
        with as_nobody():
            _, skipped = scan(shared_tmp)
    finally:
        (shared_tmp / "locked").chmod(0o755)
    assert [(s.relative, s.folder) for s in skipped] == [("locked/", True)]


def test_a_link_to_a_folder_above_is_not_followed_into_a_loop(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    touch(tmp_path / "shop" / "a.png")
    (tmp_path / "shop" / "up").symlink_to(tmp_path)
    keys, warned = keys_and_warnings(tmp_path, caplog)
    assert keys == ["shop/a.png"]
    assert warned == [f"shop/up/: a link to {tmp_path}, a folder above it (a loop): not followed"]


def test_a_link_to_a_folder_outside_is_followed_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    touch(tmp_path / "outside" / "a.png")
    (tmp_path / "tree").mkdir()
    (tmp_path / "tree" / "first").symlink_to(tmp_path / "outside")
    (tmp_path / "tree" / "second").symlink_to(tmp_path / "outside")
    keys, warned = keys_and_warnings(tmp_path / "tree", caplog)
    assert keys == ["first/a.png"]
    assert warned == [
        f"second/: a link to {tmp_path / 'outside'}, scanned already through another link: not followed"
    ]


def test_a_link_to_a_folder_of_the_same_tree_is_not_followed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    touch(tmp_path / "bags" / "a.png")
    (tmp_path / "alias").symlink_to(tmp_path / "bags")
    keys, warned = keys_and_warnings(tmp_path, caplog)
    assert keys == ["bags/a.png"]  # one key per image, not one per way to reach it
    assert warned == ["alias/: a link to bags/, which is indexed under its own name: not followed"]


def test_a_link_that_loops_on_itself_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    touch(tmp_path / "a.png")
    (tmp_path / "b.png").symlink_to(tmp_path / "b.png")
    keys, warned = keys_and_warnings(tmp_path, caplog)
    assert keys == ["a.png"]
    assert warned == ["b.png: cannot read it (Too many levels of symbolic links)"]


def test_a_missing_folder_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="is not a folder of images"):
        list(scan_folder(tmp_path / "missing"))


# -- metadata -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, text",
    [
        ("labels.csv", "key,category\na.png,Dress\nb.png,Bag\na.png,Coat\n"),
        (
            "labels.jsonl",
            '{"key": "a.png", "category": "Dress"}\n{"key": "b.png", "category": "Bag"}\n'
            '{"key": "a.png", "category": "Coat"}\n',
        ),
    ],
)
def test_a_key_given_twice_warns_that_the_last_row_wins(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, name: str, text: str
) -> None:
    source = tmp_path / name
    source.write_text(text)
    assert read_metadata(source)["a.png"] == {"category": "Coat"}
    (message,) = warnings(caplog)
    assert "the last row wins" in message and "'a.png' on lines" in message


def test_an_unterminated_quote_warns_naming_its_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = tmp_path / "labels.csv"
    source.write_text('key,category\na.png,Dress\nb.png,"Bag\nc.png,Coat\nd.png,Dress\n')
    assert len(read_metadata(source)) == 2  # c.png and d.png went into b.png's category
    (message,) = warnings(caplog)
    assert message.startswith(f"{source}, line 3: a quoted value runs on to line 5")
    assert "never closed" in message


def test_a_quoted_value_with_a_line_break_is_not_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = tmp_path / "labels.csv"
    source.write_text('key,description\na.png,"A summer dress\nin linen"\nb.png,Bag\n')
    assert read_metadata(source)["a.png"] == {"description": "A summer dress\nin linen"}
    assert warnings(caplog) == []


def test_deeply_nested_json_is_an_error_naming_file_and_line(tmp_path: Path) -> None:
    source = tmp_path / "labels.jsonl"
    source.write_text('{"key": "a.png"}\n{"key": "b.png", "x": ' + "[" * 100_000 + "]" * 100_000 + "}\n")
    with pytest.raises(CatalogError, match=rf"{source}, line 2: the JSON is nested too deeply"):
        read_metadata(source)


def test_an_unterminated_quote_in_a_large_file_is_an_error_naming_the_line(tmp_path: Path) -> None:
    source = tmp_path / "labels.csv"
    source.write_text('key,category\na.png,"Dress\n' + "b.png,Bag\n" * 20_000)
    with pytest.raises(
        CatalogError, match=rf"{source}, line \d+: .*field limit.*a quote that is never closed"
    ):
        read_metadata(source)
