"""What the routes do, without the web framework: parse the parameters of a query, answer it
through the catalog, and turn hits and items into JSON-ready dicts.

Remote callers reach catalog keys and their own uploads only: key queries go through
`Catalog.more_like_this` (a key there is never a file), and negatives given as keys reach
`Catalog.search` as `KeyQuery` objects (keys only, left out with their products, as in the
library). A server path leaves only with ``expose_paths``.
"""

from __future__ import annotations

import io
import re
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pydantic import TypeAdapter, ValidationError

from ..catalog import Catalog, Hit, Item, KeyQuery
from ..errors import FashionrecError
from ..json_values import MAX_DEPTH, check_depth
from .config import ServiceConfig
from .errors import ServiceError, bad_parameter, from_library
from .schemas import FILTER_FIELD, KEYS_FIELD

TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")


@dataclass
class Query:
    """One search request, checked: exactly one of ``image``, ``key``, ``keys``, ``vector``."""

    k: int = 5
    image: bytes | None = None
    box: tuple[int, int, int, int] | None = None
    key: str | None = None
    keys: list[str] | None = None
    vector: list[float] | None = None
    negative: list[str] | None = None
    filter: dict[str, Any] | None = None
    group_by: str | None = None
    collapse_duplicates: bool = False
    timings: dict[str, float] = field(default_factory=dict)


def parse_k(value: object, max_k: int) -> int:
    try:
        k = int(str(value))
    except ValueError:
        k = 0
    if not 1 <= k <= max_k:
        raise bad_parameter(f"k must be a whole number from 1 to {max_k}, got {str(value)[:40]!r}")
    return k


def problems(exc: ValidationError, prefix: str = "") -> str:
    """pydantic's errors as one short line: a few of them, each location part cut short (a
    location may hold a caller's megabyte-long field name)."""
    errors = exc.errors(include_url=False, include_input=False)
    shown = []
    for error in errors[:3]:
        where = ".".join(str(part)[:40] for part in (prefix, *error["loc"]) if part != "") or "body"
        message = re.sub(r"at line 1 column (\d+)", r"at character \1", error["msg"])  # one-line text
        shown.append(f"{where}: {message}")
    more = f"; and {len(errors) - 3} more" if len(errors) > 3 else ""
    return "; ".join(shown) + more


def parse_json_field(name: str, text: str, kind: type | TypeAdapter[Any]) -> Any:
    """A form field holding JSON (``filter``: an object, ``negative``: a list of keys), held to
    the bounds of the JSON body's field of that name (nesting included) before it is used."""
    adapter = kind if isinstance(kind, TypeAdapter) else FILTER_FIELD if kind is dict else KEYS_FIELD
    try:
        check_depth(text)  # before any parser meets a hostile depth
        return adapter.validate_json(text)
    except ValidationError as exc:
        raise bad_parameter(problems(exc, name)) from None
    except ValueError as exc:  # deeper than MAX_DEPTH
        raise bad_parameter(f"{name} must be JSON that fits ({MAX_DEPTH} levels at most): {exc}") from None


def parse_flag(name: str, text: str) -> bool:
    if text.strip().lower() not in TRUE + FALSE:
        raise bad_parameter(f"{name} must be true or false, got {text[:20]!r}")
    return text.strip().lower() in TRUE


