"""Embed more images than one machine can, on a Ray cluster, into Parquet vectors files.

Four parts, each replaceable on its own:

1. listing (on the driver): the image files under a folder or a URI, with keys, change markers
   and metadata, exactly as ``Catalog.index_folder`` would name them;
2. reading (Ray tasks): the files' bytes, through pyarrow's filesystems (local, s3, gs, ...);
3. embedding (a pool of Ray actors): each actor builds one ``Embedder`` (one onnxruntime session)
   in its constructor and decodes with the library's own loader, so vectors equal
   ``Embedder.embed`` on the same files;
4. writing (Ray tasks): vectors files in the layout of ``vector_files``.

Each actor reserves as many CPUs as the threads it runs (decoding included); reading and writing
tasks reserve none. They are I/O, and a task that needs a CPU slot either hangs the job when the
actors hold every slot (ray-project/ray#44687) or, given a fraction of a slot, runs one block at
a time behind the actors, which then take turns instead of working together. The model
travels with the job through Ray's object store: worker nodes need fashionrec-onnx installed, not
the model file.

This module imports ray; ``import fashionrec_onnx`` never does.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..embedder import Embedder
from ..errors import CatalogError, FashionrecError, ModelMismatchError
from ..feeds.metadata_match import MetadataMatch, match_metadata
from ..feeds.scan import read_metadata, scan_folder
from ..images import DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES
from ..model import read_model_info
from .vector_files import (
    COLUMNS,
    VectorFileWriter,
    build_table,
    filesystem,
    metadata_text,
    part_name,
    prepare_output,
)

try:
    import pyarrow as pa
    import pyarrow.fs as pafs
    import ray
    import ray.data
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise FashionrecError(
        f"distributed embedding needs Ray ({exc}); install with `pip install 'fashionrec-onnx[ray]'`."
    ) from exc

log = logging.getLogger(__name__)

IO_TASK_CPUS = 0.0
"""What a reading or writing task reserves: no CPU slot (see the module's docstring)."""
LOCAL_OBJECT_STORE_BYTES = 1 << 30
"""The object store of a Ray started here: bounded, so a large job cannot take all the memory."""
ROWS_PER_FILE = 8192
WAIT_FOR_WORKERS_SECONDS = 600
"""How long the pool may take to start every worker (a node may be pulling the model) before
the job fails rather than waits forever."""
MODEL_CACHE = Path(tempfile.gettempdir()) / "fashionrec-models"

Metadata = str | os.PathLike[str] | Mapping[str, Mapping[str, Any]] | None


@dataclass
class EmbedSummary:
    """What an embedding job did. ``failures`` are (key, reason) of files without a vector;
    ``nodes`` counts the images each Ray node embedded. ``seconds`` is the whole job (workers
    starting included), ``embedding_seconds`` from the first batch's start to the last one's end
    (clocks of several machines agree only roughly), ``ray_start_seconds`` the connection."""

    images: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    embedding_seconds: float = 0.0
    ray_start_seconds: float = 0.0
    workers: int = 0
    files: list[str] = field(default_factory=list)
    nodes: dict[str, int] = field(default_factory=dict)
    metadata: MetadataMatch | None = None  # how the metadata rows fit the images, when given

    @property
    def embedded(self) -> int:
        return self.images - len(self.failures)

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    @property
    def steady_images_per_second(self) -> float:
        """The rate once every worker is up: what a long job approaches."""
        return self.images / self.embedding_seconds if self.embedding_seconds > 0 else 0.0


# -- 1. listing -----------------------------------------------------------------------------


_LISTING_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("path", pa.string()),  # what the vectors file reports: a local path or a URI
        ("source", pa.string()),  # the same file as its filesystem names it
        ("size", pa.int64()),
        ("mtime_ns", pa.int64()),
        ("metadata", pa.string()),
    ]
)


@dataclass(frozen=True)
class _Listing:
    """The files to embed, as Arrow columns, and the filesystem the workers read them from."""

    fs: pafs.FileSystem
    table: pa.Table  # in _LISTING_SCHEMA
    metadata: MetadataMatch | None = None


