"""`fashionrec serve` over real HTTP: a real uvicorn on a free port in a child process, called with
httpx (and a raw socket where the test must control how the body is sent)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import select
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from fashionrec_onnx.catalog import Catalog
from fashionrec_onnx.quality.datasets import SAMPLE_DIR
from fashionrec_onnx.service.config import ServiceConfig
from fashionrec_onnx.service.run import exposure_warning

FASHIONREC = str(Path(sys.executable).with_name("fashionrec"))
KEY_ENV, KEY = "FASHIONREC_TEST_API_KEY", "test-secret-key"
AUTH = {"X-API-Key": KEY}
CATEGORIES = ("dress", "bag", "sneaker")
PER_CATEGORY = 20


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def served(catalog: Path, *options: str, env: dict[str, str] | None = None) -> Iterator[str]:
    """`fashionrec serve` in a child process, until its /health answers; stopped afterwards."""
    port = free_port()
    process = subprocess.Popen(
        [FASHIONREC, "serve", "--catalog", str(catalog), "--port", str(port), *options],
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180  # a hang detector, not a speed bound: CI machines are shared
        while True:
            assert process.poll() is None, process.stdout.read() if process.stdout else ""
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the service did not start within 180 s"
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def sample_images(target: Path, categories: tuple[str, ...], start: int, count: int) -> dict[str, dict]:
    """``count`` sample photos of each category copied under ``target``; their metadata by key
    (a category, and a product of two photos)."""
    metadata = {}
    for category in categories:
        (target / category).mkdir(parents=True, exist_ok=True)
        for i, source in enumerate(sorted((SAMPLE_DIR / category).glob("*.png"))[start : start + count]):
            shutil.copyfile(source, target / category / source.name)
            metadata[f"{category}/{source.name}"] = {"category": category, "product": f"{category}-{i // 2}"}
    return metadata


def make_catalog(root: Path, model: Path) -> Path:
    metadata = sample_images(root / "images", CATEGORIES, 0, PER_CATEGORY)
    with Catalog.create(root / "catalog", model, product_field="product") as catalog:
        catalog.index_folder(root / "images", metadata=metadata, progress=False)
    return root / "catalog"


@pytest.fixture(scope="module")
def catalog_dir(tmp_path_factory: pytest.TempPathFactory, small_model: Path) -> Path:
    return make_catalog(tmp_path_factory.mktemp("service"), small_model)


@pytest.fixture(scope="module")
def catalog(catalog_dir: Path) -> Iterator[Catalog]:
    with Catalog.open(catalog_dir, readonly=True) as opened:
        yield opened


@pytest.fixture(scope="module")
def url(catalog_dir: Path) -> Iterator[str]:
    with served(catalog_dir, "--api-key-env", KEY_ENV, env={KEY_ENV: KEY}) as address:
        yield address


@pytest.fixture(scope="module")
def http(url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=url, headers=AUTH, timeout=60) as client:
        yield client


def photo(catalog_dir: Path, key: str) -> bytes:
    return (catalog_dir.parent / "images" / key).read_bytes()


def upload(http: httpx.Client, image: bytes, **fields: object) -> httpx.Response:
    data = {name: str(value) for name, value in fields.items()}
    return http.post("/search", files={"image": ("photo.png", image, "image/png")}, data=data)


def ranked(hits: list) -> list[tuple[str, float]]:
    return [(hit["key"], round(hit["similarity"], 5)) for hit in hits]


def of_catalog(hits: list) -> list[tuple[str, float]]:
    return [(hit.key, round(hit.similarity, 5)) for hit in hits]


def assert_error(response: httpx.Response, status: int, error: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["status"] == status and body["error"] == error and body["detail"]
    assert "Traceback" not in response.text
    return body


# -- searching ----------------------------------------------------------------------------------------


def test_an_upload_finds_what_catalog_search_finds_for_the_same_photo(http, catalog, catalog_dir) -> None:
    key = "dress/" + sorted((catalog_dir.parent / "images" / "dress").iterdir())[3].name
    answer = upload(http, photo(catalog_dir, key), k=7).json()
    assert ranked(answer["hits"]) == of_catalog(catalog.search(catalog_dir.parent / "images" / key, k=7))
    assert answer["hits"][0]["key"] == key and answer["model"] == catalog.info.fingerprint
    assert {"read", "embed", "search", "total"} <= set(answer["timings_ms"])


def test_a_key_searches_more_like_this_and_leaves_the_item_out(http, catalog) -> None:
    key = catalog.keys()[5]
    answer = http.post("/search", json={"key": key, "k": 4}).json()
    assert ranked(answer["hits"]) == of_catalog(catalog.more_like_this(key, k=4))
    assert key not in [hit["key"] for hit in answer["hits"]]


def test_a_vector_finds_what_catalog_search_finds(http, catalog) -> None:
    vector = catalog.vector(catalog.keys()[10]) + 0.01
    answer = http.post("/search", json={"vector": vector.tolist(), "k": 5}).json()
    assert ranked(answer["hits"]) == of_catalog(catalog.search(vector.astype(np.float32), k=5))


def test_a_filter_keeps_only_matching_hits_in_a_form_and_in_json(http, catalog) -> None:
    image = photo(catalog.path, catalog.keys()[0])
    by_form = upload(http, image, k=5, filter=json.dumps({"category": "bag"})).json()["hits"]
    by_json = http.post("/search", json={"key": catalog.keys()[0], "k": 5, "filter": {"category": ["bag"]}})
    for hits in (by_form, by_json.json()["hits"]):
        assert len(hits) == 5 and {hit["metadata"]["category"] for hit in hits} == {"bag"}


def test_a_box_searches_that_region_of_the_upload(http, catalog) -> None:
    key = catalog.keys()[1]
    answer = upload(http, photo(catalog.path, key), k=3, box="0,0,14,20").json()
    expected = catalog.search(catalog.path.parent / "images" / key, k=3, box=(0, 0, 14, 20))
    assert ranked(answer["hits"]) == of_catalog(expected)


def test_a_jpeg_upload_is_searched_like_any_photo(http, catalog) -> None:
    buffer = io.BytesIO()
    Image.open(catalog.path.parent / "images" / catalog.keys()[2]).convert("RGB").save(buffer, "JPEG")
    hits = upload(http, buffer.getvalue(), k=3).json()["hits"]
    assert len(hits) == 3 and hits[0]["key"] == catalog.keys()[2]


def test_hits_carry_their_product(http, catalog) -> None:
    hits = http.post("/search", json={"key": catalog.keys()[0], "k": 6}).json()["hits"]
    assert [hit["product"] for hit in hits] == [
        hit.product for hit in catalog.more_like_this(catalog.keys()[0], k=6)
    ]
    assert all(hit["product"] == hit["metadata"]["product"] for hit in hits)


def test_the_answer_shown_in_the_docs_has_the_fields_a_real_answer_has(http, catalog_dir: Path) -> None:
    """docs/service.md serves a catalog with a product field: its sample answer shows `product`
    (it showed an answer without one)."""
    page = (Path(__file__).resolve().parents[1] / "docs" / "service.md").read_text(encoding="utf-8")
    (shown,) = [line for line in page.splitlines() if line.startswith('{"hits":[')]
    documented = json.loads(shown.replace(", ...]", "]"))
    key = "dress/" + sorted(p.name for p in (catalog_dir.parent / "images" / "dress").iterdir())[0]
    real = upload(http, photo(catalog_dir, key), k=3).json()
    assert documented.keys() == real.keys()
    assert documented["hits"][0].keys() == real["hits"][0].keys()
    assert documented["timings_ms"].keys() == real["timings_ms"].keys()


def grouped(hits: list) -> list[tuple[str, str, list[str]]]:
    return [(hit["key"], hit["product"], hit["photos"]) for hit in hits]


def test_group_by_product_answers_distinct_products_with_their_other_photos(http, catalog) -> None:
    key = catalog.keys()[4]
    by_key = http.post("/search", json={"key": key, "k": 4, "group_by": "product"}).json()["hits"]
    expected = catalog.more_like_this(key, k=4, group_by="product")
    assert grouped(by_key) == [(hit.key, hit.product, list(hit.photos)) for hit in expected]
    assert len({hit["product"] for hit in by_key}) == 4 and all(len(hit["photos"]) == 1 for hit in by_key)
    by_photo = upload(http, photo(catalog.path, key), k=4, group_by="product").json()["hits"]
    expected = catalog.search(catalog.path.parent / "images" / key, k=4, group_by="product")
    assert grouped(by_photo) == [(hit.key, hit.product, list(hit.photos)) for hit in expected]


def test_several_keys_and_negatives_answer_what_catalog_more_like_this_does(http, catalog) -> None:
    keys, negative = catalog.keys()[:3:2], [catalog.keys()[30]]
    answer = http.post("/search", json={"keys": keys, "negative": negative, "k": 5}).json()
    assert ranked(answer["hits"]) == of_catalog(catalog.more_like_this(keys, k=5, negative=negative))


def test_an_upload_with_negative_keys_searches_away_from_them(http, catalog) -> None:
    key, negative = catalog.keys()[0], [catalog.keys()[25], catalog.keys()[45]]
    answer = upload(http, photo(catalog.path, key), k=5, negative=json.dumps(negative)).json()
    expected = catalog.search(catalog.path.parent / "images" / key, k=5, negative=negative)
    assert ranked(answer["hits"]) == of_catalog(expected)


def test_negative_keys_with_a_vector_are_left_out_as_in_the_library(http, catalog) -> None:
    negative = catalog.keys()[:2]
    vector = catalog.vector(negative[0]) + catalog.vector(catalog.keys()[3])
    answer = http.post("/search", json={"vector": vector.tolist(), "negative": negative, "k": 5}).json()
    assert ranked(answer["hits"]) == of_catalog(catalog.search(vector, k=5, negative=negative))
    assert not {hit["key"] for hit in answer["hits"]} & set(negative)


def test_an_unknown_negative_key_is_404(http, catalog) -> None:
    assert_error(
        http.post("/search", json={"key": catalog.keys()[0], "negative": ["no/such"]}), 404, "unknown_key"
    )
    assert_error(
        upload(http, photo(catalog.path, catalog.keys()[0]), negative='["no/such"]'), 404, "unknown_key"
    )


# -- items, health, metrics, docs -----------------------------------------------------------------


def test_an_item_answers_its_key_metadata_and_product_without_a_server_path(http, catalog) -> None:
    key = catalog.keys()[0]
    item = catalog.get(key)
    response = http.get(f"/items/{key}")
    assert response.json() == {"key": key, "metadata": item.metadata, "product": item.metadata["product"]}


def test_answers_carry_no_server_path(http, catalog) -> None:
    texts = [
        upload(http, photo(catalog.path, catalog.keys()[0]), k=3).text,
        http.post("/search", json={"key": "no/such/key"}).text,
        http.get("/items/no-such-key").text,
    ]
    for text in texts:
        assert str(catalog.path) not in text and str(catalog.path.parent) not in text
        assert '"path"' not in text


def test_expose_paths_puts_the_server_s_image_paths_in_answers(catalog_dir, catalog) -> None:
    key = catalog.keys()[0]
    with served(catalog_dir, "--expose-paths") as address:
        hits = httpx.post(f"{address}/search", json={"key": key, "k": 2}).json()["hits"]
        item = httpx.get(f"{address}/items/{key}").json()
    assert [hit["path"] for hit in hits] == [hit.path for hit in catalog.more_like_this(key, k=2)]
    assert item["path"] == catalog.get(key).path and Path(item["path"]).is_file()


def test_health_tells_items_model_and_generation_without_the_key(url, catalog) -> None:
    body = httpx.get(f"{url}/health").json()
    assert body["status"] == "ok" and body["items"] == len(catalog)
    assert body["model"] == catalog.info.fingerprint and body["generation"] == catalog.generation


def metric(text: str, name: str, **labels: str) -> float:
    """One sample of a Prometheus text exposition (0 when absent), read by prometheus_client."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return 0.0


