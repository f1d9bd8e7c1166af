"""Retrieval quality on your own labelled catalog: is fp32, int8, a PCA graph or another model
better on *these* products?

Each query is a catalog item searched as "more like this" (itself left out, and its whole
product when the catalog has a product field); a hit is relevant when it has the query's label.
The same queries are answered by every `--compare` catalog and by a raw-pixels baseline (small
grey thumbnails of the item images, exact search), so the figures are comparable. Metrics come
from `evaluation` (plain data), which the benchmarks use too; `report` writes the report
files.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from ..errors import BadArgumentError, FashionrecError
from ..images import Source, load_image
from ..model import default_threads
from .evaluation import Scores, score_rankings

if TYPE_CHECKING:
    from ..catalog import Catalog

log = logging.getLogger(__name__)

DEFAULT_KS = (1, 5, 10)
DEFAULT_QUERIES = 1000
THUMBNAIL = 32  # side of the raw-pixels baseline's grey thumbnails
PIXELS_NAME = "raw pixels (baseline)"


@dataclass(frozen=True)
class MethodResult:
    """The scores of one way of answering the queries (a catalog, or the baseline)."""

    name: str
    description: str
    scores: Scores

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "description": self.description, **self.scores.to_dict()}


@dataclass(frozen=True)
class Evaluation:
    """Every method's scores on the same query keys; ``methods[0]`` is the evaluated catalog."""

    catalog: str
    label_field: str
    product_field: str | None  # None when the catalog has no product field
    ks: tuple[int, ...]
    query_keys: list[str]
    methods: list[MethodResult]
    exact: bool
    seconds: float

    def to_dict(self) -> dict[str, object]:
        return {
            "catalog": self.catalog,
            "label_field": self.label_field,
            "product_field": self.product_field,
            "ks": list(self.ks),
            "search": "exact" if self.exact else "graph",
            "seconds": self.seconds,
            "methods": [method.to_dict() for method in self.methods],
            "query_keys": self.query_keys,
        }


# -- shared with the benchmarks: the baseline's vectors and exact rankings over arrays --------------


def pixel_vectors(images: Iterable[Source]) -> np.ndarray:
    """The raw-pixels baseline: grey ``THUMBNAIL``-pixel squares, L2-normalised, one row each."""
    rows = [_thumbnail(image) for image in images]
    return np.stack(rows) if rows else np.zeros((0, THUMBNAIL * THUMBNAIL), np.float32)


def _thumbnail(source: Source) -> np.ndarray:
    image = load_image(source, draft_size=THUMBNAIL).convert("L")
    pixels = np.asarray(image.resize((THUMBNAIL, THUMBNAIL), Image.Resampling.BILINEAR), np.float32)
    vector = pixels.reshape(-1)
    return vector / max(float(np.linalg.norm(vector)), 1e-12)


def exact_rankings(
    corpus: np.ndarray, queries: np.ndarray, k: int, exclude: Sequence[np.ndarray] | None = None
) -> np.ndarray:
    """Row numbers of the k corpus rows most similar (dot product) to each query, best first,
    -1 where fewer remain; ``exclude[i]`` are rows query i may not return (itself, its product)."""
    k = min(k, len(corpus))
    result = np.full((len(queries), k), -1, np.int64)
    if k == 0:
        return result
    for start in range(0, len(queries), 256):
        scores = queries[start : start + 256] @ corpus.T
        if exclude is not None:
            for row, rows in enumerate(exclude[start : start + 256]):
                scores[row, rows] = -np.inf
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        order = np.lexsort((top, -np.take_along_axis(scores, top, 1)), axis=1)
        top = np.take_along_axis(top, order, 1)
        top[~np.isfinite(np.take_along_axis(scores, top, 1))] = -1
        result[start : start + len(top)] = top
    return result


# -- labels and products of a catalog ---------------------------------------------------------------


@dataclass
class _Labels:
    """Key -> label and key -> product of the items of one catalog."""

    label: dict[str, str]
    product: dict[str, str]
    keys: list[str]  # every item, labelled or not


