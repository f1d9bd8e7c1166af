"""PCA reduction of embeddings (2048 -> e.g. 256): a smaller, faster HNSW graph.

Fitted on a catalog's own vectors and stored beside it as a plain ``.npz`` (no pickle). The graph
indexes the centred projections as they are (format 2): a projection is an isometry of the PCA
subspace, so the graph's L2 order is the full space's up to what lies outside it. Format 1
re-normalised them to unit length, which reorders neighbours whose residual norms differ
(search recall@5 0.878 against 0.965 at 200,000 structured items, same p50;
docs/scale.md); its files load and keep working as they were written.
The stored full vectors stay the truth: exact search, and `Catalog.check`, compare in the full space.
"""

from __future__ import annotations

import os
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import CatalogCorruptError, CatalogError
from . import kernels

FORMAT = 2
FORMATS = (1, 2)  # 1: unit-length projections (read, never written)
# Up to this many rows, products are computed on the calling thread (numpy's einsum loops):
# OpenBLAS splits even a 256 x 2048 product across its threads, and on a busy machine waiting
# for them to wake costs 100x the arithmetic (16 ms instead of 0.1 ms measured here).
FEW = 16
SCATTER_SPREAD = 1e-8  # smallest kept variance / largest for which the scatter matrix's axes hold


