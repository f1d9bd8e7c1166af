"""The Parquet layout of embedded images: the one format vectors travel in between machines,
catalogs and other tools (pyarrow, pandas, DuckDB read it as is).

One row per image file:

========== ========================== ====================================================
column     type                       meaning
========== ========================== ====================================================
key        string, not null           the catalog key (key prefix + path below the folder)
path       string                     where the image was read from (a local path or a URI)
size       int64                      file size in bytes (change marker)
mtime_ns   int64                      modification time in ns (change marker; null on stores
                                      that keep none)
vector     fixed_size_list<float32>   the unit embedding; null on error rows
metadata   string, not null           the item's metadata as one JSON object text (``{}``)
error      string                     why the file could not be embedded; null when it was
========== ========================== ====================================================

Metadata is one JSON text column rather than a column per field: fields differ from item to item,
values keep their JSON types (so export then import is exact), and a field can never clash with a
fixed column. DuckDB reads a field with ``json_extract_string(metadata, '$.category')``, pandas
with ``json.loads``.

The file's key-value metadata holds the model fingerprint, the dimension and the format version;
the reader refuses a file whose fingerprint or dimension is not the one expected, naming it. A
file exported from a catalog with a product field also names that field (an optional key: older
readers ignore it), so that an import into a new catalog groups by product as the source did.

This module imports pyarrow; nothing in ``import fashionrec_onnx`` imports this module.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Collection, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import CatalogError, FashionrecError, ModelMismatchError
from ..json_values import bad_field, loads_row

try:
    import pyarrow as pa
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise FashionrecError(
        f"vector files need pyarrow ({exc}); install with `pip install 'fashionrec-onnx[parquet]'`."
    ) from exc

FORMAT_VERSION = "1"
META_FORMAT = b"fashionrec.vectors.format_version"
META_FINGERPRINT = b"fashionrec.model.fingerprint"
META_DIM = b"fashionrec.vectors.dim"
META_PRODUCT_FIELD = b"fashionrec.catalog.product_field"
SUFFIX = ".parquet"
MAX_DIM = 65_536  # a dimension read from a file's metadata above this is not one of a model's
ROW_GROUP_ROWS = 4096  # 32 MB of 2048-d vectors: the unit written at once, and read by default
COLUMNS = ("key", "path", "size", "mtime_ns", "vector", "metadata", "error")


def schema(dim: int, fingerprint: str, product_field: str | None = None) -> pa.Schema:
    """The layout of one vectors file of a model (of a catalog with ``product_field``)."""
    meta = {META_FORMAT: FORMAT_VERSION.encode(), META_FINGERPRINT: fingerprint.encode(),
            META_DIM: str(dim).encode()}  # fmt: skip
    if product_field:
        meta[META_PRODUCT_FIELD] = product_field.encode()
    return pa.schema(
        [
            pa.field("key", pa.string(), nullable=False),
            pa.field("path", pa.string()),
            pa.field("size", pa.int64()),
            pa.field("mtime_ns", pa.int64()),
            pa.field("vector", pa.list_(pa.float32(), dim)),
            pa.field("metadata", pa.string(), nullable=False),
            pa.field("error", pa.string()),
        ],
        metadata=meta,
    )


def metadata_text(values: Mapping[str, Any] | None) -> str:
    """Metadata as the JSON text the layout stores (sorted keys, like the catalog's store)."""
    return json.dumps(dict(values or {}), sort_keys=True, ensure_ascii=False)


def vector_array(vectors: np.ndarray, dim: int, valid: np.ndarray | None = None) -> pa.FixedSizeListArray:
    """``(n, dim)`` float32 as a fixed-size list column (plain Arrow, not Ray's tensor type);
    rows where ``valid`` is False are null."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, dim)
    mask = None if valid is None else pa.array(~np.asarray(valid, dtype=bool))
    return pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), dim, mask=mask)


def build_table(
    dim: int,
    fingerprint: str,
    *,
    keys: Sequence[str],
    vectors: np.ndarray,
    valid: np.ndarray | None = None,
    paths: Sequence[str | None] | None = None,
    sizes: Sequence[int | None] | None = None,
    mtimes_ns: Sequence[int | None] | None = None,
    metadata: Sequence[str] | None = None,
    errors: Sequence[str | None] | None = None,
) -> pa.Table:
    """Rows in the layout; ``metadata`` holds JSON texts (see ``metadata_text``)."""
    count = len(keys)
    nothing: list[None] = [None] * count
    return pa.Table.from_arrays(
        [
            pa.array(keys, pa.string()),
            pa.array(paths if paths is not None else nothing, pa.string()),
            pa.array(sizes if sizes is not None else nothing, pa.int64()),
            pa.array(mtimes_ns if mtimes_ns is not None else nothing, pa.int64()),
            vector_array(vectors, dim, valid),
            pa.array(metadata if metadata is not None else ["{}"] * count, pa.string()),
            pa.array(errors if errors is not None else nothing, pa.string()),
        ],
        schema=schema(dim, fingerprint),
    )


# -- where files live -----------------------------------------------------------------------


def filesystem(location: str | os.PathLike[str]) -> tuple[pafs.FileSystem, str]:
    """A folder or file given as a local path or a URI (``s3://bucket/prefix``, ``gs://``...)."""
    text = os.fspath(location)
    if "://" not in text:
        return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(text))
    try:
        return pafs.FileSystem.from_uri(text)
    except (pa.ArrowInvalid, OSError) as exc:
        raise CatalogError(f"cannot open {text}: {exc}") from exc


def prepare_output(location: str | os.PathLike[str]) -> tuple[pafs.FileSystem, str]:
    """An output folder: created if needed, refused if it already holds vectors files (mixing two
    runs in one folder would import both)."""
    fs, root = filesystem(location)
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.File:
        raise CatalogError(f"{location} is a file; give a folder for the vectors files.")
    if info.type == pafs.FileType.Directory and _parquet_files(fs, root):
        raise CatalogError(
            f"{location} already holds vectors files; write into a new folder or delete them first."
        )
    fs.create_dir(root, recursive=True)
    return fs, root


def _parquet_files(fs: pafs.FileSystem, root: str) -> list[str]:
    selector = pafs.FileSelector(root, recursive=True)
    found = []
    for info in fs.get_file_info(selector):
        name = info.base_name
        if info.type == pafs.FileType.File and name.endswith(SUFFIX) and not name.startswith((".", "_")):
            found.append(info.path)
    return sorted(found)


def list_files(location: str | os.PathLike[str]) -> tuple[pafs.FileSystem, list[str]]:
    """The vectors files of a folder (recursively, in a stable order), or one file."""
    fs, root = filesystem(location)
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.File:
        return fs, [root]
    if info.type != pafs.FileType.Directory:
        raise CatalogError(f"{location} does not exist; give a folder of vectors files (.parquet).")
    files = _parquet_files(fs, root)
    if not files:
        raise CatalogError(f"{location} holds no vectors files (*.parquet).")
    return fs, files


def part_name(number: int | None = None) -> str:
    """A file name that cannot clash with other writers of the same folder."""
    return f"part-{number:05d}{SUFFIX}" if number is not None else f"part-{uuid.uuid4().hex}{SUFFIX}"


# -- writing --------------------------------------------------------------------------------


# Text compresses and repeats; unit vectors do neither (zstd saves 7% of their size and makes
# reading them six times slower), so they are stored plain.
_WRITER_OPTIONS: dict[str, Any] = {
    "use_dictionary": ["path", "metadata", "error"],
    "compression": {name: "zstd" for name in COLUMNS if name != "vector"} | {"vector.list.element": "none"},
}


class VectorFileWriter:
    """Writes one vectors file in row groups; the file appears under its name only once complete
    (a hidden temporary name, then a rename), so a reader never sees half a file."""

    def __init__(
        self, fs: pafs.FileSystem, path: str, dim: int, fingerprint: str, product_field: str | None = None
    ) -> None:
        self.fs, self.path, self.dim, self.fingerprint = fs, path, dim, fingerprint
        self.rows = 0
        folder, name = path.rsplit("/", 1)
        self._local = isinstance(fs, pafs.LocalFileSystem)
        self._temp = f"{folder}/.{name}.{uuid.uuid4().hex}.tmp" if self._local else path
        self._stream = fs.open_output_stream(self._temp)
        layout = schema(dim, fingerprint, product_field)
        self._writer = pq.ParquetWriter(self._stream, layout, **_WRITER_OPTIONS)

    def write(self, table: pa.Table) -> None:
        if table.num_rows:
            self._writer.write_table(table.cast(self._writer.schema), row_group_size=ROW_GROUP_ROWS)
            self.rows += table.num_rows

    def close(self) -> None:
        self._writer.close()
        self._stream.close()
        if self._local:
            self.fs.move(self._temp, self.path)

    def abort(self) -> None:
        try:
            self._writer.close()
            self._stream.close()
        finally:
            if self._local:
                self.fs.delete_file(self._temp)

    def __enter__(self) -> VectorFileWriter:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_file(location: str | os.PathLike[str], table: pa.Table) -> None:
    """One table (built by ``build_table``) as one complete vectors file (a path or a URI)."""
    meta = table.schema.metadata or {}
    fs, path = filesystem(location)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with VectorFileWriter(fs, path, int(meta[META_DIM]), meta[META_FINGERPRINT].decode()) as writer:
        writer.write(table)


# -- reading --------------------------------------------------------------------------------


@dataclass(frozen=True)
class FileInfo:
    """What a vectors file says about itself."""

    path: str
    fingerprint: str
    dim: int
    rows: int
    product_field: str | None = None  # of the catalog it was exported from


@dataclass
class VectorBatch:
    """Rows of one file: the embedded ones (``vectors`` is ``(len(keys), dim)``) and the others."""

    file: str
    keys: list[str]
    vectors: np.ndarray
    paths: list[str | None]
    sizes: list[int | None]
    mtimes_ns: list[int | None]
    metadata: list[dict[str, Any]]
    errors: list[tuple[str, str]] = field(default_factory=list)  # (key, reason)

    def __len__(self) -> int:
        return len(self.keys)


def _describe(fs: pafs.FileSystem, path: str) -> str:
    return path if isinstance(fs, pafs.LocalFileSystem) else f"{fs.type_name}://{path}"


def _open(fs: pafs.FileSystem, path: str) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(fs.open_input_file(path))
    except (pa.ArrowInvalid, OSError) as exc:
        raise CatalogError(
            f"{_describe(fs, path)} is not a readable Parquet file ({exc}); write it again "
            "(`fashionrec embed` or `fashionrec export-vectors`)."
        ) from exc


def file_info(fs: pafs.FileSystem, path: str, parquet: pq.ParquetFile | None = None) -> FileInfo:
    """Read and check a file's own description (no rows are read)."""
    parquet = parquet or _open(fs, path)
    name = _describe(fs, path)
    arrow_schema = parquet.schema_arrow
    meta = arrow_schema.metadata or {}
    if META_FINGERPRINT not in meta or META_DIM not in meta:
        raise CatalogError(
            f"{name} is not a fashionrec vectors file (no model fingerprint in its metadata); "
            "write it with `fashionrec embed` or `fashionrec export-vectors`."
        )
    version = meta.get(META_FORMAT, b"").decode()
    if version != FORMAT_VERSION:
        raise CatalogError(
            f"{name} has vectors format {version!r}, this library reads {FORMAT_VERSION!r}; "
            "write it again with this version."
        )
    missing = [column for column in COLUMNS if column not in arrow_schema.names]
    if missing:
        raise CatalogError(f"{name} lacks the column(s) {', '.join(missing)}; write it again.")
    dim_text = meta[META_DIM].decode("utf-8", "replace")
    if not (dim_text.isascii() and dim_text.isdigit() and 0 < int(dim_text) <= MAX_DIM):
        raise CatalogError(
            f"{name} gives the vector dimension {dim_text[:40]!r} in its metadata, not a whole number "
            f"from 1 to {MAX_DIM:,}; write it again."
        )
    dim = int(dim_text)
    vector_type = arrow_schema.field("vector").type
    if not pa.types.is_fixed_size_list(vector_type) or vector_type.list_size != dim:
        raise CatalogError(f"{name}: the vector column is {vector_type}, expected {dim} float32 values.")
    product_field = meta.get(META_PRODUCT_FIELD, b"").decode() or None
    return FileInfo(name, meta[META_FINGERPRINT].decode(), dim, parquet.metadata.num_rows, product_field)


def check_model(info: FileInfo, fingerprint: str, dim: int, target: str, also: Collection[str] = ()) -> None:
    """Refuse vectors of another model: they are not comparable with ``target``'s. ``also``: other
    names of the same model (the fingerprint a catalog recorded under an earlier scheme)."""
    if (info.fingerprint != fingerprint and info.fingerprint not in also) or info.dim != dim:
        raise ModelMismatchError(
            f"{info.path} holds {info.dim}-d vectors of model {info.fingerprint}, but {target} uses "
            f"{dim}-d vectors of model {fingerprint}. Embed the images again with {target}'s model "
            "(`fashionrec embed ... --model`), or import into a catalog of that model."
        )


def inspect(location: str | os.PathLike[str]) -> list[FileInfo]:
    """Every file's description, checking that all come from one model."""
    fs, files = list_files(location)
    infos = [file_info(fs, path) for path in files]
    for info in infos[1:]:
        check_model(info, infos[0].fingerprint, infos[0].dim, infos[0].path)
    return infos


def read_batches(
    location: str | os.PathLike[str],
    *,
    fingerprint: str | None = None,
    dim: int | None = None,
    batch_size: int = ROW_GROUP_ROWS,
    target: str = "the first file",
    also: Collection[str] = (),
) -> Generator[VectorBatch, None, None]:
    """Stream the rows of a folder (or one file) batch by batch, in bounded memory.

    Every file is checked before its rows are read: a fingerprint or dimension other than the
    one given (or than the first file's) is refused with ``ModelMismatchError`` naming the file.
    Rows whose vector is null, not finite or zero come back in ``errors``.
    """
    fs, files = list_files(location)
    for path in files:
        parquet = _open(fs, path)
        info = file_info(fs, path, parquet)
        if fingerprint is None or dim is None:
            fingerprint, dim = info.fingerprint, info.dim
        check_model(info, fingerprint, dim, target, also)
        for record in parquet.iter_batches(batch_size=batch_size, columns=list(COLUMNS)):
            yield _to_batch(info, record)


def _to_batch(info: FileInfo, record: pa.RecordBatch) -> VectorBatch:
    keys = record.column("key").to_pylist()
    errors_column = record.column("error").to_pylist()
    vector = record.column("vector")
    has_vector = np.asarray(vector.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
    flat = vector.flatten().to_numpy(zero_copy_only=False)  # only the non-null rows' values
    if has_vector.all():  # the usual batch: its values as they are, no second copy
        vectors = np.asarray(flat, np.float32).reshape(len(keys), info.dim)
    else:
        vectors = np.zeros((len(keys), info.dim), np.float32)
        vectors[has_vector] = np.asarray(flat, np.float32).reshape(-1, info.dim)
    finite = np.asarray(np.isfinite(vectors).all(axis=1))
    direction = (vectors != 0).any(axis=1)  # a zero vector has none: its row's error, not the batch's
    texts = record.column("metadata").to_pylist()
    metadata, unstorable = zip(*map(_metadata, texts)) if texts else ((), ())  # NaN...: the row's error
    named = np.asarray([isinstance(key, str) and key != "" for key in keys], dtype=bool)
    good = named & has_vector & finite & direction
    good &= np.asarray([e is None for e in errors_column], dtype=bool)
    good &= np.asarray([problem is None for problem in unstorable], dtype=bool)
    errors = []
    for row in np.flatnonzero(~good):
        if not has_vector[row]:
            missing = "no vector"
        else:
            missing = "vector not finite" if not finite[row] else "vector is zero"
        reason = "no key" if not named[row] else errors_column[row] or unstorable[row] or missing
        errors.append((keys[row] if named[row] else "", reason))
    rows = np.flatnonzero(good)
    pick = rows.tolist()
    paths = record.column("path").to_pylist()
    sizes = record.column("size").to_pylist()
    mtimes = record.column("mtime_ns").to_pylist()
    return VectorBatch(
        file=info.path,
        keys=[keys[i] for i in pick],
        vectors=vectors if len(rows) == len(keys) else vectors[rows],
        paths=[paths[i] for i in pick],
        sizes=[sizes[i] for i in pick],
        mtimes_ns=[mtimes[i] for i in pick],
        metadata=[metadata[i] for i in pick],
        errors=errors,
    )


def _metadata(text: str | None) -> tuple[dict[str, Any], str | None]:
    """A row's metadata, and why it cannot be stored (not a JSON object, a non-finite number, an
    integer of 5,000 digits, nesting over the bound...) or None: that row's error, not the file's."""
    if not text:
        return {}, None
    try:
        values = loads_row(text)
    except (ValueError, RecursionError) as exc:
        return {}, f"metadata is not JSON that can be read ({str(exc)[:200]})"
    if not isinstance(values, dict):
        return {}, f"metadata must be a JSON object, not {type(values).__name__}"
    bad = bad_field(values)
    return values, f"metadata field {bad[0]!r}: {bad[1]}" if bad else None
