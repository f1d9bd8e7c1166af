"""`fashionrec refine`: learn a projection from a catalog's own labels and write the refined model
(one ONNX file of the contract), and optionally a refined copy of the catalog without
re-embedding (its stored vectors projected as the refined model would embed the photos).

The learning is in `refine_learning`; the graph surgery in `fashionrec_onnx.projection`.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np

from ..catalog import Catalog
from ..catalog.reports import RefineReport as RefineReport
from ..catalog.store import DB_NAME
from ..errors import BadArgumentError, CatalogError, ModelMismatchError
from ..projection import append_projection, read_projection
from .refine_learning import Projection, learn_projection

log = logging.getLogger(__name__)

_BATCH = 10_000  # items read or written per step
MAX_LEARNING_ITEMS = 200_000  # a seeded sample past this (1.6 GB of 2048-d vectors in memory)


def labelled_items(
    catalog: Catalog, label_field: str, product_field: str | None
) -> tuple[list[str], list[object], list[object] | None]:
    """Keys, labels and products of the items that carry ``label_field`` (others teach nothing).
    An item without a product is its own product."""
    keys: list[str] = []
    labels: list[object] = []
    products: list[tuple[str, str]] = []
    for item in catalog.iter_items():
        value = item.metadata.get(label_field)
        if value is None or value == "":
            continue
        keys.append(item.key)
        labels.append(value)
        if product_field is not None:
            product = item.metadata.get(product_field)
            products.append(("product", str(product)) if product not in (None, "") else ("item", item.key))
    if product_field is not None and keys and all(kind == "item" for kind, _ in products):
        raise BadArgumentError(
            f"no labelled item of {catalog.path} has the product field {product_field!r}; "
            "leave out --product-field or name the field that holds the product id."
        )
    return keys, labels, (list(products) if product_field is not None else None)


def check_outputs(out: Path, catalog_out: Path | None) -> None:
    """Fail before the training if an output cannot be written."""
    parent = out.parent if str(out.parent) else Path(".")
    if out.is_dir():
        raise BadArgumentError(
            f"--out {out} is a directory; give a file name such as {out / 'refined.onnx'}."
        )
    if not parent.is_dir():
        raise BadArgumentError(
            f"output directory {parent} does not exist; create it or choose another --out."
        )
    if not os.access(parent, os.W_OK):
        raise BadArgumentError(f"output directory {parent} is not writable; choose another --out.")
    if catalog_out is not None and (catalog_out / DB_NAME).exists():
        raise CatalogError(
            f"a catalog already exists at {catalog_out}; choose a new directory for --catalog-out."
        )


def refine(
    catalog: Catalog,
    label_field: str,
    out: str | os.PathLike[str],
    *,
    product_field: str | None = None,
    dim: int = 128,
    catalog_out: str | os.PathLike[str] | None = None,
    seed: int = 0,
    held_out: float = 0.2,
    epochs: int = 30,
) -> RefineReport:
    """Learn from the stored vectors of ``catalog`` (no re-embedding) and write the refined model
    to ``out``; with ``catalog_out``, also a catalog under the refined model holding every item
    of ``catalog`` (projected stored vectors, same keys, paths and metadata)."""
    started = time.perf_counter()
    out = Path(out).expanduser()
    target = Path(catalog_out).expanduser() if catalog_out is not None else None
    check_outputs(out, target)
    if catalog.reduction is not None:
        log.debug("%s has a PCA graph; the projection learns from the full stored vectors", catalog.path)
    keys, labels, products = labelled_items(catalog, label_field, product_field)
    if len(keys) > MAX_LEARNING_ITEMS:
        log.info("learning from a sample of %d of the %d labelled items", MAX_LEARNING_ITEMS, len(keys))
        sample = np.random.default_rng(seed).choice(len(keys), MAX_LEARNING_ITEMS, replace=False)
        rows = np.sort(sample).tolist()
        keys, labels = [keys[i] for i in rows], [labels[i] for i in rows]
        products = [products[i] for i in rows] if products is not None else None
    vectors = np.concatenate(
        [catalog.vectors(keys[i : i + _BATCH]) for i in range(0, len(keys), _BATCH)]
    ) if keys else np.zeros((0, catalog.dim), np.float32)  # fmt: skip
    projection, training = learn_projection(
        vectors,
        labels,
        products,
        dim=dim,
        seed=seed,
        held_out=held_out,
        epochs=epochs,
        field_name=label_field,
    )
    if _score(training.after) < _score(training.before):
        log.warning(
            "the refined model scores below the base model on the held-out items (%s against %s): "
            "the labels may not say what looks alike; keep the base model",
            training.after, training.before,
        )  # fmt: skip
    provenance: dict[str, object] = {
        "catalog": str(catalog.path.resolve()) if isinstance(catalog.path, Path) else str(catalog.path),
        "label_field": label_field,
        "product_field": product_field or "",
        "items": training.items,
        "held_out": {"items": training.held_out_items, "before": training.before, "after": training.after},
        "best_epoch": training.best_epoch,
        "seed": seed,
    }
    info = append_projection(catalog.model_path, projection.mean, projection.matrix, out, provenance)
    log.debug("wrote %s (%d-d, fingerprint %s)", out, info.dim, info.fingerprint)
    if target is not None:
        write_refined_catalog(catalog, projection, out, target)
    return RefineReport(
        out, info, catalog.info.fingerprint, label_field, product_field, training, target,
        time.perf_counter() - started,
    )  # fmt: skip


def apply_refined(
    catalog: Catalog, model: str | os.PathLike[str], catalog_out: str | os.PathLike[str]
) -> int:
    """Another catalog of the base model (held-out photos, a new season) under an existing refined
    model, without re-embedding: what `evaluate --compare` needs to set base against refined on
    the same keys. Returns the items written."""
    model, target = Path(model).expanduser(), Path(catalog_out).expanduser()
    mean, matrix, base = read_projection(model)
    if base != catalog.info.fingerprint:
        raise ModelMismatchError(
            f"{model} refines the model {base}, but {catalog.path} was built with "
            f"{catalog.info.fingerprint}; derive only catalogs of the model it was learned on."
        )
    check_outputs(model, target)
    return write_refined_catalog(catalog, Projection(mean, matrix), model, target)


def _score(scores: dict[str, float]) -> tuple[float, ...]:
    return tuple(scores[name] for name in sorted(scores, key=lambda name: not name.startswith("mAP")))


def write_refined_catalog(source: Catalog, projection: Projection, model: Path, target: Path) -> int:
    """Every item of ``source`` under the refined ``model``: its stored vector projected, keys,
    paths, metadata and file stamps kept (an `index` of the same folder finds them unchanged)."""
    written = 0
    with Catalog.create(
        target, model, M=source.params.M, ef_construction=source.params.ef_construction,
        ef=source.params.ef, product_field=source.product_field,
    ) as refined:  # fmt: skip
        batch: list = []
        for item in source.iter_items():
            batch.append(item)
            if len(batch) == _BATCH:
                written += _copy(source, refined, projection, batch)
                batch = []
        if batch:
            written += _copy(source, refined, projection, batch)
    log.debug("wrote %d items to %s under the refined model", written, target)
    return written


def _copy(source: Catalog, refined: Catalog, projection: Projection, items: list) -> int:
    vectors = projection.apply(source.vectors(item.key for item in items))
    return refined.add_many(
        [item.key for item in items],
        vectors,
        paths=[item.path for item in items],
        metadata=[item.metadata for item in items],
        sizes=[item.size for item in items],
        mtimes_ns=[item.mtime_ns for item in items],
    )
