"""Variants of issue 25's attacks that the first fixes left open: each class closed by one rule
(a value fails its row, never the file; ids are text or finite numbers; client input has the
documented bounds; writes to a read-only catalog say what to do; one remover at a time)."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
import zlib
from collections import UserDict
from collections.abc import Iterator
from pathlib import Path
from types import MappingProxyType

import httpx
import numpy as np
import pytest
from feed_server import FeedServer, png

from fashionrec_onnx import Catalog, CatalogError
from fashionrec_onnx.cli import main
from fashionrec_onnx.errors import BadArgumentError
from fashionrec_onnx.feeds.download import DownloadSettings
from fashionrec_onnx.feeds.feed import read_feed
from fashionrec_onnx.feeds.lock import one_remover
from fashionrec_onnx.feeds.scan import read_metadata
from fashionrec_onnx.interchange import vector_files as vf
from fashionrec_onnx.interchange.vector_transfer import import_vectors
from fashionrec_onnx.service.config import MAX_TEXT

DIM = 2048


def unit_vectors(n: int, seed: int = 0) -> np.ndarray:
    vectors = np.random.default_rng(seed).normal(size=(n, DIM))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture()
def catalog(tmp_path: Path, small_model: Path) -> Iterator[Catalog]:
    with Catalog.create(tmp_path / "catalog", small_model) as opened:
        yield opened


def photos(folder: Path, *names: str) -> None:
    for n, name in enumerate(names):
        (folder / name).write_bytes(png(10 + n))


# -- feeds: ids are text or finite numbers; one value fails its row, not the file ----------------------


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "1e999", "[1, 2]", '{"a": 1}', "true"])
def test_a_product_id_that_is_not_text_or_a_finite_number_fails_its_row(
    tmp_path: Path, catalog: Catalog, value: str
) -> None:
    photos(tmp_path, "a.png", "b.png")
    feed = tmp_path / "feed.jsonl"
    feed.write_text(f'{{"product_id": {value}, "image": "a.png"}}\n{{"product_id": "B", "image": "b.png"}}\n')
    report = catalog.sync(feed)
    assert catalog.keys() == ["feed/b.png"] and [f.line for f in report.failed] == [1]
    assert "'product_id' value" in report.failed[0].reason
    assert [item.metadata for item in catalog.items()] == [{"product_id": "B"}]


def test_an_image_value_that_is_not_text_fails_its_row_and_nothing_is_removed_for_it(
    tmp_path: Path, catalog: Catalog
) -> None:
    photos(tmp_path, "a.png", "b.png")
    feed = tmp_path / "feed.jsonl"
    feed.write_text('{"product_id": "A", "image": "a.png"}\n{"product_id": "B", "image": "b.png"}\n')
    catalog.sync(feed)
    feed.write_text('{"product_id": "A", "image": NaN}\n{"product_id": "B", "image": "b.png"}\n')
    report = catalog.sync(feed)
    assert [f.line for f in report.failed] == [1] and "'image' value: nan is not a finite" in report.failed[
        0
    ].reason
    assert catalog.keys() == ["feed/a.png", "feed/b.png"] and report.removed == 0  # its image is unknown


def test_a_metadata_file_whose_key_is_nan_is_refused_naming_the_line(tmp_path: Path) -> None:
    source = tmp_path / "labels.jsonl"
    source.write_text('{"key": "a.png", "colour": "red"}\n{"key": NaN, "colour": "blue"}\n')
    with pytest.raises(CatalogError, match=rf"{source}, line 2: the 'key' value: nan is not a finite number"):
        read_metadata(source)


@pytest.mark.parametrize(
    "value",
    ["9" * 5000, "-" + "1" * 4400, "[" * 40 + "]" * 40, '{"a": ' * 50 + "1" + "}" * 50],
    ids=["5000-digits", "negative-4400-digits", "40-levels-of-lists", "50-levels-of-objects"],
)
def test_a_value_too_long_or_too_deep_fails_its_feed_row_naming_the_field(
    tmp_path: Path, catalog: Catalog, value: str
) -> None:
    photos(tmp_path, "a.png", "b.png")
    feed = tmp_path / "feed.jsonl"
    feed.write_text(
        f'{{"product_id": "A", "image": "a.png", "size": {value}}}\n{{"product_id": "B", "image": "b.png"}}\n'
    )
    report = catalog.sync(feed)
    assert catalog.keys() == ["feed/b.png"] and [(f.line, f.key) for f in report.failed] == [
        (1, "feed/a.png")
    ]
    assert report.failed[0].reason.startswith("field 'size': ")


def test_a_feed_line_that_cannot_be_read_fails_alone_and_holds_back_removals(
    tmp_path: Path, catalog: Catalog
) -> None:
    photos(tmp_path, "a.png", "b.png")
    feed = tmp_path / "feed.jsonl"
    feed.write_text('{"product_id": "A", "image": "a.png"}\n{"product_id": "B", "image": "b.png"}\n')
    catalog.sync(feed)
    deep = "[" * 5000 + "]" * 5000
    feed.write_text(
        f'{{"product_id": "A", "image": "a.png", "x": {deep}}}\n{{"product_id": "B", "image": "b.png"}}\n'
    )
    report = catalog.sync(feed)
    assert [f.line for f in report.failed] == [1] and "nested too deeply" in report.failed[0].reason
    assert report.removed == 0 and catalog.keys() == ["feed/a.png", "feed/b.png"]  # a.png may still be in it
    feed.write_text('{"product_id": "B", "image": "b.png"}\n')
    assert catalog.sync(feed).removed == 1  # once every line reads, what left the feed goes


def test_a_jsonl_feed_starting_with_a_byte_order_mark_is_read(tmp_path: Path) -> None:
    feed = tmp_path / "feed.jsonl"
    feed.write_bytes('\ufeff{"product_id": "A", "image": "a.png"}\n'.encode())
    assert [(row.line, row.product) for row in read_feed(feed).rows] == [(1, "A")]


def test_a_csv_value_over_the_field_limit_is_reported_on_its_own_line(tmp_path: Path) -> None:
    feed = tmp_path / "feed.csv"
    feed.write_text(
        'product_id,image,text\nA,a.png,x\n\nB,b.png,"two\nlines"\nC,c.png,' + "y" * 200_000 + "\nD,d.png,z\n"
    )
    with pytest.raises(CatalogError, match=rf"{feed}, line 6: field larger than field limit"):
        read_feed(feed)


def test_csv_rows_after_blank_lines_are_numbered_by_their_own_line(tmp_path: Path) -> None:
    feed = tmp_path / "feed.csv"
    feed.write_text("product_id,image\n\nA,a.png\n\n\nB,b.png,extra\n")
    feed_rows = read_feed(feed)
    assert [row.line for row in feed_rows.rows] == [3, 6]


# -- Parquet: one row's metadata fails that row -------------------------------------------------------


def test_parquet_rows_with_unreadable_metadata_are_skipped_and_the_others_imported(
    tmp_path: Path, small_model: Path, catalog: Catalog
) -> None:
    texts = [
        '{"price": 1}', '{"n": ' + "9" * 5000 + "}", '{"x": ' + "[" * 40 + "]" * 40 + "}",
        "[" * 5000 + "]" * 5000, "not json", "[1, 2]",
    ]  # fmt: skip
    keys = ["ok", "digits", "deep", "deeper", "garbage", "list"]
    folder = tmp_path / "vectors"
    table = vf.build_table(DIM, catalog.info.fingerprint, keys=keys, vectors=unit_vectors(6), metadata=texts)
    vf.write_file(folder / "a.parquet", table)
    report = import_vectors(catalog, folder)
    assert catalog.keys() == ["ok"] and [key for key, _ in report.skipped] == keys[1:]
    reasons = dict(report.skipped)
    assert "5,000 digits" in reasons["digits"] and "nested deeper than 32" in reasons["deep"]
    assert catalog.verify() == []


# -- a read-only catalog: every write says why and what to do, in the words of its user ----------------


def test_writes_on_a_read_only_medium_say_what_to_do_in_one_line_and_claim_nothing(
    tmp_path: Path, small_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from test_integrity import remount_read_only, tmpfs

    (tmp_path / "images").mkdir()
    photos(tmp_path / "images", "a.png")
    with tmpfs(tmp_path / "disk", 64) as disk:
        with Catalog.create(disk / "catalog", small_model) as created:
            created.add_many([f"a-{i}" for i in range(20)], unit_vectors(20))
        del created
        remount_read_only(disk)
        capsys.readouterr()
        where = ["--catalog", str(disk / "catalog")]
        assert main(["remove", *where, "a-1"]) == 2
        assert main(["reduce", *where, "--dim", "8"]) == 2
        assert main(["index", str(tmp_path / "images"), *where, "--product-field", "sku"]) == 2
        err = capsys.readouterr().err
        errors = [line for line in err.splitlines() if line.startswith("error:")]
        assert len(errors) == 3 and "the product field is now" not in err
        assert "a removal was refused" in errors[0] and "a reduction was refused" in errors[1]
        assert "a change of the product field was refused" in errors[2]
        for error in errors:
            assert "cannot write it" in error and "as a user who can write" in error
            assert "readonly=True" not in error


def test_writes_to_a_catalog_opened_with_readonly_say_so(catalog: Catalog) -> None:
    catalog.add_many(["a"], unit_vectors(1))
    with Catalog.open(catalog.path, readonly=True) as reader:
        for write, what in [
            (lambda: reader.remove("a"), "a removal"),
            (lambda: reader.reduce(1), "a reduction"),
            (lambda: reader.update_metadata({"a": {"x": 1}}), "a metadata update"),
            (lambda: reader.add_many(["b"], unit_vectors(1)), "this write"),
            (lambda: reader.set_product_field("x"), "a change of the product field"),
        ]:
            refused = f"{what} was refused and nothing changed: it was opened read-only"
            with pytest.raises(CatalogError, match=refused):
                write()
    assert catalog.keys() == ["a"] and catalog.get("a").metadata == {}


# -- the Python API: metadata that is not JSON is refused in words, never a TypeError -------------------


@pytest.mark.parametrize(
    "value",
    [MappingProxyType({"b": 1}), UserDict({"b": 1}), [MappingProxyType({"b": 1})], {"c": UserDict()}],
    ids=["mappingproxy", "UserDict", "in-a-list", "two-levels-down"],
)
def test_a_nested_mapping_that_is_not_a_dict_is_refused_naming_the_item_and_field(
    catalog: Catalog, value: object
) -> None:
    catalog.add_many(["a"], unit_vectors(1), metadata=[{"x": 1}])
    refused = pytest.raises(BadArgumentError, match=r"item 'a': metadata field 'f': .* is not a JSON object")
    with refused:
        catalog.add_many(["a"], unit_vectors(1), metadata=[{"f": value}])
    with refused:
        catalog.update_metadata({"a": {"f": value}})
    assert catalog.get("a").metadata == {"x": 1}


# -- the service: every key has the documented bound; a pixel bomb's 413 tells the truth ---------------


def declared_png(width: int, height: int) -> bytes:
    """A PNG whose header declares ``width x height`` (no pixel data follows it)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0"))
        + chunk(b"IEND", b"")
    )


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, small_model: Path) -> Iterator[httpx.Client]:
    from test_service import make_catalog, served

    catalog_dir = make_catalog(tmp_path_factory.mktemp("variants"), small_model)
    with served(catalog_dir) as address, httpx.Client(base_url=address, timeout=120) as client:
        yield client


