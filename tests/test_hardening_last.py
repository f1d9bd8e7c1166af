"""Issue 25, what the variants left: a damaged stored vector is never handed out (vector, vectors,
export, import, duplicates), a finite vector with a norm float32 cannot hold is searched and
stored by its direction, feed and metadata files have a size bound, name resolution counts in a
download's deadline, and what an adversarial pass on the service and the CLI broke."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from feed_server import FeedServer, png
from test_poisoning import ROT, rot
from test_service import served

from fashionrec_onnx import Catalog, CatalogError
from fashionrec_onnx.cli import main
from fashionrec_onnx.errors import CatalogCorruptError, DownloadError
from fashionrec_onnx.feeds.download import DownloadSettings, ImageCache
from fashionrec_onnx.interchange import vector_files as vf
from fashionrec_onnx.interchange.vector_transfer import export_vectors, import_vectors

DIM = 2048


def unit_vectors(n: int, seed: int = 0) -> np.ndarray:
    vectors = np.random.default_rng(seed).normal(size=(n, DIM))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture()
def catalog(tmp_path: Path, small_model: Path) -> Iterator[Catalog]:
    """40 items from vectors (no image is embedded)."""
    with Catalog.create(tmp_path / "catalog", small_model) as opened:
        opened.add_many([f"item-{n:02d}" for n in range(40)], unit_vectors(40))
        yield opened


# -- 1. a damaged stored vector is never handed out ------------------------------------------------


@pytest.mark.parametrize("damage", ROT)
def test_the_stored_vector_of_a_damaged_item_is_refused_naming_the_key_and_the_repair(
    catalog: Catalog, damage: str
) -> None:
    rot(catalog, "item-07", ROT[damage])
    for read in (lambda: catalog.vector("item-07"), lambda: catalog.vectors(["item-01", "item-07"])):
        with pytest.raises(CatalogCorruptError, match=r"stored vector of 'item-07' .* is damaged") as info:
            read()
        assert "index its image again" in str(info.value) and "fashionrec verify" in str(info.value)
    assert np.isfinite(catalog.vectors(["item-01", "item-08"])).all()  # the others are still given


def test_an_export_leaves_damaged_vectors_out_and_counts_them(
    catalog: Catalog, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rot(catalog, "item-07")
    rot(catalog, "item-30", 0.0)
    report = export_vectors(catalog, tmp_path / "out")
    assert report.rows == 38 and report.damaged == ["item-07", "item-30"]
    table = pq.read_table(report.files[0])
    assert "item-07" not in table.column("key").to_pylist() and table.num_rows == 38
    assert np.isfinite(np.asarray(table.column("vector").to_pylist(), np.float32)).all()
    catalog.close()
    assert main(["export-vectors", "--catalog", str(catalog.path), "--out", str(tmp_path / "cli")]) == 1
    out = capsys.readouterr().out
    assert "exported 38 vectors" in out and "left out 2 item(s) whose stored vector is damaged" in out


def test_an_import_replaces_a_damaged_stored_vector_with_the_files_sound_one(
    catalog: Catalog, tmp_path: Path
) -> None:
    report = export_vectors(catalog, tmp_path / "out")
    good = catalog.vector("item-07")
    rot(catalog, "item-07")
    imported = import_vectors(catalog, tmp_path / "out")  # was: the import failed on the NaN row
    assert imported.updated == 1 and imported.unchanged == 39 and report.rows == 40
    assert np.array_equal(catalog.vector("item-07"), good)


# -- 2. a finite vector whose norm overflows float32 ------------------------------------------------


def huge(seed: int = 1, top: float = 3e38) -> np.ndarray:
    """A direction with values near float32's largest (3.4e38): finite, but its float32 norm is inf."""
    return (unit_vectors(1, seed)[0] / np.abs(unit_vectors(1, seed)[0]).max() * top).astype(np.float32)


def test_add_many_stores_a_huge_finite_vector_by_its_direction(catalog: Catalog) -> None:
    vector = huge()
    with np.errstate(over="ignore"):
        assert np.isfinite(vector).all() and not np.isfinite(np.linalg.norm(vector))
    catalog.add_many(["huge", "tiny"], np.stack([vector, vector / np.float32(1e36) * np.float32(1e-36)]))
    for key in ("huge", "tiny"):
        stored = catalog.vector(key)
        assert abs(np.linalg.norm(stored) - 1) < 1e-5
        assert np.dot(stored, unit_vectors(1, 1)[0]) > 0.9999
    catalog.add_many(["wide"], (vector.astype(np.float64) / 3e38 * 1e308)[None])  # its norm overflows float64
    assert np.dot(catalog.vector("wide"), unit_vectors(1, 1)[0]) > 0.9999