def _read_labels(
    catalog: Catalog, label_field: str, product_field: str | None, fallback: dict[str, str] | None = None
) -> _Labels:
    """Labels from the catalog's metadata; items without one take the evaluated catalog's label
    for the same key (a compare catalog indexed without metadata)."""
    labels: dict[str, str] = {}
    products: dict[str, str] = {}
    keys: list[str] = []
    for item in catalog.iter_items():
        keys.append(item.key)
        value = item.metadata.get(label_field)
        if value is not None and value != "":
            labels[item.key] = str(value)
        elif fallback is not None and item.key in fallback:
            labels[item.key] = fallback[item.key]
        if product_field is not None and item.metadata.get(product_field) not in (None, ""):
            products[item.key] = str(item.metadata[product_field])
    return _Labels(labels, products, keys)


class _Relevance:
    """Relevant-item counts per query from label and product tallies (not a scan per query)."""

    def __init__(self, labels: _Labels, candidates: Iterable[str]) -> None:
        self.labels = labels
        self.candidates = set(candidates)
        self.by_label = Counter(labels.label.get(key) for key in self.candidates)
        self.by_product = Counter(
            (labels.product[key], labels.label.get(key)) for key in self.candidates if key in labels.product
        )

    def count(self, query: str, label: str) -> int:
        product = self.labels.product.get(query)
        if product is not None:
            return self.by_label[label] - self.by_product[(product, label)]
        return self.by_label[label] - (query in self.candidates)


# -- evaluating -----------------------------------------------------------------------------------


def _checked_ks(ks: Sequence[int]) -> tuple[int, ...]:
    values = tuple(sorted(set(ks)))
    whole = all(isinstance(k, (int, np.integer)) and not isinstance(k, bool) for k in values)
    if not values or not whole or values[0] < 1:
        raise BadArgumentError(f"ks must be whole numbers >= 1, got {tuple(ks)!r}")
    return tuple(int(k) for k in values)


def _query_keys(
    main: _Labels, others: Sequence[_Labels], queries: int | None, seed: int, label_field: str, path: str
) -> list[str]:
    keys = sorted(main.label)
    if not keys:
        raise BadArgumentError(
            f"no item of {path} has the metadata field {label_field!r}; index with --metadata "
            "(a CSV or JSON lines file with that column) or choose another --label-field."
        )
    for other in others:  # every catalog answers the same queries
        present = set(other.keys)
        keys = [key for key in keys if key in present]
    if not keys:
        raise BadArgumentError(
            "the compared catalogs have no labelled key in common; compare catalogs of the same images."
        )
    if queries is not None and queries < len(keys):
        chosen = np.random.default_rng(seed).choice(len(keys), queries, replace=False)
        keys = [keys[i] for i in sorted(chosen.tolist())]
    return keys


def _describe(catalog: Catalog, exact: bool) -> str:
    info = catalog.info
    search = "exact search" if exact else f"HNSW M={catalog.params.M} ef={catalog.params.ef}"
    reduced = f", PCA {catalog.dim}->{catalog.reduction.dim}" if catalog.reduction is not None else ""
    stored = catalog.summary()["vector_dtype"]
    return f"{info.weights}, {info.precision}, {info.input_size} px, {stored} vectors; {search}{reduced}"


def _search_catalog(
    catalog: Catalog,
    keys: Sequence[str],
    labels: _Labels,
    main_labels: dict[str, str],
    ks: tuple[int, ...],
    exact: bool,
) -> Scores:
    """Every query key searched in ``catalog``; hit labels from that catalog, query labels from
    the evaluated one (so every catalog is judged against the same truth)."""
    k = max(ks)
    relevance = _Relevance(labels, labels.keys)
    product_size = Counter(labels.product.values())
    retrieved: list[list[str | None]] = []
    counts: list[int] = []
    for key in keys:
        product = labels.product.get(key)
        wanted = k + (product_size[product] - 1 if product is not None else 0)
        hits = catalog.exact_search(key, k=wanted) if exact else catalog.more_like_this(key, k=wanted)
        kept = [hit for hit in hits if product is None or labels.product.get(hit.key) != product][:k]
        retrieved.append([labels.label.get(hit.key) for hit in kept])
        counts.append(relevance.count(key, main_labels[key]))
    return score_rankings([main_labels[key] for key in keys], retrieved, counts, ks)


