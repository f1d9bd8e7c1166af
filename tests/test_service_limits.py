"""What one cheap request may cost `fashionrec serve`: every list, text and nesting of a query is
bounded and refused (422) before any work, made-up filter fields leave nothing behind, and an
unknown value costs one log line, not one per value."""

from __future__ import annotations

import gc
import io
import itertools
import json
import logging
import shutil
import tracemalloc
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.client import HTTPConnection
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from test_service import AUTH, KEY, KEY_ENV, assert_error, make_catalog, metric, photo, served, upload

from fashionrec_onnx.catalog import Catalog
from fashionrec_onnx.errors import CatalogError
from fashionrec_onnx.service.config import MAX_FILTER_FIELDS, MAX_FILTER_VALUES, MAX_KEYS, MAX_TEXT


@pytest.fixture(scope="module")
def catalog_dir(tmp_path_factory: pytest.TempPathFactory, small_model: Path) -> Path:
    return make_catalog(tmp_path_factory.mktemp("limits"), small_model)


@pytest.fixture(scope="module")
def url(catalog_dir: Path) -> Iterator[str]:
    with served(catalog_dir, "--api-key-env", KEY_ENV, env={KEY_ENV: KEY}) as address:
        yield address


@pytest.fixture(scope="module")
def http(url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=url, headers=AUTH, timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def key(catalog_dir: Path) -> str:
    with Catalog.open(catalog_dir, readonly=True) as catalog:
        return catalog.keys()[0]


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


# -- lists and texts have bounds, checked before any work -------------------------------------------


@pytest.mark.parametrize(
    "query, bound",
    [
        (lambda key: {"keys": [key] * 100_000}, f"at most {MAX_KEYS}"),
        (lambda key: {"key": key, "negative": [key] * 100_000}, f"at most {MAX_KEYS}"),
        (lambda key: {"key": key, "filter": {"category": [str(i) for i in range(20_000)]}}, "at most"),
        (lambda key: {"key": key, "filter": {f"f{i}": "x" for i in range(MAX_FILTER_FIELDS + 1)}}, "at most"),
        (lambda key: {"key": key, "filter": {"x" * 1_000_000: "dress"}}, f"at most {MAX_TEXT}"),
        (lambda key: {"key": key, "filter": {"category": "x" * 1_000_000}}, f"at most {MAX_TEXT}"),
        (lambda key: {"key": key, "group_by": "x" * 1_000_000}, f"at most {MAX_TEXT}"),
        (lambda key: {"vector": [0.5] * 100_000}, "at most"),
    ],
    ids=["keys", "negatives", "values", "fields", "field-name", "filter-text", "group-by", "vector"],
)
def test_a_json_query_over_a_bound_is_422_naming_the_bound(http, key, query, bound) -> None:
    body = assert_error(http.post("/search", json=query(key)), 422, "bad_parameter")
    assert bound in body["detail"] and len(body["detail"]) < 600


def test_a_list_at_its_bound_is_answered(http, key) -> None:
    at_bound = {"keys": [key] * MAX_KEYS, "negative": [key] * MAX_KEYS}
    assert http.post("/search", json=at_bound).status_code == 200
    values = ["dress"] + [f"none-{i}" for i in range(MAX_FILTER_VALUES - 1)]
    assert http.post("/search", json={"key": key, "filter": {"category": values}}).status_code == 200


def test_many_bad_items_make_one_short_message(http) -> None:
    body = assert_error(http.post("/search", json={"keys": list(range(50))}), 422, "bad_parameter")
    assert "and 47 more" in body["detail"] and len(body["detail"]) < 600


@pytest.mark.parametrize(
    "fields",
    [
        {"filter": '{"category": ' + nested(10_000) + "}"},
        {"negative": nested(10_000)},
        {"filter": "[" * 5_000 + "{"},
    ],
    ids=["filter", "negative", "unclosed"],
)
def test_deeply_nested_json_in_a_form_field_is_422_not_500(http, catalog_dir, key, fields) -> None:
    body = assert_error(upload(http, photo(catalog_dir, key), **fields), 422, "bad_parameter")
    assert len(body["detail"]) < 600


def test_deeply_nested_json_in_the_body_is_422(http, key) -> None:
    text = '{"key": "' + key + '", "filter": {"category": ' + nested(100_000) + "}}"
    body = http.post("/search", content=text, headers={"content-type": "application/json"})
    assert_error(body, 422, "bad_parameter")


@pytest.mark.parametrize(
    "fields",
    [
        {"negative": json.dumps([f"k{i}" for i in range(MAX_KEYS + 1)])},
        {"filter": json.dumps({"category": [str(i) for i in range(MAX_FILTER_VALUES + 1)]})},
        {"filter": json.dumps({"category": "x" * 200_000})},
        {"group_by": "x" * (MAX_TEXT + 1)},
    ],
    ids=["negatives", "filter-values", "form-field-size", "group-by"],
)
def test_a_form_field_over_a_bound_is_422(http, catalog_dir, key, fields) -> None:
    body = assert_error(upload(http, photo(catalog_dir, key), **fields), 422, "bad_parameter")
    assert "at most" in body["detail"] or "maximum size" in body["detail"]


# -- filters: made-up fields leave nothing behind; unknown values cost one line ------------------------


def test_filters_naming_made_up_fields_leave_no_memory_behind(catalog_dir) -> None:
    with Catalog.open(catalog_dir, readonly=True) as catalog:
        vector = np.asarray(catalog.vector(catalog.keys()[0]))
        catalog.search(vector, 3, {"category": "dress"})  # a real field's column is kept, once
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for i in range(100):
                with pytest.raises(CatalogError, match="no item has the metadata field"):
                    catalog.search(vector, 3, {f"{i}-" + "x" * 100_000: "dress"})
            gc.collect()
            grown = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
    assert grown < 2_000_000, f"{grown:,} bytes kept after 100 made-up field names of 100 kB"


def test_many_values_no_item_has_make_one_warning_line(catalog_dir, caplog) -> None:
    with Catalog.open(catalog_dir, readonly=True) as catalog:
        vector = np.asarray(catalog.vector(catalog.keys()[0]))
        with caplog.at_level(logging.WARNING, logger="fashionrec_onnx"):
            hits = catalog.search(vector, 3, {"category": ["Dres", *[f"none-{i}" for i in range(2_000)]]})
    assert hits == []
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 1, lines[:3]
    assert "'Dres'" in lines[0] and "and 1998 more" in lines[0] and len(lines[0]) < 600


# -- metrics: labels from closed sets, every worker's counts added up --------------------------------


def test_methods_http_does_not_define_for_the_service_are_one_other_label(url, http) -> None:
    made_up = ["PROPFIND", "MKCOL", "PURGE", "SUBSCRIBE", "FOO1", "FOO2", "X" * 50]
    with httpx.Client(base_url=url) as anonymous:
        for method in made_up * 3:
            anonymous.request(method, "/health")  # 405, or 400 from an HTTP parser that knows its methods
    text = http.get("/metrics").text
    methods = {
        sample.labels.get("method")
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if "method" in sample.labels
    }
    assert methods <= {"GET", "POST", "other"}, methods
    assert not any(method in text for method in made_up)


NOT_FOUND = {"route": "/items/{key}", "method": "GET", "status": "404"}


def test_metrics_add_up_the_counts_of_every_worker(catalog_dir) -> None:
    with served(catalog_dir, "--workers", "2") as address:
        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(lambda _: httpx.get(f"{address}/items/none").status_code, range(60)))
        assert statuses == [404] * 60
        for _ in range(6):  # whichever worker answers the scrape, on a new connection each time
            text = httpx.get(f"{address}/metrics").text
            assert metric(text, "fashionrec_requests_total", **NOT_FOUND) == 60


