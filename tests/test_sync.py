"""Feed sync: a catalog kept in step with a product feed of local files and URLs served by a real
HTTP server on 127.0.0.1 (tests/feed_server.py)."""

from __future__ import annotations

import csv
import dataclasses
import json
import re
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from feed_server import FeedServer, png
from killing import kill_when

from fashionrec_onnx import Catalog, CatalogError
from fashionrec_onnx.cli import main
from fashionrec_onnx.errors import DownloadError
from fashionrec_onnx.feeds.download import DownloadSettings, ImageCache, address_problem

# The test shop listens on 127.0.0.1: a private address, refused unless allowed. A patient
# timeout: on a loaded machine 0.3 s can pass before the shop's thread answers, and a retry would
# count a second request (only the tests of a slow shop set a short one).
ONE_RETRY = DownloadSettings(
    timeout=30.0, deadline=60.0, max_bytes=1024 * 1024, retries=1, backoff=0.01, allow_private_network=True
)
LOCAL = DownloadSettings(allow_private_network=True)


@pytest.fixture()
def server() -> Iterator[FeedServer]:
    served = FeedServer()
    yield served
    served.stop()


@pytest.fixture()
def catalog(tmp_path: Path, small_model: Path) -> Iterator[Catalog]:
    with Catalog.create(tmp_path / "catalog", small_model) as opened:
        yield opened


def write_feed(path: Path, rows: list[dict[str, object]]) -> Path:
    columns = list(dict.fromkeys(name for row in rows for name in row))
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def local_shop(folder: Path, count: int = 4) -> Path:
    """``count`` photos of two products in ``folder/photos``, and their feed."""
    (folder / "photos").mkdir(parents=True, exist_ok=True)
    rows = []
    for n in range(count):
        (folder / "photos" / f"p{n}.png").write_bytes(png(100 + n))
        rows.append({"product_id": f"P{n // 2}", "image": f"photos/p{n}.png", "colour": f"c{n}"})
    return write_feed(folder / "feed.csv", rows)


def generation(catalog: Catalog) -> int:
    with sqlite3.connect(catalog.path / "catalog.sqlite") as db:
        return int(db.execute("SELECT value FROM settings WHERE name = 'generation'").fetchone()[0])


# -- local files ---------------------------------------------------------------------------------


def test_sync_adds_every_row_under_the_feed_prefix_with_its_fields(tmp_path: Path, catalog: Catalog) -> None:
    report = catalog.sync(local_shop(tmp_path))
    assert (report.added, report.failed) == (4, [])
    assert sorted(catalog.keys()) == [f"feed/photos/p{n}.png" for n in range(4)]
    item = catalog.get("feed/photos/p3.png")
    assert item.metadata == {"product_id": "P1", "colour": "c3"}
    assert item.path == str(tmp_path / "photos" / "p3.png")


def test_sync_makes_the_product_column_the_catalog_product_field(tmp_path: Path, catalog: Catalog) -> None:
    catalog.sync(local_shop(tmp_path))
    assert catalog.product_field == "product_id"


def test_a_catalog_grouping_products_by_another_field_refuses_the_feed(
    tmp_path: Path, catalog: Catalog
) -> None:
    catalog.set_product_field("sku")
    with pytest.raises(CatalogError, match="product-column sku"):
        catalog.sync(local_shop(tmp_path))
    assert len(catalog) == 0


def test_second_sync_changes_nothing_and_keeps_the_generation(tmp_path: Path, catalog: Catalog) -> None:
    feed = local_shop(tmp_path)
    catalog.sync(feed)
    before = generation(catalog)
    report = catalog.sync(feed)
    assert (report.unchanged, report.changed, generation(catalog)) == (4, False, before)


def test_changed_local_image_is_reembedded(tmp_path: Path, catalog: Catalog) -> None:
    feed = local_shop(tmp_path)
    catalog.sync(feed)
    old = catalog.vector("feed/photos/p0.png")
    (tmp_path / "photos" / "p0.png").write_bytes(png(999))
    report = catalog.sync(feed)
    assert (report.reembedded, report.unchanged) == (1, 3)
    assert not np.allclose(catalog.vector("feed/photos/p0.png"), old)


