"""The demo, served for real on loopback: a real HTTP client (gradio_client) and a real browser."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import httpx
import numpy as np
import pytest
from fashionrec_demo.app import ALL_CATEGORIES, RANDOM_WEIGHTS_BANNER, banner_for, build_app, launch
from fashionrec_demo.screenshot import DESKTOP, PHONE, capture, free_port, open_page, upload, wait_for_results
from gradio_client import Client, handle_file
from PIL import Image

from fashionrec_onnx import Catalog
from fashionrec_onnx.quality.datasets import SAMPLE_DIR

QUERY = SAMPLE_DIR / "dress" / "test-00013.png"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, small_model: Path):
    """The bundled sample indexed with the test model, served in-process on a free port."""
    catalog = Catalog.create(tmp_path_factory.mktemp("demo") / "catalog", small_model)
    catalog.index_folder(SAMPLE_DIR, metadata=SAMPLE_DIR / "labels.csv", progress=False)
    port = free_port()
    app = launch(build_app(catalog, banner=RANDOM_WEIGHTS_BANNER), port=port, block=False)
    url = f"http://127.0.0.1:{port}/"
    try:
        yield url, catalog
    finally:
        app.close()
        catalog.close()


@pytest.fixture(scope="module")
def client(served) -> Client:
    return Client(served[0], verbose=False)


def search(client: Client, image: Path, k: int = 5, category: str = ALL_CATEGORIES) -> tuple:
    return client.predict(handle_file(str(image)), k, category, api_name="/search")


def captions(gallery: list[dict]) -> list[str]:
    return [item["caption"] for item in gallery]


def test_client_search_returns_k_results_led_by_the_query_itself(client: Client) -> None:
    gallery, timings, status = search(client, QUERY, k=5)
    assert len(gallery) == 5
    assert captions(gallery)[0].startswith("#1 · Dress · similarity 1.000 · dress/test-00013.png")
    assert "embedding" in timings and "search" in timings
    assert status == ""
    assert all(Path(item["image"]).is_file() for item in gallery)  # thumbnails really come back


def test_k_and_category_filter_are_honoured(client: Client) -> None:
    gallery, _, _ = search(client, QUERY, k=12, category="Sneaker")
    assert len(gallery) == 12
    assert all(" · Sneaker · " in caption for caption in captions(gallery))


def test_more_like_this_leaves_the_item_out(client: Client) -> None:
    gallery, _, status = client.predict("dress/test-00013.png", 5, ALL_CATEGORIES, api_name="/more_like_this")
    assert len(gallery) == 5 and "dress/test-00013.png" not in " ".join(captions(gallery))
    assert "More like" in status


def test_a_broken_image_shows_a_message_and_the_app_keeps_serving(client: Client, tmp_path: Path) -> None:
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(QUERY.read_bytes()[:120])
    gallery, _, status = search(client, truncated)
    assert gallery == [] and status.startswith("Could not read this image")

    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("this is not a picture")
    gallery, _, status = search(client, not_an_image)
    assert gallery == [] and status == "Could not read this image: not an image (unrecognised format)."

    gallery, _, _ = search(client, QUERY)
    assert len(gallery) == 5


def test_files_outside_the_catalog_are_refused(served, small_model: Path) -> None:
    url, catalog = served
    secrets = ["/etc/passwd", str(small_model), str(catalog.path / "catalog.sqlite"), str(QUERY)]
    with httpx.Client(base_url=url, timeout=30) as http:
        for path in secrets:
            response = http.get(f"gradio_api/file={path}")
            assert response.status_code in (403, 404), (path, response.status_code)
        assert http.get("").status_code == 200  # and the page itself is served


def test_concurrent_users_get_their_own_results(served) -> None:
    url, _ = served
    queries = sorted(SAMPLE_DIR.glob("*/*.png"))[::97][:6]
    answers: dict[Path, str] = {}
    errors: list[BaseException] = []

    def user(image: Path) -> None:
        try:
            gallery, _, _ = search(Client(url, verbose=False), image, k=3)
            answers[image] = captions(gallery)[0]
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=user, args=(q,)) for q in queries]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors and len(answers) == len(queries)
    for image, top in answers.items():
        assert top.endswith(f"{image.parent.name}/{image.name}")


@pytest.mark.parametrize("viewport", [None, PHONE], ids=["desktop", "phone"])
def test_the_page_in_a_real_browser_shows_five_results(served, tmp_path: Path, viewport) -> None:
    url, _ = served
    screenshot = tmp_path / "demo.png"
    shown = capture(url, QUERY, screenshot, **({"viewport": viewport} if viewport else {}))
    assert len(shown) == 5
    assert screenshot.stat().st_size > 10_000


def _captions(page) -> list[str]:  # page: playwright Page
    return page.locator("#results .caption-label").all_inner_texts()


def _keys(page) -> list[str]:
    return [caption.rsplit(" · ", 1)[-1] for caption in _captions(page)]


def _expected(hits) -> list[str]:
    return [f"#{h.rank} · {h.metadata['category']} · similarity {h.similarity:.3f} · {h.key}" for h in hits]


def _wait_for_captions(page, expected: list[str]) -> None:
    """Wait until the results show exactly these captions (a re-run replaces the gallery)."""
    page.wait_for_function(
        "expected => JSON.stringify([...document.querySelectorAll('#results .caption-label')]"
        ".map(c => c.innerText)) === JSON.stringify(expected)",
        arg=expected,
    )


def _set_k(page, k: int) -> None:
    """Type a number of results, as a shopper would (no Search press follows)."""
    page.locator("#k input[type=number]").fill(str(k))
    page.locator("#k input[type=number]").press("Enter")


def test_in_the_browser_a_result_click_shows_more_like_it_without_it(served) -> None:
    url, _ = served
    with open_page(url) as page:
        assert upload(page, QUERY) == 5
        clicked = _keys(page)[1]
        page.locator("#results img").nth(1).click()
        page.wait_for_function("() => document.querySelector('#status').innerText.includes('More like')")
        assert clicked in page.locator("#status").inner_text()
        assert wait_for_results(page) == 5
        assert clicked not in _keys(page)


def test_in_the_browser_an_example_click_also_leaves_the_example_out(served) -> None:
    url, catalog = served
    with open_page(url) as page:
        example = page.locator("#examples .caption-label").nth(3).inner_text()
        page.locator("#examples img").nth(3).click()
        _wait_for_captions(page, _expected(catalog.more_like_this(example, k=5)))
        assert example not in _keys(page) and example in page.locator("#status").inner_text()


def test_in_the_browser_changing_k_re_runs_the_search_without_pressing_search(served) -> None:
    url, catalog = served
    with open_page(url) as page:
        upload(page, QUERY)
        _set_k(page, 3)
        _wait_for_captions(page, _expected(catalog.search(QUERY, k=3)))
        assert "3 results" in page.locator("#timings").inner_text()


def test_in_the_browser_changing_the_category_re_runs_more_like_this(served) -> None:
    url, catalog = served
    with open_page(url) as page:
        upload(page, QUERY)
        clicked = _keys(page)[1]
        page.locator("#results img").nth(1).click()
        _wait_for_captions(page, _expected(catalog.more_like_this(clicked, k=5)))
        page.locator("#category input").fill("Bag")
        page.keyboard.press("Enter")
        _wait_for_captions(page, _expected(catalog.more_like_this(clicked, k=5, filter={"category": "Bag"})))
        assert clicked in page.locator("#status").inner_text()  # still more like the clicked item


def test_in_the_browser_captions_are_shown_in_full(served) -> None:
    url, catalog = served
    with open_page(url) as page:
        upload(page, QUERY)
        _set_k(page, 20)
        _wait_for_captions(page, _expected(catalog.search(QUERY, k=20)))
        clipped = page.evaluate(
            "() => [...document.querySelectorAll('#results .caption-label, #examples .caption-label')]"
            ".filter(c => c.scrollWidth > c.clientWidth || c.scrollHeight > c.clientHeight"
            " || getComputedStyle(c).textOverflow === 'ellipsis').map(c => c.innerText)"
        )
    assert clipped == []


# Each line a caption wraps to, from the positions of its characters: a line may start only after
# a space or a hyphen (what the browser breaks at before resorting to `overflow-wrap: anywhere`).
LINE_BREAKS = """() => {
  const found = {breaks: 0, midWord: []};
  for (const label of document.querySelectorAll('#results .caption-label, #examples .caption-label')) {
    const walker = document.createTreeWalker(label, NodeFilter.SHOW_TEXT);
    const range = document.createRange();
    let previous = null, top = null;
    for (let node = walker.nextNode(); node; node = walker.nextNode()) {
      for (let i = 0; i < node.data.length; i++) {
        range.setStart(node, i); range.setEnd(node, i + 1);
        const rect = range.getClientRects()[0];
        if (rect && rect.width > 0) {
          if (top !== null && rect.top > top + 1) {
            found.breaks += 1;
            if (!' -'.includes(previous)) found.midWord.push(label.innerText + ' | ' + node.data.slice(i));
          }
          top = rect.top;
        }
        previous = node.data[i];
      }
    }
  }
  return found;
}"""


@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["desktop", "phone"])
def test_in_the_browser_keys_in_captions_break_only_at_spaces_and_hyphens(served, viewport) -> None:
    """Results and examples end with a key (dress/test-00013.png): a caption wraps between its
    words, never inside a key (ten 74 px example columns broke them mid-word)."""
    url, catalog = served
    with open_page(url, viewport=viewport) as page:
        upload(page, QUERY)
        _set_k(page, 20)
        _wait_for_captions(page, _expected(catalog.search(QUERY, k=20)))
        assert page.locator("#examples .caption-label").count() == 10
        lines = page.evaluate(LINE_BREAKS)
    assert lines["breaks"] > 20  # captions do wrap (each result's, at least once): the check bites
    assert lines["midWord"] == []


def test_in_the_browser_no_tile_stays_highlighted_after_more_like_this(served) -> None:
    url, _ = served
    with open_page(url) as page:
        upload(page, QUERY)
        page.locator("#results img").nth(1).click()
        page.wait_for_function("() => document.querySelector('#status').innerText.includes('More like')")
        wait_for_results(page)
        page.wait_for_timeout(300)  # the gallery re-renders after the answer arrives
        assert page.locator("#results .thumbnail-item.selected").count() == 0


def test_in_the_browser_an_error_is_cleared_by_the_next_successful_search(served, tmp_path: Path) -> None:
    url, _ = served
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("this is not a picture")
    with open_page(url) as page:
        page.locator("#query input[type=file]").set_input_files(str(not_an_image))
        page.wait_for_function("() => document.querySelector('#status').innerText.includes('Could not read')")
        page.locator("#examples img").first.click()
        page.wait_for_function("() => document.querySelector('#status').innerText.includes('More like')")
        assert "Could not read" not in page.locator("body").inner_text()


def test_at_phone_width_the_results_take_two_columns_and_nothing_overflows(served) -> None:
    url, _ = served
    with open_page(url, viewport=PHONE) as page:
        upload(page, QUERY)
        page.wait_for_timeout(300)
        layout = page.evaluate(
            "() => ({page: document.documentElement.scrollWidth, width: innerWidth,"
            " columns: getComputedStyle(document.querySelector('#results .grid-container'))"
            ".gridTemplateColumns.split(' ').length,"
            " beyond: [...document.querySelectorAll('#results .thumbnail-item, #examples .thumbnail-item')]"
            ".filter(t => t.getBoundingClientRect().right > innerWidth).length,"
            " hidden: [...document.querySelectorAll('.grid-wrap, #banner, #footer')]"
            ".filter(e => e.scrollWidth > e.clientWidth || e.scrollHeight > e.clientHeight).length})"
        )
    assert layout["page"] <= layout["width"] == PHONE["width"]
    assert layout["columns"] == 2 and layout["beyond"] == 0 and layout["hidden"] == 0


# -- products: grouped results, liked and disliked, Refine ------------------------------------------


@pytest.fixture(scope="module")
def served_products(tmp_path_factory: pytest.TempPathFactory, small_model: Path):
    """The sample with its product field, as `fashionrec demo` serves it."""
    path = tmp_path_factory.mktemp("demo-products") / "catalog"
    catalog = Catalog.create(path, small_model, product_field="product")
    catalog.index_folder(SAMPLE_DIR, metadata=SAMPLE_DIR / "labels.csv", progress=False)
    port = free_port()
    app = launch(build_app(catalog), port=port, block=False)
    try:
        yield f"http://127.0.0.1:{port}/", catalog
    finally:
        app.close()
        catalog.close()


def _product_captions(hits) -> list[str]:
    def photos(hit) -> str:
        count = 1 + len(hit.photos)
        return f"{count} photo{'s' if count > 1 else ''}"

    return [
        f"#{h.rank} · {h.metadata['category']} · product {h.product} · {photos(h)} · "
        f"similarity {h.similarity:.3f} · {h.key}"
        for h in hits
    ]


def test_with_a_product_field_the_page_shows_distinct_products_with_their_photo_counts(
    served_products,
) -> None:
    url, catalog = served_products
    with open_page(url) as page:
        upload(page, QUERY)
        _wait_for_captions(page, _product_captions(catalog.search(QUERY, k=5, group_by="product")))
        assert "394 products (1,000 photos)" in page.locator("#footer").inner_text()


def test_in_the_browser_refine_searches_like_the_liked_and_unlike_the_disliked(served_products) -> None:
    url, catalog = served_products
    with open_page(url) as page:
        upload(page, QUERY)
        keys = _keys(page)
        liked, disliked = keys[:2], keys[2:3]
        for box in (page.locator("#liked input[type=checkbox]").nth(0),
                    page.locator("#liked input[type=checkbox]").nth(1),
                    page.locator("#disliked input[type=checkbox]").nth(2)):  # fmt: skip
            box.check()
        page.locator("#refine").click()
        expected = catalog.more_like_this(liked, k=5, group_by="product", negative=disliked)
        _wait_for_captions(page, _product_captions(expected))
        shown = _keys(page)
    ticked = {catalog.get(key).metadata["product"] for key in liked + disliked}
    assert len(shown) == 5
    assert not ticked & {catalog.get(key).metadata["product"] for key in shown}


def street_photo(path: Path) -> Path:
    """A shopper's photo: the query dress, enlarged six times at (40, 60), on a noisy street."""
    rng = np.random.default_rng(1)
    canvas = Image.fromarray(rng.integers(0, 255, (300, 420, 3), dtype=np.uint8), "RGB")
    canvas.paste(Image.open(QUERY).convert("RGB").resize((168, 168)), (40, 60))
    canvas.save(path)
    return path