def test_counts_start_at_zero_with_each_start_of_the_service(catalog_dir, tmp_path) -> None:
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics")}
    for _ in range(2):
        with served(catalog_dir, env=env) as address:
            text = httpx.get(f"{address}/metrics").text
            assert metric(text, "fashionrec_requests_total", **NOT_FOUND) == 0
            for _ in range(3):
                httpx.get(f"{address}/items/none")


# -- an oversized upload sent whole before reading the answer gets the 413 -----------------------------


def test_an_oversized_upload_sent_whole_by_urllib_gets_the_413_not_a_reset(url) -> None:
    request = urllib.request.Request(
        f"{url}/search",
        data=b"\xff" * 12_000_000,
        headers={"Content-Type": "multipart/form-data; boundary=b", "X-API-Key": KEY},
        method="POST",
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=60)
    assert refused.value.code == 413 and b"upload_too_large" in refused.value.read()


def test_an_oversized_chunked_upload_sent_whole_gets_the_413_not_a_reset(url) -> None:
    host, port = url.removeprefix("http://").split(":")
    connection = HTTPConnection(host, int(port), timeout=60)
    part = b'--b\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n\r\n'
    chunks = itertools.chain([part], (b"\xff" * 100_000 for _ in range(120)))  # 12 MB, no length declared
    headers = {"Content-Type": "multipart/form-data; boundary=b", "X-API-Key": KEY}
    connection.request("POST", "/search", body=chunks, headers=headers, encode_chunked=True)
    answer = connection.getresponse()
    assert answer.status == 413 and b"upload_too_large" in answer.read()
    connection.close()