def test_metrics_count_requests_by_route_and_status_in_prometheus_text(http) -> None:
    http.get("/items/no-such-key")
    text = http.get("/metrics").text
    assert metric(text, "fashionrec_requests_total", route="/items/{key}", method="GET", status="404") >= 1
    assert "# TYPE fashionrec_request_duration_seconds histogram" in text
    assert metric(text, "fashionrec_catalog_items") == len(CATEGORIES) * PER_CATEGORY


def test_openapi_docs_describe_the_search_route(url) -> None:
    assert httpx.get(f"{url}/docs").status_code == 200
    schema = httpx.get(f"{url}/openapi.json").json()
    assert set(schema["paths"]["/search"]["post"]["requestBody"]["content"]) == {
        "multipart/form-data",
        "application/json",
    }


# -- errors ----------------------------------------------------------------------------------------------


def test_without_the_api_key_the_service_answers_401(url) -> None:
    assert_error(httpx.post(f"{url}/search", json={"key": "x"}), 401, "unauthorized")
    assert_error(httpx.get(f"{url}/items/x", headers={"X-API-Key": "wrong"}), 401, "unauthorized")
    assert_error(httpx.get(f"{url}/metrics"), 401, "unauthorized")


def test_the_api_key_may_come_as_a_bearer_token(url, catalog) -> None:
    response = httpx.get(f"{url}/items/{catalog.keys()[0]}", headers={"Authorization": f"Bearer {KEY}"})
    assert response.status_code == 200