def _pixels(
    catalog: Catalog, keys: Sequence[str], labels: _Labels, ks: tuple[int, ...]
) -> MethodResult | None:
    """Exact search over grey thumbnails of the same items (those whose image can be read);
    None when no query has one (a catalog of vectors only)."""
    items = [(item.key, item.path) for item in catalog.iter_items() if item.path]

    def thumbnail(path: str) -> np.ndarray | None:
        try:
            return _thumbnail(path)
        except (FashionrecError, OSError) as exc:
            log.warning("raw-pixels baseline: leaving out %s (%s)", path, exc)
            return None

    with ThreadPoolExecutor(default_threads()) as pool:
        thumbnails = list(pool.map(thumbnail, [path for _, path in items]))
    corpus_keys = [key for (key, _), row in zip(items, thumbnails) if row is not None]
    corpus = np.stack([row for row in thumbnails if row is not None]) if corpus_keys else np.zeros((0, 1))
    position = {key: row for row, key in enumerate(corpus_keys)}
    answered = [key for key in keys if key in position]
    if not answered:
        log.warning("no raw-pixels baseline: none of the queried items has a readable image file")
        return None
    members: dict[str, list[int]] = {}
    for key in corpus_keys:
        if key in labels.product:
            members.setdefault(labels.product[key], []).append(position[key])
    exclude = [
        np.asarray(members[labels.product[key]] if key in labels.product else [position[key]], np.int64)
        for key in answered
    ]
    top = exact_rankings(corpus, corpus[[position[key] for key in answered]], max(ks), exclude)
    retrieved = [[labels.label.get(corpus_keys[row]) for row in rows if row >= 0] for rows in top]
    relevance = _Relevance(labels, corpus_keys)
    counts = [relevance.count(key, labels.label[key]) for key in answered]
    scores = score_rankings([labels.label[key] for key in answered], retrieved, counts, ks)
    left_out = len(keys) - len(answered)
    note = f"; {left_out} queries without a readable image left out" if left_out else ""
    return MethodResult(PIXELS_NAME, f"{THUMBNAIL}x{THUMBNAIL} grey thumbnails, exact search{note}", scores)


def evaluate(
    catalog: Catalog,
    label_field: str = "category",
    *,
    ks: Sequence[int] = DEFAULT_KS,
    queries: int | None = DEFAULT_QUERIES,
    seed: int = 0,
    compare: Sequence[Catalog] = (),
    baseline: bool = True,
    exact: bool = False,
    product_field: str | None = "product",
) -> Evaluation:
    """precision@k and mAP@k of "more like this" on ``queries`` labelled items (all when None),
    overall and per label, with the top-1 confusion; the same for each ``compare`` catalog and
    the raw-pixels baseline on the same keys. ``exact=True`` searches every stored vector
    instead of the graph (the embedding's quality without the graph's approximation)."""
    started = time.perf_counter()
    ks = _checked_ks(ks)
    if queries is not None and (isinstance(queries, bool) or queries < 1):
        raise BadArgumentError(f"queries must be a whole number >= 1, got {queries!r}")
    main = _read_labels(catalog, label_field, product_field)
    others = [_read_labels(other, label_field, product_field, main.label) for other in compare]
    keys = _query_keys(main, others, queries, seed, label_field, str(catalog.path))
    log.info("evaluating %d queries of %s", len(keys), catalog.path)
    methods = [
        MethodResult(name, _describe(each, exact), _search_catalog(each, keys, labels, main.label, ks, exact))
        for name, each, labels in zip(_names([catalog, *compare]), [catalog, *compare], [main, *others])
    ]
    pixels = _pixels(catalog, keys, main, ks) if baseline else None
    if pixels is not None:
        methods.insert(1, pixels)
    has_products = bool(main.product)
    return Evaluation(
        str(catalog.path),
        label_field,
        product_field if has_products else None,
        ks,
        keys,
        methods,
        exact,
        time.perf_counter() - started,
    )


def _names(catalogs: Sequence[Catalog]) -> list[str]:
    """Short names (the directory's), full paths only where two would look the same."""
    short = [catalog.path.name or str(catalog.path) for catalog in catalogs]
    return [str(c.path) if short.count(s) > 1 else s for c, s in zip(catalogs, short)]