# -- uploads: a pixel limit read from the header, and a ceiling on decodes in flight ------------------


def png(width: int, height: int) -> bytes:
    """A one-colour PNG: tens of kilobytes that decode to ``width x height`` pixels."""
    out = io.BytesIO()
    Image.new("L", (width, height), 200).save(out, "PNG", optimize=True)
    return out.getvalue()


def served_rss(url: str) -> tuple[int, int]:
    """(resident, peak resident) kB of the process listening on ``url``'s port (one worker)."""
    port = int(url.rsplit(":", 1)[1])
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            command = (status.parent / "cmdline").read_bytes().split(b"\0")
            text = status.read_text()
        except OSError:
            continue
        if b"serve" in command and str(port).encode() in command:
            fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
            return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])
    raise AssertionError(f"no process serves {url}")


def test_concurrent_photos_over_the_pixel_limit_are_413_before_decoding(url) -> None:
    bomb = png(8_000, 8_000)  # 64 megapixels in a file of a few tens of kB
    assert len(bomb) < 300_000
    _, peak_before = served_rss(url)
    with httpx.Client(base_url=url, headers=AUTH, timeout=120) as client, ThreadPoolExecutor(24) as pool:
        answers = list(pool.map(lambda _: upload(client, bomb), range(24)))
    for answer in answers:
        body = assert_error(answer, 413, "image_too_large")
        assert "8000x8000" in body["detail"] and "50,000,000" in body["detail"]
    _, peak_after = served_rss(url)
    assert peak_after - peak_before < 200_000, f"peak RSS grew {peak_after - peak_before:,} kB"


def test_concurrent_large_photos_decode_a_few_at_a_time_so_memory_has_a_ceiling(catalog_dir) -> None:
    photo_24mp = png(6_000, 4_000)  # under the limit: each decode holds about 100 MB
    with served(catalog_dir, "--threads", "2") as address:
        rss_before, _ = served_rss(address)
        client = httpx.Client(base_url=address, headers=AUTH, timeout=300)
        with client, ThreadPoolExecutor(16) as pool:
            statuses = list(pool.map(lambda _: upload(client, photo_24mp).status_code, range(16)))
        assert statuses == [200] * 16
        _, peak = served_rss(address)
    # two decodes in flight of ~100 MB (plus the resize's copies), never sixteen
    assert peak - rss_before < 1_000_000, f"peak RSS grew {peak - rss_before:,} kB for 16 concurrent photos"


def test_the_fields_an_unknown_field_error_lists_follow_writes(catalog_dir, tmp_path) -> None:
    shutil.copytree(catalog_dir, tmp_path / "catalog")
    with Catalog.open(tmp_path / "catalog") as catalog:
        vector = np.asarray(catalog.vector(catalog.keys()[0]))
        with pytest.raises(CatalogError) as before:
            catalog.search(vector, 3, {"colur": "red"})
        assert "category" in str(before.value) and "colour" not in str(before.value)
        catalog.update_metadata({catalog.keys()[0]: {"category": "dress", "colour": "red"}})
        with pytest.raises(CatalogError) as after:
            catalog.search(vector, 3, {"colur": "red"})
        assert "colour" in str(after.value)