def test_in_the_browser_a_dragged_box_searches_that_region_as_the_cropped_file(
    served, tmp_path: Path
) -> None:
    url, catalog = served
    photo = street_photo(tmp_path / "street.png")
    with open_page(url) as page:
        upload(page, photo)
        whole = _captions(page)
        image = page.locator("#query .image-frame img")
        x, y, width, height, natural_width, natural_height = image.evaluate(
            "i => { const r = i.getBoundingClientRect();"
            " return [r.x, r.y, r.width, r.height, i.naturalWidth, i.naturalHeight]; }"
        )
        scale = min(1, width / natural_width, height / natural_height)  # shown scaled down, centred
        left = x + (width - natural_width * scale) / 2
        top = y + (height - natural_height * scale) / 2
        page.mouse.move(left + 40 * scale, top + 60 * scale)
        page.mouse.down()
        page.mouse.move(left + 120 * scale, top + 150 * scale, steps=5)
        page.mouse.move(left + 208 * scale, top + 228 * scale, steps=5)
        page.mouse.up()
        page.wait_for_function("() => document.querySelector('#status').innerText.includes('Region')")
        region = page.locator("#region textarea").input_value()
        shown = _captions(page)
    box = tuple(int(value) for value in region.split(","))
    assert all(abs(a - b) <= 2 for a, b in zip(box, (40, 60, 208, 228))), box  # where the mouse went
    cropped = tmp_path / "cropped.png"
    Image.open(photo).crop(box).save(cropped)
    assert shown == _expected(catalog.search(cropped, k=5))
    assert shown != whole and shown[0].endswith("dress/test-00013.png")