def check_filter(wanted: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if wanted is None:
        return None
    for name, value in wanted.items():
        if "\x00" in name:
            raise bad_parameter(f"a filter field name cannot hold a NUL character; {name[:40]!r} does")
        values = value if isinstance(value, list) else [value]
        if not all(isinstance(v, (str, int, float, bool)) for v in values):
            raise bad_parameter(f"filter values are text, numbers or lists of them; {name!r} is not")
    return dict(wanted)


def check_upload_pixels(data: bytes, max_pixels: int) -> None:
    """Refuse (413) a photo whose header declares more pixels than the service decodes: a small
    file can declare a huge image, and this is read before any pixel is."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
        size = f"{width}x{height} = {width * height:,} pixels"
        too_large = width * height > max_pixels
    except Image.DecompressionBombError as exc:  # Pillow refuses to open it: far above any limit
        counted = re.search(r"\((\d+) pixels\)", str(exc))  # the header's count, in Pillow's words
        size, too_large = (f"{int(counted[1]):,} pixels" if counted else "larger than Pillow opens"), True
    except Exception:  # not an image: the decode that follows says why, in the usual words
        return
    if too_large:
        raise ServiceError(
            413,
            "image_too_large",
            f"the photo is {size}; this service decodes at most {max_pixels:,} (send a smaller photo)",
        )


class Searcher:
    """The open catalog and what the service answers with it (called from worker threads)."""

    def __init__(self, catalog: Catalog, config: ServiceConfig) -> None:
        self.catalog = catalog
        self.config = config
        self.model_slot = threading.Lock()  # one model run at a time: it uses every core already
        # Uploads decode in a pool of their own, as many at a time as the worker has cores: memory
        # then has a ceiling (slots x the largest decode) whatever the concurrency, and only these
        # threads ever hold a large image (each thread's malloc arena keeps what it once held).
        self.decode_slots = max(1, config.threads or 1)
        self.decoder = ThreadPoolExecutor(self.decode_slots, thread_name_prefix="fashionrec-upload")
        paths = {str(catalog.path): "<catalog>"}
        if isinstance(catalog.path, Path):  # (a Milvus catalog's path is its URI)
            paths[str(catalog.path.resolve())] = "<catalog>"
        paths.update({str(catalog.model_path): "<model>", str(catalog.model_path.parent): "<model folder>"})
        self.hidden = {} if config.expose_paths else paths

    @property
    def product_field(self) -> str | None:
        """Read at each answer: `fashionrec index --product-field` may set it while serving."""
        return self.catalog.product_field

    def failed(self, exc: FashionrecError) -> ServiceError:
        return from_library(exc, self.hidden)

    def answer(self, query: Query) -> dict[str, Any]:
        start = time.perf_counter()
        try:
            hits = self._hits(query)
        except FashionrecError as exc:
            raise self.failed(exc) from exc
        query.timings["search"] = (time.perf_counter() - start) * 1000 - query.timings.get("embed", 0.0)
        grouped, products = query.group_by is not None, self.product_field is not None
        return {
            "hits": [self.hit_json(hit, grouped, products) for hit in hits],
            "timings_ms": query.timings,
            "model": self.catalog.info.fingerprint,
        }

    def _hits(self, query: Query) -> list[Hit]:
        catalog = self.catalog
        options: dict[str, Any] = {
            "collapse_duplicates": query.collapse_duplicates,
            "group_by": query.group_by,
        }
        if query.key is not None or query.keys is not None:
            keys = query.key if query.key is not None else list(query.keys or [])
            return catalog.more_like_this(keys, query.k, query.filter, negative=query.negative, **options)
        if query.negative:  # never plain strings: search() would take a string for a file
            options["negative"] = [KeyQuery(key) for key in query.negative]
        if query.image is not None:
            begin = time.perf_counter()
            check_upload_pixels(query.image, self.config.max_upload_pixels)
            embedder = catalog.embedder
            pixels = self.decoder.submit(embedder.prepare, query.image, query.box).result()
            with self.model_slot:
                vector = embedder.embed_pixels(pixels[None])[0]
            query.timings["embed"] = (time.perf_counter() - begin) * 1000
        else:
            vector = np.asarray(query.vector, np.float64)  # normalised first: 1e39 fits no float32
        return catalog.search(vector, query.k, query.filter, **options)

    def hit_json(self, hit: Hit, grouped: bool, products: bool) -> dict[str, Any]:
        out: dict[str, Any] = {
            "rank": hit.rank,
            "key": hit.key,
            "similarity": hit.similarity,
            "distance": hit.distance,
            "metadata": hit.metadata,
        }
        if products:
            out["product"] = hit.product
        if grouped:
            out["photos"] = list(hit.photos)
        if self.config.expose_paths:
            out["path"] = hit.path
        return out

    def item(self, key: str) -> dict[str, Any]:
        try:
            item: Item = self.catalog.get(key)
        except FashionrecError as exc:
            raise self.failed(exc) from exc
        out: dict[str, Any] = {"key": item.key, "metadata": item.metadata}
        product_field = self.product_field
        if product_field:
            value = item.metadata.get(product_field)
            out["product"] = None if value is None else str(value)
        if self.config.expose_paths:
            out["path"] = item.path
        return out

    def health(self) -> dict[str, Any]:
        catalog = self.catalog
        return {
            "status": "ok",
            "items": len(catalog),
            "model": catalog.info.fingerprint,
            "generation": catalog.generation,
        }