def _metadata_table(metadata: Metadata) -> Mapping[str, Mapping[str, Any]]:
    if metadata is None:
        return {}
    if isinstance(metadata, (str, os.PathLike)):
        return read_metadata(metadata)
    return dict(metadata)


def _files_under_uri(uri: str) -> tuple[pafs.FileSystem, list[tuple[str, str, str, int, int | None]]]:
    """(relative path, URI, filesystem path, size, mtime_ns) of the images under a URI, sorted;
    hidden files and folders are skipped as ``scan_folder`` skips them."""
    fs, root = filesystem(uri)
    root, base = root.rstrip("/"), uri.rstrip("/")
    try:
        found = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    except (OSError, pa.ArrowException) as exc:
        raise CatalogError(f"cannot list {uri}: {exc}") from exc
    files = []
    for info in sorted(found, key=lambda info: info.path):
        relative = info.path[len(root) :].lstrip("/")
        hidden = any(part.startswith(".") for part in relative.split("/"))
        if info.type == pafs.FileType.File and not hidden and Path(relative).suffix.lower() in IMAGE_SUFFIXES:
            files.append((relative, f"{base}/{relative}", info.path, info.size, info.mtime_ns))
    return fs, files


def _files_under_folder(folder: str) -> tuple[pafs.FileSystem, list[tuple[str, str, str, int, int | None]]]:
    """The same for a local folder, through the scan ``Catalog.index_folder`` uses."""
    files: list[tuple[str, str, str, int, int | None]] = [
        (f.relative, str(f.path), str(f.path), f.size, f.mtime_ns) for f in scan_folder(folder)
    ]
    return pafs.LocalFileSystem(), files


def _list_images(images: str | os.PathLike[str], metadata: Metadata = None, key_prefix: str = "") -> _Listing:
    """Image files under a local folder (keys as ``Catalog.index_folder`` gives them) or a URI."""
    text = os.fspath(images)
    fs, files = _files_under_uri(text) if "://" in text else _files_under_folder(text)
    table, match = match_metadata(_metadata_table(metadata), [relative for relative, *_ in files])
    if match.problem:  # the same rule and report as `Catalog.index_folder`
        log.warning("%s", "\n".join(match.lines()))
    columns = [
        [key_prefix + relative for relative, *_ in files],
        [path for _, path, *_ in files],
        [source for _, _, source, *_ in files],
        [size for *_, size, _ in files],
        [mtime_ns for *_, mtime_ns in files],
        [metadata_text(table.get(relative)) for relative, *_ in files],
    ]
    given = match if metadata is not None else None
    return _Listing(fs, pa.Table.from_arrays(columns, schema=_LISTING_SCHEMA), given)


# -- 2. reading -----------------------------------------------------------------------------


def _read_files(batch: pa.Table, fs: pafs.FileSystem) -> pa.Table:
    """Append each file's bytes (``data``) or why it could not be read (``error``)."""
    data: list[bytes | None] = []
    errors: list[str | None] = []
    for source in batch.column("source").to_pylist():
        try:
            with fs.open_input_stream(source) as stream:
                data.append(stream.read())
            errors.append(None)
        except (OSError, pa.ArrowException) as exc:
            data.append(None)
            errors.append(f"cannot read file ({exc})")
    return batch.append_column("data", pa.array(data, pa.binary())).append_column(
        "error", pa.array(errors, pa.string())
    )


# -- 3. embedding ---------------------------------------------------------------------------


def _materialise_model(model_bytes: bytes, fingerprint: str) -> Path:
    """The model as a file on this node (sessions are built from files), written once per node."""
    digest = hashlib.sha256(model_bytes).hexdigest()[:16]
    path = MODEL_CACHE / f"{fingerprint}-{digest}.onnx"
    if not path.exists():
        MODEL_CACHE.mkdir(parents=True, exist_ok=True)
        temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        temp.write_bytes(model_bytes)
        os.replace(temp, path)
    return path