def test_a_region_reaches_the_server_only_as_four_numbers_inside_the_photo(
    client: Client, tmp_path: Path
) -> None:
    photo = handle_file(str(street_photo(tmp_path / "street.png")))
    gallery, _, status = client.predict(photo, 5, ALL_CATEGORIES, "40,60,208,228", api_name="/search")
    assert len(gallery) == 5 and status == "Region 40,60,208,228 of your photo"
    for not_a_box in ["../../etc/passwd", "1,2,3", "0,0,10,10,10", "-1,0,5,5", "1e3,0,5,5", "9" * 100]:
        gallery, _, status = client.predict(photo, 5, ALL_CATEGORIES, not_a_box, api_name="/search")
        assert (gallery, status) == ([], "The region must be four whole numbers: left, top, right, bottom.")
    gallery, _, status = client.predict(photo, 5, ALL_CATEGORIES, "0,0,500,10", api_name="/search")
    assert gallery == [] and status.startswith("This region does not fit the photo: the box (0, 0, 500, 10)")
    assert "reaches outside your photo, which is 420x300 pixels" in status and "/tmp" not in status


def test_fashionrec_demo_offline_falls_back_to_random_weights_with_a_banner(tmp_path: Path) -> None:
    """What `make demo` runs on a fresh machine without internet: export fails, the demo says so."""
    import os
    import subprocess
    import sys
    import time

    port = free_port()
    offline = {
        **os.environ,
        "KERAS_HOME": str(tmp_path / "keras"),  # no cached ImageNet weights
        "HTTPS_PROXY": "http://127.0.0.1:9",  # and no way to download them, even with network
        "https_proxy": "http://127.0.0.1:9",
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }
    command = [str(Path(sys.executable).with_name("fashionrec")), "demo", "--home", str(tmp_path / "home"),
               "--port", str(port)]  # fmt: skip
    process = subprocess.Popen(
        command, env=offline, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline = time.monotonic() + 400
        page = None
        while time.monotonic() < deadline and process.poll() is None:
            try:
                page = httpx.get(f"http://127.0.0.1:{port}/config", timeout=5)
                if page.status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(1)
        assert page is not None and page.status_code == 200, "the demo did not come up"
        assert "Untrained weights: results show the pipeline, not real similarity" in page.text
        assert "**394 products** (1,000 photos)" in page.text  # the footer: the sample has products
    finally:
        process.terminate()
        output = process.communicate(timeout=60)[0]
    assert "FALLING BACK TO SEEDED RANDOM WEIGHTS" in output
    assert "and start the demo again" in output and "--weights" not in output  # no export options
    assert f"on http://127.0.0.1:{port} (open it in a browser" in output  # it opens none itself
    assert (tmp_path / "home" / "resnet50-random-seed0.onnx").exists()


def test_fashionrec_demo_on_a_catalog_says_where_it_serves_and_nothing_a_user_cannot_act_on(
    served, small_model: Path
) -> None:
    """One line with the address; not Gradio's own (`share=True` in `launch()`) nor a log line
    per HTTP request of its start-up check."""
    import subprocess
    import sys
    import time

    port = free_port()
    catalog = served[1].path
    command = [str(Path(sys.executable).with_name("fashionrec")), "demo", "--catalog", str(catalog),
               "--model", str(small_model), "--port", str(port)]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline, up = time.monotonic() + 120, False
        while not up and time.monotonic() < deadline and process.poll() is None:
            try:
                up = httpx.get(f"http://127.0.0.1:{port}/config", timeout=5).status_code == 200
            except httpx.HTTPError:
                time.sleep(0.5)
        assert up, "the demo did not come up"
    finally:
        process.terminate()
        output = process.communicate(timeout=60)[0]
    lines = [line for line in output.splitlines() if line.strip()]
    assert lines[0].startswith("serving 1000 photos") and len(lines) == 1, output
    assert lines[0].endswith(f" on http://127.0.0.1:{port} (open it in a browser; Ctrl+C to stop)")
    assert "launch()" not in output and "httpx" not in output and "Running on" not in output, output


def test_fashionrec_demo_on_a_port_in_use_is_one_line_naming_port(
    served, small_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before anything is announced (or, on a first start, minutes of export and indexing)."""
    import socket

    from fashionrec_onnx.cli import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        args = ["--catalog", str(served[1].path), "--model", str(small_model), "--port", str(port)]
        code = main(["demo", *args])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err.startswith(f"error: cannot listen on 127.0.0.1:{port} (Address already in use)")
    assert "--port" in err and "launch()" not in err and len(err.splitlines()) == 1


def test_a_catalog_on_a_random_weights_model_the_user_chose_says_to_re_export_and_re_index(
    tmp_path: Path, small_model: Path
) -> None:
    """No weights file dropped into Keras' cache changes a catalog built on a random model."""
    with Catalog.create(tmp_path / "c", small_model) as catalog:
        banner = banner_for(catalog)
    assert banner is not None and "Untrained weights" in banner
    assert "fashionrec export --out model.onnx" in banner and "index the photos again" in banner
    assert "~/.keras" not in banner and banner != RANDOM_WEIGHTS_BANNER


def test_a_sample_catalog_made_before_the_sample_had_products_gains_its_product_field(
    tmp_path: Path, small_model: Path
) -> None:
    """The demo sets the field by name: opening a catalog never regroups it (open_or_create refuses)."""
    from fashionrec_demo.app import ensure_sample_catalog

    from fashionrec_onnx import read_model_info

    old = tmp_path / f"catalog-{read_model_info(small_model).fingerprint}"
    Catalog.create(old, small_model).close()  # as an earlier demo made it: no product field
    with ensure_sample_catalog(tmp_path, small_model) as catalog:
        assert catalog.product_field == "product" and catalog.product_count() == 394


# -- what a remote caller can reach ---------------------------------------------------------------


def test_more_like_this_answers_only_catalog_keys_never_server_paths(client: Client, tmp_path: Path) -> None:
    """Existing, missing, unreadable and special files all get the one answer an unknown key gets."""
    unreadable = tmp_path / "secret.png"
    unreadable.write_bytes(QUERY.read_bytes())
    unreadable.chmod(0)
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    not_keys = [
        "/etc/shadow",
        "/etc/passwd",
        "/nonexistent/photo.png",
        str(QUERY),  # an image on the server's disk, but not a key
        str(unreadable),
        "/dev/zero",
        str(fifo),
        "x" * 5000,
    ]
    for not_a_key in not_keys:
        gallery, _, status = client.predict(not_a_key, 3, ALL_CATEGORIES, api_name="/more_like_this")
        assert (gallery, status) == ([], "No such item in the catalog."), not_a_key


def _multipart(files: int, size: int) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("files", (f"photo{i}.png", os.urandom(size), "image/png")) for i in range(files)]


def test_one_upload_request_may_not_store_more_than_one_photo_s_worth(served) -> None:
    url, _ = served
    with httpx.Client(base_url=url, timeout=60) as http:
        refused = http.post("gradio_api/upload", files=_multipart(3, 9_000_000))
        assert refused.status_code == 413
        assert "at most 10 MB" in refused.text
        accepted = http.post("gradio_api/upload", files=_multipart(1, 200_000))
        assert accepted.status_code == 200 and len(accepted.json()) == 1


def test_a_chunked_upload_without_length_is_counted_and_refused(served) -> None:
    url, _ = served

    def body():  # a generator body is sent chunked, with no Content-Length: two 6 MB files
        for name in ("a.png", "b.png"):
            yield f'--b\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n\r\n'.encode()
            for _ in range(6):
                yield b"\0" * 1_000_000
            yield b"\r\n"
        yield b"--b--\r\n"

    with httpx.Client(base_url=url, timeout=60) as http:
        response = http.post(
            "gradio_api/upload", content=body(), headers={"content-type": "multipart/form-data; boundary=b"}
        )
    assert response.status_code == 413


@pytest.fixture()
def damaged_catalog(tmp_path: Path, small_model: Path) -> tuple[Catalog, str]:
    """A few sample images indexed from a copy, then one of them damaged on disk."""
    import shutil

    folder = tmp_path / "images"
    for source in sorted(SAMPLE_DIR.glob("*/*.png"))[:15]:
        (folder / source.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(source, folder / source.parent.name / source.name)
    catalog = Catalog.create(tmp_path / "catalog", small_model)
    catalog.index_folder(folder, progress=False)
    damaged = sorted(catalog.keys())[0]  # the first item: it is also shown as an example
    path = catalog.image_path(damaged)
    path.write_bytes(path.read_bytes()[:40])
    return catalog, damaged


def test_a_damaged_catalog_image_shows_a_placeholder_and_the_app_keeps_serving(
    damaged_catalog: tuple[Catalog, str], caplog: pytest.LogCaptureFixture
) -> None:
    catalog, damaged = damaged_catalog
    port = free_port()
    app = launch(build_app(catalog), port=port, block=False)  # start-up shows it as an example
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        neighbour = catalog.search(damaged, k=1)[0].key
        gallery, _, status = client.predict(neighbour, 20, ALL_CATEGORIES, api_name="/more_like_this")
        assert status.startswith("More like") and damaged in " ".join(captions(gallery))
    finally:
        app.close()
        catalog.close()
    assert any(damaged in record.getMessage() for record in caplog.records)


def test_uploads_and_thumbnails_are_deleted_from_the_cache_after_a_while(
    damaged_catalog: tuple[Catalog, str],
) -> None:
    import time

    catalog, _ = damaged_catalog
    port = free_port()
    app = launch(build_app(catalog, delete_cache=(1, 1)), port=port, block=False)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}/", timeout=60) as http:
            stored = http.post("gradio_api/upload", files=_multipart(1, 100_000)).json()[0]
        assert Path(stored).exists()
        deadline = time.monotonic() + 30
        while Path(stored).exists() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not Path(stored).exists()
    finally:
        app.close()
        catalog.close()


def test_the_readme_screenshots_show_the_model_the_seed_gives_today(test_model: Path) -> None:
    """The screenshots' record names the fingerprint that seed 0 at 224 px exports to in this run
    (`make figures` makes them again); the README and docs name it only through that record."""
    import json
    import re

    from fashionrec_onnx import read_model_info

    root = Path(__file__).resolve().parents[1]
    run = json.loads((root / "docs" / "demo-screenshots.json").read_text())
    fingerprint = read_model_info(test_model).fingerprint
    assert run["model"] == "random:seed=0" and run["fingerprint"] == fingerprint
    for page in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        assert not re.findall(r"`[0-9a-f]{16}`", page.read_text()), f"{page.name}: a fingerprint by hand"
    assert (root / "docs" / "demo-desktop.png").is_file() and (root / "docs" / "demo-phone.png").is_file()
