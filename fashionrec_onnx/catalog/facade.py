"""`Catalog`: the public face of a catalog directory. Here: creating and opening catalogs, and the
jobs built on them (registered from above, see `jobs`); its reads are `reading.CatalogReader`'s
(contents, searches, checks), its writes `writing.CatalogWriter`'s. Each method hands the work to
the module that owns it."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import BadArgumentError, CatalogError
from . import jobs, opening, products
from .hnsw import DEFAULT_EF, DEFAULT_EF_CONSTRUCTION, DEFAULT_M, HnswParams
from .location import MilvusLocation, location
from .opening import ModelArg
from .reports import DownloadSettings, ExportReport, ImportReport, IndexReport, RefineReport, SyncReport
from .store import DB_NAME
from .writing import REDUCE_AFTER as REDUCE_AFTER
from .writing import CatalogWriter, is_whole


class Catalog(CatalogWriter):
    """Create with `Catalog.create`, open with `Catalog.open`; use as a context manager."""

    # -- creating and opening ---------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str] | MilvusLocation,
        model: ModelArg,
        *,
        M: int = DEFAULT_M,
        ef_construction: int = DEFAULT_EF_CONSTRUCTION,
        ef: int = DEFAULT_EF,
        exist_ok: bool = False,
        threads: int | None = None,
        vector_dtype: str = "float32",
        reduce_to: int | None = None,
        product_field: str | None = None,
    ) -> Catalog:
        """A new, empty catalog bound to ``model`` (its fingerprint is recorded).

        ``product_field="product_id"`` names the metadata field that identifies each photo's
        product (see `set_product_field`), for searches grouped by product.

        ``vector_dtype="float16"`` halves the stored vectors (the graph stays float32).
        ``reduce_to=256`` plans a PCA graph for a large catalog: it is fitted on the first
        20,000 items as soon as they are in, and every later item goes into the small graph
        (`reduce` does the same for an existing catalog). Creation is
        atomic: a catalog appears whole, bound to exactly one model, even when two processes
        create it at once (the second then opens it, and gets `ModelMismatchError` if its model
        differs).
        """
        field = products.checked_field(product_field)
        if reduce_to is not None and not is_whole(reduce_to, 0):  # stored; read as a whole number later
            raise BadArgumentError(f"reduce_to is a whole number of dimensions, got {reduce_to!r}")
        where = location(path)
        if isinstance(where, MilvusLocation):
            if vector_dtype != "float32" or reduce_to:
                raise CatalogError(f"{where}: a Milvus catalog stores float32 vectors, without a PCA graph")
            params = HnswParams(M, ef_construction, ef)
            created: Catalog = jobs.job("create_remote")(where, model, params, exist_ok, field, threads)
            return created
        root = Path(path).expanduser()
        opening.create(
            root, model, HnswParams(M, ef_construction, ef), vector_dtype, reduce_to, exist_ok, field
        )
        return cls.open(root, model, threads=threads)

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str] | MilvusLocation,
        model: ModelArg | None = None,
        *,
        readonly: bool = False,
        rebuild: bool = False,
        threads: int | None = None,
        load_graph: bool = True,
    ) -> Catalog:
        """Open an existing catalog; ``model`` must be the one it was built with.

        ``rebuild=True`` recreates the HNSW graph (and a lost PCA) from the stored vectors: the
        recovery for a missing or corrupt graph or PCA file. A catalog in a directory this process
        cannot write is opened read-only (searches work, writes say why they cannot).
        ``load_graph=False`` opens for maintenance (`reduce`) without reading graph or PCA files.
        """
        where = location(path)
        if isinstance(where, MilvusLocation):
            opened: Catalog = jobs.job("open_remote")(where, model, readonly, threads)
            return opened
        core, model_path, embedder = opening.open_core(
            Path(path).expanduser(), model, readonly=readonly, rebuild=rebuild, load_graph=load_graph
        )
        return cls(core, model_path, embedder, threads)

    @classmethod
    def open_or_create(
        cls, path: str | os.PathLike[str] | MilvusLocation, model: ModelArg | None, **params: Any
    ) -> Catalog:
        """Reuse the catalog if there is one, else make it with ``params`` (those of `create`).

        An existing catalog keeps its settings, but a ``product_field`` it does not have is
        refused (`CatalogError`): grouping another catalog's photos by product is a change to
        ask for by name (`set_product_field`), not a side effect of opening it.
        """
        where = location(path)
        if isinstance(where, MilvusLocation):
            held = jobs.job("remote_exists")(where)
        else:
            held = (Path(path).expanduser() / DB_NAME).exists()
        if held:
            catalog = cls.open(path, model, threads=params.get("threads"))
            field = params.get("product_field")
            if field is not None and field != catalog.product_field:
                current = catalog.product_field
                catalog.close()
                had = f"groups photos by the field {current!r}" if current else "has no product field"
                raise CatalogError(
                    f"{path} already exists and {had}; opening it does not change that, so nothing "
                    f"was done. To group it by {field!r}, open it and call "
                    f"set_product_field({field!r}) (`fashionrec index ... --product-field {field}`); "
                    "or give a new catalog path."
                )
            return catalog
        if model is None:
            raise CatalogError(f"no catalog at {path} yet: pass the model to create it (--model).")
        params = {name: value for name, value in params.items() if value is not None}
        return cls.create(path, model, exist_ok=True, **params)

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the jobs built on the catalog (registered from above: see `jobs`) ---------------------------

    def index_folder(
        self,
        folder: str | os.PathLike[str],
        *,
        metadata: str | os.PathLike[str] | Mapping[str, Mapping[str, Any]] | None = None,
        prune: bool = False,
        progress: bool = True,
        batch_size: int = 32,
        key_prefix: str = "",
        readd_removed: bool = False,
    ) -> IndexReport:
        """Index every image below ``folder``; only new or changed files go through the model.

        Keys are ``key_prefix`` + the path relative to ``folder``: give each folder its own prefix
        to keep several in one catalog. A key already held by an image from elsewhere is refused
        before anything is written, never silently replaced. Each batch is committed on its own,
        so an interrupted run resumes where it stopped. Unreadable files are skipped and listed.
        Keys removed with `remove` are skipped (counted in the report) unless ``readd_removed``.
        ``metadata`` rows are matched to images by `metadata_match.RULE`; the report's
        ``metadata`` says how many matched, and which fit no image or several (given to none).
        """
        self.require_writable("indexing")
        report: IndexReport = jobs.job("index_folder")(
            self,
            folder,
            metadata=metadata,
            prune=prune,
            progress=progress,
            batch_size=batch_size,
            key_prefix=key_prefix,
            readd_removed=readd_removed,
        )
        return report

    def import_vectors(self, path: str | os.PathLike[str], *, progress: bool = False) -> ImportReport:
        """Add the vectors of Parquet files written by `fashionrec embed` or `export_vectors`
        (see `vector_transfer.import_vectors`): incremental, one transaction a batch."""
        self.require_writable("an import")
        report: ImportReport = jobs.job("import_vectors")(self, path, progress=progress)
        return report

    def export_vectors(self, path: str | os.PathLike[str]) -> ExportReport:
        """Write every item and vector in the Parquet layout `import_vectors` reads."""
        report: ExportReport = jobs.job("export_vectors")(self, path)
        return report

    def refine(
        self,
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
        """Learn a projection of the stored vectors from the items' ``label_field`` (and
        ``product_field``) and write the refined model to ``out``, as `fashionrec refine` does
        (see `quality.refine.refine`); ``catalog_out`` also derives a catalog under it."""
        report: RefineReport = jobs.job("refine")(
            self,
            label_field,
            out,
            product_field=product_field,
            dim=dim,
            catalog_out=catalog_out,
            seed=seed,
            held_out=held_out,
            epochs=epochs,
        )
        return report

    def sync(
        self,
        feed: str | os.PathLike[str],
        *,
        images_root: str | os.PathLike[str] | None = None,
        product_column: str = "product_id",
        image_column: str = "image",
        key_prefix: str = "feed/",
        batch_size: int = 32,
        download: DownloadSettings | None = None,
        progress: bool = False,
    ) -> SyncReport:
        """Bring the catalog in step with a product feed (CSV or JSON lines, one row per image):
        new images added, changed ones re-embedded, changed fields rewritten, images gone from
        the feed removed (only items under ``key_prefix``, which the feed owns). Rows that fail
        are reported and leave their item as it was. See `fashionrec_onnx.feeds.sync` for the rules."""
        report: SyncReport = jobs.job("sync")(
            self,
            feed,
            images_root=images_root,
            product_column=product_column,
            image_column=image_column,
            key_prefix=key_prefix,
            batch_size=batch_size,
            download=download,
            progress=progress,
        )
        return report