def test_a_search_by_a_huge_finite_vector_finds_its_direction(catalog: Catalog) -> None:
    target = catalog.vector("item-05")
    top = float(np.abs(target).max())
    for query in (target / top * np.float32(3e38), target.astype(np.float64) / top * 1e308):  # norm > 1.8e308
        assert np.isfinite(query).all()
        assert catalog.search(query, k=1)[0].key == "item-05"
        assert catalog.exact_search(query, k=1)[0].key == "item-05"
    for bad, why in ((np.zeros(DIM, np.float32), "it is zero"), (np.full(DIM, np.nan), "NaN or infinite")):
        with pytest.raises(CatalogError, match=why):
            catalog.search(bad, k=1)


def test_a_parquet_import_of_huge_finite_vectors_stores_their_directions(
    catalog: Catalog, tmp_path: Path
) -> None:
    vectors = np.stack([huge(1), huge(2)])
    table = vf.build_table(DIM, catalog.info.fingerprint, keys=["h1", "h2"], vectors=vectors)
    path = tmp_path / "huge.parquet"
    pq.write_table(table, path)
    report = import_vectors(catalog, path)
    assert report.added == 2 and not report.skipped
    assert np.dot(catalog.vector("h2"), unit_vectors(1, 2)[0]) > 0.9999


def test_a_parquet_import_of_a_zero_vector_fails_that_row_not_the_batch(
    catalog: Catalog, tmp_path: Path
) -> None:
    vectors = np.stack([unit_vectors(1, 3)[0], np.zeros(DIM, np.float32)])
    table = vf.build_table(DIM, catalog.info.fingerprint, keys=["ok", "zero"], vectors=vectors)
    path = tmp_path / "zero.parquet"
    pq.write_table(table, path)
    report = import_vectors(catalog, path)
    assert report.added == 1 and report.skipped == [("zero", "vector is zero")]
    assert "ok" in catalog and "zero" not in catalog


def test_an_http_search_by_a_huge_finite_vector_is_answered(catalog: Catalog) -> None:
    target = catalog.vector("item-05")
    catalog.close()
    with served(catalog.path) as url, httpx.Client(base_url=url, timeout=60) as http:
        top = float(np.abs(target).max())
        for largest in (3e38, 1e308):  # near float32's largest; a norm over float64's
            vector = [float(value) / top * largest for value in target]
            answer = http.post("/search", json={"vector": vector, "k": 1})
            assert answer.status_code == 200, answer.text
            assert answer.json()["hits"][0]["key"] == "item-05"
        zero = http.post("/search", json={"vector": [0.0] * DIM, "k": 1})
        assert zero.status_code == 422 and "it is zero" in zero.text and "corrupt" not in zero.text


# -- 5. duplicates leave damaged vectors out of the threshold and the groups -------------------------


@pytest.mark.parametrize("reduced", [False, True])
@pytest.mark.parametrize("damage", ROT)
def test_duplicates_leave_a_damaged_vector_out_of_the_threshold_and_say_so(
    catalog: Catalog, caplog: pytest.LogCaptureFixture, damage: str, reduced: bool
) -> None:
    copy = catalog.vector("item-03") + np.float32(1e-3) * unit_vectors(1, 9)[0]
    catalog.add_many(["item-03-copy"], copy[None])
    if reduced:
        catalog.reduce(8)
    clean = catalog.duplicates()
    rot(catalog, "item-07", ROT[damage])
    rot(catalog, "item-03-copy", ROT[damage])
    with caplog.at_level("WARNING"):
        report = catalog.duplicates()
    assert np.isfinite(report.threshold) and report.threshold == pytest.approx(clean.threshold, abs=0.05)
    assert report.items == 39 and all(
        "item-07" not in g.keys and "item-03-copy" not in g.keys for g in report
    )
    assert all(np.isfinite(s) for g in report for _, _, s in g.pairs)
    assert "left 2 item(s) whose stored vector is damaged out of the duplicates" in caplog.text
    explicit = catalog.duplicates(threshold=0.5)
    assert all(np.isfinite(s) for g in explicit for _, _, s in g.pairs)


