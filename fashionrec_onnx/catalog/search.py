"""Query planning: the cheapest way to answer a search that still finds what exact search finds.

- No filter: the graph, asked for a few extra hits to leave out the query item; on a reduced
  graph, a larger candidate pool re-ranked with the full stored vectors (with a compact tier,
  of the candidates it estimates nearest only).
- A filter: its matches are a mask over labels. Few matches, or so few that the graph would
  have to be searched very wide to meet k of them: exact search among the matches (only their
  rows are read; with a compact tier, their tier rows, and full rows only where a match's lower
  bound can still rank). With a tier, the planner weighs the scan of the matches against the
  graph search their count calls for, and takes the cheaper; past `EXACT_AMONG_MAX` matches the
  scan reads the full rows the tier estimates nearest, as a graph pool's re-rank does.
  Otherwise the graph is searched wide enough for k matches at the filter's selectivity and its
  hits are filtered by the mask, widening until k matches are in hand.
  No Python runs per visited graph node.
"""

from __future__ import annotations

import math

import numpy as np

from . import oracle
from .core import CatalogCore
from .matches import Matches

# A reduced graph returns 8k + 100 candidates for the full-space re-rank. Measured at 1,000,000
# items (PCA-256, ef 128, 200 real-image queries, one run; benchmarks/results/rerank-sweep.json):
# a pool of 80 found 0.988 of the exact top 5 in 0.81 ms, 140 found 0.993 in 1.11 ms, 280 found
# 1.000 in 2.4 ms.
RERANK_FACTOR = 8
RERANK_EXTRA = 100
# With a compact tier, the pool's full rows are read only for the 5k + 5 = 30 candidates the tier
# estimates nearest. Measured at 200,000 items (200 real-image queries, pool of 140): the first 20
# by the estimate found 0.996 of the exact top 5, the first 30 0.999, as many as all 140 did. At
# 1,000,000 (ef 128, 300 real-image queries, one run): 30 rows read found 0.997, 40 rows 0.999,
# 20 rows 0.993; each row read costs 5 to 10 us from the page cache, a disk read when evicted.
# A filter's matches scanned in the tier are read the same way past EXACT_AMONG_MAX (the bounds
# rule out too few: 20,000 matches at 200,000 items needed 107 full rows for the exact answer;
# the first 40 by the estimate found 1.000 of it, 200 queries, in 2.5 times less time).
# A filter's graph search collects 5k + 5 matches (`_pool`): 30, once 140.
# A tier estimating in 512 dimensions (format 2, a graph of 256 or more): its first 2k + 5 = 15
# held 0.9993 of the exact top 5 at 1,000,000 items (300 real-image queries; 256-d: 0.985;
# benchmarks/results/tier-width-1m.md), so half the rows are read.
READ_FACTOR = 5
READ_EXTRA = 5
WIDE_READ_FACTOR = 2
EXACT_AMONG_MAX = 2_000  # this many matches or fewer: always exact among them
GRAPH_WIDTH_MAX = 2_000  # a post-filtered graph search wider than this: exact among the matches
OVERSAMPLE = 1.25  # graph hits asked for per expected match
# With a compact tier, a filter's matches are scanned there (their bounds, then the few full rows
# that can rank) when that costs less than the graph search: about 0.25 us per match against
# 2 us per unit of graph width, re-rank included (200,000 items, PCA-256, this 2-core machine: a
# scan of 20,000 matches took 5.2 ms; graph searches 500 and 1,000 wide 1.2 and 2.2 ms).
TIER_MATCH_COST = 0.25
GRAPH_WIDTH_COST = 2.0


def _pool(core: CatalogCore, k: int, filtered: bool = False) -> int:
    """Candidates needed for k results: more when a reduced graph's order is re-ranked. With a
    compact tier, unfiltered, 1.5 times the rows the re-rank reads: a wider pool only adds
    estimates (at 1,000,000 items, 300 queries: pools of 60, 80, 100 and 140 put the same share
    of the exact top 5 among the 10 to 40 rows read, the graph's ef being 128; a pool of 45 and
    30 rows read found 0.997 of it, 60 and 40 rows 0.999). Filtered, just
    the rows it reads: the graph's width, and so its cost, grows with the pool divided by the
    filter's selectivity (1,000,000 items, 100 real-image queries, 10% selectivity: a pool of 30
    found 1.000 of the exact filtered top 5 in 3.0-3.5 ms, a pool of 45 1.000 in 4.5 ms; 50%:
    0.998 either way)."""
    if core.reduction is None:
        return k
    if core.tier is not None:
        pool = READ_FACTOR * k + READ_EXTRA
        return pool if filtered else 3 * pool // 2
    return RERANK_FACTOR * k + RERANK_EXTRA


