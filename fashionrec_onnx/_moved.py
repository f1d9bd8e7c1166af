"""Old import paths of 0.1 (``fashionrec_onnx.index``, ``fashionrec_onnx.sync``, ...) still import
in 0.2, with a DeprecationWarning naming the new path; they go in 0.3 (see CHANGELOG.md).

An old path is an alias: ``fashionrec_onnx.index`` *is* the module ``fashionrec_onnx.catalog.hnsw``,
so what is patched or compared through one is seen through the other.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings
from collections.abc import Sequence
from types import ModuleType

MOVED = {
    "index": "catalog.hnsw",
    "reduce": "catalog.pca",
    "catalog.indexing": "feeds.folders",
    "scan": "feeds.scan",
    "feed": "feeds.feed",
    "download": "feeds.download",
    "sync": "feeds.sync",
    "metadata_match": "feeds.metadata_match",
    "vector_files": "interchange.vector_files",
    "vector_transfer": "interchange.vector_transfer",
    "distributed": "interchange.distributed",
    "evaluation": "quality.evaluation",
    "evaluate": "quality.evaluate",
    "evaluate_report": "quality.report",
    "datasets": "quality.datasets",
    "cli_args": "cli.common",
    "cli_serve": "cli.serve",
    "cli_sync": "cli.sync",
    "cli_vectors": "cli.vectors",
    "upload_guard": "service.upload_guard",
}
PACKAGE = __name__.rpartition(".")[0]


class _Alias(importlib.abc.Loader):
    """Loads an old name as the module at its new place (imported once, shared by both names)."""

    def __init__(self, target: str) -> None:
        self.target = target

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        return importlib.import_module(self.target)

    def exec_module(self, module: ModuleType) -> None:
        """Nothing to run: the module ran under its new name."""


class _MovedFinder(importlib.abc.MetaPathFinder):
    """Asked only after the normal finders found nothing, so it never hides a real module."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        prefix = PACKAGE + "."
        old = fullname[len(prefix) :] if fullname.startswith(prefix) else None
        if old not in MOVED:
            return None
        new = f"{PACKAGE}.{MOVED[old]}"
        warnings.warn(
            f"{fullname} moved to {new} in 0.2; the old path goes in 0.3", DeprecationWarning, stacklevel=2
        )
        return importlib.machinery.ModuleSpec(fullname, _Alias(new))


def install() -> None:
    """Put the finder at the end of `sys.meta_path` (once)."""
    if not any(isinstance(finder, _MovedFinder) for finder in sys.meta_path):
        sys.meta_path.append(_MovedFinder())