# -- 3. a feed or metadata file has a size bound ---------------------------------------------------------


@pytest.mark.parametrize("name", ["feed.csv", "feed.jsonl"])
def test_a_feed_over_the_size_bound_is_refused_naming_the_file_the_size_and_the_setting(
    tmp_path: Path,
    catalog: Catalog,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    name: str,
) -> None:
    monkeypatch.setenv("FASHIONREC_MAX_FEED_MB", "1")
    feed = tmp_path / name
    row = (
        "A,a.png,{}\n" if name.endswith(".csv") else '{{"product_id": "A", "image": "a.png", "note": "{}"}}\n'
    )
    header = "product_id,image,note\n" if name.endswith(".csv") else ""
    feed.write_text(header + row.format("x" * 100) * 11_000)  # 1.2 MB
    size = feed.stat().st_size
    with pytest.raises(
        CatalogError, match=rf"{feed} holds {size:,} bytes, over the 1,048,576-byte bound"
    ) as info:
        catalog.sync(feed)
    assert "FASHIONREC_MAX_FEED_MB" in str(info.value) and len(catalog) == 40
    catalog.close()
    assert main(["sync", "--catalog", str(catalog.path), str(feed)]) == 2
    err = capsys.readouterr().err
    assert f"holds {size:,} bytes" in err and "Traceback" not in err
    monkeypatch.setenv("FASHIONREC_MAX_FEED_MB", "2")  # raised: read as before (the images are missing)
    with Catalog.open(catalog.path) as opened:
        assert opened.sync(feed).failed


