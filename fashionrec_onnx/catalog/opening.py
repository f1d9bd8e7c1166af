"""Creating and opening catalogs: atomic creation, upgrades, read-only media, model checks.

A catalog is created under the catalog's flock, its database written under a temporary name and
renamed last, so it exists only whole and bound to one model. Opening upgrades a 0.1.0 catalog,
opens read-only where the directory cannot be written, checks the model's fingerprint, and
brings the graph (and a lost PCA, when asked to rebuild) up to date.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import logging
import os
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from .._version import __version__
from ..embedder import Embedder
from ..errors import CatalogError, ModelError, ModelMismatchError
from ..model import ModelInfo, read_model_info
from . import maintenance, products
from .core import LOCK_NAME, CatalogCore, locked_open
from .hnsw import HnswParams
from .migrate import migrate, needs_migration
from .store import DB_NAME, SCHEMA_VERSION, Store
from .vectors import VectorFile, file_name

log = logging.getLogger(__name__)

CATALOG_FORMAT = "2"
ModelArg = str | os.PathLike | Embedder
PROBE_SIMILARITY = 0.999  # a model must embed the probe image as it did when the catalog was made
MODEL_NAME = "model.onnx"  # a model copied into the catalog directory (`--copy-model`) goes here
# The fashionrec-onnx versions that created the catalog and last opened it for writing (catalogs
# made before 0.2.0 have neither until a 0.2.0 or later opens them for writing).
CREATED_BY = "version.created"
WRITTEN_BY = "version.written"


@contextlib.contextmanager
def exclusive(root: Path) -> Iterator[None]:
    """The catalog's cross-process write lock, for creating and upgrading."""
    fd = locked_open(root / LOCK_NAME)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def model_identity(model: ModelArg) -> tuple[Path, ModelInfo]:
    if isinstance(model, Embedder):
        return model.model_path.resolve(), model.info
    model_path = Path(model).expanduser().resolve()
    return model_path, read_model_info(model_path)


def recorded_model_path(root: Path, model_path: Path) -> str:
    """A model inside the catalog directory is recorded relative to it: the directory can move."""
    try:
        return model_path.relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(model_path)


def located_model(root: Path, recorded: str) -> Path:
    """The recorded model (a relative path is inside the catalog), else a ``model.onnx`` or a file
    of the recorded name in the catalog directory (a catalog moved with its model). Any of them
    must still match the catalog's fingerprint and probe when loaded."""
    path = root / recorded if recorded and not Path(recorded).is_absolute() else Path(recorded)
    for candidate in (path, root / MODEL_NAME, root / path.name):
        if recorded and candidate.is_file():
            return candidate.resolve()
    return path


def create(
    root: Path,
    model: ModelArg,
    params: HnswParams,
    vector_dtype: str,
    reduce_to: int | None,
    exist_ok: bool,
    product_field: str | None = None,
) -> None:
    """A new catalog at ``root``, unless one is there (an error unless ``exist_ok``)."""
    if vector_dtype not in ("float32", "float16"):
        raise CatalogError(f"vector_dtype must be float32 or float16, not {vector_dtype!r}")
    model_path, info = model_identity(model)
    root.mkdir(parents=True, exist_ok=True)
    with exclusive(root):
        if not (root / DB_NAME).exists():
            _write_new(root, info, model_path, params, vector_dtype, reduce_to, product_field)
        elif not exist_ok:
            raise CatalogError(
                f"a catalog already exists at {root}; open it with Catalog.open (or pass "
                "exist_ok=True, or use Catalog.open_or_create)."
            )


def _write_new(
    root: Path,
    info: ModelInfo,
    model_path: Path,
    params: HnswParams,
    vector_dtype: str,
    reduce_to: int | None,
    product_field: str | None,
) -> None:
    """The database is written under a temporary name and renamed last: it exists only whole."""
    name = file_name(vector_dtype)
    VectorFile.create(root / name, info.dim, vector_dtype).close()
    temporary = root / f"{DB_NAME}.creating-{os.getpid()}"
    temporary.unlink(missing_ok=True)
    store = Store(temporary, create=True)
    try:
        settings = {f"model.{k}": v for k, v in info.to_metadata().items()}
        settings.update(
            {
                "schema_version": str(SCHEMA_VERSION),
                CREATED_BY: __version__,
                WRITTEN_BY: __version__,
                "catalog_format": CATALOG_FORMAT,
                "model_path": recorded_model_path(root, model_path),
                "hnsw.M": str(params.M),
                "hnsw.ef_construction": str(params.ef_construction),
                "hnsw.ef": str(params.ef),
                "vector_dtype": vector_dtype,
                "vectors.file": name,
                "vectors.rows": "0",
                "items.count": "0",
                "changes.since": "0",
                "reduction.planned": str(reduce_to or ""),
                products.SETTING: product_field or "",
            }
        )
        store.set_settings(settings)
        store._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        store.close()
    for suffix in ("-wal", "-shm"):
        Path(f"{temporary}{suffix}").unlink(missing_ok=True)
    os.replace(temporary, root / DB_NAME)


