"""The compact tier: every stored vector's PCA projection, small enough to scan, and the norms that
turn it into a lower bound on the full distance.

With q and x centred by the PCA mean, P the projection onto the PCA space and r = x - P(x) what
lies outside it, ``||q - x||^2 = ||P(q) - P(x)||^2 + ||r_q - r_x||^2``, and the second term is at
least ``(||r_q|| - ||r_x||)^2``. A row keeps P(x) coded (`CODES`), then three float32: ``||r_x||``,
the coding error ``e_x = ||P(x) - decoded||`` and ``||decoded||^2``. Since ``||P(q) - P(x)|| >=
||P(q) - decoded|| - e_x``, the bound survives the coding: exact search reads the full row of an
item only when its bound can still beat the k-th best distance found so far (`oracle.bounded`).

The tier's space is wider than the graph's (format 2): the graph PCA's components followed by the
principal axes of what a sample of stored vectors keeps outside them: twice the graph's
dimensions, `WIDTH` at most. Its first coordinates are the graph's projection, so one product
serves both; the extra ones make the estimate that orders a search's candidates good enough to
read 15 full rows instead of 30 (1,000,000 items: 0.9993 of the exact top 5 among the first 15
estimated at 512-d, 0.985 at 256-d; benchmarks/results/tier-width-1m.md). The wider PCA is a
``.npz`` file beside the tier (`PCA.save`). A format 2 row also keeps the residual norm outside
the graph's coordinates and their squared decoded norm, so a scan over many rows can bound and
estimate on those coordinates alone (`coarse`: the cost of a 256-d tier) and spend the wider
ones on the few rows that are left.

The file is a `VectorFile` of byte rows whose header names the graph's PCA file, its own space's
PCA file (format 2; none in a format 1 tier, whose space is the graph's) and the vector file it
was made from, the codes and their per-dimension scales. Rows are written with the vector rows,
before the database commits; the setting ``tier.rows``, committed in the same transaction, says how
many rows are good. Rows it does not cover (a catalog written by a version without the tier, or
opened read-only while the tier lags) are simply read in full. A missing or stale tier, or one of
format 1, is rebuilt from the vector file when the catalog is opened for writing; opened read-only,
a format 1 tier keeps working as it was written.
"""

from __future__ import annotations

import base64
import logging
from pathlib import Path

import numpy as np

from ..errors import CatalogCorruptError
from . import kernels
from .pca import FEW, PCA
from .vectors import VectorFile, read_header

log = logging.getLogger(__name__)

# int8 with a per-dimension scale, chosen over float16 (measured at 200,000 items, see
# docs/scale.md): half the bytes to scan, and a bound loose enough by the coding error to read
# only a few hundred more full rows.
CODES = "int8"
# float32 per row after the codes: residual norm, coding error, squared decoded norm; format 2
# adds the residual norm outside the graph's coordinates and their squared decoded norm.
STATS = {1: 3, 2: 5}
HEADROOM = 1.05  # int8 scales cover the sample's largest projection with this margin
PREFIX = "tier-"
FORMAT = 2  # 1: the graph's own space (read, rebuilt when the catalog is opened for writing)
# The tier's space is twice the graph's, up to this: at 1,000,000 items a 512-d estimate put 0.997
# of the exact top 5 among a graph pool's first 10 candidates and 0.9993 among 15 (384-d: 0.986
# and 0.9967). It also keeps the int8 scales within the file's header (4 KB).
WIDTH = 512
# A graph wider than this gets no tier: the int8 scales of its coordinates would not fit the
# file's 4 KB header (base64 of 640 float32 is 3,416 bytes). Its searches read every candidate's
# full row, as before the tier.
MAX_GRAPH_DIM = 640


def file_name(pca_file: str, codes: str = CODES) -> str:
    return f"{PREFIX}{Path(pca_file).stem}-{FORMAT}.{codes}"


def space_name(tier_file: str) -> str:
    """The file of a format 2 tier's own PCA."""
    return f"{Path(tier_file).stem}.npz"