class _EmbedActor:
    """One onnxruntime session per actor, built here: sessions cannot be pickled and shipped."""

    def __init__(
        self,
        model_bytes: bytes | ray.ObjectRef,
        fingerprint: str,
        threads: int,
        batch_size: int,
        max_pixels: int | None,
    ) -> None:
        model: bytes = ray.get(model_bytes) if isinstance(model_bytes, ray.ObjectRef) else model_bytes
        self.embedder = Embedder(
            _materialise_model(model, fingerprint),
            threads=threads,
            decode_workers=threads,
            max_pixels=max_pixels,
        )
        if self.embedder.fingerprint != fingerprint:
            raise ModelMismatchError(f"the model arrived as {self.embedder.fingerprint}, not {fingerprint}.")
        self.batch_size = batch_size
        self.node = ray.get_runtime_context().get_node_id()

    def __call__(self, batch: pa.Table) -> pa.Table:
        started = time.time()
        dim = self.embedder.dim
        count = batch.num_rows
        errors = batch.column("error").to_pylist()
        data = batch.column("data").to_pylist()
        readable = [row for row in range(count) if errors[row] is None]
        vectors = np.zeros((count, dim), np.float32)
        valid = np.zeros(count, dtype=bool)
        for result in self.embedder.iter_batches([data[row] for row in readable], self.batch_size):
            rows = [readable[int(i)] for i in result.indices]
            vectors[rows] = result.vectors
            valid[rows] = True
            for failure in result.failures:
                errors[readable[failure.index]] = failure.reason
        table = build_table(
            dim,
            self.embedder.fingerprint,
            keys=batch.column("key").to_pylist(),
            vectors=vectors,
            valid=valid,
            paths=batch.column("path").to_pylist(),
            sizes=batch.column("size").to_pylist(),
            mtimes_ns=batch.column("mtime_ns").to_pylist(),
            metadata=batch.column("metadata").to_pylist(),
            errors=errors,
        )
        # Where and when each row was embedded: the job's summary, never the vectors file.
        finished = time.time()
        table = table.append_column("node", pa.array([self.node] * count, pa.string()))
        table = table.append_column("started", pa.array([started] * count, pa.float64()))
        return table.append_column("finished", pa.array([finished] * count, pa.float64()))


# -- 4. writing -----------------------------------------------------------------------------


def _write_part(batch: pa.Table, fs: pafs.FileSystem, root: str, dim: int, fingerprint: str) -> pa.Table:
    """Write one vectors file; return one summary row (file, rows, failures, images per node,
    when the first of its rows began embedding and the last ended)."""
    path = f"{root}/{part_name()}"
    with VectorFileWriter(fs, path, dim, fingerprint) as writer:
        writer.write(batch.select(list(COLUMNS)))
    errors = batch.column("error").to_pylist()
    keys = batch.column("key").to_pylist()
    failed = [(key, error) for key, error in zip(keys, errors) if error is not None]
    nodes = Counter(batch.column("node").to_pylist())
    return pa.table(
        {
            "file": [path],
            "rows": [batch.num_rows],
            "failed_keys": [[key for key, _ in failed]],
            "failed_reasons": [[reason for _, reason in failed]],
            "nodes": [json.dumps(nodes)],
            "started": [min(batch.column("started").to_pylist())],
            "finished": [max(batch.column("finished").to_pylist())],
        }
    )


# -- the job --------------------------------------------------------------------------------


def _connect(ray_address: str | None, ray_logs: bool = True) -> tuple[bool, float]:
    """Use the Ray this process is already connected to, the cluster at ``ray_address``, or
    start one here. Returns whether we started the connection (and so must end it)."""
    started = time.perf_counter()
    if ray.is_initialized():
        return False, 0.0
    level = logging.INFO if ray_logs else logging.ERROR
    if ray_address:
        try:
            ray.init(address=ray_address, log_to_driver=False, logging_level=level)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise FashionrecError(
                f"cannot connect to Ray at {ray_address} ({exc}). Start a cluster (`ray start --head`), "
                "or leave --ray-address out to run on this machine."
            ) from exc
    else:
        start_local_ray(logging_level=level)
    return True, time.perf_counter() - started


def start_local_ray(
    num_cpus: int | None = None,
    object_store_bytes: int = LOCAL_OBJECT_STORE_BYTES,
    logging_level: int = logging.INFO,
) -> None:
    """Start Ray on this machine for embedding jobs: no dashboard, a bounded object store, and
    workers at normal priority. Ray lowers its workers to nice 15 by default, so on a machine
    doing anything else they get a small share of the CPU; here they are the job."""
    ray.init(
        num_cpus=num_cpus,
        include_dashboard=False,
        object_store_memory=object_store_bytes,
        log_to_driver=False,
        logging_level=logging_level,
        _system_config={"worker_niceness": 0},
    )