def open_core(
    root: Path, model: ModelArg | None, *, readonly: bool, rebuild: bool, load_graph: bool
) -> tuple[CatalogCore, Path, Embedder | None]:
    """The open catalog's core, the model path to use, and the embedder the caller gave."""
    database = root / DB_NAME
    if not database.exists():
        raise CatalogError(
            f"no catalog at {root}; create one with `fashionrec index IMAGES --catalog {root}`."
        )
    writable = os.access(root, os.W_OK) and os.access(database, os.W_OK)
    if rebuild and (readonly or not writable):
        raise CatalogError(
            f"a rebuild writes a new graph file, and {root} "
            + ("was opened read-only" if readonly else "cannot be written by this process")
            + "; nothing was changed. Run it as a user who can write the catalog directory."
        )
    if not readonly and not writable:
        log.warning(
            "%s is not writable by this process: opened read-only (searches work, changes do not)", root
        )
        readonly = True
    if needs_migration(database):
        old = _schema(database)
        if writable and (old == 1 or not readonly):  # 0.1.0 catalogs cannot be read as they are
            with exclusive(root):
                migrate(root, database)
        elif old == 1:
            raise CatalogError(
                f"{root} was written by fashionrec-onnx 0.1.0 and must be upgraded once, which needs "
                f"write access: run `fashionrec info --catalog {root}` as a user who can write it."
            )
        # a schema-2 catalog opened read-only is read as it is
    store = Store(database, readonly=readonly)
    try:
        core = CatalogCore(root, store, readonly=readonly)
        if not readonly and store.get_setting(WRITTEN_BY) != __version__:
            store.set_settings({WRITTEN_BY: __version__})  # no new generation: no item changed
        model_path = located_model(root, store.get_setting("model_path", "") or "")
        embedder = None
        if model is not None:
            model_path, info = model_identity(model)
            if info.fingerprint != core.info.fingerprint:
                raise ModelMismatchError(
                    f"{root} was built with model {core.info.fingerprint} ({core.info.weights}, "
                    f"{core.info.precision}) but {model_path} is {info.fingerprint} ({info.weights}, "
                    f"{info.precision}). Open it without a model to use the recorded one, or index "
                    "into a new catalog."
                )
            embedder = model if isinstance(model, Embedder) else None
        if load_graph:
            _start(core, rebuild)
    except BaseException:
        store.close()
        raise
    return core, model_path, embedder


def _schema(database: Path) -> int:
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
        return int(db.execute("SELECT value FROM settings WHERE name = 'schema_version'").fetchone()[0])


def _start(core: CatalogCore, rebuild: bool) -> None:
    """The PCA (refitted from the stored vectors when lost and ``rebuild``) and the graph."""
    try:
        core.load_reduction()
    except CatalogError:
        if not rebuild:
            raise
        log.warning("refitting the lost PCA of %s from the stored vectors", core.root)
        dim = int(str(core.reduction_file).split("-")[1])
        whiten = "whitened" in str(core.reduction_file)
        with core.writing():
            pca, name = maintenance.fit_reduction(core, dim, whiten, 50_000, 0)
            core.store.set_settings({"reduction.file": name}, bump=True)
            core.reduction_file, core.reduction = name, pca
            core.generation = core.store.generation
    if not core.readonly and core.tier_untidy:
        with core.writing():  # a catalog written before the compact tier (or its format 2) gains it here
            core.ensure_tier(widen=True)
    if core.start_graph(rebuild) and not core.readonly:
        core.save()


def load_embedder(core: CatalogCore, model_path: Path, threads: int | None) -> Embedder:
    """The recorded model, checked against the catalog's fingerprint and probe embedding."""
    return load_recorded_model(model_path, core.info.fingerprint, str(core.root), threads)


def load_recorded_model(model_path: Path, fingerprint: str, catalog: str, threads: int | None) -> Embedder:
    """The model a catalog (local or remote, named by ``catalog``) recorded, refused unless it is
    here and has the recorded ``fingerprint``; both catalogs load their model through this."""
    if not model_path.is_file():
        raise ModelError(
            f"the model {catalog} was built with, {model_path}, is not on this machine; pass the "
            "same model explicitly (Catalog.open(..., model=...) or --model)."
        )
    embedder = Embedder(model_path, threads=threads)
    if embedder.fingerprint != fingerprint:
        embedder.close()
        raise ModelMismatchError(
            f"{model_path} is not the model {catalog} was built with (fingerprint "
            f"{embedder.fingerprint}, catalog {fingerprint}); pass the original model with --model, "
            "or index into a new catalog."
        )
    return embedder


def _probe_image() -> np.ndarray:
    """A fixed picture (colour gradients) that every model of the contract can embed."""
    y, x = np.mgrid[0:96, 0:96].astype(np.float32) / 95.0
    return (np.stack([x, y, (x + y) / 2], axis=-1) * 255).astype(np.uint8)


def check_probe(core: CatalogCore, embedder: Embedder) -> None:
    """Metadata can be copied onto other weights: what the model computes must match too. The
    first model used records how it embeds the probe image; every later one must agree."""
    record = None if core.readonly else core.store.set_settings
    compare_probe(embedder, core.store.get_setting("model.probe"), record, core.root)


def compare_probe(
    embedder: Embedder,
    recorded: str | None,
    record: Callable[[dict[str, str]], object] | None,
    where: object,
) -> None:
    """`check_probe` for any storage: ``recorded`` is the stored probe setting (None or empty: none
    yet, and ``record`` stores this model's, unless the catalog is read-only)."""
    vector = embedder.embed_one(_probe_image())
    if not recorded:
        if not np.all(np.isfinite(vector)):
            raise ModelMismatchError(
                f"{embedder.model_path} gives NaN embeddings; it cannot index into {where}."
            )
        if record is not None:
            record({"model.probe": base64.b64encode(vector.astype("<f4").tobytes()).decode()})
        return
    expected = np.frombuffer(base64.b64decode(recorded), "<f4")
    finite = len(expected) == len(vector) and np.all(np.isfinite(vector))
    similarity = float(vector @ expected) if finite else -1.0
    if not similarity >= PROBE_SIMILARITY:
        raise ModelMismatchError(
            f"{embedder.model_path} carries the metadata of the model {where} was built with, "
            f"but its weights compute other embeddings (probe similarity {similarity:.4f}); pass "
            "the original model with --model or index into a new catalog."
        )