@dataclass(frozen=True)
class PCA:
    """``x -> (x - mean) @ components.T [/ scales]``, re-normalised to unit length if ``normalise``."""

    mean: np.ndarray  # (dim,)
    components: np.ndarray  # (out_dim, dim), rows orthonormal
    scales: np.ndarray  # (out_dim,): singular values / sqrt(n); used when whitening
    whiten: bool
    explained_variance_ratio: float
    normalise: bool = False  # format 1's unit-length projections

    @property
    def dim(self) -> int:
        return int(self.components.shape[0])

    @property
    def input_dim(self) -> int:
        return int(self.components.shape[1])

    @classmethod
    def fit(cls, vectors: np.ndarray, dim: int, whiten: bool = False) -> PCA:
        vectors = np.asarray(vectors, dtype=np.float64)
        if not 1 <= dim <= min(vectors.shape):
            raise CatalogError(
                f"cannot reduce to {dim} dimensions with {len(vectors)} vectors of {vectors.shape[1]}: "
                f"choose 1..{min(vectors.shape)}"
            )
        mean = vectors.mean(axis=0)
        singular, axes = _principal_axes(vectors - mean, dim)
        variance = singular**2
        return cls(
            mean=mean.astype(np.float32),
            components=axes[:dim].astype(np.float32),
            scales=(singular[:dim] / np.sqrt(len(vectors))).astype(np.float32),
            whiten=whiten,
            explained_variance_ratio=float(variance[:dim].sum() / variance.sum()),
        )

    def widened(self, sample: np.ndarray, extra: int) -> PCA:
        """This PCA's components followed by up to ``extra`` principal axes of what ``sample``
        keeps outside them (the compact tier's wider space: its first `dim` coordinates are this
        PCA's projection). Fewer axes when the sample spans fewer; never whitened or normalised."""
        centred = np.asarray(sample, np.float64) - self.mean
        inside = self.components.astype(np.float64)
        residual = centred - (centred @ inside.T) @ inside
        extra = min(extra, self.input_dim - self.dim, len(residual))
        axes = np.zeros((0, self.input_dim))
        singular = np.zeros(0)
        if extra > 0:
            singular, axes = _principal_axes(residual, extra)
            # Only axes along which the sample truly varies: past its rank an axis is arbitrary
            # and may lie in this PCA's space.
            extra = min(extra, int(np.count_nonzero(singular > 1e-6 * max(float(singular[0]), 1e-300))))
            singular, axes = singular[:extra], axes[:extra]
            axes = axes - (axes @ inside.T) @ inside  # orthogonal to this PCA's axes to rounding,
            axes = np.linalg.qr(axes.T)[0].T  # and to each other
        components = np.vstack([inside, axes])
        total = float(np.einsum("nd,nd->", centred, centred))
        kept = centred @ components.T
        return PCA(
            mean=self.mean,
            components=components.astype(np.float32),
            scales=np.concatenate([self.scales, singular / np.sqrt(max(len(sample), 1))]).astype(np.float32),
            whiten=False,
            explained_variance_ratio=float(np.einsum("nd,nd->", kept, kept) / total) if total > 0 else 1.0,
        )

    def extends(self, other: PCA) -> bool:
        """Whether this PCA's first coordinates are ``other``'s projection (a tier's wider space)."""
        return (
            self.input_dim == other.input_dim
            and self.dim >= other.dim
            and self.normalise == other.normalise
            and np.array_equal(self.mean, other.mean)
            and np.array_equal(self.components[: other.dim], other.components)
        )

    def project(self, vectors: np.ndarray) -> np.ndarray:
        """The centred projection, neither whitened nor normalised (the compact tier's space)."""
        centred = np.atleast_2d(np.asarray(vectors, dtype=np.float32)) - self.mean
        if len(centred) <= FEW:  # a query: BLAS would wake worker threads for a tiny product
            return kernels.few_rows_times(centred, self.components)
        return centred @ self.components.T

    def transform(self, vectors: np.ndarray, projected: np.ndarray | None = None) -> np.ndarray:
        """Project (and, for a format 1 file, re-normalise to unit length; rows of zeros stay zero).
        ``projected``: `project` of these vectors, when the caller has it already (not changed)."""
        vectors = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
        if vectors.shape[1] != self.input_dim:
            raise CatalogError(f"PCA expects {self.input_dim}-d vectors, got {vectors.shape[1]}-d")
        reduced = self.project(vectors) if projected is None else projected
        if self.whiten:
            reduced = reduced / np.maximum(self.scales, 1e-12)
        if not self.normalise:
            return reduced.astype(np.float32, copy=False)
        norms = np.linalg.norm(reduced, axis=1, keepdims=True)
        return (reduced / np.maximum(norms, 1e-12)).astype(np.float32)

    def save(self, path: str | os.PathLike[str]) -> None:
        path = Path(path)
        temporary = path.with_name(path.name + ".tmp")
        try:
            with temporary.open("wb") as handle:
                np.savez(
                    handle,
                    format=np.int64(1 if self.normalise else FORMAT),
                    mean=self.mean,
                    components=self.components,
                    scales=self.scales,
                    whiten=np.bool_(self.whiten),
                    explained_variance_ratio=np.float64(self.explained_variance_ratio),
                )
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, path)
        except OSError as exc:
            temporary.unlink(missing_ok=True)
            if exc.filename is None:  # np.savez's write errors name no file
                exc.filename = str(path)
            raise

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> PCA:
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as data:
                if int(data["format"]) not in FORMATS:
                    raise ValueError(f"format {int(data['format'])}, not one of {FORMATS}")
                return cls(
                    mean=data["mean"],
                    components=data["components"],
                    scales=data["scales"],
                    whiten=bool(data["whiten"]),
                    explained_variance_ratio=float(data["explained_variance_ratio"]),
                    normalise=int(data["format"]) == 1,
                )
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
            raise CatalogCorruptError(
                f"the PCA file {path} is missing or corrupt ({exc}); recreate it with "
                "`fashionrec reduce --catalog DIR --dim N` (the stored vectors are intact)."
            ) from exc


def _principal_axes(centred: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Singular values (descending) and right singular vectors of ``centred`` (float64).

    With more rows than columns, from the eigen-decomposition of the d x d scatter matrix: one
    BLAS product and an ``eigh``, 8 times faster than the SVD of 20,480 x 2048 (measured here),
    equal to it to 1e-15 in every axis (up to sign) on real embeddings. The scatter matrix squares
    the spread of the variances: when the ``dim``-th one is under `SCATTER_SPREAD` of the first
    (near-duplicate rows, a rank-deficient sample), or with fewer rows than columns, the SVD."""
    if len(centred) >= centred.shape[1]:
        eigenvalues, eigenvectors = np.linalg.eigh(centred.T @ centred)
        eigenvalues, eigenvectors = eigenvalues[::-1], eigenvectors[:, ::-1]  # eigh ascends
        if eigenvalues[dim - 1] >= SCATTER_SPREAD * eigenvalues[0] > 0:
            return np.sqrt(np.maximum(eigenvalues, 0.0)), eigenvectors.T
    _, singular, axes = np.linalg.svd(centred, full_matrices=False)
    return singular, axes
