"""Vectors in and out of catalogs: the Parquet vectors layout, catalog import and export, and
embedding image folders on a Ray cluster. Built on `catalog` and `embedder`.

Modules: `vector_files` (the Parquet layout), `vector_transfer` (`Catalog.import_vectors`,
`Catalog.export_vectors`), `distributed` (`fashionrec embed` on Ray). They need pyarrow (the
``parquet`` extra; Ray is the ``ray`` extra), so this package imports them only when a job runs;
importing it registers the catalog's import and export jobs (`catalog.jobs`).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from ..catalog import jobs

if TYPE_CHECKING:
    from ..catalog import Catalog
    from .vector_transfer import ExportReport, ImportReport


def _import_vectors(catalog: Catalog, path: str | os.PathLike[str], **options: Any) -> ImportReport:
    from .vector_transfer import import_vectors

    return import_vectors(catalog, path, **options)


def _export_vectors(catalog: Catalog, path: str | os.PathLike[str], **options: Any) -> ExportReport:
    from .vector_transfer import export_vectors

    return export_vectors(catalog, path, **options)


jobs.register("import_vectors", _import_vectors)
jobs.register("export_vectors", _export_vectors)
