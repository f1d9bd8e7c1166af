"""The Gradio demo: upload a photo, see the most similar products of a catalog.

UI only: every search, embedding and bootstrap step is a library call. Results are sent to the
browser as thumbnails made from the catalog's own images, so the app serves no file from disk
(no ``allowed_paths``). A remote caller reaches catalog keys and its own uploads only: "more like
this" takes a key and never a path, one upload request is bounded in size, and uploads and
thumbnails are deleted from Gradio's cache after a while.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import gradio as gr
from PIL import Image
from starlette.middleware import Middleware

from fashionrec_onnx import (
    BadArgumentError,
    Catalog,
    FashionrecError,
    Hit,
    ImageLoadError,
    UnknownKeyError,
    WeightsUnavailableError,
    load_image,
)
from fashionrec_onnx.datasets import sample_dir
from fashionrec_onnx.upload_guard import MULTIPART_OVERHEAD, UploadGuard

from .photo_input import PhotoInput
from .region import MAX_REGION_CHARS, REGION_HELP, REGION_JS, RegionError, parse_region

log = logging.getLogger("fashionrec.demo")

ALL_CATEGORIES = "All categories"
MAX_UPLOAD_BYTES = 10_000_000  # one photo; one upload request may carry no more than this
CACHE_CLEANUP = (300, 900)  # every 5 minutes, delete uploads and thumbnails older than 15 minutes
THUMBNAIL = 192
RANDOM_WEIGHTS_BANNER = (
    "**Untrained weights: results show the pipeline, not real similarity.** The ImageNet weights "
    "could not be downloaded, so this demo runs ResNet50 with seeded random weights. Put "
    "`resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5` in `~/.keras/models/` and restart "
    "for real results."
)
CSS = """
#banner {background: #fff4e5; border: 1px solid #f0a040; border-radius: 8px; padding: 4px 12px;}
#footer {color: #777; font-size: 0.85em;}
"""


def default_home() -> Path:
    """Where the demo keeps its model and catalog between runs."""
    return Path(os.environ.get("FASHIONREC_HOME", Path.home() / ".cache" / "fashionrec")).expanduser()


# -- bootstrap: model and catalog ------------------------------------------------------------------


WEIGHTS_UNAVAILABLE_MARKER = "imagenet-weights-unavailable.txt"


def ensure_model(home: Path, retry_weights: bool = False) -> tuple[Path, bool]:
    """The ImageNet model if it can be had, else (demo only) seeded random weights.

    Exports run in a child process, so TensorFlow never stays in the server's memory. When the
    ImageNet weights are unavailable, a marker in ``home`` remembers it: later starts go straight
    to the fallback, until ``retry_weights`` or the weights file appears in Keras' cache.
    Returns the model path and whether it is the untrained fallback.
    """
    from fashionrec_export.export_resnet50 import IMAGENET_NOTOP_FILE, ExportConfig, keras_cache_dir
    from fashionrec_export.isolated import export_in_child

    home.mkdir(parents=True, exist_ok=True)
    pretrained = home / "resnet50-imagenet.onnx"
    if pretrained.exists():
        return pretrained, False
    marker = home / WEIGHTS_UNAVAILABLE_MARKER
    weights_in_cache = (keras_cache_dir() / IMAGENET_NOTOP_FILE).is_file()
    if marker.exists() and not retry_weights and not weights_in_cache:
        log.warning(
            "the ImageNet weights were unavailable on an earlier start (%s, noted in %s): not trying "
            "again. Put %s in %s/, or run `fashionrec demo --retry-weights`.",
            marker.read_text().partition("\n")[0],
            marker,
            IMAGENET_NOTOP_FILE,
            keras_cache_dir(),
        )
    else:
        log.info("exporting ResNet50 with ImageNet weights to %s", pretrained)
        try:
            export_in_child(ExportConfig(out=pretrained, weights="imagenet"))
            marker.unlink(missing_ok=True)
            return pretrained, False
        except WeightsUnavailableError as exc:
            log.warning("%s", exc)
            marker.write_text(f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n{exc}\n")
    log.warning("FALLING BACK TO SEEDED RANDOM WEIGHTS: results show the pipeline, not similarity")
    untrained = home / "resnet50-random-seed0.onnx"
    if not untrained.exists():
        export_in_child(ExportConfig(out=untrained, weights="random", seed=0))
    return untrained, True


def ensure_sample_catalog(home: Path, model: Path) -> Catalog:
    """The bundled Fashion-MNIST sample, indexed once per model (incremental afterwards)."""
    from fashionrec_onnx import read_model_info

    fingerprint = read_model_info(model).fingerprint
    catalog = Catalog.open_or_create(home / f"catalog-{fingerprint}", model)
    sample = sample_dir()
    if len(catalog) < 1000:
        log.info("indexing the bundled Fashion-MNIST sample into %s", catalog.path)
    catalog.index_folder(sample, metadata=sample / "labels.csv", progress=True)
    return catalog


def default_catalog(
    home: Path | None = None, model: Path | None = None, retry_weights: bool = False
) -> tuple[Catalog, str | None]:
    """What `fashionrec demo` serves with no --catalog: the sample, and the banner to show."""
    home = home or default_home()
    untrained = False
    if model is None:
        model, untrained = ensure_model(home, retry_weights)
    catalog = ensure_sample_catalog(home, model)
    random_weights = untrained or catalog.info.weights.startswith("random")
    return catalog, RANDOM_WEIGHTS_BANNER if random_weights else None


# -- search handlers --------------------------------------------------------------------------------


@dataclass
class SearchOutput:
    gallery: list[tuple[Image.Image, str]]
    keys: list[str]
    timings: str
    status: str


def _placeholder() -> Image.Image:
    return Image.new("RGB", (THUMBNAIL, THUMBNAIL), (235, 235, 235))


class DemoSearch:
    """The page's actions on one catalog; safe for many users at once (the catalog is)."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self._thumbnail = lru_cache(maxsize=4096)(self._make_thumbnail)
        self._lock = threading.Lock()

    def _make_thumbnail(self, key: str) -> Image.Image:
        """The item's picture, or a grey placeholder when its file is gone or damaged (logged)."""
        try:
            path = self.catalog.image_path(key)
            if path is None:
                return _placeholder()
            image = load_image(path)
        except (OSError, FashionrecError) as exc:
            log.warning("no thumbnail for %s: %s", key, exc)
            return _placeholder()
        scale = THUMBNAIL / max(image.size)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        return image.resize(size, Image.Resampling.LANCZOS)

    def thumbnail(self, key: str) -> Image.Image:
        with self._lock:
            return self._thumbnail(key)

    def _filter(self, category: str | None) -> dict[str, str] | None:
        return None if not category or category == ALL_CATEGORIES else {"category": category}

    def _render(
        self, hits: list[Hit], embed_ms: float | None, search_ms: float, note: str = ""
    ) -> SearchOutput:
        gallery = []
        for hit in hits:
            category = hit.metadata.get("category", "")
            caption = f"#{hit.rank} · {category} · similarity {hit.similarity:.3f} · {hit.key}"
            gallery.append((self.thumbnail(hit.key), caption))
        parts = [f"embedding {embed_ms:.0f} ms"] if embed_ms is not None else []
        parts.append(f"search {search_ms:.1f} ms")
        timings = " · ".join(parts) + f" · {len(hits)} results"
        status = note or ("" if hits else "No product matches this filter.")
        return SearchOutput(gallery, [h.key for h in hits], timings, status)

    def by_image(
        self, image: str | None, k: int, category: str | None, region: str | None = None
    ) -> SearchOutput:
        """Search with an upload, or with the part of it inside ``region`` ("l,t,r,b")."""
        if not image:
            return SearchOutput([], [], "", "Upload, paste or take a photo to search.")
        try:
            box = parse_region(region)
            started = time.perf_counter()
            vector = self.catalog.embedder.embed_one(image, box=box)
            embedded = time.perf_counter()
            hits = self.catalog.search(vector, k=int(k), filter=self._filter(category))
            done = time.perf_counter()
        except RegionError as exc:
            return SearchOutput([], [], "", str(exc))
        except ImageLoadError as exc:
            return SearchOutput([], [], "", f"Could not read this image: {exc.reason}.")
        except BadArgumentError as exc:  # the message names the upload's path in Gradio's cache
            message = str(exc).replace(f" {image},", " your photo,")
            return SearchOutput([], [], "", f"This region does not fit the photo: {message}.")
        except FashionrecError as exc:
            return SearchOutput([], [], "", f"Search failed: {exc}")
        note = f"Region {','.join(map(str, box))} of your photo" if box else ""
        return self._render(hits, (embedded - started) * 1000, (done - embedded) * 1000, note)

    def by_key(self, key: str, k: int, category: str | None) -> SearchOutput:
        """More like a catalog item. ``key`` comes from the browser: it is only ever looked up as
        a key, never opened as a file, and every non-key gets the same answer."""
        started = time.perf_counter()
        try:
            hits = self.catalog.more_like_this(str(key), k=int(k), filter=self._filter(category))
        except UnknownKeyError:
            return SearchOutput([], [], "", "No such item in the catalog.")
        except FashionrecError as exc:
            return SearchOutput([], [], "", f"Search failed: {exc}")
        note = f"More like **{key}**"
        return self._render(hits, None, (time.perf_counter() - started) * 1000, note)

    def examples(self, count: int = 10) -> list[str]:
        """One example per category (or the first items), for the clickable example strip."""
        seen: dict[str, str] = {}
        for item in self.catalog.iter_items():
            category = str(item.metadata.get("category", item.key))
            seen.setdefault(category, item.key)
            if len(seen) >= count:
                break
        return list(seen.values())