@pytest.mark.parametrize("width, height", [(20_000, 20_000), (60_000, 50_000)])
def test_a_pixel_bomb_upload_is_413_with_its_real_size(
    service: httpx.Client, width: int, height: int
) -> None:
    answer = service.post("/search", files={"image": ("bomb.png", declared_png(width, height), "image/png")})
    assert answer.status_code == 413 and answer.json()["error"] == "image_too_large"
    detail = answer.json()["detail"]
    assert f"{width * height:,} pixels" in detail and "50,000,001" not in detail


def test_an_items_key_over_the_bound_is_422_naming_it(service: httpx.Client) -> None:
    answer = service.get("/items/" + "k" * (MAX_TEXT + 1))
    assert answer.status_code == 422 and answer.json()["error"] == "bad_parameter"
    assert f"at most {MAX_TEXT} characters" in answer.json()["detail"]
    assert service.get("/items/" + "k" * MAX_TEXT).status_code == 404  # at the bound: looked up


# -- one remover at a time: a sync and `index --prune` of one catalog --------------------------------------


def test_an_index_prune_during_a_sync_is_refused_and_a_sync_during_a_prune_too(
    tmp_path: Path, catalog: Catalog
) -> None:
    server = FeedServer()
    try:
        for n in range(4):
            server.images[f"{n}.png"] = png(200 + n)
        feed = tmp_path / "feed.csv"
        feed.write_text(
            "product_id,image\n" + "".join(f"P{n},{server.url(f'/img/{n}.png')}\n" for n in range(4))
        )
        (tmp_path / "photos").mkdir()
        photos(tmp_path / "photos", "a.png")
        server.gate.clear()  # the sync's downloads wait until the prune is refused
        patient = DownloadSettings(timeout=30, allow_private_network=True)
        results: list = []
        running = threading.Thread(target=lambda: results.append(catalog.sync(feed, download=patient)))
        running.start()
        try:
            while not server.requests and running.is_alive():
                time.sleep(0.01)
            with (
                Catalog.open(catalog.path) as other,
                pytest.raises(CatalogError, match="another sync of .* is running"),
            ):
                other.index_folder(tmp_path / "photos", prune=True, progress=False)
        finally:
            server.gate.set()
            running.join()
        assert results[0].added == 4 and catalog.keys(prefix="feed/") == [
            f"feed/{server.url(f'/img/{n}.png')}" for n in range(4)
        ]
    finally:
        server.stop()
    running_prune = pytest.raises(CatalogError, match=r"an `index --prune` of .* is running \(process \d+\)")
    with one_remover(catalog.path.resolve(), "index --prune"), running_prune:
        catalog.sync(feed, download=patient)
    assert catalog.index_folder(tmp_path / "photos", prune=True, progress=False).added == 1  # the lock went