def test_an_unreadable_upload_is_400_with_the_library_s_reason(http) -> None:
    body = assert_error(upload(http, b"this is not a photo"), 400, "unreadable_image")
    assert "not an image" in body["detail"]


def test_an_unknown_key_is_404_for_items_and_searches(http) -> None:
    assert_error(http.get("/items/dress/nope.png"), 404, "unknown_key")
    assert_error(http.post("/search", json={"key": "dress/nope.png"}), 404, "unknown_key")


@pytest.mark.parametrize(
    "query",
    [
        {"key": "k", "k": 0},
        {"key": "k", "k": 1000},
        {"key": "k", "k": "many"},
        {"key": "k", "vector": [1.0]},
        {},
        {"key": "k", "colour": "red"},
        {"vector": [1.0, 2.0]},
        {"key": "k", "filter": {"category": {"nested": 1}}},
        {"key": "k", "filter": "category=bag"},
        {"vector": [0.1] * 2048, "group_by": "colour"},
        {"keys": []},
    ],
    ids=[
        "k0",
        "k-too-big",
        "k-text",
        "two-queries",
        "no-query",
        "unknown-field",
        "short-vector",
        "nested-filter",
        "filter-not-object",
        "group-by-unknown",
        "no-keys",
    ],
)
def test_bad_json_parameters_are_422(http, query) -> None:
    assert_error(http.post("/search", json=query), 422, "bad_parameter")


