"""Images in, unit vectors out, through the exported ONNX model.

Decoding and resizing run in a thread pool while onnxruntime works on the previous batch
(Pillow releases the GIL while it decodes), so ingesting real photos runs close to the
model-only rate. Settings come from the model's metadata, so the runtime cannot drift from
the exporter.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence, Sized
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from threading import Lock
from typing import Any, Literal, overload

import numpy as np
from PIL import Image
from tqdm import tqdm

from .errors import ImageLoadError
from .images import DEFAULT_MAX_PIXELS, Box, Source, check_box, crop, describe, load_image, prepare_image
from .model import INPUT_NAME, OUTPUT_NAME, default_threads, load_model

log = logging.getLogger(__name__)

OnError = Literal["raise", "skip"]


@dataclass(frozen=True)
class Failure:
    """An input that could not be embedded, and why."""

    index: int
    source: str
    reason: str


@dataclass
class EmbedResult:
    """Vectors for the inputs that loaded; ``indices`` says which inputs they are."""

    vectors: np.ndarray
    indices: np.ndarray
    failures: list[Failure] = field(default_factory=list)
    extras: list[Any] = field(default_factory=list)  # ``also``'s answer per input that loaded

    def __len__(self) -> int:
        return len(self.indices)


def _is_single(images: object) -> bool:
    """One image rather than a collection (an HxWxC array is one image, NxHxWxC a batch)."""
    if isinstance(images, (str, bytes, bytearray, os.PathLike, Image.Image)):
        return True
    if isinstance(images, np.ndarray):
        return images.ndim in (2, 3)
    return hasattr(images, "read")


class Embedder:
    """One onnxruntime session plus a decoding pool; safe to share between threads."""

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        threads: int | None = None,
        providers: Sequence[str] | None = None,
        decode_workers: int | None = None,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ) -> None:
        self.model_path = Path(model_path)
        self._session, self.info = load_model(self.model_path, threads=threads, providers=providers)
        self.max_pixels = max_pixels
        self.decode_workers = decode_workers or default_threads()
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = Lock()

    @property
    def dim(self) -> int:
        return self.info.dim

    @property
    def fingerprint(self) -> str:
        return self.info.fingerprint

    @property
    def input_size(self) -> int:
        return self.info.input_size

    def __repr__(self) -> str:
        return f"Embedder({str(self.model_path)!r}, weights={self.info.weights!r}, dim={self.dim})"

    # -- single steps ---------------------------------------------------------------------

    def prepare(self, source: Source, box: Box | None = None) -> np.ndarray:
        """Load and resize one image exactly as the model expects (uint8 HxWx3).

        ``box`` crops first (pixels of the upright image). A JPEG is then decoded at full size:
        a reduced draft would move the box's pixels.
        """
        size = self.info.input_size
        if box is None:
            image = load_image(source, max_pixels=self.max_pixels, draft_size=size)
        else:
            check_box(box)  # before decoding: a malformed box needs no image to be refused
            image = load_image(source, max_pixels=self.max_pixels)
            image = crop(image, box, describe(source))
        return prepare_image(image, size, self.info.resize)

    def embed_pixels(self, pixels: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """Run the model on already prepared uint8 ``(N, size, size, 3)`` pixels."""
        size = self.info.input_size
        if pixels.dtype != np.uint8 or pixels.ndim != 4 or pixels.shape[1:] != (size, size, 3):
            raise ValueError(
                f"pixels must be uint8 (N, {size}, {size}, 3), got {pixels.dtype} {pixels.shape}"
            )
        if len(pixels) == 0:
            return np.zeros((0, self.dim), np.float32)
        parts = [
            self._session.run([OUTPUT_NAME], {INPUT_NAME: pixels[i : i + batch_size]})[0]
            for i in range(0, len(pixels), batch_size)
        ]
        return np.concatenate(parts).astype(np.float32, copy=False)

    # -- batches --------------------------------------------------------------------------

    def iter_batches(
        self,
        images: Iterable[Source],
        batch_size: int = 32,
        *,
        also: Callable[[Image.Image], Any] | None = None,
    ) -> Iterator[EmbedResult]:
        """Stream results batch by batch (bad inputs reported, never raised).

        The next batches decode in the pool while the model runs on this one; at most two
        batches are decoded ahead, so memory stays bounded on any input length. ``also`` runs on
        each decoded image in the pool (a catalog's thumbnails, without decoding twice); its
        answers are the result's ``extras`` (None where it raised).
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        pool = self._decoder_pool()
        numbered = enumerate(images)
        pending: deque[list[tuple[int, str, Future[Any]]]] = deque()
        prepare: Callable[[Source], Any] = self.prepare if also is None else partial(self._prepare_also, also)

        def submit_next() -> bool:
            chunk = list(itertools.islice(numbered, batch_size))
            if chunk:
                pending.append([(i, describe(src), pool.submit(prepare, src)) for i, src in chunk])
            return bool(chunk)

        for _ in range(2):
            submit_next()
        while pending:
            chunk = pending.popleft()
            submit_next()
            yield self._finish(chunk, also is not None)

    def _prepare_also(self, also: Callable[[Image.Image], Any], source: Source) -> tuple[np.ndarray, Any]:
        image = load_image(source, max_pixels=self.max_pixels, draft_size=self.info.input_size)
        try:
            extra = also(image)
        except Exception as exc:  # a side product must never cost the image its vector
            log.debug("no side product for %s: %r", describe(source), exc)
            extra = None
        return prepare_image(image, self.info.input_size, self.info.resize), extra

    def _finish(self, chunk: list[tuple[int, str, Future[Any]]], extras: bool = False) -> EmbedResult:
        pixels: list[np.ndarray] = []
        indices: list[int] = []
        failures: list[Failure] = []
        side: list[Any] = []
        for index, name, future in chunk:
            try:
                done = future.result()
                if extras:
                    done, extra = done
                    side.append(extra)
                pixels.append(done)
                indices.append(index)
            except ImageLoadError as exc:
                failures.append(Failure(index, name, exc.reason))
            except Exception as exc:  # a decoder bug must cost one image, not the whole batch
                log.exception("unexpected error decoding %s", name)
                failures.append(Failure(index, name, f"unexpected error: {exc!r}"))
        vectors = (
            self.embed_pixels(np.stack(pixels), batch_size=len(pixels))
            if pixels
            else np.zeros((0, self.dim), np.float32)
        )
        return EmbedResult(vectors, np.asarray(indices, dtype=np.int64), failures, side)

    @overload
    def embed(
        self,
        images: Source | Iterable[Source],
        batch_size: int = ...,
        on_error: Literal["raise"] = ...,
        *,
        progress: bool = ...,
    ) -> np.ndarray: ...

    @overload
    def embed(
        self,
        images: Source | Iterable[Source],
        batch_size: int = ...,
        *,
        on_error: Literal["skip"],
        progress: bool = ...,
    ) -> EmbedResult: ...

    def embed(
        self,
        images: Source | Iterable[Source],
        batch_size: int = 32,
        on_error: OnError = "raise",
        *,
        progress: bool = False,
    ) -> np.ndarray | EmbedResult:
        """Embed images into float32 ``(N, dim)`` unit vectors.

        ``on_error="raise"`` stops at the first bad input with ``ImageLoadError``;
        ``"skip"`` returns an ``EmbedResult`` that lists which inputs failed and why.
        ``progress=True`` shows a progress bar on stderr (a folder of photos takes minutes).
        """
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', not {on_error!r}")
        if _is_single(images):
            images = [images]  # type: ignore[list-item]
        vectors: list[np.ndarray] = []
        indices: list[np.ndarray] = []
        failures: list[Failure] = []
        total = len(images) if isinstance(images, Sized) else None
        with tqdm(total=total, unit="img", desc="embedding", disable=not progress) as bar:
            for result in self.iter_batches(images, batch_size):  # type: ignore[arg-type]
                if result.failures and on_error == "raise":
                    first = result.failures[0]
                    raise ImageLoadError(first.source, first.reason)
                vectors.append(result.vectors)
                indices.append(result.indices)
                failures.extend(result.failures)
                bar.update(len(result.indices) + len(result.failures))
        stacked = np.concatenate(vectors) if vectors else np.zeros((0, self.dim), np.float32)
        if on_error == "raise":
            return stacked
        all_indices = np.concatenate(indices) if indices else np.zeros(0, np.int64)
        return EmbedResult(stacked, all_indices, failures)

    def embed_one(self, image: Source, box: Box | None = None) -> np.ndarray:
        """One image (or its region ``box = (left, top, right, bottom)``, in pixels of the upright
        image) to one ``(dim,)`` vector. Raises ``ImageLoadError`` if it cannot load and
        ``BadArgumentError`` for a box that is malformed or reaches outside the image."""
        vector: np.ndarray = self.embed_pixels(self.prepare(image, box)[None])[0]
        return vector

    # -- lifecycle ------------------------------------------------------------------------

    def _decoder_pool(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.decode_workers, thread_name_prefix="fashionrec-decode")
            return self._pool

    def close(self) -> None:
        with self._pool_lock:
            if self._pool is not None:
                self._pool.shutdown(wait=True, cancel_futures=True)
                self._pool = None

    def __enter__(self) -> Embedder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
