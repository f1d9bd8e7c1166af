"""The Parquet vectors layout: what is written, what plain pyarrow sees, what the reader refuses."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fashionrec_onnx import CatalogError, ModelMismatchError
from fashionrec_onnx.interchange import vector_files as vf

DIM = 8
FINGERPRINT = "model-a"


def unit_rows(count: int, dim: int = DIM, seed: int = 0) -> np.ndarray:
    vectors = np.random.default_rng(seed).normal(size=(count, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def write(
    folder: Path, name: str, count: int, *, fingerprint: str = FINGERPRINT, dim: int = DIM, **columns
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    keys = columns.pop("keys", [f"{name}/{i}.png" for i in range(count)])
    vectors = columns.pop("vectors", unit_rows(count, dim))
    table = vf.build_table(dim, fingerprint, keys=keys, vectors=vectors, **columns)
    path = folder / f"{name}.parquet"
    vf.write_file(path, table)
    return path


def test_plain_pyarrow_reads_vectors_as_fixed_size_float32_lists_with_the_model_in_the_metadata(
    tmp_path: Path,
) -> None:
    vectors = unit_rows(5)
    meta = [vf.metadata_text({"category": "Dress", "price": 12})] * 5
    path = write(tmp_path, "a", 5, vectors=vectors, metadata=meta, sizes=[1, 2, 3, 4, 5])
    table = pq.read_table(path)
    assert table.column_names == list(vf.COLUMNS)
    assert table.schema.field("vector").type == pa.list_(pa.float32(), DIM)
    np.testing.assert_array_equal(np.stack(table.column("vector").to_numpy(zero_copy_only=False)), vectors)
    assert json.loads(table.column("metadata")[0].as_py()) == {"category": "Dress", "price": 12}
    meta = table.schema.metadata
    assert meta[vf.META_FINGERPRINT] == b"model-a" and meta[vf.META_DIM] == b"8"
    assert meta[vf.META_FORMAT] == vf.FORMAT_VERSION.encode()


def test_reader_streams_a_folder_in_batches_of_at_most_batch_size(tmp_path: Path) -> None:
    write(tmp_path, "a", 7)
    write(tmp_path, "b", 5)
    batches = list(vf.read_batches(tmp_path, batch_size=3))
    assert max(len(b) for b in batches) == 3
    assert [k for b in batches for k in b.keys] == [f"a/{i}.png" for i in range(7)] + [
        f"b/{i}.png" for i in range(5)
    ]
    assert all(b.vectors.shape == (len(b), DIM) and b.vectors.dtype == np.float32 for b in batches)


def test_reader_refuses_a_file_of_another_model_naming_it(tmp_path: Path) -> None:
    write(tmp_path, "a", 3)
    other = write(tmp_path, "b", 3, fingerprint="model-b")
    with pytest.raises(ModelMismatchError, match=str(other)):
        list(vf.read_batches(tmp_path, fingerprint=FINGERPRINT, dim=DIM))


def test_reader_refuses_a_file_of_another_dimension(tmp_path: Path) -> None:
    path = write(tmp_path, "a", 3, dim=4)
    with pytest.raises(ModelMismatchError, match=f"{path} holds 4-d vectors"):
        list(vf.read_batches(tmp_path, fingerprint=FINGERPRINT, dim=DIM))


def test_a_folder_mixing_two_models_is_refused_without_an_expected_model(tmp_path: Path) -> None:
    write(tmp_path, "a", 3)
    write(tmp_path, "b", 3, fingerprint="model-b")
    with pytest.raises(ModelMismatchError):
        vf.inspect(tmp_path)


def test_rows_with_an_error_or_without_a_finite_vector_are_reported_apart(tmp_path: Path) -> None:
    vectors = unit_rows(4)
    vectors[2, 0] = np.nan
    write(
        tmp_path, "a", 4, vectors=vectors, valid=np.array([True, False, True, True]),
        errors=[None, "not an image (unrecognised format)", None, None],
    )  # fmt: skip
    (batch,) = vf.read_batches(tmp_path)
    assert batch.keys == ["a/0.png", "a/3.png"]
    np.testing.assert_array_equal(batch.vectors, vectors[[0, 3]])
    assert batch.errors == [
        ("a/1.png", "not an image (unrecognised format)"),
        ("a/2.png", "vector not finite"),
    ]


def test_a_parquet_file_without_the_model_fingerprint_is_refused(tmp_path: Path) -> None:
    pq.write_table(pa.table({"key": ["a"], "vector": [[1.0, 0.0]]}), tmp_path / "foreign.parquet")
    with pytest.raises(CatalogError, match="not a fashionrec vectors file"):
        vf.inspect(tmp_path)


def test_an_output_folder_already_holding_vectors_files_is_refused(tmp_path: Path) -> None:
    write(tmp_path, "a", 1)
    with pytest.raises(CatalogError, match="already holds vectors files"):
        vf.prepare_output(tmp_path)


def test_importing_the_package_and_its_cli_loads_neither_ray_nor_pyarrow() -> None:
    code = (
        "import sys, fashionrec_onnx, fashionrec_onnx.cli as cli; cli.build_parser(); "
        "print(sorted(m for m in ('ray', 'pyarrow') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