@pytest.mark.parametrize(
    "fields",
    [
        {"k": "0"},
        {"filter": "{not json"},
        {"filter": '["a list"]'},
        {"filter": '{"no_such_field": "x"}'},
        {"box": "1,2,3"},
        {"box": "10,10,5,5"},
        {"collapse_duplicates": "maybe"},
        {"colour": "red"},
    ],
    ids=["k0", "filter-json", "filter-list", "filter-field", "box-3", "box-empty", "flag", "unknown"],
)
def test_bad_form_parameters_are_422(http, catalog, fields) -> None:
    assert_error(upload(http, photo(catalog.path, catalog.keys()[0]), **fields), 422, "bad_parameter")


def test_a_form_without_the_image_field_is_422(http, catalog) -> None:
    response = http.post("/search", files={"photo": ("p.png", photo(catalog.path, catalog.keys()[0]))})
    assert "image" in assert_error(response, 422, "bad_parameter")["detail"]


def test_a_body_that_is_neither_form_nor_json_is_422(http) -> None:
    response = http.post("/search", content=b"k=3", headers={"content-type": "text/plain"})
    assert_error(response, 422, "bad_parameter")


def test_a_wrong_method_or_route_is_json_too(http) -> None:
    assert_error(http.get("/search"), 405, "method_not_allowed")
    assert_error(http.get("/nowhere"), 404, "not_found")


# -- the upload limit -------------------------------------------------------------------------------------


