"""Checking and reshaping a catalog: recall against exact search, consistency, PCA reduction.

All of it reads the stored vectors in blocks, so a million-item catalog is checked without its
vectors ever being in memory at once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from ..errors import CatalogCorruptError, CatalogError, DiskFullError
from . import oracle
from .core import CatalogCore
from .pca import PCA
from .search import _pool, nearest
from .store import is_disk_full
from .vectors import sound_rows

log = logging.getLogger(__name__)


def recall_at_k(approximate: np.ndarray, exact: np.ndarray, k: int) -> float:
    """Mean fraction of the exact top-k that the approximate top-k found (ids, row per query).

    Padding ids (-1) never count as found.
    """
    approximate = np.asarray(approximate)[:, :k]
    exact = np.asarray(exact)[:, :k]
    if len(exact) == 0 or exact.shape[1] == 0:
        return 1.0
    hits = [
        len(set(a[a >= 0].tolist()) & set(e[e >= 0].tolist())) / max(1, int((e >= 0).sum()))
        for a, e in zip(approximate, exact)
    ]
    return float(np.mean(hits))


@dataclass(frozen=True)
class CheckReport:
    """Recall of the HNSW graph against exact search, on a sample of the catalog's own items."""

    k: int
    queries: int
    recall: float
    items: int
    ef: int
    M: int
    ef_construction: int
    reduced_dim: int | None = None
    recall_reduced: float | None = None  # graph vs exact search in the reduced space

    def advice(self, catalog: object) -> str:
        """What would raise recall, for this catalog's shape (the re-rank or ef)."""
        if (
            self.reduced_dim is not None
            and self.recall_reduced is not None
            and self.recall_reduced >= self.recall + 0.02
        ):
            return (
                f"the graph finds {self.recall_reduced:.3f} of the exact neighbours in the reduced "
                f"space but {self.recall:.3f} in the full one: the PCA loses the order, not the graph. "
                f"Reduce to more dimensions (`fashionrec reduce --catalog {catalog} --dim "
                f"{min(self.reduced_dim * 2, 1024)}`) or drop the reduction (--dim 0)."
            )
        return (
            f"raise ef (`fashionrec rebuild --catalog {catalog} --ef {2 * self.ef}`): a wider search "
            "finds more of the exact neighbours."
        )


def sample_labels(core: CatalogCore, size: int, seed: int) -> np.ndarray:
    live = core.liveness.labels()
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(live, size=min(size, len(live)), replace=False))


def check(core: CatalogCore, k: int, sample: int, seed: int) -> CheckReport:
    """recall@k of searches (the graph, plus the re-rank of a reduced catalog) against exact KNN
    over the full stored vectors, queried with the catalog's own items (each its own top hit)."""
    if core.count == 0:
        raise CatalogError(f"{core.root} is empty: index some images first.")
    picks = sample_labels(core, sample, seed)
    queries = core.vectors.read(picks)
    finite = np.isfinite(queries).all(axis=1)
    if not finite.all():  # a damaged stored vector is no query: it is never answered either
        log.warning(
            "check left %d sampled item(s) whose stored vector is damaged out of the sample; "
            "`fashionrec verify` counts them, re-index them to repair",
            int((~finite).sum()),
        )
        picks, queries = picks[finite], queries[finite]
        if len(picks) == 0:
            raise CatalogCorruptError(
                f"no sampled stored vector of {core.root} is finite: the vector file is damaged; "
                "restore it or index again."
            )
    kk = min(k, core.count)
    live = core.live_mask()
    assert core.graph.index is not None
    params = (core.params.ef, core.params.M, core.params.ef_construction)
    if core.reduction is None:
        exact, _ = oracle.exact_topk(core.vectors, core.rows, live, queries, kk)
        approx, _ = core.graph.index.search(queries, kk, core.count)
        return CheckReport(kk, len(picks), recall_at_k(approx, exact, kk), core.count, *params)
    reduced = core.reduction.transform(queries)
    graph_only, _ = core.graph.index.search(reduced, kk, core.count)
    candidates, _ = core.graph.index.search(reduced, _pool(core, kk), core.count)
    approx = np.full((len(picks), kk), -1, np.int64)
    for row, (query, found) in enumerate(zip(queries, candidates)):
        ranked = nearest(core, query, found[found >= 0], kk)[0]
        approx[row, : len(ranked)] = ranked
    if core.tier is not None:  # the search's own answers bound the exact k-th distance from above
        exact, _ = oracle.bounded_within(
            core.vectors, core.rows, core.tier, core.tier_rows, live, queries, kk, approx
        )
    else:
        exact, _ = oracle.exact_topk(core.vectors, core.rows, live, queries, kk)
    if core.tier is not None and not core.reduction.whiten:
        exact_reduced, _ = oracle.bounded_within(
            core.vectors,
            core.rows,
            core.tier,
            core.tier_rows,
            live,
            reduced,
            kk,
            graph_only,
            graph_space=True,
        )
    else:
        exact_reduced, _ = oracle.exact_topk(
            core.vectors, core.rows, live, reduced, kk, transform=core.reduction.transform
        )
    return CheckReport(
        kk, len(picks), recall_at_k(approx, exact, kk), core.count, *params,
        core.reduction.dim, recall_at_k(graph_only, exact_reduced, kk),
    )  # fmt: skip


