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
import time
from pathlib import Path
from typing import Any

import gradio as gr
from starlette.middleware import Middleware

from fashionrec_onnx import Catalog, WeightsUnavailableError
from fashionrec_onnx.quality.datasets import sample_dir
from fashionrec_onnx.service.upload_guard import MULTIPART_OVERHEAD, UploadGuard

from .photo_input import PhotoInput
from .region import MAX_REGION_CHARS, REGION_HELP, REGION_JS
from .search import ALL_CATEGORIES, DemoSearch, SearchOutput

__all__ = [
    "ALL_CATEGORIES",
    "CHOSEN_RANDOM_WEIGHTS_BANNER",
    "RANDOM_WEIGHTS_BANNER",
    "banner_for",
    "build_app",
    "default_catalog",
    "launch",
]

log = logging.getLogger("fashionrec.demo")

# api_name of the events kept out of the app's API: gradio 5 and 6 both take False (6 types the
# argument as str | None, and its api_visibility is not in 5).
HIDDEN: Any = False

MAX_UPLOAD_BYTES = 10_000_000  # one photo; one upload request may carry no more than this
CACHE_CLEANUP = (300, 900)  # every 5 minutes, delete uploads and thumbnails older than 15 minutes
RANDOM_WEIGHTS_BANNER = (
    "**Untrained weights: results show the pipeline, not real similarity.** The ImageNet weights "
    "could not be downloaded, so this demo runs ResNet50 with seeded random weights. Put "
    "`resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5` in `~/.keras/models/` and restart "
    "for real results."
)
# A catalog built on a model the user exported with random weights: no file to drop in fixes it.
CHOSEN_RANDOM_WEIGHTS_BANNER = (
    "**Untrained weights: results show the pipeline, not real similarity.** This catalog was "
    "indexed with a model exported with random weights (`--weights random`). For real results, "
    "export a model with ImageNet weights (`fashionrec export --out model.onnx`) and index the "
    "photos again with it, into a new catalog: a catalog keeps the model it was built with."
)
# Captions go under the picture, wrapped, instead of over it cut with an ellipsis; columns may
# shrink below Gradio's 100 px minimum; on a phone the results take two columns. A caption ends
# with a key (`sneaker/test-00009.png`), which a line may break only at its hyphens: the examples
# take five columns (three on a phone), wide enough for such keys; ten 74 px columns broke them
# mid-word. Only a word wider than its column breaks anywhere (the weights file name, a
# fingerprint, a long key), so nothing is wider than the screen.
CSS = """
#banner {background: #fff4e5; border: 1px solid #f0a040; border-radius: 8px; padding: 4px 12px;}
#banner, #footer, #status {overflow-wrap: anywhere;}
#banner code, #footer code {display: inline; white-space: normal; overflow-wrap: anywhere;}
#footer {color: #777; font-size: 0.85em;}
#results, #examples, #results .grid-wrap, #examples .grid-wrap {
  height: auto !important; min-height: 0; max-height: none !important; overflow-y: visible;
}
#results .grid-container, #examples .grid-container {
  grid-template-columns: repeat(var(--grid-cols), minmax(0, 1fr)); grid-auto-rows: auto;
}
#results .thumbnail-item, #examples .thumbnail-item {
  aspect-ratio: auto; height: auto; display: flex; flex-direction: column;
}
#results .thumbnail-item > img, #examples .thumbnail-item > img {
  aspect-ratio: 1 / 1; height: auto; flex: none;
}
#results .caption-label, #examples .caption-label {
  position: static; max-width: none; white-space: normal; overflow: visible; text-overflow: clip;
  overflow-wrap: anywhere; border: 0; border-top: 1px solid var(--border-color-primary);
  border-radius: 0; opacity: 1;
}
@media (max-width: 600px) {
  #results .grid-container {grid-template-columns: repeat(2, minmax(0, 1fr));}
  #examples .grid-container {grid-template-columns: repeat(3, minmax(0, 1fr));}
}
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
            # The export's own advice names its options (--weights PATH), which the demo has not.
            log.warning(
                "cannot get the ImageNet weights (no network?): for real results put %s in %s/ "
                "(copied from a machine with internet) and start the demo again",
                IMAGENET_NOTOP_FILE,
                keras_cache_dir(),
            )
            marker.write_text(f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n{exc}\n")
    log.warning("FALLING BACK TO SEEDED RANDOM WEIGHTS: results show the pipeline, not similarity")
    untrained = home / "resnet50-random-seed0.onnx"
    if not untrained.exists():
        export_in_child(ExportConfig(out=untrained, weights="random", seed=0))
    return untrained, True


def ensure_sample_catalog(home: Path, model: Path) -> Catalog:
    """The bundled Fashion-MNIST sample, indexed once per model (incremental afterwards), with
    its product field (a catalog made before the sample had products gains it)."""
    from fashionrec_onnx import read_model_info

    fingerprint = read_model_info(model).fingerprint
    catalog = Catalog.open_or_create(home / f"catalog-{fingerprint}", model)
    if catalog.product_field != "product":  # new, or made before the sample had products
        catalog.set_product_field("product")
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
    if untrained:
        return catalog, RANDOM_WEIGHTS_BANNER
    return catalog, banner_for(catalog)


def banner_for(catalog: Catalog) -> str | None:
    """The banner of a catalog whose model the user chose: a re-export and a re-index, if random."""
    return CHOSEN_RANDOM_WEIGHTS_BANNER if catalog.info.weights.startswith("random") else None


# -- the page -----------------------------------------------------------------------------------------


def footer(catalog: Catalog, products: int | None = None) -> str:
    """The catalog and model in one line; ``products``: how many, when items are grouped."""
    info = catalog.info
    size = f"**{len(catalog):,} products**"
    if products is not None:
        size = f"**{products:,} products** ({len(catalog):,} photos)"
    return (
        f"Catalog: {size} · model ResNet50 + global {info.pooling} pool "
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
    what = "products" if search.group_by else "items"

    def outputs(result: SearchOutput) -> tuple:
        """Every action replaces all of these: the gallery (its selection cleared, so no tile
        stays highlighted on a result it no longer shows), the status (so no stale error stays),
        the tick boxes, and the search that k or the category runs again."""
        ticks = gr.CheckboxGroup(choices=result.choices, value=[])
        gallery = gr.Gallery(value=result.gallery, selected_index=None)
        return gallery, result.keys, result.timings, result.status, ticks, ticks, result.current

    def plain(result: SearchOutput) -> tuple:
        return result.gallery, result.keys, result.timings, result.status

    def on_search(image: str | None, k: float, category: str, region: str | None = None) -> tuple:
        return outputs(search.by_image(image, int(k), category, region))

    def on_upload(image: str | None, k: float, category: str) -> tuple:
        return (*outputs(search.by_image(image, int(k), category)), "")  # a new photo: no region yet

    def on_click(key: str, k: float, category: str) -> tuple:
        return (search.thumbnail(key), *outputs(search.by_key(key, int(k), category)), "")

    def on_result_click(keys: list[str], k: float, category: str, event: gr.SelectData) -> tuple:
        return on_click(keys[event.index], k, category)

    def on_example_click(k: float, category: str, event: gr.SelectData) -> tuple:
        return on_click(example_keys[event.index], k, category)  # like a result: itself left out

    def on_refine(liked: list[str], disliked: list[str], k: float, category: str) -> tuple:
        return outputs(search.by_keys(liked or [], disliked or [], int(k), category))

    def on_change(
        current: dict | None, image: str | None, region: str | None, k: float, category: str
    ) -> tuple:
        result = search.again(current, image, region, int(k), category)
        return tuple(gr.skip() for _ in range(7)) if result is None else outputs(result)

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
                    label=f"Similar {what} (click one for more like it)",
                    columns=5,
                    object_fit="contain",
                    allow_preview=False,
                    elem_id="results",
                )
                with gr.Row():
                    liked = gr.CheckboxGroup([], label="I like", elem_id="liked")
                    disliked = gr.CheckboxGroup([], label="Not for me", elem_id="disliked")
                refine = gr.Button("Refine: more like what I like, less like the rest", elem_id="refine")
                examples = gr.Gallery(
                    value=[(search.thumbnail(key), key) for key in example_keys],
                    label="Or try one of these catalog items",
                    columns=5,  # wide enough for a key (see CSS)
                    allow_preview=False,
                    elem_id="examples",
                )
        gr.Markdown(footer(catalog, search.product_count()), elem_id="footer")
        result_keys = gr.State([])
        current = gr.State(None)  # the search that a new k or category runs again

        shown = [results, result_keys, timings, status, liked, disliked, current]
        button.click(on_search, [query, k, category, region], shown, api_name=HIDDEN)
        region.submit(on_search, [query, k, category, region], shown, api_name=HIDDEN)
        query.upload(on_upload, [query, k, category], [*shown, region], api_name=HIDDEN)
        results.select(on_result_click, [result_keys, k, category], [query, *shown, region], api_name=HIDDEN)
        examples.select(on_example_click, [k, category], [query, *shown, region], api_name=HIDDEN)
        refine.click(on_refine, [liked, disliked, k, category], shown, api_name=HIDDEN)
        for control in (k, category):
            control.change(
                on_change,
                [current, query, region, k, category],
                shown,
                api_name=HIDDEN,
                trigger_mode="always_last",
            )

        # The HTTP API (gradio_client): plain values, no page updates; a key is only a key.
        def search_api(image: str | None, k: float, category: str, region: str | None = None) -> tuple:
            return plain(search.by_image(image, int(k), category, region))

        def by_key_api(key: str, k: float, category: str) -> tuple:
            return plain(search.by_key(key, int(k), category))

        api_shown = [results, result_keys, timings, status]
        api_search = gr.Button(visible=False)
        api_search.click(search_api, [query, k, category, region], api_shown, api_name="search")
        hidden_key = gr.Textbox(visible=False)
        hidden_key.submit(by_key_api, [hidden_key, k, category], api_shown, api_name="more_like_this")
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
        quiet=True,  # `fashionrec demo` says where it serves; Gradio's own lines name `launch()` options
    )
    return app
