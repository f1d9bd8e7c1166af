"""Measuring and improving search quality: retrieval metrics, `fashionrec evaluate` and its report,
the labelled datasets they run on, and `refine` (a projection learned from the shop's labels).

Importing this package registers `Catalog.refine` (`catalog.jobs`); the learning code loads only
when a refinement runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..catalog import jobs

if TYPE_CHECKING:
    from ..catalog import Catalog
    from .refine import RefineReport


def _refine(catalog: Catalog, *args: Any, **options: Any) -> RefineReport:
    from .refine import refine

    return refine(catalog, *args, **options)


jobs.register("refine", _refine)
