"""Catalogs on Milvus: the same catalog API on a real Milvus server (PyPI `milvus`, started once
per session by the `milvus_server` fixture), held to a local catalog of the same images."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from oracle import assert_same_ranking

from fashionrec_onnx import Catalog, CatalogError, ModelMismatchError
from fashionrec_onnx.catalog import KeyQuery
from fashionrec_onnx.catalog.location import MilvusLocation, location, parse
from fashionrec_onnx.errors import BadArgumentError, StorageUnavailableError, UnknownKeyError
from fashionrec_onnx.quality.datasets import SAMPLE_DIR
from fashionrec_onnx.quality.evaluation import recall_at_k

LABELS = SAMPLE_DIR / "labels.csv"
FASHIONREC = str(Path(sys.executable).with_name("fashionrec"))
PER_CATEGORY = 30  # 300 labelled images


def unit_rows(n: int, dim: int = 2048, seed: int = 0) -> np.ndarray:
    rows = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def fashionrec(*args: object, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [FASHIONREC, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env or dict(os.environ),
    )


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("milvus-images")
    for category in sorted(p for p in SAMPLE_DIR.iterdir() if p.is_dir()):
        for path in sorted(category.glob("*.png"))[:PER_CATEGORY]:
            (folder / category.name).mkdir(exist_ok=True)
            shutil.copyfile(path, folder / category.name / path.name)
    return folder


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory, small_model: Path, images: Path, milvus_server):
    """The same 300 labelled images indexed into a local catalog and a Milvus one."""
    local = Catalog.create(tmp_path_factory.mktemp("local") / "catalog", small_model, product_field="product")
    local.index_folder(images, metadata=LABELS, progress=False)
    uri = milvus_server.uri(f"pair_{uuid.uuid4().hex[:8]}")
    remote = Catalog.create(uri, small_model, product_field="product")
    report = remote.index_folder(images, metadata=LABELS, progress=False)
    assert report.added == 10 * PER_CATEGORY and not report.failures
    yield local, remote
    local.close()
    remote.backend.drop()
    remote.close()


# --- locations --------------------------------------------------------------------------------------


def test_a_milvus_uri_is_parsed_and_shown_without_its_password() -> None:
    where = parse("milvus://reader:s3cr%40t@db.example:19530/shop_photos")
    assert (where.host, where.port, where.collection) == ("db.example", 19530, "shop_photos")
    assert (where.user, where.password, where.token) == ("reader", "s3cr@t", "reader:s3cr@t")
    assert "s3cr" not in str(where) and "s3cr" not in repr(where)
    assert str(where) == "milvus://reader@db.example:19530/shop_photos"


def test_the_password_can_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FASHIONREC_MILVUS_TOKEN", "root:Milvus")
    where = parse("milvus://127.0.0.1:19530/c")
    assert (where.user, where.password) == ("root", "Milvus")
    assert "Milvus" not in str(where)


@pytest.mark.parametrize(
    "text, needle",
    [
        ("http://127.0.0.1:19530/c", "unknown catalog location"),
        ("s3://bucket/catalog", "unknown catalog location"),
        ("milvus://127.0.0.1/c", "HOST:PORT"),
        ("milvus://127.0.0.1:99999/c", "HOST:PORT"),
        ("milvus://127.0.0.1:19530", "collection name"),
        ("milvus://127.0.0.1:19530/bad-name", "collection name"),
    ],
)
def test_a_bad_uri_is_a_clear_error_never_a_folder(
    text: str, needle: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # and back after: later tests on this worker use relative paths
    with pytest.raises(BadArgumentError, match=needle):
        Catalog.open(text)
    assert list(tmp_path.iterdir()) == []  # no folder named "http:" or "milvus:"


def test_a_path_made_of_a_uri_is_still_the_uri() -> None:
    assert location(Path("milvus://127.0.0.1:19530/c")) == parse("milvus://127.0.0.1:19530/c")
    assert location("C:/catalog") == Path("C:/catalog")  # one letter: a drive, not a scheme
    assert isinstance(location("./catalog"), Path)


def test_filter_values_are_escaped() -> None:
    from fashionrec_onnx.catalog.expressions import condition, literal

    assert literal('a"b\\c') == '"a\\"b\\\\c"'
    assert literal("line\nnext\x01") == '"line\\nnext\\x01"'
    assert (
        condition('odd"field', ["3"])
        == '(metadata["odd\\"field"] in ["3"] or metadata["odd\\"field"] in [3])'
    )
    with pytest.raises(BadArgumentError):
        literal("nul\x00")


def test_an_unreachable_server_is_one_line_without_the_password_and_exit_2() -> None:
    from milvus_server import free_ports

    port = free_ports(1)[0]  # nothing listens there
    started = time.monotonic()
    result = fashionrec("info", "--catalog", f"milvus://admin:TOPSECRET@127.0.0.1:{port}/shop")
    assert time.monotonic() - started < 60
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "TOPSECRET" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert f"milvus://admin@127.0.0.1:{port}/shop" in lines[0]


def test_the_library_never_logs_the_password(caplog: pytest.LogCaptureFixture) -> None:
    from milvus_server import free_ports

    caplog.set_level("DEBUG")
    port = free_ports(1)[0]
    with pytest.raises(StorageUnavailableError) as error:
        Catalog.open(f"milvus://admin:TOPSECRET@127.0.0.1:{port}/shop")
    assert "TOPSECRET" not in str(error.value) and "TOPSECRET" not in caplog.text


# --- the same catalog on both backends -----------------------------------------------------------


def test_the_milvus_catalog_holds_the_same_items_and_vectors(pair) -> None:
    local, remote = pair
    assert len(remote) == len(local) == 10 * PER_CATEGORY
    assert remote.keys() == local.keys()
    keys = local.keys()
    np.testing.assert_array_equal(remote.vectors(keys), local.vectors(keys))
    for key in keys[::37]:
        assert remote.get(key).metadata == local.get(key).metadata
        assert remote.get(key).path == local.get(key).path
    assert remote.categories() == local.categories()
    assert remote.product_count() == local.product_count()


def test_search_recall_at_5_against_local_exact_search(pair) -> None:
    local, remote = pair
    keys = local.keys()[::3]
    got = [[h.key for h in remote.more_like_this(key, k=5)] for key in keys]
    want = [[h.key for h in local.exact_search(KeyQuery(key), k=5)] for key in keys]
    number = {key: i for i, key in enumerate(local.keys())}
    assert recall_at_k(np.array([[number[k] for k in row] for row in got]),
                       np.array([[number[k] for k in row] for row in want]), 5) >= 0.98  # fmt: skip


def test_filtered_search_recall_and_every_hit_matches(pair) -> None:
    local, remote = pair
    wanted = {"category": ["Dress", "Bag"]}
    keys = local.keys()[::7]
    got = [[h.key for h in remote.more_like_this(key, k=5, filter=wanted)] for key in keys]
    want = [[h.key for h in local.exact_search(KeyQuery(key), k=5, filter=wanted)] for key in keys]
    assert all(remote.get(key).metadata["category"] in ("Dress", "Bag") for row in got for key in row)
    found = sum(len(set(a) & set(b)) for a, b in zip(got, want))
    assert found / sum(len(b) for b in want) >= 0.98


def test_more_like_this_leaves_the_item_and_its_product_out(pair) -> None:
    _, remote = pair
    key = remote.keys()[5]
    product = remote.get(key).metadata["product"]
    hits = remote.more_like_this(key, k=10)
    assert len(hits) == 10 and key not in {h.key for h in hits}
    assert all(h.product != product for h in hits)


def test_exact_search_on_milvus_equals_local_exact_search(pair) -> None:
    local, remote = pair
    for key in local.keys()[::50]:
        a = remote.exact_search(KeyQuery(key), k=5)
        b = local.exact_search(KeyQuery(key), k=5)
        assert_same_ranking(a, b)  # Milvus sums in float32 its own way: near-ties may swap
        np.testing.assert_allclose([h.distance for h in a], [h.distance for h in b], atol=1e-5)


def test_grouped_search_returns_distinct_products_with_their_photos(pair) -> None:
    local, remote = pair
    query = remote.vector(remote.keys()[0])
    hits = remote.search(query, k=5, group_by="product")
    assert len({h.product for h in hits}) == 5
    want = local.exact_search(query, k=5, group_by="product")
    assert [h.product for h in hits] == [h.product for h in want]
    assert [h.photos for h in hits] == [h.photos for h in want]


def test_check_measures_recall_against_exact_search(pair) -> None:
    _, remote = pair
    report = remote.check(k=5, sample=50)
    assert report.queries == 50 and report.items == 10 * PER_CATEGORY
    assert report.recall >= 0.98


def test_settings_live_in_milvus_and_a_different_model_is_refused(pair, test_model: Path) -> None:
    _, remote = pair
    with Catalog.open(remote.path) as again:
        assert again.product_field == "product"
        assert again.info.fingerprint == remote.info.fingerprint
        assert again.model_path == remote.model_path and again.dim == 2048
    with pytest.raises(ModelMismatchError):
        Catalog.open(remote.path, test_model)


def test_indexing_again_embeds_nothing(pair, images: Path) -> None:
    _, remote = pair
    report = remote.index_folder(images, metadata=LABELS, progress=False)
    assert report.embedded == 0 and report.unchanged == 10 * PER_CATEGORY


def test_cli_search_and_info_on_milvus(pair) -> None:
    _, remote = pair
    key = remote.keys()[3]
    result = fashionrec("search", key, "--catalog", remote.path, "-k", "3", "--filter", "category=Dress")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 3 and all("category=Dress" in line for line in lines)
    info = fashionrec("info", "--catalog", remote.path)
    assert info.returncode == 0 and f"items: {10 * PER_CATEGORY}" in info.stdout.replace("  ", " "), (
        info.stdout
    )
    check = fashionrec("check", "--catalog", remote.path, "--sample", "20")
    assert check.returncode == 0, check.stdout + check.stderr


# --- behaviour on both backends ----------------------------------------------------------------------


def test_add_get_search_remove_on_both_backends(new_location: str, small_model: Path) -> None:
    rows = unit_rows(20)
    keys = [f"item-{i:02d}" for i in range(20)]
    with Catalog.create(new_location, small_model) as catalog:
        assert (
            catalog.add_many(keys, rows, metadata=[{"colour": "red" if i % 2 else "blue"} for i in range(20)])
            == 20
        )
        assert len(catalog) == 20 and "item-03" in catalog
        assert catalog.search(rows[3], k=1)[0].key == "item-03"
        hits = catalog.search(rows[3], k=5, filter={"colour": "blue"})
        assert len(hits) == 5 and all(h.metadata["colour"] == "blue" for h in hits)
        assert catalog.remove("item-03", "item-05", "nope") == 2
        assert len(catalog) == 18 and "item-03" not in catalog
        assert "item-03" not in {h.key for h in catalog.search(rows[3], k=18)}
        assert catalog.removed_keys() == ["item-03", "item-05"]
        with pytest.raises(UnknownKeyError):
            catalog.get("item-03")
        assert catalog.update_metadata({"item-04": {"colour": "green"}}) == 1
        assert [h.key for h in catalog.search(rows[4], k=3, filter={"colour": "green"})] == ["item-04"]
    with Catalog.open(new_location) as again:  # another handle: removals stuck
        assert len(again) == 18 and "item-05" not in again
        np.testing.assert_array_equal(again.vector("item-07"), rows[7])


FUSSY = ['say "hi"', "back\\slash", "[1, 2]", "ünïcødé 👗", "it's", "a\nb", "", "3", "3.5", "True"]


def test_filter_values_with_quotes_brackets_and_unicode_on_both_backends(
    new_location: str, small_model: Path
) -> None:
    rows = unit_rows(len(FUSSY), seed=1)
    keys = [f"k{i}" for i in range(len(FUSSY))]
    metadata = [{"tag": value, "other": value} for value in FUSSY]
    metadata[-3]["tag"] = 3  # a number matches its text, as on a local catalog
    with Catalog.create(new_location, small_model) as catalog:
        catalog.add_many(keys, rows, metadata=metadata)
        for i, value in enumerate(FUSSY):
            hits = catalog.search(rows[0], k=len(FUSSY), filter={"tag": value})
            assert [h.key for h in hits] == [f"k{i}"], value
            hits = catalog.search(rows[0], k=len(FUSSY), filter={"other": [value, "absent [x]"]})
            assert [h.key for h in hits] == [f"k{i}"], value


def test_field_names_with_quotes_and_brackets_filter_on_milvus(milvus_uri: str, small_model: Path) -> None:
    # (a local catalog refuses such a field name today: its SQLite JSON path does not escape it)
    rows = unit_rows(3, seed=2)
    with Catalog.create(milvus_uri, small_model) as catalog:
        catalog.add_many(["a", "b", "c"], rows, metadata=[{'we"ird]': "x"}, {'we"ird]': "y"}, {}])
        assert [h.key for h in catalog.search(rows[2], k=3, filter={'we"ird]': "y"})] == ["b"]


def test_creating_twice_is_refused_unless_exist_ok_on_both_backends(
    new_location: str, small_model: Path
) -> None:
    Catalog.create(new_location, small_model).close()
    with pytest.raises(CatalogError, match="already exists"):
        Catalog.create(new_location, small_model)
    Catalog.create(new_location, small_model, exist_ok=True).close()


def test_opening_a_missing_milvus_catalog_says_how_to_make_one(milvus_uri: str) -> None:
    with pytest.raises(CatalogError, match="no catalog at milvus://"):
        Catalog.open(milvus_uri)


def test_milvus_location_objects_are_accepted(milvus_uri: str, small_model: Path) -> None:
    where = parse(milvus_uri)
    assert isinstance(where, MilvusLocation)
    with Catalog.create(where, small_model) as catalog:
        assert str(catalog.path) == milvus_uri and len(catalog) == 0


# --- commands, moving between backends, service replicas -------------------------------------------


def test_cli_index_remove_and_reindex_on_milvus(milvus_uri: str, small_model: Path, tmp_path: Path) -> None:
    folder = tmp_path / "images"
    for path in sorted((SAMPLE_DIR / "dress").glob("*.png"))[:8]:
        (folder / "dress").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, folder / "dress" / path.name)
    result = fashionrec(
        "index", folder, "--catalog", milvus_uri, "--model", small_model, "--product-field", "product"
    )
    assert result.returncode == 0, result.stderr
    key = f"dress/{sorted(p.name for p in (folder / 'dress').iterdir())[0]}"
    removed = fashionrec("remove", key, "--catalog", milvus_uri)
    assert removed.returncode == 0 and "removed 1 of 1 keys; 7 items left" in removed.stdout, removed.stdout
    again = fashionrec("index", folder, "--catalog", milvus_uri)  # no --model: the recorded one
    assert again.returncode == 0, again.stderr
    with Catalog.open(milvus_uri) as catalog:
        assert len(catalog) == 7 and key not in catalog and catalog.removed_keys() == [key]
        assert catalog.product_field == "product"


def test_vectors_move_between_backends_without_reembedding(pair, milvus_uri: str, tmp_path: Path) -> None:
    local, _ = pair
    local.export_vectors(tmp_path / "from-local")
    with Catalog.create(milvus_uri, local.model_path) as remote:
        report = remote.import_vectors(tmp_path / "from-local")
        assert report.added == len(local) == len(remote)
        keys = local.keys()
        np.testing.assert_array_equal(remote.vectors(keys), local.vectors(keys))
        assert remote.get(keys[9]).metadata == local.get(keys[9]).metadata
        remote.export_vectors(tmp_path / "from-milvus")
    with Catalog.create(tmp_path / "back", local.model_path) as back:
        back.import_vectors(tmp_path / "from-milvus")
        np.testing.assert_array_equal(back.vectors(keys), local.vectors(keys))


def test_two_service_replicas_answer_alike_and_both_drop_a_removed_item(pair, milvus_uri: str) -> None:
    import httpx
    from test_service import served

    local, _ = pair
    keys = local.keys()[:120]
    with Catalog.create(milvus_uri, local.model_path) as writer:
        writer.add_many(keys, local.vectors(keys), metadata=[local.get(k).metadata for k in keys])
    with served(milvus_uri) as first, served(milvus_uri) as second:
        query = {"key": keys[0], "k": 5}
        answers = [httpx.post(f"{url}/search", json=query, timeout=30).json() for url in (first, second)]
        assert [h["key"] for h in answers[0]["hits"]] == [h["key"] for h in answers[1]["hits"]]
        gone = answers[0]["hits"][0]["key"]
        with Catalog.open(milvus_uri) as writer:
            assert writer.remove(gone) == 1
        removed_at = time.monotonic()
        for url in (first, second):
            while gone in {
                h["key"] for h in httpx.post(f"{url}/search", json=query, timeout=30).json()["hits"]
            }:
                assert time.monotonic() - removed_at < 20, f"{url} still returns a removed item"
                time.sleep(0.2)
        for url in (first, second):
            while (health := httpx.get(f"{url}/health", timeout=10).json())["items"] != 119:
                assert time.monotonic() - removed_at < 20, f"{url} still counts a removed item: {health}"
                time.sleep(0.2)
            assert health["status"] == "ok"


def test_an_outage_is_503_and_exit_2_and_indexing_resumes_after_a_restart(
    tmp_path: Path, small_model: Path
) -> None:
    """A private server, killed -9 while a service replica runs on it, then restarted: the
    indexing resumes in a new process. (Whether a replica reconnects by itself after the restart
    is not asserted: pymilvus did within a minute in some runs here and not in others.)"""
    import httpx
    from milvus_server import TestServer
    from test_service import served

    folder = tmp_path / "images"
    for category in ("bag", "coat"):
        for path in sorted((SAMPLE_DIR / category).glob("*.png"))[:10]:
            (folder / category).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, folder / category / path.name)
    server = TestServer(tmp_path / "milvus")
    server.start()
    try:
        uri = server.uri("outage")
        with Catalog.create(uri, small_model) as catalog:
            assert catalog.index_folder(folder / "bag", key_prefix="bag/", progress=False).added == 10
        with served(uri) as url:
            server.kill()
            started = time.monotonic()
            result = fashionrec("index", folder, "--catalog", uri)
            assert time.monotonic() - started < 60
            assert result.returncode == 2 and "Traceback" not in result.stderr
            assert len(result.stderr.strip().splitlines()) == 1 and uri in result.stderr, result.stderr
            health = httpx.get(f"{url}/health", timeout=60)
            assert health.status_code == 503 and health.json()["error"] == "unavailable"
            search = httpx.post(f"{url}/search", json={"key": "bag/x", "k": 3}, timeout=60)
            assert search.status_code == 503
        server.start()
        assert server.uri("outage") == uri  # the same ports, the same data
        deadline = time.monotonic() + 120
        while True:  # a restarted server may refuse reads for a while as it loads the collection
            try:
                with Catalog.open(uri) as catalog:
                    report = catalog.index_folder(folder, progress=False)
                    count, keys = len(catalog), catalog.keys()
                break
            except StorageUnavailableError:
                assert time.monotonic() < deadline, "the catalog did not come back after the restart"
        assert (report.added, report.unchanged) == (10, 10)
        assert count == 20 and len(set(keys)) == 20
    finally:
        server.stop()


def test_keys_with_quotes_backslashes_and_unicode_on_both_backends(
    new_location: str, small_model: Path
) -> None:
    keys = ['say "hi".png', "back\\slash.png", "ünï [1].png", "it's.png", "plain.png"]
    rows = unit_rows(len(keys), seed=3)
    with Catalog.create(new_location, small_model) as catalog:
        catalog.add_many(keys, rows)
        for key in keys:
            assert catalog.get(key).key == key
            hits = catalog.more_like_this(key, k=len(keys))
            assert key not in {h.key for h in hits} and len(hits) == len(keys) - 1
        assert catalog.remove('say "hi".png', "back\\slash.png") == 2
        assert sorted(catalog.keys()) == sorted(keys[2:])
        assert catalog.removed_keys() == sorted(['say "hi".png', "back\\slash.png"])


# --- every command on Milvus (the read-only ones on the module's pair) -----------------------------


def test_cli_duplicates_on_milvus_finds_the_groups_a_local_catalog_finds(pair) -> None:
    import json

    local, remote = pair
    result = fashionrec("duplicates", "--catalog", remote.path, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    want = local.duplicates()
    assert report["items"] == want.items == len(local)
    assert report["judged_by_pixels"] == want.by_pixels == len(local)  # the images are on this machine
    assert report["threshold"] == pytest.approx(want.threshold, abs=1e-5)
    assert [group["keys"] for group in report["groups"]] == [list(g.keys) for g in want]
    assert [[p["similarity"] for p in g["pairs"]] for g in report["groups"]] == pytest.approx(
        [[s for _, _, s in g.pairs] for g in want], abs=1e-5
    )
    key = local.keys()[4]
    collapsed = fashionrec("search", key, "--catalog", remote.path, "-k", "5", "--collapse-duplicates")
    assert collapsed.returncode == 0, collapsed.stderr
    got = [line.split()[2] for line in collapsed.stdout.strip().splitlines()]
    assert got == [h.key for h in local.exact_search(KeyQuery(key), k=5, collapse_duplicates=True)]


def test_duplicates_on_milvus_finds_a_copy_and_searches_collapse_it(
    milvus_uri: str, small_model: Path
) -> None:
    rows = unit_rows(40, seed=4)
    with Catalog.create(milvus_uri, small_model) as catalog:
        catalog.add_many([f"k{i:02d}" for i in range(40)], rows)
        catalog.add_many(["copy-of-k07", "copy-of-k30"], rows[[7, 30]])
        report = catalog.duplicates(threshold=0.999)
        assert sorted(group.keys for group in report) == [("copy-of-k07", "k07"), ("copy-of-k30", "k30")]
        assert report.items == 42 and not report.calibrated
        hits = catalog.search(rows[7], k=3, collapse_duplicates=True)
        assert [h.key for h in hits][:1] in (["k07"], ["copy-of-k07"]) and len(hits) == 3
        assert not {"k07", "copy-of-k07"} <= {h.key for h in hits}
        assert {"k07", "copy-of-k07"} <= {h.key for h in catalog.search(rows[7], k=3)}
        assert "copy-of-k30" not in {
            h.key for h in catalog.more_like_this("k30", k=41, collapse_duplicates=True)
        }


def test_cli_evaluate_on_milvus_scores_as_the_local_catalog(pair) -> None:
    local, remote = pair
    args = ["--exact", "--no-baseline", "--queries", "60", "-k", "1,5"]
    a = fashionrec("evaluate", "--catalog", remote.path, *args)
    b = fashionrec("evaluate", "--catalog", local.path, *args)
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    name = parse(str(remote.path)).collection
    table = [line.split()[1:] for line in a.stdout.splitlines() if line.startswith(name + " ")]
    want = [line.split()[1:] for line in b.stdout.splitlines() if line.startswith("catalog ")]
    assert table and table[:1] == want[:1], a.stdout + b.stdout


def test_cli_export_vectors_then_import_into_milvus_and_back(pair, milvus_uri: str, tmp_path: Path) -> None:
    local, remote = pair
    exported = fashionrec("export-vectors", "--catalog", remote.path, "--out", tmp_path / "out")
    assert exported.returncode == 0, exported.stderr
    imported = fashionrec("import", tmp_path / "out", "--catalog", milvus_uri, "--model", local.model_path)
    assert imported.returncode == 0, imported.stderr
    back = fashionrec("import", tmp_path / "out", "--catalog", tmp_path / "back", "--model", local.model_path)
    assert back.returncode == 0, back.stderr
    keys = local.keys()
    with Catalog.open(milvus_uri) as again, Catalog.open(tmp_path / "back") as there:
        assert len(again) == len(there) == len(local)
        np.testing.assert_array_equal(again.vectors(keys), local.vectors(keys))
        np.testing.assert_array_equal(there.vectors(keys), local.vectors(keys))
        assert again.get(keys[11]).metadata == there.get(keys[11]).metadata == local.get(keys[11]).metadata
    rerun = fashionrec("import", tmp_path / "out", "--catalog", milvus_uri)  # nothing new
    assert rerun.returncode == 0, rerun.stderr


def test_cli_demo_serves_a_milvus_catalog(pair) -> None:
    from fashionrec_demo.screenshot import free_port
    from gradio_client import Client, handle_file

    local, remote = pair
    port = free_port()
    process = subprocess.Popen(
        [FASHIONREC, "demo", "--catalog", str(remote.path), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        assert first.startswith(f"serving {len(local)} photos"), first
        deadline = time.monotonic() + 120
        while True:
            try:
                client = Client(f"http://127.0.0.1:{port}/", verbose=False)
                break
            except Exception:
                assert time.monotonic() < deadline and process.poll() is None, "the demo did not start"
                time.sleep(0.5)
        query = next((SAMPLE_DIR / "dress").glob("*.png"))
        gallery, _, status = client.predict(handle_file(str(query)), 5, "All categories", api_name="/search")
        want = local.search(query, k=5)
        assert status == "" and len(gallery) == 5
        assert [item["caption"].split(" · ")[-1] for item in gallery][:1] == [want[0].key], gallery
    finally:
        process.terminate()
        process.wait(timeout=30)


# --- sync: a feed keeps to the items it added, as on a local catalog -------------------------------


def test_cli_sync_on_milvus_never_takes_items_it_did_not_add(
    milvus_uri: str, small_model: Path, tmp_path: Path
) -> None:
    import json

    from feed_server import png
    from test_sync import local_shop, write_feed

    local_shop(tmp_path / "folder", count=2)
    with Catalog.create(milvus_uri, small_model) as catalog:  # folder items under the feed's prefix
        catalog.index_folder(tmp_path / "folder", key_prefix="feed/", progress=False)
        before = catalog.get("feed/photos/p0.png")
    shop = tmp_path / "shop"
    (shop / "photos").mkdir(parents=True)
    (shop / "photos" / "p0.png").write_bytes(png(7))  # another image under a folder item's key
    (shop / "photos" / "new.png").write_bytes(png(8))
    (shop / "photos" / "two.png").write_bytes(png(9))
    rows = [
        {"product_id": "Z", "image": "photos/p0.png"},
        {"product_id": "N", "image": "photos/new.png"},
        {"product_id": "N", "image": "photos/two.png"},
    ]
    feed = write_feed(shop / "feed.csv", rows)
    result = fashionrec("sync", feed, "--catalog", milvus_uri, "--json")
    assert result.returncode == 1, result.stderr  # one row failed
    report = json.loads(result.stdout)
    assert report["added"] == 2 and [row["key"] for row in report["failed"]] == ["feed/photos/p0.png"]
    assert "did not add" in report["failed"][0]["reason"]
    with Catalog.open(milvus_uri) as catalog:
        after = catalog.get("feed/photos/p0.png")
        assert (after.path, after.metadata) == (before.path, before.metadata)
        assert catalog.feed_keys("feed/") == ["feed/photos/new.png", "feed/photos/two.png"]
        again = catalog.sync(write_feed(shop / "feed.csv", rows[1:2]))  # p0 and two leave the feed
        assert (again.removed, again.unchanged) == (1, 1)
        assert set(catalog.keys()) == {"feed/photos/p0.png", "feed/photos/p1.png", "feed/photos/new.png"}
        other = tmp_path / "other"
        other.mkdir()
        (other / "ew.png").write_bytes(png(10))
        clash = catalog.sync(write_feed(other / "feed.csv", [{"product_id": "B", "image": "ew.png"}]),
                             key_prefix="feed/photos/n")  # fmt: skip
        assert [row.key for row in clash.failed] == ["feed/photos/new.png"]
        assert "'feed/'" in clash.failed[0].reason
        assert catalog.get("feed/photos/new.png").path == str((shop / "photos" / "new.png").resolve())


def test_a_milvus_catalog_synced_before_owners_were_recorded_has_its_feed_items_claimed(
    milvus_uri: str, small_model: Path, tmp_path: Path
) -> None:
    from test_sync import local_shop

    from fashionrec_onnx.catalog.milvus_backend import MilvusBackend

    feed = local_shop(tmp_path)
    with Catalog.create(milvus_uri, small_model) as catalog:
        assert catalog.sync(feed).added == 4
    backend = MilvusBackend.connect(parse(milvus_uri))  # what the previous version wrote: no owners
    backend._client.drop_collection(backend.feeds_collection)
    backend.close()
    with Catalog.open(milvus_uri) as catalog:
        assert catalog.feed_keys("feed/") == []
        assert catalog.sync(feed).unchanged == 4  # the items it lists become the feed's
        assert len(catalog.feed_keys("feed/")) == 4
        feed.write_text("\n".join(feed.read_text().splitlines()[:-1]) + "\n")
        report = catalog.sync(feed)
        assert report.removed == 1 and len(catalog) == 3 and catalog.verify() == []


def test_filtered_search_finds_the_true_neighbours_once_the_engine_has_indexed(
    milvus_uri: str, small_model: Path
) -> None:
    """Near-duplicate clusters (as grown catalogs have), a filter passing a tenth of the items:
    the Milvus 2.3 server's own filtered HNSW search missed a fifth of the true neighbours here
    (recall@5 0.80); the catalog over-fetches unfiltered and lets the engine tell which pass."""
    from fashionrec_onnx.catalog.milvus_backend import MilvusBackend

    n = 6000
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(n // 10, 2048)).astype(np.float32)
    rows = centres[rng.integers(0, len(centres), n)] + 0.05 * rng.normal(size=(n, 2048)).astype(np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    keys = [f"k{i:05d}" for i in range(n)]
    with Catalog.create(milvus_uri, small_model) as catalog:
        catalog.add_many(keys, rows, metadata=[{"ten": str(i % 10 == 0), "half": i % 2} for i in range(n)])
        catalog.save()  # sealed: the engine builds its index over them
        backend = catalog.backend
        assert isinstance(backend, MilvusBackend)
        deadline = time.monotonic() + 120
        while (done := backend.indexed())[0] < n:
            assert time.monotonic() < deadline, f"the engine did not index the items: {done}"
            time.sleep(0.5)
        for wanted in ({"ten": "True"}, {"half": "1"}):
            found = total = 0
            for q in rows[1::97]:
                want = {h.key for h in catalog.exact_search(q, k=5, filter=wanted)}
                got = catalog.search(q, k=5, filter=wanted)
                assert all(str(h.metadata[next(iter(wanted))]) == next(iter(wanted.values())) for h in got)
                found, total = found + len({h.key for h in got} & want), total + len(want)
            assert found / total >= 0.98, (wanted, found / total)


def test_a_filter_nothing_passed_finds_the_items_written_since_on_both_backends(
    new_location: str, small_model: Path
) -> None:
    rows = unit_rows(30, seed=5)
    with Catalog.create(new_location, small_model) as catalog:
        catalog.add_many([f"k{i}" for i in range(20)], rows[:20], metadata=[{"colour": "red"}] * 20)
        assert catalog.search(rows[25], k=3, filter={"colour": "teal"}) == []
        catalog.add_many([f"k{i}" for i in range(20, 30)], rows[20:], metadata=[{"colour": "teal"}] * 10)
        hits = catalog.search(rows[25], k=3, filter={"colour": "teal"})
        assert [h.key for h in hits][:1] == ["k25"] and len(hits) == 3