@contextlib.contextmanager
def _data_context(progress: bool, ray_logs: bool = True) -> Iterator[None]:
    """Ray Data settings for one job, put back afterwards (the process may run other jobs).

    The pool waits for every worker before work is handed out: otherwise the first actor up
    takes the first blocks, and while it keeps pace with reading it takes them all. Without
    ``ray_logs`` Ray Data's console says only errors (its execution plan, start and end lines,
    advice about progress bars, and the progress it logs when stdout is no terminal go to its log
    file, ray-data.log in the Ray session's folder).
    """
    context = ray.data.DataContext.get_current()
    saved = context.enable_progress_bars, context.wait_for_min_actors_s
    context.enable_progress_bars, context.wait_for_min_actors_s = progress, WAIT_FOR_WORKERS_SECONDS
    console = [h for h in logging.getLogger("ray.data").handlers if not isinstance(h, logging.FileHandler)]
    levels = [handler.level for handler in console]
    if not ray_logs:
        for handler in console:
            handler.setLevel(max(handler.level, logging.ERROR))
    try:
        yield
    finally:
        context.enable_progress_bars, context.wait_for_min_actors_s = saved
        for handler, level in zip(console, levels):
            handler.setLevel(level)


def _pool_size(workers: int | None, threads_per_worker: int) -> int:
    """The requested pool, or as many workers as the live nodes' CPUs hold; a pool that cannot
    fit is refused (Ray would wait for it forever)."""
    per_node = [float(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n.get("Alive")]
    fits = sum(int(cpus // threads_per_worker) for cpus in per_node)
    if workers is None:
        return max(1, fits)
    if workers > fits:
        raise FashionrecError(
            f"{workers} workers of {threads_per_worker} CPU each do not fit on this Ray cluster (CPUs "
            f"per node: {per_node}; at most {fits} fit). Use fewer --workers or --threads-per-worker, "
            "or add nodes."
        )
    return workers


def embed_to_parquet(
    images: str | os.PathLike[str],
    model: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    ray_address: str | None = None,
    workers: int | None = None,
    threads_per_worker: int = 1,
    batch_size: int = 32,
    metadata: Metadata = None,
    key_prefix: str = "",
    rows_per_file: int = ROWS_PER_FILE,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    progress: bool = True,
    ray_logs: bool = True,
) -> EmbedSummary:
    """Embed every image under ``images`` (a folder or a URI Ray's readers take) on Ray and write
    vectors files into ``out`` (a new folder or URI).

    Without ``ray_address`` (``"auto"``, ``"ray://host:10001"``...) a Ray is started on this
    machine for the job, unless this process is already connected to one. ``workers`` actors
    (default: as many as the cluster's CPUs hold) each run ``threads_per_worker`` onnxruntime
    threads. Files that cannot be read or decoded become rows with an ``error`` and no vector;
    the job finishes. ``ray_logs=False`` keeps Ray's own log lines (start, execution plan) off
    the console, errors aside; ``progress`` still shows Ray Data's progress bars.
    """
    if threads_per_worker < 1 or batch_size < 1 or rows_per_file < 1:
        raise ValueError("threads_per_worker, batch_size and rows_per_file must be >= 1")
    model_path = Path(model).expanduser()
    info = read_model_info(model_path)
    listing = _list_images(images, metadata, key_prefix)
    out_fs, out_root = prepare_output(out)
    summary = EmbedSummary(images=listing.table.num_rows, metadata=listing.metadata)
    if not summary.images:
        log.warning("no image files under %s", images)
        return summary
    ours, summary.ray_start_seconds = _connect(ray_address, ray_logs)
    try:
        started = time.perf_counter()
        summary.workers = _pool_size(workers, threads_per_worker)
        job = _Job(info.fingerprint, info.dim, summary.workers, threads_per_worker, batch_size, max_pixels)
        first, last = float("inf"), float("-inf")
        with _data_context(progress, ray_logs):
            restarts = ray_address is not None or not ours  # a cluster: nodes come and go
            model_bytes = model_path.read_bytes()
            dataset = _pipeline(listing, model_bytes, job, out_fs, out_root, rows_per_file, restarts)
            for row in dataset.iter_rows():
                summary.files.append(row["file"])
                summary.failures.extend(zip(row["failed_keys"], row["failed_reasons"]))
                for node, count in json.loads(row["nodes"]).items():
                    summary.nodes[node] = summary.nodes.get(node, 0) + count
                first, last = min(first, row["started"]), max(last, row["finished"])
                done = sum(summary.nodes.values())
                log.info("wrote %s: %d of %d images done", row["file"], done, summary.images)
        summary.seconds = time.perf_counter() - started
        summary.embedding_seconds = max(0.0, last - first)
    finally:
        if ours:
            ray.shutdown()
    log.debug(
        "embedded %d of %d images in %.1fs (%.1f images/s) on %d node(s); %d failed",
        summary.embedded, summary.images, summary.seconds, summary.images_per_second,
        len(summary.nodes), len(summary.failures),
    )  # fmt: skip
    return summary


@dataclass(frozen=True)
class _Job:
    fingerprint: str
    dim: int
    workers: int
    threads_per_worker: int
    batch_size: int
    max_pixels: int | None


def _block_rows(rows: int, job: _Job) -> int:
    """Files per block (a reading task's and an actor call's unit of work): a few model batches,
    but small enough on short jobs that every worker gets several blocks."""
    return max(1, min(job.batch_size * 4, math.ceil(rows / (job.workers * 4))))


def _pipeline(
    listing: _Listing,
    model_bytes: bytes,
    job: _Job,
    out_fs: pafs.FileSystem,
    out_root: str,
    rows_per_file: int,
    restarts: bool = True,
) -> ray.data.Dataset:
    """listing -> read (tasks) -> embed (actors) -> write (tasks) -> one summary row per file.

    Without ``restarts`` (Ray started on this machine for the job) a worker that dies fails the
    job: it died of what a restart would meet again (memory), and Ray's default, restarting it
    forever, would loop rather than fail (and logs an error-level line about it at every start).
    """
    table = listing.table
    step = _block_rows(table.num_rows, job)
    blocks = [table.slice(start, step) for start in range(0, table.num_rows, step)]
    # Ray's annotations type map_batches' function as taking the batch alone; fn_kwargs pass the rest.
    read = ray.data.from_arrow(blocks).map_batches(
        _read_files,  # type: ignore[arg-type]
        batch_format="pyarrow",
        batch_size=None,
        fn_kwargs={"fs": listing.fs},
        num_cpus=IO_TASK_CPUS,
    )
    with warnings.catch_warnings():
        # Ray 2.60 takes max_restarts only through **ray_remote_args, which it marks as deprecated
        # (for removal in 2.64): tests/test_distributed.py fails first if it goes.
        warnings.filterwarnings("ignore", message=".*ray_remote_args.* is deprecated")
        embedded = _embed_step(read, model_bytes, job, restarts)
    return embedded.map_batches(
        _write_part,  # type: ignore[arg-type]
        batch_format="pyarrow",
        batch_size=rows_per_file,
        fn_kwargs={"fs": out_fs, "root": out_root, "dim": job.dim, "fingerprint": job.fingerprint},
        num_cpus=IO_TASK_CPUS,
    )


def _embed_step(read: ray.data.Dataset, model_bytes: bytes, job: _Job, restarts: bool) -> ray.data.Dataset:
    """The pool of embedding actors (``restarts``: Ray's default, restarted whenever they die)."""
    return read.map_batches(
        _EmbedActor,
        batch_format="pyarrow",
        batch_size=None,  # one block per call; the actor's Embedder cuts it into model batches
        compute=ray.data.ActorPoolStrategy(size=job.workers),
        num_cpus=job.threads_per_worker,
        **({} if restarts else {"max_restarts": 0}),  # type: ignore[arg-type]
        fn_constructor_kwargs={
            "model_bytes": ray.put(model_bytes),
            "fingerprint": job.fingerprint,
            "threads": job.threads_per_worker,
            "batch_size": job.batch_size,
            "max_pixels": job.max_pixels,
        },
    )