def _reads(core: CatalogCore, k: int) -> int:
    """Full rows a re-rank through the tier reads: fewer when it estimates in 512 dimensions."""
    assert core.tier is not None
    return (WIDE_READ_FACTOR if core.tier.wide else READ_FACTOR) * k + READ_EXTRA


def _projected(core: CatalogCore, vector: np.ndarray) -> np.ndarray | None:
    """The query in the tier's space, whose first coordinates are the graph's projection: one
    product serves the graph search and the tier's estimates."""
    return None if core.tier is None else core.tier.pca.project(vector)


def _graph(
    core: CatalogCore, vector: np.ndarray, wanted: int, projected: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``projected``: the query in the tier's space (`_projected`), or None."""
    assert core.graph.index is not None
    inside = None if projected is None else projected[:, : core.graph_dim]
    query = core.to_graph(vector, inside)
    labels, distances = core.graph.index.search(query, wanted, core.count)
    keep = labels[0] >= 0
    return labels[0][keep], distances[0][keep]


def rerank(core: CatalogCore, vector: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Order candidates by their distance to the query in the full, stored space."""
    if len(labels) == 0:
        return labels, np.zeros(0, np.float32)
    stored = core.vectors.read(labels)
    distances = oracle.squared_distances(vector[None, :], stored)[0]
    order = np.lexsort((labels, distances))
    return labels[order], distances[order]


def nearest(
    core: CatalogCore, vector: np.ndarray, labels: np.ndarray, k: int, projected: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The k of a reduced graph's candidates nearest in the full space. With a compact tier,
    only the 5k+5 candidates it estimates nearest are read in full: at a million items the
    vector file is mostly not in the page cache, and reading all 140 candidates' rows cost 2 to
    7 ms a search (benchmarks/results/scale-pca2-1m.md). The tier's lower bounds rule out too
    few of a graph's candidates for that: all of them lie near the query (120 of 140 read)."""
    if core.tier is None:
        found, distances = rerank(core, vector, labels)
        return found[:k], distances[:k]
    return oracle.estimated_among(
        core.vectors, core.tier, core.tier_rows, labels, vector, k, _reads(core, k), projected
    )


def search(
    core: CatalogCore, vector: np.ndarray, k: int, exclude: np.ndarray, allowed: Matches | None
) -> tuple[np.ndarray, np.ndarray]:
    """``(labels, squared distances)``: the k nearest live items, nearest first.

    ``exclude`` are labels to leave out ("more like this"); ``allowed`` is a filter's matches
    (already without the excluded ones), or None for no filter.
    """
    if allowed is None:
        pool = _pool(core, k + len(exclude))
        projected = _projected(core, vector)
        labels, distances = _graph(core, vector, pool, projected)
        if len(exclude):
            keep = ~np.isin(labels, exclude)
            labels, distances = labels[keep], distances[keep]
        if core.reduction is not None:
            return nearest(core, vector, labels, k, projected)
        return labels[:k], distances[:k]
    matches = allowed.count
    if matches == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    pool = _pool(core, k, filtered=True)
    width = math.ceil(pool * OVERSAMPLE * core.count / matches) + len(exclude)
    if core.tier is not None and matches * TIER_MATCH_COST <= width * GRAPH_WIDTH_COST:
        gathered = allowed.tier_rows(core.tier, core.tier_rows)
        if matches <= EXACT_AMONG_MAX:
            return oracle.bounded_among(
                core.vectors, core.tier, core.tier_rows, allowed.labels, vector, k, gathered
            )
        return oracle.estimated_among(  # as the graph's pool is re-ranked, from all the matches
            core.vectors, core.tier, core.tier_rows, allowed.labels, vector, k,
            _reads(core, k), None, gathered,
        )  # fmt: skip
    if matches <= EXACT_AMONG_MAX or width > GRAPH_WIDTH_MAX:
        return _exact_among(core, allowed, vector, k)
    projected = _projected(core, vector)
    while True:
        labels, distances = _graph(core, vector, width, projected)
        inside = labels < len(allowed.mask)
        keep = np.zeros(len(labels), bool)
        keep[inside] = allowed.mask[labels[inside]]
        labels, distances = labels[keep], distances[keep]
        if len(labels) >= pool or width >= core.count:
            break
        width *= 4
        if width > 4 * GRAPH_WIDTH_MAX:  # a filter far less even than its count suggested
            return _exact_among(core, allowed, vector, k)
    if core.reduction is not None:
        return nearest(core, vector, labels[:pool], k, projected)
    return labels[:k], distances[:k]


def _exact_among(
    core: CatalogCore, allowed: Matches, vector: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Exact search among a filter's matches: through the compact tier when there is one."""
    if core.tier is not None:
        gathered = allowed.tier_rows(core.tier, core.tier_rows)
        labels = allowed.labels
        return oracle.bounded_among(core.vectors, core.tier, core.tier_rows, labels, vector, k, gathered)
    return oracle.exact_among(core.vectors, allowed.labels, vector, k)