def test_changed_field_is_rewritten_in_place_without_reembedding(tmp_path: Path, catalog: Catalog) -> None:
    feed = local_shop(tmp_path)
    catalog.sync(feed)
    label = catalog.get("feed/photos/p1.png").label
    text = feed.read_text().replace("P0,photos/p1.png,c1", "P9,photos/p1.png,c1")
    feed.write_text(text)
    report = catalog.sync(feed)
    assert (report.updated, report.reembedded, report.added) == (1, 0, 0)
    item = catalog.get("feed/photos/p1.png")
    assert (item.label, item.metadata["product_id"]) == (label, "P9")


def test_image_that_left_the_feed_is_removed(tmp_path: Path, catalog: Catalog) -> None:
    feed = local_shop(tmp_path)
    catalog.sync(feed)
    lines = feed.read_text().splitlines()
    feed.write_text("\n".join(lines[:-1]) + "\n")  # p3 leaves the feed
    report = catalog.sync(feed)
    assert report.removed == 1 and "feed/photos/p3.png" not in catalog
    assert catalog.removed_keys() == []  # not a removal by hand: the feed decides


def test_sync_never_removes_items_indexed_from_a_folder(tmp_path: Path, catalog: Catalog) -> None:
    local_shop(tmp_path / "folder")
    catalog.index_folder(tmp_path / "folder" / "photos", progress=False)
    indexed = set(catalog.keys())
    feed = local_shop(tmp_path / "shop", count=2)
    catalog.sync(feed)
    feed.write_text("\n".join(feed.read_text().splitlines()[:2]) + "\n")  # p1 leaves the feed
    report = catalog.sync(feed)
    assert report.removed == 1 and indexed <= set(catalog.keys())


def test_missing_local_file_is_reported_and_the_sync_goes_on(tmp_path: Path, catalog: Catalog) -> None:
    feed = local_shop(tmp_path)
    (tmp_path / "photos" / "p2.png").unlink()
    report = catalog.sync(feed)
    assert report.added == 3
    assert [(f.line, f.key) for f in report.failed] == [(4, "feed/photos/p2.png")]
    assert "file not found" in report.failed[0].reason


def test_rows_without_product_id_or_repeating_an_image_are_reported(tmp_path: Path, catalog: Catalog) -> None:
    (tmp_path / "a.png").write_bytes(png(1))
    feed = write_feed(
        tmp_path / "feed.csv",
        [
            {"product_id": "A", "image": "a.png"},
            {"product_id": "B", "image": "a.png"},
            {"product_id": "", "image": "b.png"},
        ],
    )
    report = catalog.sync(feed)
    reasons = {failed.line: failed.reason for failed in report.failed}
    assert report.added == 1 and "same image as line 2" in reasons[3] and "no 'product_id'" in reasons[4]


def test_failed_rows_are_listed_in_the_feeds_line_order(tmp_path: Path, catalog: Catalog) -> None:
    """Rows refused while reading the feed and rows whose image failed come out in one order."""
    (tmp_path / "b.png").write_bytes(png(2))
    feed = write_feed(
        tmp_path / "feed.csv",
        [
            {"product_id": "A", "image": "missing.png"},
            {"product_id": "B", "image": "b.png"},
            {"product_id": "", "image": "c.png"},
        ],
    )
    report = catalog.sync(feed)
    assert report.added == 1 and [failed.line for failed in report.failed] == [2, 4]


def test_url_of_another_scheme_is_reported(tmp_path: Path, catalog: Catalog) -> None:
    feed = write_feed(tmp_path / "feed.csv", [{"product_id": "A", "image": "s3://shop/a.png"}])
    report = catalog.sync(feed)
    assert "only http:// and https://" in report.failed[0].reason


def test_feed_without_the_image_column_names_the_option(tmp_path: Path, catalog: Catalog) -> None:
    feed = write_feed(tmp_path / "feed.csv", [{"product_id": "A", "url": "a.png"}])
    with pytest.raises(CatalogError, match="--image-column"):
        catalog.sync(feed)


def test_jsonl_feed_with_numeric_product_ids_and_an_images_root(tmp_path: Path, catalog: Catalog) -> None:
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "a.png").write_bytes(png(1))
    feed = tmp_path / "feed.jsonl"
    feed.write_text(json.dumps({"sku": 1042, "photo": "a.png", "price": 19.9}) + "\n")
    report = catalog.sync(feed, images_root=tmp_path / "root", product_column="sku", image_column="photo")
    assert report.added == 1
    assert catalog.get("feed/a.png").metadata == {"sku": "1042", "price": 19.9}