def send_until_answered(port: int, head: bytes, chunks: Iterator[bytes]) -> tuple[bytes, int]:
    """Send ``head`` then ``chunks`` until the server answers; returns (answer, body bytes sent)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head)
        sent = 0
        for chunk in chunks:
            if select.select([sock], [], [], 0)[0]:
                break
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(chunk)
        answer = b""
        with contextlib.suppress(ConnectionResetError):
            while piece := sock.recv(65536):  # to the end: the server closes after a refusal
                answer += piece
        return answer, sent


def test_a_declared_12_mb_upload_is_413_before_any_of_it_is_read(url) -> None:
    port = int(url.rsplit(":", 1)[1])
    head = (
        f"POST /search HTTP/1.1\r\nHost: x\r\nX-API-Key: {KEY}\r\n"
        "Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 12000000\r\n\r\n"
    ).encode()
    answer, sent = send_until_answered(port, head, iter(()))  # no byte of the body is ever sent
    assert answer.startswith(b"HTTP/1.1 413") and b"upload_too_large" in answer and sent == 0


def test_a_chunked_12_mb_upload_is_refused_before_the_server_has_it_all(url) -> None:
    port = int(url.rsplit(":", 1)[1])
    head = (
        f"POST /search HTTP/1.1\r\nHost: x\r\nX-API-Key: {KEY}\r\nTransfer-Encoding: chunked\r\n"
        "Content-Type: multipart/form-data; boundary=b\r\n\r\n"
    ).encode()
    total = 12_000_000

    def chunks() -> Iterator[bytes]:
        part = b'--b\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n\r\n'
        yield b"%x\r\n%s\r\n" % (len(part), part)
        for _ in range(total // 100_000):
            yield b"%x\r\n%s\r\n" % (100_000, b"\xff" * 100_000)

    answer, sent = send_until_answered(port, head, chunks())  # the closing chunk is never sent:
    assert answer.startswith(b"HTTP/1.1 413")  # a server that waited for the whole body would hang


def test_an_upload_under_the_limit_is_read_whole(http) -> None:
    body = assert_error(upload(http, b"\0" * 9_000_000), 400, "unreadable_image")
    assert "cannot read the uploaded image" in body["detail"]


# -- load and other processes -------------------------------------------------------------------------


def test_a_burst_of_64_requests_at_concurrency_8_has_no_errors(http, catalog) -> None:
    keys = catalog.keys()
    images = [photo(catalog.path, key) for key in keys[:8]]

    def one(i: int) -> int:
        if i % 2:
            return upload(http, images[i % len(images)], k=5).status_code
        return http.post("/search", json={"key": keys[i % len(keys)], "k": 5}).status_code

    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(one, range(64)))
    assert statuses == [200] * 64


def test_two_workers_find_images_another_process_indexes_within_a_second(tmp_path, small_model) -> None:
    catalog_dir = make_catalog(tmp_path, small_model)
    new = sample_images(tmp_path / "new", ("shirt",), 0, 6)
    with served(catalog_dir, "--workers", "2") as url:
        indexer = subprocess.Popen(
            [FASHIONREC, "index", tmp_path / "new", "--catalog", catalog_dir, "--key-prefix", "new/"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        statuses = []
        while indexer.poll() is None:  # the workers answer while the other process writes
            statuses.append(httpx.post(f"{url}/search", json={"key": "dress/test-00018.png"}).status_code)
        assert indexer.returncode == 0 and set(statuses) <= {200, 404}
        done = time.monotonic()
        key = sorted(new)[2]
        image = (tmp_path / "new" / key).read_bytes()
        found = []
        while len(found) < 8:  # eight searches in a row, on new connections (either worker)
            answer = httpx.post(f"{url}/search", files={"image": ("p.png", image)}, timeout=30).json()
            hit = answer["hits"][0]["key"] == f"new/{key}"
            found = [*found, True] if hit else []
            assert hit or time.monotonic() - done < 1.0, "a worker did not see the new images in 1 s"
        items = {httpx.get(f"{url}/health").json()["items"] for _ in range(8)}
        assert items == {len(CATEGORIES) * PER_CATEGORY + len(new)}


# -- starting -------------------------------------------------------------------------------------------


def test_importing_the_library_imports_no_web_framework() -> None:
    code = "import sys, fashionrec_onnx; print([m for m in ('fastapi', 'uvicorn') if m in sys.modules])"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "[]"


def test_an_unset_api_key_variable_stops_the_start_with_one_line(catalog_dir) -> None:
    env = {k: v for k, v in os.environ.items() if k != "FASHIONREC_UNSET_KEY"}
    result = subprocess.run(
        [FASHIONREC, "serve", "--catalog", catalog_dir, "--api-key-env", "FASHIONREC_UNSET_KEY"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error: --api-key-env FASHIONREC_UNSET_KEY")


def test_a_host_other_machines_can_reach_without_a_key_gets_a_warning(catalog_dir) -> None:
    config = ServiceConfig(catalog=str(catalog_dir))
    assert exposure_warning("0.0.0.0", config) and "API key" in exposure_warning("0.0.0.0", config)
    assert exposure_warning("127.0.0.1", config) is None and exposure_warning("::1", config) is None
    assert exposure_warning("0.0.0.0", ServiceConfig(catalog="c", api_key_env="KEY")) is None


def test_the_socket_shared_with_workers_is_labelled_tcp_so_answers_are_not_delayed() -> None:
    from fashionrec_onnx.service.tcp import TcpConfig

    config = TcpConfig("fashionrec_onnx.service.app:app_from_env", host="127.0.0.1", port=free_port())
    with config.bind_socket() as sock:  # protocol 0 would leave Nagle on: 40 ms an answer
        assert sock.proto == socket.IPPROTO_TCP