def fit_reduction(core: CatalogCore, dim: int, whiten: bool, sample: int, seed: int) -> tuple[PCA, str]:
    """A PCA fitted on (a sample of) the stored vectors, saved beside the catalog."""
    if core.count == 0:
        raise CatalogError(f"{core.root} is empty: index images before reducing.")
    vectors = core.vectors.read(sample_labels(core, sample, seed))
    vectors = vectors[np.isfinite(vectors).all(axis=1)]  # a rotten row (bit rot) would fail the SVD
    if len(vectors) == 0:
        raise CatalogCorruptError(
            f"no stored vector of {core.root} is finite: the vector file is damaged; restore it or "
            "index again."
        )
    pca = PCA.fit(vectors, dim, whiten)
    # A new name per fit: another open catalog notices the change by the name.
    name = f"pca-{dim}{'-whitened' if whiten else ''}-{core.generation}.npz"
    try:
        pca.save(core.root / name)
    except OSError as exc:
        if is_disk_full(exc, core.root / name):
            raise DiskFullError(
                f"the disk holding {core.root} is full: the PCA file {name} could not be written "
                f"({exc.strerror}). Nothing was changed: the catalog keeps its graph"
                + (" and its reduction" if core.reduction is not None else "")
                + ". Free some space and run the same command again."
            ) from exc
        raise
    return pca, name


def verify(core: CatalogCore) -> list[str]:
    """Problems found in the database, the vector file and the graph; empty when consistent."""
    problems = [f"{core.store.path}: {p}" for p in core.store.integrity_problems()]
    if core.store.count() != core.count:
        problems.append(
            f"the item count recorded ({core.count}) differs from the items stored ({core.store.count()})"
        )
    live = core.live_mask()
    assert core.graph.index is not None
    in_graph = core.graph.index.labels()
    missing = set(np.flatnonzero(live).tolist()) - in_graph
    if missing:
        problems.append(f"{len(missing)} stored items are missing from the HNSW graph")
    bad = 0
    for start, block in core.vectors.blocks(core.rows):
        rows = live[start : start + len(block)]
        norms = np.linalg.norm(block[rows], axis=1)
        bad += int((~np.isfinite(norms) | (np.abs(norms - 1.0) > 1e-2)).sum())
    if bad:
        problems.append(f"{bad} stored vectors are not finite unit vectors")
    unreadable, keys = core.store.unreadable_metadata()
    if unreadable:
        problems.append(
            f"{unreadable} item(s) hold metadata SQLite cannot read as JSON (a NaN or Infinity "
            f"stored by an older version), first {', '.join(map(repr, keys))}: their values read as "
            "None; rewrite them with Catalog.update_metadata or sync the feed again"
        )
    problems += tier_problems(core, live)
    graph_problem = core.graph.full_checksum_problem()
    if graph_problem and not core.graph.dirty:
        problems.append(graph_problem)
    return problems


def tier_problems(core: CatalogCore, live: np.ndarray) -> list[str]:
    """The compact tier of a reduced catalog: there, made from this PCA, and every row it claims
    to cover holding its vector's bound (recomputed from the vector file, a block at a time).
    A graph too wide for a tier (`CatalogCore.tier_wanted`) has none to check."""
    if not core.tier_wanted:
        return []
    tier = core.tier
    if tier is None:
        return [
            f"the compact tier of {core.root} is missing or stale: exact and filtered searches read "
            "every full row; opening the catalog for writing rebuilds it"
        ]
    wrong = 0
    blocks = zip(
        core.vectors.blocks(core.tier_rows, 16_384), tier.rows.blocks(core.tier_rows, 16_384, raw=True)
    )
    for (start, block), (_, coded) in blocks:
        checked = sound_rows(block) & live[start : start + len(block)]
        wrong += int((tier.mismatched(coded, block) & checked).sum())
    if wrong:
        return [
            f"{wrong} row(s) of the compact tier {tier.path} differ from their stored vectors: delete "
            "the file and open the catalog for writing to rebuild it"
        ]
    return []