def test_a_metadata_file_over_the_size_bound_is_refused_before_indexing(
    tmp_path: Path, catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fashionrec_onnx.feeds.scan import read_metadata

    labels = tmp_path / "labels.csv"
    labels.write_text("key,colour\n" + "a.png,red\n" * 200_000)  # 2 MB
    monkeypatch.setenv("FASHIONREC_MAX_FEED_MB", "1")
    with pytest.raises(
        CatalogError, match=r"labels.csv holds 2,000,011 bytes, over the 1,048,576-byte bound"
    ):
        read_metadata(labels)
    monkeypatch.setenv("FASHIONREC_MAX_FEED_MB", "lots")
    with pytest.raises(CatalogError, match="FASHIONREC_MAX_FEED_MB='lots' is not a positive number"):
        read_metadata(labels)


# -- 4. name resolution counts in a download's deadline ------------------------------------------------


@pytest.fixture()
def hanging_dns(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The OS resolver (not our stack) hanging for ``*.hangs.test`` as a dead DNS server makes
    it; ``shop.test`` is 127.0.0.1; the names asked are listed."""
    real, release, asked = socket.getaddrinfo, threading.Event(), []

    def getaddrinfo(host: str, port: object, *args: object, **kwargs: object) -> list:
        asked.append(host)
        if host.endswith(".hangs.test"):
            release.wait()
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        return real("127.0.0.1" if host == "shop.test" else host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield asked
    release.set()


def test_a_download_whose_name_never_resolves_fails_at_the_deadline_saying_so(
    tmp_path: Path, hanging_dns: list[str]
) -> None:
    settings = DownloadSettings(timeout=0.3, deadline=0.5, retries=0, allow_private_network=True)
    with pytest.raises(
        DownloadError,
        match=r"not done within 0\.5s in all \(the host name 'cdn\.hangs\.test' was not resolved in time",
    ):
        ImageCache(tmp_path, settings).fetch("http://cdn.hangs.test/a.png")


def test_a_sync_fails_the_row_whose_host_never_resolves_and_syncs_the_others(
    tmp_path: Path, catalog: Catalog, hanging_dns: list[str]
) -> None:
    server = FeedServer()
    try:
        server.images["a.png"] = png(7)
        port = server.server_address[1]
        feed = tmp_path / "feed.csv"
        feed.write_text(
            f"product_id,image\nA,http://shop.test:{port}/img/a.png\nB,http://cdn.hangs.test/b.png\n"
        )
        # the hanging name fails at the deadline; the shop's answer has all of it (a loaded
        # machine can keep a 0.3 s timeout from being met)
        settings = DownloadSettings(timeout=30.0, deadline=3.0, retries=0, allow_private_network=True)
        report = catalog.sync(feed, download=settings)
    finally:
        server.stop()
    assert report.added == 1 and [f.line for f in report.failed] == [3]
    assert "'cdn.hangs.test' was not resolved in time" in report.failed[0].reason
    assert hanging_dns.count("shop.test") == 1  # resolved once: the connection used that answer


# -- 6. an adversarial pass on the service and the CLI -------------------------------------------------


def test_the_served_catalogs_path_is_masked_only_where_it_stands_as_a_path(
    tmp_path: Path, small_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A catalog served as ``cat`` turned "category" into "<catalog>egory" in every message."""
    with Catalog.create(tmp_path / "cat", small_model) as created:
        created.add_many(["a", "b"], unit_vectors(2), metadata=[{"category": "Bag"}, {"category": "Dress"}])
    monkeypatch.chdir(tmp_path)
    with served(Path("cat")) as url, httpx.Client(base_url=url, timeout=60) as http:
        field = http.post("/search", json={"key": "a", "filter": {"categry": "Bag"}})
        assert field.status_code == 422 and "the fields are: category." in field.json()["detail"], field.text
        group = http.post("/search", json={"key": "a", "group_by": "product"}).json()["detail"]
        assert "this catalog has no product field" in group and "<catalog>alog" not in group
        unknown = http.post("/search", json={"key": "nope"}).json()["detail"]
        assert unknown == "no item with key 'nope' in <catalog>." and str(tmp_path) not in unknown


def test_an_empty_catalog_location_is_refused_rather_than_made_in_the_current_directory(
    tmp_path: Path, small_model: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--catalog "$CATALOG"`` with the variable unset indexed into the current directory."""
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.png").write_bytes(png(3))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert main(["index", "--catalog", "", "--model", str(small_model), str(tmp_path / "images")]) == 2
    assert "'' is an empty path (an unset variable?)" in capsys.readouterr().err
    for opening in (
        lambda: Catalog.create("", small_model),
        lambda: Catalog.open(""),
        lambda: Catalog.open_or_create("", small_model),
    ):
        with pytest.raises(CatalogError, match="the catalog location is empty"):
            opening()
    assert not list(work.iterdir())


def test_an_empty_query_is_refused_not_read_as_the_current_directory(catalog: Catalog) -> None:
    for query in ("", ["item-01", ""]):
        with pytest.raises(CatalogError, match="the query is empty: give a catalog key or an image file"):
            catalog.search(query, k=1)


@pytest.mark.parametrize("kind", ["folder", "fifo", "device"])
def test_a_feed_or_metadata_file_that_is_not_a_regular_file_is_named_as_such_not_as_missing(
    tmp_path: Path, catalog: Catalog, kind: str
) -> None:
    import os

    from fashionrec_onnx.feeds.scan import read_metadata

    source = {"folder": tmp_path, "fifo": tmp_path / "feed.csv", "device": Path("/dev/zero")}[kind]
    if kind == "fifo":
        os.mkfifo(source)  # reading it would block for ever
    what = "a folder" if kind == "folder" else "not a regular file"
    with pytest.raises(CatalogError, match=f"feed {source} is {what}"):
        catalog.sync(source)
    with pytest.raises(CatalogError, match=f"metadata file {source} is {what}"):
        read_metadata(source)


def test_a_csv_header_naming_a_column_twice_is_refused(tmp_path: Path, catalog: Catalog) -> None:
    """Which of the two product ids a row had was decided silently (the last)."""
    (tmp_path / "a.png").write_bytes(png(1))
    feed = tmp_path / "feed.csv"
    feed.write_text("product_id,image,product_id,,\nA,a.png,B,,\n")
    with pytest.raises(
        CatalogError, match=r"feed.csv, line 1: the header names the column\(s\) 'product_id' more than once"
    ):
        catalog.sync(feed)
    assert len(catalog) == 40


@pytest.mark.parametrize("value", ["0", "nan", "2", "-1"])
def test_every_duplicates_threshold_out_of_range_gets_the_same_message(
    catalog: Catalog, capsys: pytest.CaptureFixture[str], value: str
) -> None:
    catalog.close()
    assert main(["duplicates", "--catalog", str(catalog.path), "--threshold", value]) == 2
    assert f"must be a number above 0, up to 1, not '{value}'" in capsys.readouterr().err


def test_a_vectors_file_with_a_null_or_empty_key_fails_those_rows_and_a_text_dimension_the_file(
    catalog: Catalog, tmp_path: Path
) -> None:
    """A null key was a traceback (AttributeError in the write gate); an empty one was stored."""
    table = vf.build_table(DIM, catalog.info.fingerprint, keys=["ok", "", "fine"], vectors=unit_vectors(3, 5))
    keys = table.schema.get_field_index("key")
    pq.write_table(
        table.set_column(keys, "key", pa.array(["ok", "", None], pa.string())), tmp_path / "keys.parquet"
    )
    report = import_vectors(catalog, tmp_path / "keys.parquet")
    assert report.added == 1 and report.skipped == [("", "no key"), ("", "no key")] and "" not in catalog
    meta = {**table.schema.metadata, vf.META_DIM: b"abc"}
    pq.write_table(table.replace_schema_metadata(meta), tmp_path / "dim.parquet")
    with pytest.raises(
        CatalogError, match="gives the vector dimension 'abc' in its metadata, not a whole number"
    ):
        import_vectors(catalog, tmp_path / "dim.parquet")


@pytest.mark.parametrize("key", ["", None])
def test_add_many_refuses_an_empty_or_missing_key(catalog: Catalog, key: object) -> None:
    with pytest.raises(CatalogError, match="every key must be a non-empty string"):
        catalog.add_many(["new", key], unit_vectors(2, 6))  # type: ignore[list-item]
    assert "new" not in catalog and len(catalog) == 40


def test_keys_holding_control_characters_cannot_forge_lines_or_drive_the_terminal(
    tmp_path: Path, small_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A file name is any bytes but / and NUL: one holding a newline printed a forged hit line,
    one holding ESC sent an escape sequence to the terminal."""
    images = tmp_path / "images"
    images.mkdir()
    forged, escape = "a\n  2  0.9999  forged.png", "b\x1b[2J.png"
    for n, name in enumerate((forged, escape, "c.png")):
        (images / name).write_bytes(png(30 + n))
    root = str(tmp_path / "catalog")
    assert main(["index", "--catalog", root, "--model", str(small_model), str(images)]) == 0
    capsys.readouterr()
    assert main(["search", "--catalog", root, "c.png", "-k", "2"]) == 0
    assert main(["duplicates", "--catalog", root, "--threshold", "0.01"]) == 0
    assert main(["remove", "--catalog", root, "nope\x1b[2J"]) == 1
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\n  2  0.9999  forged.png" not in out
    assert "a\\n  2  0.9999  forged.png" in out and "b\\x1b[2J.png" in out
    assert len([line for line in out.splitlines() if line.startswith(("  1  ", "  2  "))]) == 2


def test_add_many_normalises_huge_finite_vectors_on_both_backends(
    new_location: str, small_model: Path
) -> None:
    with Catalog.create(new_location, small_model) as catalog:
        wide = unit_vectors(1, 1).astype(np.float64) / np.abs(unit_vectors(1, 1)).max() * 1e308
        catalog.add_many(["huge", "wide"], np.stack([huge(1), wide[0]]))
        for key in ("huge", "wide"):
            assert np.dot(catalog.vector(key), unit_vectors(1, 1)[0]) > 0.9999
        with pytest.raises(CatalogError, match="NaN or infinite|not finite"):
            catalog.add_many(["nan"], np.full((1, DIM), np.nan))


# -- a field name holding a NUL (found by the held-out pass) -------------------------------------------


def test_a_feed_field_name_holding_a_nul_fails_its_row_and_stores_nothing_of_it(
    tmp_path: Path, catalog: Catalog
) -> None:
    """SQLite's JSON functions end a name at the NUL: the field would be listed as ``a`` and
    no filter could reach it, so such a name is refused like any metadata JSON cannot hold."""
    for name in ("a.png", "b.png"):
        (tmp_path / name).write_bytes(png(len(name)))
    feed = tmp_path / "feed.jsonl"
    feed.write_text(
        '{"product_id": "A", "image": "a.png", "a\\u0000b": 1}\n{"product_id": "B", "image": "b.png"}\n'
    )
    report = catalog.sync(feed)
    assert [f.line for f in report.failed] == [1] and "NUL" in report.failed[0].reason
    assert catalog.get("feed/b.png").metadata == {"product_id": "B"}
    with pytest.raises(CatalogError, match="no item has the metadata field 'a'; the fields are: product_id"):
        catalog.search("feed/b.png", filter={"a": 1})