class Tier:
    """The projections of one catalog's rows under one PCA; readable by many threads at once."""

    def __init__(
        self, rows: VectorFile, pca: PCA, codes: str, scales: np.ndarray, graph: PCA, space: str | None
    ) -> None:
        self.rows = rows
        self.pca = pca  # the tier's space: the graph's PCA, or (format 2) one wider that extends it
        self.graph = graph  # the graph's PCA: its projection is the first `graph.dim` coordinates
        self.space = space  # the file of the tier's own PCA (format 2), or None (format 1)
        self.format = 1 if space is None else 2
        self.codes = np.dtype(codes)
        self.dim = pca.dim
        self.code_bytes = self.dim * self.codes.itemsize
        self.scales = scales.astype(np.float32)
        self.path = rows.path

    @property
    def widened(self) -> bool:
        """Whether the tier's space is wider than the graph's."""
        return self.pca.dim > self.graph.dim

    @property
    def wide(self) -> bool:
        """Whether the tier estimates in `WIDTH` dimensions, as measured good enough for a search
        to read 15 full rows instead of 30 (a narrower space estimates as a 256-d one did)."""
        return self.pca.dim >= WIDTH

    # -- creating and opening ------------------------------------------------------------------------

    @staticmethod
    def possible(graph: PCA) -> bool:
        """Whether a graph of this PCA can have a tier (`MAX_GRAPH_DIM`)."""
        return graph.dim <= MAX_GRAPH_DIM

    @staticmethod
    def row_bytes(pca: PCA, codes: str, form: int) -> int:
        return pca.dim * np.dtype(codes).itemsize + 4 * STATS[form]

    @staticmethod
    def recovery(path: Path) -> str:
        return (
            f"the compact tier {path} is damaged; it is rebuilt from the stored vectors when the "
            "catalog is next opened for writing (delete it to force that)."
        )

    @classmethod
    def create(
        cls, path: Path, graph: PCA, pca_file: str, vectors_file: str, sample: np.ndarray, codes: str = CODES
    ) -> Tier:
        """A new, empty tier of format 2; its space and the int8 scales are fitted on ``sample``.
        A format 1 graph PCA (unit projections) is not extended: the tier has the graph's space."""
        sample = sample[np.isfinite(sample).all(axis=1)]  # a damaged stored vector scales nothing
        pca = graph
        if not graph.normalise and len(sample):
            pca = graph.widened(sample, min(WIDTH, 2 * graph.dim) - graph.dim)
        space = space_name(path.name)
        pca.save(path.with_name(space))
        if np.dtype(codes) == np.int8:
            largest = np.abs(pca.project(sample)).max(axis=0) if len(sample) else np.ones(pca.dim)
            scales = np.maximum(largest * HEADROOM / 127.0, 1e-12).astype(np.float32)
        else:
            scales = np.ones(pca.dim, np.float32)
        extra = {
            "kind": "tier",
            "codes": np.dtype(codes).name,
            "pca": pca_file,
            "space": space,
            "vectors": vectors_file,
            "scales": base64.b64encode(scales.astype("<f4").tobytes()).decode(),
        }
        rows = VectorFile.create(path, cls.row_bytes(pca, codes, 2), "uint8", extra, cls.recovery(path))
        return cls(rows, pca, codes, scales, graph, space)

    @classmethod
    def open(cls, path: Path, graph: PCA, pca_file: str, vectors_file: str, *, writable: bool) -> Tier | None:
        """The tier at ``path`` when it was made from this graph PCA and vector file; None when it
        is missing, damaged or stale (the caller rebuilds it or reads rows in full)."""
        if not path.is_file():
            return None
        try:
            header = read_header(path, cls.recovery(path))
            codes = str(header.get("codes"))
            if header.get("pca") != pca_file or header.get("vectors") != vectors_file:
                return None
            space = header.get("space")
            pca = graph if space is None else cls._space(path, str(space))
            if pca is not graph and not pca.extends(graph):
                return None
            form = 1 if space is None else 2
            rows = VectorFile(
                path, cls.row_bytes(pca, codes, form), "uint8", writable=writable, recovery=cls.recovery(path)
            )
            scales = np.frombuffer(base64.b64decode(str(header["scales"])), "<f4")
        except (CatalogCorruptError, KeyError, TypeError, ValueError) as exc:
            log.warning("%s", exc)
            return None
        if len(scales) != pca.dim:
            return None
        rows.prefetch()
        return cls(rows, pca, codes, scales.copy(), graph, None if space is None else str(space))

    @classmethod
    def _space(cls, path: Path, name: str) -> PCA:
        try:
            return PCA.load(path.with_name(name))
        except CatalogCorruptError as exc:  # the tier's own, not the graph's: rebuilt with the tier
            raise CatalogCorruptError(f"{cls.recovery(path)} ({exc.args[0].split(';')[0]})") from exc

    def close(self) -> None:
        self.rows.close()

    # -- writing -----------------------------------------------------------------------------------

    def _statistics(
        self, centred: np.ndarray, projected: np.ndarray, decoded: np.ndarray
    ) -> list[np.ndarray]:
        """A row's float32 statistics (`STATS`), from its centred vector, projection and decoding."""
        whole = np.einsum("nd,nd->n", centred, centred)

        def residual(inside: np.ndarray) -> np.ndarray:
            return _outside(whole, np.einsum("nd,nd->n", inside, inside))

        stats = [
            residual(projected),
            np.linalg.norm(projected - decoded, axis=1),
            np.einsum("nd,nd->n", decoded, decoded),
        ]
        if self.format == 2:
            graph = self.graph.dim
            stats.append(residual(projected[:, :graph]))
            stats.append(np.einsum("nd,nd->n", decoded[:, :graph], decoded[:, :graph]))
        return stats

    def encode(self, vectors: np.ndarray, projected: np.ndarray | None = None) -> np.ndarray:
        """Byte rows for float32 ``vectors`` (the stored values, after any float16 rounding);
        ``projected``: their `PCA.project`, when the caller has it already (it is not changed)."""
        vectors = np.asarray(vectors, np.float32)
        centred = vectors - self.pca.mean
        projected = centred @ self.pca.components.T if projected is None else projected
        # A damaged stored vector (non-finite, or so large its norms overflow) gets zero codes and
        # infinite residuals: every bound on it is infinite, so no search reads it, and no NaN
        # reaches a block's statistics (a NaN coding error would hide the whole block from `within`).
        rotten = ~np.isfinite(projected).all(axis=1)
        if rotten.any():
            projected = np.where(rotten[:, None], np.float32(0.0), projected)
        if self.codes == np.int8:
            codes = np.clip(np.rint(projected / self.scales), -127, 127).astype(np.int8)
        else:
            codes = projected.astype(self.codes)
        decoded = codes.astype(np.float32) * self.scales
        with np.errstate(all="ignore"):
            stats = np.stack(self._statistics(centred, projected, decoded), axis=1)
        rotten |= ~np.isfinite(stats).all(axis=1)
        if rotten.any():
            codes[rotten] = 0
            stats[rotten] = 0.0
            stats[np.ix_(rotten, [0, 3] if self.format == 2 else [0])] = np.inf
        out = np.empty((len(vectors), self.rows.dim), np.uint8)
        out[:, : self.code_bytes] = codes.view(np.uint8).reshape(len(vectors), -1)
        out[:, self.code_bytes :] = stats.astype("<f4").view(np.uint8)
        return out

    def write_rows(self, start: int, vectors: np.ndarray, projected: np.ndarray | None = None) -> None:
        """Rows ``start..`` for stored float32 vectors, synced (see `VectorFile.write_rows`)."""
        self.rows.write_rows(start, self.encode(vectors, projected))

    def fill(self, vectors: VectorFile, start: int, stop: int) -> None:
        """Rows ``start..stop`` computed from the vector file, a block at a time."""
        if stop <= start:
            return
        if stop - start > 20_000:
            log.info("projecting %d stored vectors into the compact tier %s", stop - start, self.path)
        labels = np.arange(start, stop)
        for offset, block in vectors.gather_blocks(labels, 16_384):
            self.write_rows(start + offset, block)

    def mismatched(self, coded: np.ndarray, vectors: np.ndarray, tolerance: float = 1e-4) -> np.ndarray:
        """Which byte rows do not bound their stored vectors (`verify`): the decoded projection
        must lie within the recorded error of the true one, and the norms must be the true ones
        (up to float rounding: a row is recomputed in another batch than it was written in)."""
        decoded = self._codes(coded) * self.scales
        stats = self._stats(coded)
        vectors = np.asarray(vectors, np.float32)
        centred = vectors - self.pca.mean
        projected = self.pca.project(vectors)
        with np.errstate(all="ignore"):
            true = self._statistics(centred, projected, decoded)
            wrong = ~(true[1] <= stats[:, 1] + tolerance)
            for column in (0, 2, *((3, 4) if self.format == 2 else ())):
                wrong |= ~(np.abs(true[column] - stats[:, column]) <= tolerance)
            return wrong

    # -- reading -----------------------------------------------------------------------------------

    def _stats(self, rows: np.ndarray) -> np.ndarray:
        return rows[:, self.code_bytes :].view("<f4")

    def _codes(self, rows: np.ndarray, dim: int | None = None) -> np.ndarray:
        """The first ``dim`` (all) codes of byte rows as float32, scales not applied."""
        dim = self.dim if dim is None else dim
        if self.codes == np.int8:
            return rows[:, :dim].view(np.int8).astype(np.float32)
        size = self.codes.itemsize
        return kernels.to_float32(np.ascontiguousarray(rows[:, : dim * size]).view(self.codes))

    def _parts(self, rows: np.ndarray, coarse: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(codes, residual norms, coding errors, squared decoded norms)`` of byte rows, in
        the tier's whole space or (``coarse``, format 2) in the graph's first coordinates only
        (the whole space's coding error bounds theirs)."""
        stats = self._stats(rows)
        if coarse and self.format == 2:
            return self._codes(rows, self.graph.dim), stats[:, 3], stats[:, 1], stats[:, 4]
        return self._codes(rows), stats[:, 0], stats[:, 1], stats[:, 2]

    def prepare(self, queries: np.ndarray, projected: np.ndarray | None = None) -> Prepared:
        return Prepared.of(self, queries, projected)

    def bounds(self, rows: np.ndarray, prepared: Prepared, coarse: bool = False) -> np.ndarray:
        """Lower bounds ``(queries, len(rows))`` on the squared distance to each row's vector;
        ``coarse``: from the graph's coordinates only (half the work of a 512-d tier, looser)."""
        query = prepared.coarse if coarse else prepared
        codes, residual, error, norms = self._parts(rows, coarse)  # the scales are in the query
        if len(rows) <= 64 and len(query.scaled) <= FEW:
            dots = np.einsum("qd,nd->qn", query.scaled, codes)
        else:
            dots = query.scaled @ codes.T
        projected = query.squared[:, None] + norms[None, :] - 2.0 * dots
        np.maximum(projected, 0.0, out=projected)
        np.sqrt(projected, out=projected)
        projected -= error[None, :]
        np.maximum(projected, 0.0, out=projected)
        outside = query.residual[:, None] - residual[None, :]
        return projected * projected + outside * outside

    def estimates(self, rows: np.ndarray, prepared: Prepared, coarse: bool = False) -> np.ndarray:
        """Estimates ``(queries, len(rows))`` of the squared distance, to order a search's
        candidates (no bound): the coded projection's distance, plus the residuals' as if their
        angle were 60 degrees (``||r_q||^2 + ||r_x||^2 - ||r_q|| ||r_x||``; the true angle is not
        stored). At 200,000 items this order put more of the exact top 5 in a graph pool's first
        30 than the graph's own order or the lower bound's did (benchmarks/results/scale-million5.md).
        ``coarse``: from the graph's coordinates only, to narrow many rows down to a few."""
        query = prepared.coarse if coarse else prepared
        codes, residual, _, norms = self._parts(rows, coarse)
        # With one query, a matrix-vector product (callers hold one BLAS thread, `kernels.one_blas_thread`).
        dots = (codes @ query.scaled[0])[None, :] if len(query.scaled) == 1 else query.scaled @ codes.T
        inside = query.residual[:, None]
        outside = residual[None, :]
        return (query.squared[:, None] + norms[None, :] - 2.0 * dots
                + inside * inside + outside * outside - inside * outside)  # fmt: skip

    def within(
        self, rows: np.ndarray, prepared: Prepared, limit: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(query, row)`` index pairs whose (coarse) bound is at most the query's ``limit``:
        many queries against a block, with no bound matrix (see `_close`)."""
        query = prepared.coarse
        codes, residual, error, norms = self._parts(rows, coarse=True)
        return _close(query.scaled @ codes.T, query.squared, norms, error, limit, (query.residual, residual))

    def within_graph_space(
        self, rows: np.ndarray, reduced: np.ndarray, limit: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """The same in the graph's space (no whitening) for ``reduced`` queries there. Format 2
        graph PCA: the tier's first coordinates without the residual term. Format 1 (unit
        projections, whose tier is the graph's space): ``||n(P(x)) - n(decoded)|| <= 2 e_x /
        ||decoded||`` keeps it a bound."""
        if not self.graph.normalise:
            codes, _, error, norms = self._parts(rows, coarse=True)
            scaled = (reduced * self.scales[: self.graph.dim]).astype(np.float32)
            return _close(scaled @ codes.T, np.einsum("qd,qd->q", reduced, reduced), norms, error, limit)
        codes = self._codes(rows)
        stats = self._stats(rows)
        inverse = 1.0 / np.maximum(np.sqrt(stats[:, 2]), 1e-12)
        slack = 2.0 * stats[:, 1] * inverse
        reach = np.sqrt(limit) + float(slack.max())
        cosines = (reduced * self.scales) @ codes.T
        cosines *= inverse[None, :]
        which, where = np.nonzero(cosines >= (1.0 - 0.5 * reach * reach)[:, None])
        apart = np.sqrt(np.maximum(2.0 - 2.0 * cosines[which, where], 0.0)) - slack[where]
        np.maximum(apart, 0.0, out=apart)
        keep = apart * apart <= limit[which]
        return which[keep], where[keep]


def _outside(whole: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """``||r||``, the norm outside some coordinates, from the centred vectors' squared norms
    and the squared norms of their coordinates there (rounding may make the difference negative)."""
    return np.sqrt(np.maximum(whole - inside, 0.0))


def _close(
    dots: np.ndarray,
    squared: np.ndarray,
    norms: np.ndarray,
    errors: np.ndarray,
    limit: np.ndarray,
    residuals: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(query, row)`` pairs whose bound is within ``limit``, from the products ``dots`` of the
    queries' (scaled) projections with the rows' codes, the queries' squared norms, the rows'
    squared decoded norms and coding errors, and the residual norms of both (None: distances
    within the projection's space). A test on the product alone (the bound without the residual
    term and with the block's largest coding error, which can only lower it) leaves few pairs,
    whose bounds are then computed one by one."""
    reach = np.sqrt(limit) + float(errors.max())
    dots -= 0.5 * norms[None, :]
    which, where = np.nonzero(dots >= (0.5 * (squared - reach * reach))[:, None])
    projected = squared[which] - 2.0 * dots[which, where]  # + b - b: the norms cancel
    np.maximum(projected, 0.0, out=projected)
    np.sqrt(projected, out=projected)
    projected -= errors[where]
    np.maximum(projected, 0.0, out=projected)
    bound = projected * projected
    if residuals is not None:
        outside = residuals[0][which] - residuals[1][where]
        bound += outside * outside
    keep = bound <= limit[which]
    return which[keep], where[keep]


class Prepared:
    """A query's side of the bound: its projection (times the scales), squared norm, residual
    norm; ``coarse``: the same in the graph's first coordinates (itself when they are all)."""

    def __init__(
        self, scaled: np.ndarray, squared: np.ndarray, residual: np.ndarray, coarse: Prepared | None = None
    ) -> None:
        self.scaled = scaled
        self.squared = squared
        self.residual = residual
        self.coarse: Prepared = self if coarse is None else coarse

    @classmethod
    def of(cls, tier: Tier, queries: np.ndarray, projected: np.ndarray | None = None) -> Prepared:
        """``projected``: the queries' `project`ion, when the caller has it already."""
        queries = np.atleast_2d(np.asarray(queries, np.float32))
        centred = queries - tier.pca.mean
        projected = tier.pca.project(queries) if projected is None else np.atleast_2d(projected)
        whole = np.einsum("qd,qd->q", centred, centred)
        scaled = (projected * tier.scales).astype(np.float32)
        if not tier.widened:  # the graph's coordinates are all of them
            return cls._side(scaled, projected, whole)
        graph = tier.graph.dim
        return cls._side(scaled, projected, whole, cls._side(scaled[:, :graph], projected[:, :graph], whole))

    @classmethod
    def _side(
        cls, scaled: np.ndarray, projected: np.ndarray, whole: np.ndarray, coarse: Prepared | None = None
    ) -> Prepared:
        """The query's side in the coordinates ``projected`` holds (``whole``: the centred
        queries' squared norms, for the residual outside them)."""
        squared = np.einsum("qd,qd->q", projected, projected)
        return cls(scaled, squared, _outside(whole, squared), coarse)