# -- URLs ----------------------------------------------------------------------------------------


def url_shop(tmp_path: Path, server: FeedServer, names: list[str], extra: list[str] = ()) -> Path:
    for n, name in enumerate(names):
        server.images[name] = png(200 + n)
    rows = [{"product_id": f"P{n}", "image": server.url(f"/img/{name}")} for n, name in enumerate(names)]
    rows += [{"product_id": "X", "image": server.url(path)} for path in extra]
    return write_feed(tmp_path / "feed.csv", rows)


def test_url_images_are_cached_in_the_catalog_under_their_digest(
    tmp_path: Path, catalog: Catalog, server: FeedServer
) -> None:
    feed = url_shop(tmp_path, server, ["a.png", "b.png"])
    report = catalog.sync(feed, download=ONE_RETRY)
    assert (report.added, report.downloaded) == (2, 2)
    path = Path(catalog.get(f"feed/{server.url('/img/a.png')}").path)
    assert path.parent == (catalog.path / "feed-images").resolve()
    assert path.read_bytes() == server.images["a.png"] and len(path.stem) == 64


def test_unchanged_url_images_are_not_fetched_again(
    tmp_path: Path, catalog: Catalog, server: FeedServer
) -> None:
    feed = url_shop(tmp_path, server, ["a.png", "b.png"])
    catalog.sync(feed, download=ONE_RETRY)
    before = generation(catalog)
    report = catalog.sync(feed, download=ONE_RETRY)
    assert (report.not_modified, report.downloaded, report.changed) == (2, 0, False)
    assert server.bodies == {"/img/a.png": 1, "/img/b.png": 1}  # the second sync got 304s
    assert generation(catalog) == before


def test_changed_url_image_is_reembedded(tmp_path: Path, catalog: Catalog, server: FeedServer) -> None:
    feed = url_shop(tmp_path, server, ["a.png", "b.png"])
    catalog.sync(feed, download=ONE_RETRY)
    key = f"feed/{server.url('/img/a.png')}"
    old_path, old_vector = catalog.get(key).path, catalog.vector(key)
    server.images["a.png"] = png(777)  # a new ETag
    report = catalog.sync(feed, download=ONE_RETRY)
    assert (report.reembedded, report.unchanged) == (1, 1)
    assert catalog.get(key).path != old_path and not np.allclose(catalog.vector(key), old_vector)
    assert not Path(old_path).exists()  # the replaced image left the cache


def test_trickling_download_stops_at_the_deadline(tmp_path: Path, server: FeedServer) -> None:
    settings = DownloadSettings(timeout=5.0, deadline=0.5, retries=0, allow_private_network=True)
    with pytest.raises(DownloadError, match=r"not done within 0\.5s"):
        ImageCache(tmp_path, settings).fetch(server.url("/trickle.png"))


def test_server_error_is_retried(tmp_path: Path, catalog: Catalog, server: FeedServer) -> None:
    feed = url_shop(tmp_path, server, [], extra=["/flaky.png"])
    report = catalog.sync(feed, download=ONE_RETRY)
    assert (report.added, report.failed, server.requests["/flaky.png"]) == (1, [], 2)


@pytest.mark.parametrize(
    ("path", "reason", "requests"),
    [
        ("/img/gone.png", "HTTP 404", 1),  # not retried
        ("/slow.png", "no answer within 0.3s (after 2 attempts)", 2),
        ("/oversized.png", "too large: 2,", 1),  # announced by Content-Length
        ("/oversized-unannounced.png", "too large: more than", 1),  # counted while read
        ("/page.png", "not an image (text/html", 1),
    ],
    ids=["missing", "slow", "oversized", "oversized-unannounced", "not-an-image"],
)
def test_url_that_cannot_be_had_is_reported_and_the_sync_goes_on(
    tmp_path: Path, catalog: Catalog, server: FeedServer, path: str, reason: str, requests: int
) -> None:
    feed = url_shop(tmp_path, server, ["a.png"], extra=[path])
    settings = dataclasses.replace(ONE_RETRY, timeout=0.3) if path == "/slow.png" else ONE_RETRY
    report = catalog.sync(feed, download=settings)
    assert report.added == 1 and [failed.line for failed in report.failed] == [3]
    assert reason in report.failed[0].reason and server.requests[path] == requests
    assert len(list((catalog.path / "feed-images").glob("*.*"))) == 1  # nothing else was cached


