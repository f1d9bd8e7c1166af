"""The compact tier: every stored vector's PCA projection, small enough to scan, and the norms that
turn it into a lower bound on the full distance.

With q and x centred by the PCA mean, P the projection onto the PCA space and r = x - P(x) what
lies outside it, ``||q - x||^2 = ||P(q) - P(x)||^2 + ||r_q - r_x||^2``, and the second term is at
least ``(||r_q|| - ||r_x||)^2``. A row keeps P(x) coded (`CODES`), then three float32: ``||r_x||``,
the coding error ``e_x = ||P(x) - decoded||`` and ``||decoded||^2``. Since ``||P(q) - P(x)|| >=
||P(q) - decoded|| - e_x``, the bound survives the coding: exact search reads the full row of an
item only when its bound can still beat the k-th best distance found so far (`oracle.bounded`).

The file is a `VectorFile` of byte rows whose header names the PCA file and the vector file it
was made from, the codes and their per-dimension scales. Rows are written with the vector rows,
before the database commits; the setting ``tier.rows``, committed in the same transaction, says how
many rows are good. Rows it does not cover (a catalog written by a version without the tier, or
opened read-only while the tier lags) are simply read in full. A missing or stale tier is rebuilt
from the vector file when the catalog is opened for writing.
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
STATS = 3  # float32 per row after the codes: residual norm, coding error, squared decoded norm
HEADROOM = 1.05  # int8 scales cover the sample's largest projection with this margin
PREFIX = "tier-"


def file_name(pca_file: str, codes: str = CODES) -> str:
    return f"{PREFIX}{Path(pca_file).stem}.{codes}"


class Tier:
    """The projections of one catalog's rows under one PCA; readable by many threads at once."""

    def __init__(self, rows: VectorFile, pca: PCA, codes: str, scales: np.ndarray) -> None:
        self.rows = rows
        self.pca = pca
        self.codes = np.dtype(codes)
        self.dim = pca.dim
        self.code_bytes = self.dim * self.codes.itemsize
        self.scales = scales.astype(np.float32)
        self.path = rows.path

    # -- creating and opening ------------------------------------------------------------------------

    @staticmethod
    def row_bytes(pca: PCA, codes: str) -> int:
        return pca.dim * np.dtype(codes).itemsize + 4 * STATS

    @staticmethod
    def recovery(path: Path) -> str:
        return (
            f"the compact tier {path} is damaged; it is rebuilt from the stored vectors when the "
            "catalog is next opened for writing (delete it to force that)."
        )

    @classmethod
    def create(
        cls, path: Path, pca: PCA, pca_file: str, vectors_file: str, sample: np.ndarray, codes: str = CODES
    ) -> Tier:
        """A new, empty tier; int8 scales are fitted on the projections of ``sample``."""
        sample = sample[np.isfinite(sample).all(axis=1)]  # a damaged stored vector scales nothing
        if np.dtype(codes) == np.int8:
            largest = np.abs(pca.project(sample)).max(axis=0) if len(sample) else np.ones(pca.dim)
            scales = np.maximum(largest * HEADROOM / 127.0, 1e-12).astype(np.float32)
        else:
            scales = np.ones(pca.dim, np.float32)
        extra = {
            "kind": "tier",
            "codes": np.dtype(codes).name,
            "pca": pca_file,
            "vectors": vectors_file,
            "scales": base64.b64encode(scales.astype("<f4").tobytes()).decode(),
        }
        rows = VectorFile.create(path, cls.row_bytes(pca, codes), "uint8", extra, cls.recovery(path))
        return cls(rows, pca, codes, scales)

    @classmethod
    def open(cls, path: Path, pca: PCA, pca_file: str, vectors_file: str, *, writable: bool) -> Tier | None:
        """The tier at ``path`` when it was made from this PCA and vector file; None when it is
        missing, damaged or stale (the caller rebuilds it or reads rows in full)."""
        if not path.is_file():
            return None
        try:
            header = read_header(path, cls.recovery(path))
            codes = str(header.get("codes"))
            if header.get("pca") != pca_file or header.get("vectors") != vectors_file:
                return None
            rows = VectorFile(
                path, cls.row_bytes(pca, codes), "uint8", writable=writable, recovery=cls.recovery(path)
            )
            scales = np.frombuffer(base64.b64decode(str(header["scales"])), "<f4")
        except (CatalogCorruptError, KeyError, TypeError, ValueError) as exc:
            log.warning("%s", exc)
            return None
        if len(scales) != pca.dim:
            return None
        rows.prefetch()
        return cls(rows, pca, codes, scales.copy())

    def close(self) -> None:
        self.rows.close()

    # -- writing -----------------------------------------------------------------------------------

    def encode(self, vectors: np.ndarray, projected: np.ndarray | None = None) -> np.ndarray:
        """Byte rows for float32 ``vectors`` (the stored values, after any float16 rounding);
        ``projected``: their `PCA.project`, when the caller has it already (it is not changed)."""
        vectors = np.asarray(vectors, np.float32)
        centred = vectors - self.pca.mean
        projected = centred @ self.pca.components.T if projected is None else projected
        residual = np.sqrt(np.maximum(np.einsum("nd,nd->n", centred, centred)
                                      - np.einsum("nd,nd->n", projected, projected), 0.0))  # fmt: skip
        # A damaged (non-finite) stored vector gets zero codes and an infinite residual: every
        # bound on it is infinite, so no search reads it, and no NaN reaches a block's statistics
        # (a NaN coding error would hide the whole block from `within`).
        rotten = ~(np.isfinite(projected).all(axis=1) & np.isfinite(residual))
        if rotten.any():
            projected = np.where(rotten[:, None], np.float32(0.0), projected)
            residual[rotten] = np.inf
        if self.codes == np.int8:
            codes = np.clip(np.rint(projected / self.scales), -127, 127).astype(np.int8)
        else:
            codes = projected.astype(self.codes)
        decoded = codes.astype(np.float32) * self.scales
        error = np.linalg.norm(projected - decoded, axis=1)
        stats = np.stack([residual, error, np.einsum("nd,nd->n", decoded, decoded)], axis=1)
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
        decoded = self._decoded(coded)
        stats = coded[:, self.code_bytes :].view("<f4")
        vectors = np.asarray(vectors, np.float32)
        centred = vectors - self.pca.mean
        projected = self.pca.project(vectors)
        residual = np.sqrt(np.maximum(np.einsum("nd,nd->n", centred, centred)
                                      - np.einsum("nd,nd->n", projected, projected), 0.0))  # fmt: skip
        with np.errstate(invalid="ignore"):
            return ~(
                (np.linalg.norm(projected - decoded, axis=1) <= stats[:, 1] + tolerance)
                & (np.abs(residual - stats[:, 0]) <= tolerance)
                & (np.abs(np.einsum("nd,nd->n", decoded, decoded) - stats[:, 2]) <= tolerance)
            )

    # -- reading -----------------------------------------------------------------------------------

    def _decoded(self, rows: np.ndarray) -> np.ndarray:
        """The coded projections of byte rows as float32, scales applied."""
        return self._codes(rows) * self.scales

    def _codes(self, rows: np.ndarray) -> np.ndarray:
        if self.codes == np.int8:
            return rows[:, : self.code_bytes].view(np.int8).astype(np.float32)
        return kernels.to_float32(np.ascontiguousarray(rows[:, : self.code_bytes]).view(self.codes))

    def prepare(self, queries: np.ndarray, projected: np.ndarray | None = None) -> Prepared:
        return Prepared.of(self, queries, projected)

    def bounds(self, rows: np.ndarray, prepared: Prepared) -> np.ndarray:
        """Lower bounds ``(queries, len(rows))`` on the squared distance to each row's vector."""
        decoded = self._codes(rows)  # the scales are in the prepared query
        stats = rows[:, self.code_bytes :].view("<f4")
        if len(rows) <= 64 and len(prepared.scaled) <= FEW:
            dots = np.einsum("qd,nd->qn", prepared.scaled, decoded)
        else:
            dots = prepared.scaled @ decoded.T
        projected = prepared.squared[:, None] + stats[:, 2][None, :] - 2.0 * dots
        np.maximum(projected, 0.0, out=projected)
        np.sqrt(projected, out=projected)
        projected -= stats[:, 1][None, :]
        np.maximum(projected, 0.0, out=projected)
        outside = prepared.residual[:, None] - stats[:, 0][None, :]
        return projected * projected + outside * outside

    def estimates(self, rows: np.ndarray, prepared: Prepared) -> np.ndarray:
        """Estimates ``(queries, len(rows))`` of the squared distance, to order a search's
        candidates (no bound): the coded projection's distance, plus the residuals' as if their
        angle were 60 degrees (``||r_q||^2 + ||r_x||^2 - ||r_q|| ||r_x||``; the true angle is not
        stored). At 200,000 items this order put more of the exact top 5 in a graph pool's first
        30 than the graph's own order or the lower bound's did (benchmarks/results/scale-million5.md)."""
        codes = self._codes(rows)
        stats = rows[:, self.code_bytes :].view("<f4")
        if len(prepared.scaled) == 1:  # callers hold one BLAS thread (`kernels.one_blas_thread`)
            dots = (codes @ prepared.scaled[0])[None, :]
        else:
            dots = prepared.scaled @ codes.T
        inside = prepared.residual[:, None]
        outside = stats[:, 0][None, :]
        return (prepared.squared[:, None] + stats[:, 2][None, :] - 2.0 * dots
                + inside * inside + outside * outside - inside * outside)  # fmt: skip

    def within(
        self, rows: np.ndarray, prepared: Prepared, limit: np.ndarray, residual: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(query, row)`` index pairs whose bound is at most the query's ``limit``: many
        queries against a block, with no bound matrix. A test on the product alone (the bound
        without the residual term and with the block's largest coding error, which can only
        lower it) leaves few pairs, whose bounds are then computed one by one."""
        codes = self._codes(rows)
        stats = rows[:, self.code_bytes :].view("<f4")
        reach = np.sqrt(limit) + float(stats[:, 1].max())
        dots = prepared.scaled @ codes.T
        dots -= 0.5 * stats[:, 2][None, :]
        which, where = np.nonzero(dots >= (0.5 * (prepared.squared - reach * reach))[:, None])
        projected = prepared.squared[which] - 2.0 * dots[which, where]  # + b - b: the norms cancel
        np.maximum(projected, 0.0, out=projected)
        np.sqrt(projected, out=projected)
        projected -= stats[where, 1]
        np.maximum(projected, 0.0, out=projected)
        bound = projected * projected
        if residual:  # False: distances within the PCA space (a format 2 graph's own)
            outside = prepared.residual[which] - stats[where, 0]
            bound += outside * outside
        keep = bound <= limit[which]
        return which[keep], where[keep]

    def within_graph_space(
        self, rows: np.ndarray, reduced: np.ndarray, limit: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """The same in the graph's space (no whitening) for ``reduced`` queries there. Format 2:
        the tier's own space without the residual term. Format 1 (unit projections):
        ``||n(P(x)) - n(decoded)|| <= 2 e_x / ||decoded||`` keeps it a bound."""
        if not self.pca.normalise:
            squared = np.einsum("qd,qd->q", reduced, reduced)
            scaled = (reduced * self.scales).astype(np.float32)
            return self.within(rows, Prepared(scaled, squared, np.zeros_like(squared)), limit, residual=False)
        codes = self._codes(rows)
        stats = rows[:, self.code_bytes :].view("<f4")
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


class Prepared:
    """A query's side of the bound: its projection (times the scales), squared norm, residual norm."""

    def __init__(self, scaled: np.ndarray, squared: np.ndarray, residual: np.ndarray) -> None:
        self.scaled = scaled
        self.squared = squared
        self.residual = residual

    @classmethod
    def of(cls, tier: Tier, queries: np.ndarray, projected: np.ndarray | None = None) -> Prepared:
        """``projected``: the queries' `project`ion, when the caller has it already."""
        queries = np.atleast_2d(np.asarray(queries, np.float32))
        centred = queries - tier.pca.mean
        projected = tier.pca.project(queries) if projected is None else np.atleast_2d(projected)
        squared = np.einsum("qd,qd->q", projected, projected)
        residual = np.sqrt(np.maximum(np.einsum("qd,qd->q", centred, centred) - squared, 0.0))
        return cls((projected * tier.scales).astype(np.float32), squared, residual)