# -- the page -----------------------------------------------------------------------------------------


def footer(catalog: Catalog) -> str:
    info = catalog.info
    return (
        f"Catalog: **{len(catalog):,} products** · model ResNet50 + global {info.pooling} pool "
        f"({info.weights}, {info.precision}, {info.input_size} px, {info.dim}-d, fingerprint "
        f"`{info.fingerprint}`) · HNSW M={catalog.params.M}, ef={catalog.params.ef} · "
        "powered by onnxruntime + hnswlib"
    )


def build_app(
    catalog: Catalog, banner: str | None = None, *, delete_cache: tuple[int, int] = CACHE_CLEANUP
) -> gr.Blocks:
    """The Blocks app for one catalog. ``banner`` is shown on top (the demo's fallback notice);
    ``delete_cache`` is Gradio's (every, older than) seconds for removing uploads and thumbnails."""
    search = DemoSearch(catalog)
    example_keys = search.examples()
    categories = [ALL_CATEGORIES, *catalog.categories()]

    def outputs(result: SearchOutput) -> tuple:
        return result.gallery, result.keys, result.timings, result.status

    def on_search(image: str | None, k: float, category: str, region: str | None = None) -> tuple:
        return outputs(search.by_image(image, int(k), category, region))

    def on_upload(image: str | None, k: float, category: str) -> tuple:
        return (*outputs(search.by_image(image, int(k), category)), "")  # a new photo: no region yet

    def on_result_click(keys: list[str], k: float, category: str, event: gr.SelectData) -> tuple:
        key = keys[event.index]
        return (search.thumbnail(key), *outputs(search.by_key(key, int(k), category)), "")

    def on_example_click(k: float, category: str, event: gr.SelectData) -> tuple:
        key = example_keys[event.index]  # like a result click: more like it, itself left out
        return (search.thumbnail(key), *outputs(search.by_key(key, int(k), category)), "")

    with gr.Blocks(title="fashionrec: visual product search", delete_cache=delete_cache) as app:
        gr.Markdown(
            "# Find similar products\nUpload a photo of a garment and see the closest items of the catalog."
        )
        if banner:
            gr.Markdown(banner, elem_id="banner")
        with gr.Row():
            with gr.Column(scale=2):
                query = PhotoInput(
                    label="Your photo",
                    sources=["upload", "clipboard", "webcam"],
                    type="filepath",
                    height=280,
                    elem_id="query",
                )
                region = gr.Textbox(
                    label="Region (optional)",
                    placeholder="left, top, right, bottom",
                    info=REGION_HELP,
                    max_length=MAX_REGION_CHARS,
                    elem_id="region",
                )
                k = gr.Slider(1, 20, value=5, step=1, label="Results", elem_id="k")
                category = gr.Dropdown(categories, value=ALL_CATEGORIES, label="Category", elem_id="category")
                button = gr.Button("Search", variant="primary", elem_id="search")
                timings = gr.Markdown(elem_id="timings")
                status = gr.Markdown(elem_id="status")
            with gr.Column(scale=5):
                results = gr.Gallery(
                    label="Similar products (click one for more like it)",
                    columns=5,
                    height=420,
                    object_fit="contain",
                    allow_preview=False,
                    elem_id="results",
                )
                examples = gr.Gallery(
                    value=[(search.thumbnail(key), key) for key in example_keys],
                    label="Or try one of these catalog items",
                    columns=10,
                    height=150,
                    allow_preview=False,
                    elem_id="examples",
                )
        gr.Markdown(footer(catalog), elem_id="footer")
        result_keys = gr.State([])

        shown = [results, result_keys, timings, status]
        button.click(on_search, [query, k, category, region], shown, api_name="search")
        region.submit(on_search, [query, k, category, region], shown, api_name=False)
        query.upload(on_upload, [query, k, category], [*shown, region], api_name=False)
        results.select(on_result_click, [result_keys, k, category], [query, *shown, region], api_name=False)
        examples.select(on_example_click, [k, category], [query, *shown, region], api_name=False)

        def by_key_api(key: str, k: float, category: str) -> tuple:
            return outputs(search.by_key(key, int(k), category))

        hidden_key = gr.Textbox(visible=False)
        hidden_key.submit(by_key_api, [hidden_key, k, category], shown, api_name="more_like_this")
    app.queue(default_concurrency_limit=4)
    return app


def launch(app: gr.Blocks, host: str = "127.0.0.1", port: int | None = 7860, block: bool = True) -> gr.Blocks:
    """Serve on loopback unless told otherwise; uploads are size-limited; no files from disk."""
    guard = Middleware(UploadGuard, max_bytes=MAX_UPLOAD_BYTES + MULTIPART_OVERHEAD)
    app.launch(
        server_name=host,
        server_port=port,
        max_file_size=MAX_UPLOAD_BYTES,
        app_kwargs={"middleware": [guard]},
        show_error=True,
        prevent_thread_lock=not block,
        css=CSS,
        js=REGION_JS,
        quiet=not block,
    )
    return app