def test_failed_row_keeps_the_item_it_had(tmp_path: Path, catalog: Catalog, server: FeedServer) -> None:
    feed = url_shop(tmp_path, server, ["a.png", "b.png"])
    catalog.sync(feed, download=ONE_RETRY)
    key = f"feed/{server.url('/img/a.png')}"
    before = catalog.get(key)
    del server.images["a.png"]  # now a 404
    report = catalog.sync(feed, download=ONE_RETRY)
    assert (len(report.failed), report.removed) == (1, 0)
    assert catalog.get(key) == before


def test_download_error_names_the_url_and_the_reason(tmp_path: Path, server: FeedServer) -> None:
    with pytest.raises(DownloadError, match=r"cannot download http://127\.0\.0\.1:\d+/img/x\.png: HTTP 404"):
        ImageCache(tmp_path, ONE_RETRY).fetch(server.url("/img/x.png"))


# -- the command ---------------------------------------------------------------------------------


def test_cli_sync_prints_json_and_exits_1_when_rows_failed(
    tmp_path: Path, small_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    feed = local_shop(tmp_path)
    (tmp_path / "photos" / "p0.png").unlink()
    code = main(["sync", str(feed), "--catalog", str(tmp_path / "c"), "--model", str(small_model), "--json"])
    report = json.loads(capsys.readouterr().out)
    assert (code, report["added"], report["items"], len(report["failed"])) == (1, 3, 3, 1)


def test_cli_sync_exits_0_when_every_row_synced(
    tmp_path: Path, small_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    feed = local_shop(tmp_path)
    args = ["sync", str(feed), "--catalog", str(tmp_path / "c"), "--model", str(small_model), "--quiet"]
    assert main(args) == 0
    assert "4 added" in capsys.readouterr().out


def test_cli_sync_progress_bar_ends_at_every_row_of_the_report(
    tmp_path: Path, small_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The bar's last count is the report's row count: rows refused on reading (a repeated image),
    a missing file after the last chunk of the model (batch size 1: chunks of 4 rows), and rows
    left unchanged on the second run (it ended one or two rows short)."""
    feed = local_shop(tmp_path)
    rows = list(csv.DictReader(feed.open(encoding="utf-8")))
    rows += [{"product_id": "P9", "image": "photos/p0.png"}, {"product_id": "P9", "image": "photos/gone.png"}]
    write_feed(feed, rows)
    args = ["sync", str(feed), "--catalog", str(tmp_path / "c"), "--model", str(small_model)]
    first = "4 added, 0 re-embedded, 0 updated, 0 removed, 0 unchanged, 2 failed"
    second = "0 added, 0 re-embedded, 0 updated, 0 removed, 4 unchanged, 2 failed"
    for summary in (first, second):
        assert main([*args, "--batch-size", "1"]) == 1
        out, err = capsys.readouterr()
        assert "synced 6 feed rows" in out and summary in out
        counts = re.findall(r"syncing: .*?(\d+)/(\d+) ", err)
        assert counts and counts[-1] == ("6", "6"), err


def test_cli_sync_of_a_feed_without_the_product_column_exits_2_and_creates_nothing(
    tmp_path: Path, small_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    feed = write_feed(tmp_path / "feed.csv", [{"sku": "A", "image": "a.png"}])
    args = ["sync", str(feed), "--catalog", str(tmp_path / "c"), "--model", str(small_model)]
    assert main(args) == 2
    assert "--product-column" in capsys.readouterr().err and not (tmp_path / "c").exists()


def test_cli_sync_takes_product_field_as_the_product_column(
    tmp_path: Path, small_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "a.png").write_bytes(png(1))
    feed = write_feed(tmp_path / "feed.csv", [{"sku": "A", "image": "a.png"}])
    args = ["sync", str(feed), "--catalog", str(tmp_path / "c"), "--model", str(small_model), "--quiet"]
    assert main([*args, "--product-field", "sku"]) == 0
    with Catalog.open(tmp_path / "c") as catalog:
        assert (catalog.product_field, catalog.get("feed/a.png").metadata) == ("sku", {"sku": "A"})


def test_cli_sync_refuses_product_field_and_column_that_disagree(
    tmp_path: Path, small_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    feed = write_feed(tmp_path / "feed.csv", [{"sku": "A", "image": "a.png"}])
    args = ["sync", str(feed), "--catalog", str(tmp_path / "c"), "--model", str(small_model)]
    assert main([*args, "--product-field", "sku", "--product-column", "id"]) == 2
    assert "disagree" in capsys.readouterr().err


# -- kill -9 -------------------------------------------------------------------------------------

SYNCER = textwrap.dedent(
    """
    import sys
    from fashionrec_onnx import Catalog
    from fashionrec_onnx.feeds.download import DownloadSettings
    catalog = Catalog.open_or_create(sys.argv[1], sys.argv[2])
    settings = DownloadSettings(workers=1, timeout=5, allow_private_network=True)
    catalog.sync(sys.argv[3], batch_size=2, download=settings)
    catalog.close()
    """
)


def committed(database: Path) -> int:
    try:
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5) as db:
            return int(
                db.execute('SELECT COUNT(*) FROM items WHERE metadata LIKE \'%"v": "2"%\'').fetchone()[0]
            )
    except sqlite3.OperationalError:
        return 0


def state(path: Path) -> dict[str, tuple[str, dict, np.ndarray]]:
    with Catalog.open(path) as catalog:
        assert catalog.verify() == []
        keys = sorted(catalog.keys())
        vectors = catalog.vectors(keys)
        return {
            key: (Path(catalog.get(key).path).name, catalog.get(key).metadata, vector)
            for key, vector in zip(keys, vectors)
        }


def test_sync_killed_midway_then_run_again_ends_like_an_uninterrupted_sync(
    tmp_path: Path, small_model: Path, server: FeedServer
) -> None:
    """A catalog synced with feed A is being synced with feed B (new, changed, dropped images
    and changed fields) when it is killed; run again, it equals a clean sync of B."""
    for n in range(30):
        server.images[f"{n}.png"] = png(300 + n)
    row = lambda n, version: {"product_id": f"P{n // 3}", "image": server.url(f"/img/{n}.png"), "v": version}  # noqa: E731
    feed_a = write_feed(tmp_path / "a.csv", [row(n, "1") for n in range(0, 12)])
    feed_b = write_feed(tmp_path / "b.csv", [row(n, "2") for n in range(4, 30)])
    interrupted, clean = tmp_path / "interrupted", tmp_path / "clean"
    with Catalog.create(interrupted, small_model) as catalog:
        catalog.sync(feed_a, download=LOCAL)
    server.images["5.png"] = png(555)  # changed since A
    server.delay = 0.1
    process = subprocess.Popen(
        [sys.executable, "-c", SYNCER, str(interrupted), str(small_model), str(feed_b)]
    )
    kill_when(process, lambda: committed(interrupted / "catalog.sqlite") >= 12)  # some of B is in
    assert committed(interrupted / "catalog.sqlite") < 26  # killed before B was all in
    server.delay = 0.0

    with Catalog.open(interrupted) as catalog:
        rerun = catalog.sync(feed_b, download=LOCAL)
        assert rerun.removed == 4 and rerun.failed == []
    with Catalog.create(clean, small_model) as catalog:
        catalog.sync(feed_b, download=LOCAL)
    got, expected = state(interrupted), state(clean)
    assert list(got) == list(expected)
    for key, (name, metadata, vector) in expected.items():
        assert got[key][:2] == (name, metadata)
        np.testing.assert_allclose(got[key][2], vector, atol=1e-5)


# -- hardening: what a feed may not do (issue 25) --------------------------------------------------


def test_local_images_outside_the_images_root_are_refused_alike_whether_or_not_they_exist(
    tmp_path: Path, catalog: Catalog
) -> None:
    """../, absolute paths and symlinks leading out are never read, and a file that exists out
    there gets the same answer as one that does not (no existence oracle for the feed's author)."""
    shop = tmp_path / "shop"
    (shop / "photos").mkdir(parents=True)
    (shop / "photos" / "ok.png").write_bytes(png(1))
    (tmp_path / "secret.png").write_bytes(png(2))
    (shop / "photos" / "link.png").symlink_to(tmp_path / "secret.png")
    (shop / "photos" / "dangling.png").symlink_to(tmp_path / "nothing.png")
    outside = [
        "../secret.png", "../nothing.png", str(tmp_path / "secret.png"), str(tmp_path / "nothing.png"),
        "photos/link.png", "photos/dangling.png", "photos/../../secret.png",
    ]  # fmt: skip
    rows = [{"product_id": "A", "image": "photos/ok.png"}]
    rows += [{"product_id": f"X{n}", "image": image} for n, image in enumerate(outside)]
    report = catalog.sync(write_feed(shop / "feed.csv", rows))
    assert report.added == 1 and catalog.keys() == ["feed/photos/ok.png"]
    reasons = {failed.image: failed.reason for failed in report.failed}
    assert set(reasons) == set(outside)
    assert len(set(reasons.values())) == 1 and "outside the images root" in reasons["../secret.png"]


def test_a_first_sync_never_removes_items_indexed_from_a_folder_under_its_prefix(
    tmp_path: Path, catalog: Catalog
) -> None:
    local_shop(tmp_path / "folder", count=6)
    catalog.index_folder(tmp_path / "folder" / "photos", key_prefix="feed/", progress=False)
    indexed = set(catalog.keys())
    (tmp_path / "shop").mkdir()
    (tmp_path / "shop" / "new.png").write_bytes(png(9))
    feed = write_feed(tmp_path / "shop" / "feed.csv", [{"product_id": "N", "image": "new.png"}])
    report = catalog.sync(feed)
    assert (report.added, report.removed) == (1, 0)
    assert set(catalog.keys()) == indexed | {"feed/new.png"}


def downgraded_to_schema_2(path: Path) -> None:
    """What the previous version wrote: no record of which feed added an item."""
    with sqlite3.connect(path / "catalog.sqlite") as db:
        db.execute("ALTER TABLE items DROP COLUMN feed")
        db.execute("UPDATE settings SET value = '2' WHERE name = 'schema_version'")


def test_a_catalog_synced_by_the_previous_version_is_upgraded_and_its_feed_items_are_claimed(
    tmp_path: Path, small_model: Path
) -> None:
    feed = local_shop(tmp_path)
    with Catalog.create(tmp_path / "c", small_model) as catalog:
        catalog.sync(feed)
    downgraded_to_schema_2(tmp_path / "c")
    with Catalog.open(tmp_path / "c", readonly=True) as old:  # read as it is
        assert len(old.search("feed/photos/p0.png", k=2)) == 2
    with Catalog.open(tmp_path / "c") as catalog:
        assert catalog.sync(feed).unchanged == 4  # the items it lists become the feed's
        feed.write_text("\n".join(feed.read_text().splitlines()[:-1]) + "\n")
        report = catalog.sync(feed)
        assert report.removed == 1 and len(catalog) == 3 and catalog.verify() == []
    with sqlite3.connect(tmp_path / "c" / "catalog.sqlite") as db:
        assert db.execute("SELECT value FROM settings WHERE name = 'schema_version'").fetchone()[0] == "3"


def test_a_second_sync_of_the_same_catalog_is_refused_while_one_runs(
    tmp_path: Path, catalog: Catalog, server: FeedServer
) -> None:
    feed = url_shop(tmp_path, server, [f"{n}.png" for n in range(6)])
    server.gate.clear()  # the first sync's downloads wait until the second is refused
    patient = DownloadSettings(timeout=30, allow_private_network=True)
    first = threading.Thread(target=lambda: results.append(catalog.sync(feed, download=patient)))
    results: list = []
    first.start()
    try:
        while not server.requests and first.is_alive():
            time.sleep(0.01)
        refused = pytest.raises(CatalogError, match="another sync of .* is running")
        with Catalog.open(catalog.path) as other, refused:
            other.sync(feed, download=patient)
    finally:
        server.gate.set()
        first.join()
    assert results[0].added == 6 and results[0].failed == []
    assert catalog.sync(feed, download=ONE_RETRY).changed is False  # the lock went with the first sync


def test_a_nul_in_one_rows_image_fails_that_row_and_the_others_sync(tmp_path: Path, catalog: Catalog) -> None:
    feed = local_shop(tmp_path)
    with feed.open("a", encoding="utf-8") as handle:
        handle.write("P9,photos/p\x000.png,c9\n")
    jsonl = tmp_path / "feed.jsonl"
    jsonl.write_text(
        '{"product_id": "Q", "image": "photos/p1\x00.png"}\n{"product_id": "Q", "image": "photos/p1.png"}\n'
    )
    report = catalog.sync(feed)
    assert report.added == 4 and [f.line for f in report.failed] == [6]
    assert "control character (\\x00)" in report.failed[0].reason
    report = catalog.sync(jsonl, key_prefix="jsonl/")
    assert report.added == 1 and [f.line for f in report.failed] == [1]


@pytest.mark.parametrize(
    "value", ["NaN", "Infinity", "-Infinity", "1e999", '[1, NaN]', '{"a": Infinity}', '"\\ud800 lone"']
)
def test_a_non_finite_number_in_a_jsonl_feed_fails_that_row_and_the_catalog_stays_usable(
    tmp_path: Path, catalog: Catalog, value: str
) -> None:
    (tmp_path / "a.png").write_bytes(png(1))
    (tmp_path / "b.png").write_bytes(png(2))
    feed = tmp_path / "feed.jsonl"
    rows = '{"product_id": "A", "image": "a.png", "price": PRICE}\n{"product_id": "B", "image": "b.png"}\n'
    feed.write_text(rows.replace("PRICE", "1"))
    catalog.sync(feed)
    feed.write_text(rows.replace("PRICE", value))
    report = catalog.sync(feed)
    assert [f.line for f in report.failed] == [1] and "price" in report.failed[0].reason
    assert catalog.get("feed/a.png").metadata == {"product_id": "A", "price": 1}  # left as it was
    assert len(catalog.search("feed/b.png", k=1, filter={"price": 1})) == 1
    assert catalog.verify() == [] and catalog.summary()["items"] == 2


def test_a_sync_of_a_read_only_catalog_is_refused_before_any_download(
    tmp_path: Path, catalog: Catalog, server: FeedServer
) -> None:
    feed = url_shop(tmp_path, server, ["a.png", "b.png"])
    catalog.set_product_field("product_id")  # as after a first sync
    with Catalog.open(catalog.path, readonly=True) as reader, pytest.raises(CatalogError, match="read-only"):
        reader.sync(feed, download=ONE_RETRY)
    assert server.requests == {} and not (catalog.path / "feed-images").exists()


# -- hardening: what a feed's server may not do -----------------------------------------------------


@pytest.mark.parametrize("path", ["/trickle.png", "/trickle-headers.png"])
def test_a_trickling_server_gets_the_deadline_once_in_all_not_per_attempt(
    tmp_path: Path, server: FeedServer, path: str
) -> None:
    settings = DownloadSettings(
        timeout=5.0, deadline=1.0, retries=2, backoff=0.01, allow_private_network=True
    )
    with pytest.raises(DownloadError, match=r"not done within 1s in all"):
        ImageCache(tmp_path, settings).fetch(server.url(path))
    assert server.requests[path] == 1  # no second attempt: the image's minute (here 1 s) is spent


def test_a_feed_url_on_loopback_is_refused_by_default_without_a_request(
    tmp_path: Path, catalog: Catalog, server: FeedServer
) -> None:
    feed = url_shop(tmp_path, server, ["a.png"])
    report = catalog.sync(feed, download=DownloadSettings())
    assert report.added == 0 and "loopback or private" in report.failed[0].reason
    assert "--allow-private-network" in report.failed[0].reason and server.requests == {}


def test_a_redirect_from_the_cdn_to_an_internal_server_is_refused_by_default(
    tmp_path: Path, server: FeedServer
) -> None:
    internal = FeedServer()
    try:
        internal.images["admin.png"] = png(5)
        port = internal.server_address[1]
        for target in (internal.url("/img/admin.png"), f"http://localhost:{port}/img/admin.png"):
            server.redirects["/p/1.png"] = target
            with pytest.raises(DownloadError, match="refused: "):
                ImageCache(tmp_path, DownloadSettings(timeout=0.3, retries=0)).fetch(server.url("/p/1.png"))
        assert internal.requests == {}
    finally:
        internal.stop()


@pytest.mark.parametrize(
    "target",
    ["http://169.254.169.254/latest/meta-data/", "http://[fe80::1]/x.png", "http://0.0.0.0:1/x.png",
     "http://[::ffff:169.254.169.254]/x.png", "file:///etc/passwd", "ftp://127.0.0.1/x.png"],
)  # fmt: skip
def test_a_redirect_to_link_local_or_another_scheme_is_refused_even_on_a_private_network(
    tmp_path: Path, server: FeedServer, target: str
) -> None:
    server.redirects["/p/1.png"] = target
    with pytest.raises(DownloadError, match="refused: |only http"):
        ImageCache(tmp_path, ONE_RETRY).fetch(server.url("/p/1.png"))


def test_redirects_within_an_allowed_network_are_followed_a_few_times_only(
    tmp_path: Path, server: FeedServer
) -> None:
    server.images["a.png"] = png(7)
    server.redirects["/p/a.png"] = "/img/a.png"
    assert ImageCache(tmp_path, ONE_RETRY).fetch(server.url("/p/a.png")).size == len(server.images["a.png"])
    server.redirects.update({"/loop/1": "/loop/2", "/loop/2": "/loop/1"})
    with pytest.raises(DownloadError, match="more than 5 redirects"):
        ImageCache(tmp_path, ONE_RETRY).fetch(server.url("/loop/1"))


def test_cli_sync_reaches_a_private_network_only_when_allowed(
    tmp_path: Path, small_model: Path, server: FeedServer, capsys: pytest.CaptureFixture[str]
) -> None:
    feed = url_shop(tmp_path, server, ["a.png"])
    args = ["sync", str(feed), "--catalog", str(tmp_path / "c"), "--model", str(small_model), "--quiet"]
    assert main(args) == 1 and "--allow-private-network" in capsys.readouterr().out
    assert main([*args, "--allow-private-network"]) == 0 and "1 added" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("address", "by_default", "on_private"),
    [
        ("93.184.216.34", True, True), ("2606:2800:220:1::1", True, True),
        ("127.0.0.1", False, True), ("::1", False, True), ("10.1.2.3", False, True),
        ("192.168.0.9", False, True), ("100.64.0.1", False, True), ("fd00:ec2::254", False, True),
        ("::ffff:127.0.0.1", False, True), ("64:ff9b::7f00:1", False, True), ("2002:7f00:1::", False, True),
        ("::127.0.0.1", False, True), ("169.254.169.254", False, False), ("fe80::1%eth0", False, False),
        ("::ffff:169.254.169.254", False, False), ("0.0.0.0", False, False), ("::", False, False),
        ("224.0.0.1", False, False), ("240.0.0.1", False, False),
    ],
)  # fmt: skip
def test_which_addresses_a_sync_may_connect_to(address: str, by_default: bool, on_private: bool) -> None:
    allowed = (address_problem(address, False) is None, address_problem(address, True) is None)
    assert allowed == (by_default, on_private)


def test_a_feed_row_whose_key_is_a_folder_item_fails_alone_and_the_item_stays_as_it_was(
    tmp_path: Path, catalog: Catalog
) -> None:
    local_shop(tmp_path / "folder", count=2)
    catalog.index_folder(tmp_path / "folder", key_prefix="feed/", progress=False)
    before = catalog.get("feed/photos/p0.png")
    shop = tmp_path / "shop"
    (shop / "photos").mkdir(parents=True)
    (shop / "photos" / "p0.png").write_bytes(png(7))  # another image under the same name
    (shop / "photos" / "new.png").write_bytes(png(8))
    rows = [{"product_id": "Z", "image": "photos/p0.png"}, {"product_id": "N", "image": "photos/new.png"}]
    report = catalog.sync(write_feed(shop / "feed.csv", rows))
    assert [row.key for row in report.failed] == ["feed/photos/p0.png"] and report.added == 1
    assert "did not add" in report.failed[0].reason
    after = catalog.get("feed/photos/p0.png")
    assert (after.path, after.metadata) == (before.path, before.metadata)
    report = catalog.sync(write_feed(shop / "feed.csv", rows[1:]))  # the row leaves the feed
    assert report.removed == 0 and "feed/photos/p0.png" in set(catalog.keys())


def test_one_feed_never_takes_the_items_of_another_whose_keys_collide(
    tmp_path: Path, catalog: Catalog
) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    for folder, name, seed in ((first, "a_1.png", 1), (second, "_1.png", 2)):
        folder.mkdir()
        (folder / name).write_bytes(png(seed))
    catalog.sync(write_feed(first / "feed.csv", [{"product_id": "A", "image": "a_1.png"}]), key_prefix="s/")
    held = catalog.get("s/a_1.png")
    other = write_feed(second / "feed.csv", [{"product_id": "B", "image": "_1.png"}])
    report = catalog.sync(other, key_prefix="s/a")
    assert [row.key for row in report.failed] == ["s/a_1.png"] and "'s/'" in report.failed[0].reason
    assert catalog.get("s/a_1.png").path == held.path
