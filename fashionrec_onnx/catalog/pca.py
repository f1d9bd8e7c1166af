"""PCA reduction of embeddings (2048 -> e.g. 256): a smaller, faster HNSW graph.

Fitted on a catalog's own vectors and stored beside it as a plain ``.npz`` (no pickle). Reduced
vectors are re-normalised, so the graph still ranks by cosine. The stored full vectors stay the
truth: exact search, and `Catalog.check`, can still compare against the full space.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import CatalogCorruptError, CatalogError

FORMAT = 1
# Up to this many rows, products are computed on the calling thread (numpy's einsum loops):
# OpenBLAS splits even a 256 x 2048 product across its threads, and on a busy machine waiting
# for them to wake costs 100x the arithmetic (16 ms instead of 0.1 ms measured here).
FEW = 16


@dataclass(frozen=True)
class PCA:
    """``x -> normalise((x - mean) @ components.T [/ scales])``."""

    mean: np.ndarray  # (dim,)
    components: np.ndarray  # (out_dim, dim), rows orthonormal
    scales: np.ndarray  # (out_dim,): singular values / sqrt(n); used when whitening
    whiten: bool
    explained_variance_ratio: float

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
        _, singular, axes = np.linalg.svd(vectors - mean, full_matrices=False)
        variance = singular**2
        return cls(
            mean=mean.astype(np.float32),
            components=axes[:dim].astype(np.float32),
            scales=(singular[:dim] / np.sqrt(len(vectors))).astype(np.float32),
            whiten=whiten,
            explained_variance_ratio=float(variance[:dim].sum() / variance.sum()),
        )

    def transform(self, vectors: np.ndarray) -> np.ndarray:
        """Project and re-normalise to unit length (rows of zeros stay zero)."""
        vectors = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
        if vectors.shape[1] != self.input_dim:
            raise CatalogError(f"PCA expects {self.input_dim}-d vectors, got {vectors.shape[1]}-d")
        centred = vectors - self.mean
        if len(centred) <= FEW:  # a query: BLAS would wake worker threads for a tiny product
            reduced = np.einsum("nd,od->no", centred, self.components)
        else:
            reduced = centred @ self.components.T
        if self.whiten:
            reduced /= np.maximum(self.scales, 1e-12)
        norms = np.linalg.norm(reduced, axis=1, keepdims=True)
        return (reduced / np.maximum(norms, 1e-12)).astype(np.float32)

    def save(self, path: str | os.PathLike[str]) -> None:
        path = Path(path)
        temporary = path.with_name(path.name + ".tmp")
        try:
            with temporary.open("wb") as handle:
                np.savez(
                    handle,
                    format=np.int64(FORMAT),
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
                if int(data["format"]) != FORMAT:
                    raise ValueError(f"format {int(data['format'])}")
                return cls(
                    mean=data["mean"],
                    components=data["components"],
                    scales=data["scales"],
                    whiten=bool(data["whiten"]),
                    explained_variance_ratio=float(data["explained_variance_ratio"]),
                )
        except (OSError, ValueError, KeyError) as exc:
            raise CatalogCorruptError(
                f"the PCA file {path} is missing or corrupt ({exc}); recreate it with "
                "`fashionrec reduce --catalog DIR --dim N` (the stored vectors are intact)."
            ) from exc