def test_index_prune_never_removes_a_feeds_items_even_with_their_files_gone(
    tmp_path: Path, catalog: Catalog
) -> None:
    (tmp_path / "photos").mkdir()
    photos(tmp_path / "photos", "p0.png", "p1.png")
    feed = tmp_path / "feed.csv"
    feed.write_text("product_id,image\nA,photos/p1.png\n")
    catalog.sync(feed)
    (tmp_path / "photos" / "p1.png").unlink()
    report = catalog.index_folder(tmp_path / "photos", prune=True, key_prefix="x/", progress=False)
    assert report.added == 1 and report.removed == 0
    assert catalog.keys() == ["feed/photos/p1.png", "x/p0.png"]


# -- an image server answering what is not HTTP costs its row, without a traceback ------------------------


class RawServer:
    """Answers every connection with the bytes its path names (a hostile server's own HTTP)."""

    def __init__(self, answers: dict[str, bytes]) -> None:
        self.answers = answers
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            with connection:
                request = connection.recv(65536).decode(errors="replace")
                path = request.split(" ")[1] if " " in request else ""
                with contextlib.suppress(OSError):
                    connection.sendall(self.answers.get(path, b"HTTP/1.1 404 Not Found\r\n\r\n"))

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nX-Long: " + b"a" * 70_000 + b"\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-%d: a\r\n" % n for n in range(200)) + b"\r\n",
        b"HTTP/1.1 200 " + b"O" * 70_000 + b"\r\n\r\n",
        b"HTTP/9.9 200 OK\r\n\r\n",
    ],
    ids=["header-over-64kB", "200-headers", "status-line-over-64kB", "unknown-version"],
)
def test_an_image_server_answering_what_is_not_http_fails_that_row_without_a_traceback(
    tmp_path: Path, catalog: Catalog, answer: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    server = RawServer({"/bad.png": answer})
    feed = tmp_path / "feed.csv"
    feed.write_text(f"product_id,image\nA,{server.url('/bad.png')}\n")
    report = catalog.sync(feed, download=DownloadSettings(timeout=2, retries=0, allow_private_network=True))
    assert (
        report.added == 0 and "the server's answer is not HTTP this client reads" in report.failed[0].reason
    )
    assert not [record for record in caplog.records if record.exc_info]
    server.listener.close()


# -- the Python API: a setting or argument that is not a whole number is refused, never stored ------------


@pytest.mark.parametrize("ef", [float("nan"), 1.5, True, "64"], ids=["nan", "1.5", "True", "text"])
def test_set_ef_refuses_what_is_not_a_whole_number_and_the_catalog_still_opens(
    catalog: Catalog, ef: object
) -> None:
    catalog.add_many(["a", "b"], unit_vectors(2))
    with pytest.raises(BadArgumentError, match="ef must be a whole number"):
        catalog.set_ef(ef)  # type: ignore[arg-type]
    catalog.close()
    with Catalog.open(catalog.path) as reopened:
        assert reopened.params.ef == 128 and [hit.key for hit in reopened.search("a", k=2)] == ["b"]


@pytest.mark.parametrize("param", ["M", "ef_construction", "ef"])
def test_a_catalog_is_not_created_with_graph_parameters_that_are_not_whole_numbers(
    tmp_path: Path, small_model: Path, param: str
) -> None:
    with pytest.raises(BadArgumentError, match=f"{param} must be a whole number, got nan"):
        Catalog.create(tmp_path / "c", small_model, **{param: float("nan")})


def test_metadata_or_keys_of_the_wrong_type_are_refused_in_words_through_the_api(catalog: Catalog) -> None:
    catalog.add_many(["a"], unit_vectors(1), metadata=[{"x": 1}])
    with pytest.raises(BadArgumentError, match=r"item 'a': metadata is a mapping .* not a list"):
        catalog.update_metadata({"a": [1, 2]})  # type: ignore[dict-item]
    with pytest.raises(BadArgumentError, match=r"item 'b': .* not a list"):
        catalog.add_many(["b"], unit_vectors(1), metadata=[[1, 2]])  # type: ignore[list-item]
    with pytest.raises(BadArgumentError, match="keys are text; got nan"):
        catalog.remove(float("nan"))  # type: ignore[arg-type]
    with pytest.raises(BadArgumentError, match="check needs k >= 1"):
        catalog.check(k=float("nan"))  # type: ignore[arg-type]
    assert catalog.keys() == ["a"] and catalog.get("a").metadata == {"x": 1}


@pytest.mark.parametrize(
    "options, message",
    [
        ({"reduce_to": float("nan")}, "reduce_to is a whole number"),
        ({"reduce_to": 1.5}, "reduce_to is a whole number"),
        ({"ef": 10**30}, "ef_construction and ef must be from 1 to"),
        ({"ef_construction": 2**40}, "ef_construction and ef must be from 1 to"),
        ({"product_field": "sku\x00"}, "a product field is a metadata field name"),
    ],
    ids=["reduce_to-nan", "reduce_to-1.5", "ef-10**30", "ef_construction-2**40", "product-field-nul"],
)
def test_create_refuses_settings_it_could_not_read_back_or_use(
    tmp_path: Path, small_model: Path, options: dict, message: str
) -> None:
    with pytest.raises(BadArgumentError, match=message):
        Catalog.create(tmp_path / "c", small_model, **options)
    assert not (tmp_path / "c" / "catalog.sqlite").exists()


def test_reduce_and_the_product_field_refuse_what_they_could_not_use(catalog: Catalog) -> None:
    catalog.add_many([f"k{i}" for i in range(8)], unit_vectors(8), metadata=[{"sku": "same"}] * 8)
    for dim in (2.5, True, float("nan")):
        with pytest.raises(BadArgumentError, match="a whole number of dimensions"):
            catalog.reduce(dim)  # type: ignore[arg-type]
    with pytest.raises(BadArgumentError, match="a product field is a metadata field name"):
        catalog.set_product_field("sku\x00")  # SQLite's JSON paths end at a NUL: it would group by 'sku'
    assert catalog.reduction is None and catalog.product_field is None


def test_a_jsonl_value_holding_a_unicode_line_separator_stays_in_its_row(tmp_path: Path) -> None:
    feed = tmp_path / "feed.jsonl"
    text = (
        '{"product_id": "A", "image": "a.png", "text": "one\u2028two\x85three\x1cfour"}\n'
        '{"product_id": "B", "image": "b.png"}\n'
    )
    feed.write_text(text, encoding="utf-8")
    read = read_feed(feed)
    assert read.bad == [] and [(row.line, row.product) for row in read.rows] == [(1, "A"), (2, "B")]
    assert read.rows[0].fields["text"] == "one\u2028two\x85three\x1cfour"


def test_a_feed_that_is_not_utf8_is_refused_saying_so(tmp_path: Path) -> None:
    feed = tmp_path / "feed.csv"
    feed.write_bytes("product_id,image\nA,a.png\n".encode("utf-16"))
    with pytest.raises(CatalogError, match=rf"cannot read {feed} \(give UTF-8 text\)"):
        read_feed(feed)


def test_a_sync_lock_that_is_a_link_is_refused_and_its_target_left_alone(
    tmp_path: Path, catalog: Catalog
) -> None:
    photos(tmp_path, "a.png")
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    (catalog.path / ".sync.lock").symlink_to(target)
    feed = tmp_path / "feed.csv"
    feed.write_text("product_id,image\nA,a.png\n")
    with pytest.raises(CatalogError, match="cannot create the sync lock"):
        catalog.sync(feed)
    assert target.read_text() == "keep me" and len(catalog) == 0


def test_an_image_url_whose_header_declares_a_pixel_bomb_fails_its_row_without_a_traceback(
    tmp_path: Path, catalog: Catalog, caplog: pytest.LogCaptureFixture
) -> None:
    bomb = declared_png(30_000, 30_000)
    answer = b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: %d\r\n\r\n" % len(bomb) + bomb
    server = RawServer({"/bomb.png": answer})
    feed = tmp_path / "feed.csv"
    feed.write_text(f"product_id,image\nA,{server.url('/bomb.png')}\n")
    report = catalog.sync(feed, download=DownloadSettings(timeout=2, retries=0, allow_private_network=True))
    assert (
        report.added == 0 and "too large an image (Image size (900000000 pixels)" in report.failed[0].reason
    )
    assert not [record for record in caplog.records if record.exc_info]
    server.listener.close()


def test_reduce_of_a_catalog_holding_a_rotten_vector_fits_on_the_others_and_never_answers_it(
    catalog: Catalog,
) -> None:
    from test_poisoning import rot

    catalog.add_many([f"item-{n:02d}" for n in range(40)], unit_vectors(40))
    rot(catalog, "item-07")
    assert catalog.reduce(8) is not None and catalog.reduction is not None  # was numpy's LinAlgError
    hits = catalog.search("item-08", k=39)
    assert "item-07" not in [hit.key for hit in hits] and all(np.isfinite(hit.similarity) for hit in hits)
    assert catalog.left_out_of_graph() == ["item-07"]
    # the compact tier holds the rotten row with infinite bounds: exact search and check read the
    # other 39 (a NaN in a block's statistics once hid the whole block) and never item-07
    exact = [hit.key for hit in catalog.exact_search("item-08", k=39)]
    assert sorted(exact) == sorted(f"item-{n:02d}" for n in range(40) if n not in (7, 8))
    report = catalog.check(k=5, sample=40)
    assert (report.queries, report.recall) == (39, 1.0)


def test_a_sync_with_an_images_root_that_is_not_a_folder_is_refused_before_any_change(
    tmp_path: Path, catalog: Catalog
) -> None:
    photos(tmp_path, "a.png")
    feed = tmp_path / "feed.csv"
    feed.write_text("product_id,image\nA,a.png\n")
    for root in (tmp_path / "missing", tmp_path / "a.png"):
        with pytest.raises(CatalogError, match=f"the images root {root} is not a folder; nothing was done"):
            catalog.sync(feed, images_root=root)
    assert catalog.product_field is None and len(catalog) == 0


def test_an_integer_id_of_any_length_is_kept_as_text_while_such_a_value_fails_its_row(
    tmp_path: Path, catalog: Catalog
) -> None:
    photos(tmp_path, "a.png", "b.png")
    sku = "1" * 25
    feed = tmp_path / "feed.jsonl"
    feed.write_text(
        f'{{"product_id": {sku}, "image": "a.png"}}\n{{"product_id": "B", "image": "b.png", "n": {sku}}}\n'
    )
    report = catalog.sync(feed)
    assert catalog.keys() == ["feed/a.png"] and catalog.get("feed/a.png").metadata == {"product_id": sku}
    assert [f.line for f in report.failed] == [2] and "25 digits" in report.failed[0].reason
    labels = tmp_path / "labels.jsonl"
    labels.write_text(f'{{"key": {sku}, "colour": "red"}}\n')
    assert read_metadata(labels)[sku] == {"colour": "red"}
