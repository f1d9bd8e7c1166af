"""The demo page's searches on one catalog, as galleries and messages (no Gradio here).

Every answer comes from the library: an upload goes through `Catalog.search`, and everything the
browser names (a clicked result, ticked results for "Refine") goes through
`Catalog.more_like_this`, which only ever looks up keys and never opens a file. With a product
field, results are products (`group_by="product"`): the best-matching photo, the product id and
how many photos the product has.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from PIL import Image

from fashionrec_onnx import (
    BadArgumentError,
    Catalog,
    FashionrecError,
    Hit,
    ImageLoadError,
    UnknownKeyError,
    load_image,
)

from .region import RegionError, parse_region

log = logging.getLogger("fashionrec.demo")

ALL_CATEGORIES = "All categories"
THUMBNAIL = 192
MAX_TICKED = 20  # the most results one refine may name (the page shows at most 20)


@dataclass
class SearchOutput:
    """What one action shows: the gallery, the keys behind it, the tick boxes' choices, and
    the search to run again when k or the category changes (None: nothing to run again)."""

    gallery: list[tuple[Image.Image, str]]
    keys: list[str]
    timings: str
    status: str
    choices: list[tuple[str, str]] = field(default_factory=list)  # (label, key) per result
    current: dict[str, Any] | None = None


def _placeholder() -> Image.Image:
    return Image.new("RGB", (THUMBNAIL, THUMBNAIL), (235, 235, 235))


def _message(text: str, current: dict[str, Any] | None = None) -> SearchOutput:
    return SearchOutput([], [], "", text, current=current)


def caption(hit: Hit) -> str:
    """A result's caption; with products: the product id and how many photos it has."""
    parts = [f"#{hit.rank}", str(hit.metadata.get("category", ""))]
    if hit.product is not None:
        photos = 1 + len(hit.photos)
        parts += [f"product {hit.product}", f"{photos} photo{'s' if photos > 1 else ''}"]
    return " · ".join([*parts, f"similarity {hit.similarity:.3f}", hit.key])


def tick_label(hit: Hit) -> str:
    return f"#{hit.rank} {hit.product if hit.product is not None else hit.key}"


class DemoSearch:
    """The page's actions on one catalog; safe for many users at once (the catalog is)."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self.group_by = "product" if catalog.product_field else None
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
        self,
        hits: list[Hit],
        embed_ms: float | None,
        search_ms: float,
        note: str,
        current: dict[str, Any],
    ) -> SearchOutput:
        gallery = [(self.thumbnail(hit.key), caption(hit)) for hit in hits]
        parts = [f"embedding {embed_ms:.0f} ms"] if embed_ms is not None else []
        parts.append(f"search {search_ms:.1f} ms")
        timings = " · ".join(parts) + f" · {len(hits)} results"
        status = note or ("" if hits else "No product matches this filter.")
        choices = [(tick_label(hit), hit.key) for hit in hits]
        return SearchOutput(gallery, [h.key for h in hits], timings, status, choices, current)

    def by_image(
        self, image: str | None, k: int, category: str | None, region: str | None = None
    ) -> SearchOutput:
        """Search with an upload, or with the part of it inside ``region`` ("l,t,r,b")."""
        current = {"image": True}
        if not image:
            return _message("Upload, paste or take a photo to search.")
        try:
            box = parse_region(region)
            started = time.perf_counter()
            vector = self.catalog.embedder.embed_one(image, box=box)
            embedded = time.perf_counter()
            hits = self.catalog.search(
                vector, k=int(k), filter=self._filter(category), group_by=self.group_by
            )
            done = time.perf_counter()
        except RegionError as exc:
            return _message(str(exc), current)
        except ImageLoadError as exc:
            return _message(f"Could not read this image: {exc.reason}.", current)
        except BadArgumentError as exc:  # the message names the upload's path in Gradio's cache
            message = str(exc).replace(f" {image},", " your photo,")
            return _message(f"This region does not fit the photo: {message}.", current)
        except FashionrecError as exc:
            return _message(f"Search failed: {exc}", current)
        note = f"Region {','.join(map(str, box))} of your photo" if box else ""
        return self._render(hits, (embedded - started) * 1000, (done - embedded) * 1000, note, current)

    def by_keys(
        self, liked: Sequence[str], disliked: Sequence[str], k: int, category: str | None
    ) -> SearchOutput:
        """Results like the ``liked`` items and unlike the ``disliked`` ones (each left out, with
        its product). The keys come from the browser: they are only ever looked up as keys, never
        opened as files, and every non-key gets the same answer."""
        liked, disliked = [str(key) for key in liked], [str(key) for key in disliked]
        current = {"liked": liked, "disliked": disliked}
        if not liked:
            return _message("Tick at least one result you like, then Refine.")
        if len(liked) + len(disliked) > MAX_TICKED:
            return _message(f"Tick at most {MAX_TICKED} results.")
        started = time.perf_counter()
        try:
            hits = self.catalog.more_like_this(
                liked,
                k=int(k),
                filter=self._filter(category),
                group_by=self.group_by,
                negative=disliked or None,
            )
        except UnknownKeyError:
            return _message("No such item in the catalog.", current)
        except FashionrecError as exc:
            return _message(f"Search failed: {exc}", current)
        elapsed = (time.perf_counter() - started) * 1000
        note = "More like " + ", ".join(f"**{key}**" for key in liked)
        if disliked:
            note += ", unlike " + ", ".join(f"**{key}**" for key in disliked)
        return self._render(hits, None, elapsed, note, current)

    def by_key(self, key: str, k: int, category: str | None) -> SearchOutput:
        """More like one catalog item (a clicked result or example), itself left out."""
        return self.by_keys([key], [], k, category)

    def again(
        self,
        current: dict[str, Any] | None,
        image: str | None,
        region: str | None,
        k: int,
        category: str | None,
    ) -> SearchOutput | None:
        """The current search with a new k or category; None when nothing was searched yet."""
        if not current:
            return None
        if "liked" in current:
            return self.by_keys(current["liked"], current["disliked"], k, category)
        return self.by_image(image, k, category, region)

    def product_count(self) -> int | None:
        """How many products the catalog holds (None without a product field)."""
        if not self.group_by:
            return None
        return self.catalog.product_count()

    def examples(self, count: int = 10) -> list[str]:
        """One example per category (or the first items), for the clickable example strip."""
        seen: dict[str, str] = {}
        for item in self.catalog.iter_items():
            category = str(item.metadata.get("category", item.key))
            seen.setdefault(category, item.key)
            if len(seen) >= count:
                break
        return list(seen.values())
