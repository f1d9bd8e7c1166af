"""The fingerprint names what a model computes, not the tools that wrote it.

A user who upgrades TensorFlow or tf2onnx and exports the same weights again keeps opening their
catalogs; any change of what the model computes (weights, pooling, input contract, preprocessing,
precision) is another model. Numerics are guarded by behaviour, not by the fingerprint: the
export's parity with Keras and a catalog's probe embedding (tests/test_integrity.py refuses a
model whose weights changed under kept metadata).
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
from oracle import assert_same_ranking

from fashionrec_onnx import Catalog, ModelMismatchError, read_model_info
from fashionrec_onnx.catalog.portable import copy_model_into
from fashionrec_onnx.interchange import vector_files as vf
from fashionrec_onnx.model import IDENTITY_FIELDS, METADATA_PREFIX
from fashionrec_onnx.quality.datasets import SAMPLE_DIR

DATA = Path(__file__).parent / "data"
EARLIER = "d5f4d15a1462cf5a"  # what the checked-in v1/v2 catalogs recorded (graph + tool versions)


def with_metadata(source: Path, target: Path, **changes: str) -> Path:
    """A copy of ``source`` with some fashionrec metadata changed; graph and weights are kept."""
    import onnx

    model = onnx.load(str(source))
    props = {prop.key: prop.value for prop in model.metadata_props}
    props.update({METADATA_PREFIX + name: value for name, value in changes.items()})
    onnx.helper.set_model_props(model, props)
    onnx.save(model, str(target))
    return target


def retooled(small_model: Path, tmp_path: Path) -> Path:
    """The small model as another toolchain would record it (an old fingerprint written in it too)."""
    return with_metadata(
        small_model,
        tmp_path / "retooled.onnx",
        tensorflow_version="2.99.0",
        tf2onnx_version="1.99.0",
        opset="18",
        fingerprint="0123456789abcdef",
    )


def test_changing_the_recorded_tool_versions_does_not_move_the_fingerprint(
    tmp_path: Path, small_model: Path
) -> None:
    info = read_model_info(retooled(small_model, tmp_path))
    assert (info.tensorflow_version, info.tf2onnx_version, info.opset) == ("2.99.0", "1.99.0", 18)
    assert info.fingerprint == read_model_info(small_model).fingerprint


def test_the_fingerprint_is_computed_from_the_contract_never_taken_from_the_file(small_model: Path) -> None:
    import onnx

    recorded = {p.key: p.value for p in onnx.load(str(small_model)).metadata_props}
    info = read_model_info(small_model)
    assert recorded[METADATA_PREFIX + "fingerprint"] == info.fingerprint  # the exporter records it too
    assert dataclasses.replace(info).fingerprint == info.fingerprint


@pytest.mark.parametrize(
    "field, value",
    [
        ("weights_sha256", "0" * 64),
        ("pooling", "avg"),
        ("input_size", 65),
        ("resize", "pad"),
        ("color_order", "BGR"),
        ("preprocessing", "none"),
        ("normalized", False),
        ("dim", 1024),
        ("precision", "int8"),
        ("calibration", "fashion-mnist-sample:64 images"),
        ("backbone", "resnet101"),
    ],
)
def test_each_part_of_what_the_model_computes_moves_the_fingerprint(
    small_model: Path, field: str, value: object
) -> None:
    info = read_model_info(small_model)
    assert field in IDENTITY_FIELDS
    assert dataclasses.replace(info, **{field: value}).fingerprint != info.fingerprint


def test_what_the_tools_record_is_information_outside_the_fingerprint() -> None:
    assert not {"tensorflow_version", "tf2onnx_version", "opset", "format_version", "weights"} & set(
        IDENTITY_FIELDS
    )


def test_a_catalog_opens_with_the_same_weights_exported_by_another_toolchain(
    tmp_path: Path, small_model: Path
) -> None:
    query = sorted((SAMPLE_DIR / "bag").glob("*.png"))[0]
    with Catalog.create(tmp_path / "catalog", small_model) as catalog:
        catalog.index_folder(SAMPLE_DIR / "bag", progress=False)
        before = [hit.key for hit in catalog.search(query, k=3)]
    with Catalog.open(tmp_path / "catalog", retooled(small_model, tmp_path)) as catalog:
        assert [hit.key for hit in catalog.search(query, k=3)] == before  # the probe check passed too


def test_a_catalog_refuses_a_model_whose_weights_digest_differs(tmp_path: Path, small_model: Path) -> None:
    with Catalog.create(tmp_path / "catalog", small_model):
        pass
    other = with_metadata(small_model, tmp_path / "other.onnx", weights_sha256="0" * 64)
    with pytest.raises(ModelMismatchError, match="built with model"):
        Catalog.open(tmp_path / "catalog", other)


@pytest.mark.parametrize("written_by", ["v1-catalogs", "v2-catalogs"])
def test_a_catalog_that_recorded_the_earlier_fingerprint_opens_with_todays_export(
    tmp_path: Path, small_model: Path, written_by: str
) -> None:
    root = shutil.copytree(DATA / written_by / "float32", tmp_path / "catalog")
    with Catalog.open(root, small_model) as catalog:  # the model given: its fingerprint is compared
        assert catalog.info.fingerprint == read_model_info(small_model).fingerprint != EARLIER
        assert catalog.model_fingerprints == {catalog.info.fingerprint, EARLIER}
        key = catalog.keys()[0]
        assert catalog.search(catalog.vector(key), k=1)[0].key == key
    copy_model_into(root, small_model)
    with Catalog.open(root) as catalog:  # the model found beside it: fingerprint and probe checked
        assert len(catalog.search(sorted((SAMPLE_DIR / "bag").glob("*.png"))[0], k=3)) == 3


def test_vectors_files_written_under_the_earlier_fingerprint_still_import(
    tmp_path: Path, small_model: Path
) -> None:
    root = shutil.copytree(DATA / "v2-catalogs" / "float32", tmp_path / "catalog")
    vectors = np.random.default_rng(0).normal(size=(2, 2048)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    table = vf.build_table(2048, EARLIER, keys=["new/a.jpg", "new/b.jpg"], vectors=vectors)
    (tmp_path / "vectors").mkdir()
    vf.write_file(tmp_path / "vectors" / "part-00000.parquet", table)
    with Catalog.open(root, small_model) as catalog:
        assert catalog.import_vectors(tmp_path / "vectors").added == 2
        assert "new/a.jpg" in catalog
    other = vf.build_table(2048, "0123456789abcdef", keys=["new/c.jpg"], vectors=vectors[:1])
    vf.write_file(tmp_path / "other.parquet", other)
    with (
        Catalog.open(root, small_model) as catalog,
        pytest.raises(ModelMismatchError, match="0123456789abcdef"),
    ):
        catalog.import_vectors(tmp_path / "other.parquet")


def with_first_convolution(source: Path, target: Path, change) -> Path:
    """The same file and metadata, the first convolution's weights changed by ``change``: what a
    converter that computes a little (or a lot) differently would write."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(source))
    for initializer in model.graph.initializer:
        weights = numpy_helper.to_array(initializer)
        if weights.ndim == 4 and weights.dtype == np.float32:
            changed = change(weights).astype(np.float32)
            initializer.CopyFrom(numpy_helper.from_array(changed, initializer.name))
            break
    onnx.save(model, str(target))
    return target


def test_numerics_that_moved_within_the_probe_tolerance_are_the_same_model_and_past_it_are_refused(
    tmp_path: Path, small_model: Path
) -> None:
    query = sorted((SAMPLE_DIR / "dress").glob("*.png"))[0]
    with Catalog.create(tmp_path / "catalog", small_model) as catalog:
        catalog.index_folder(SAMPLE_DIR / "dress", progress=False)  # records the probe embedding
        before = catalog.search(query, k=3)
    nudged = with_first_convolution(small_model, tmp_path / "nudged.onnx", lambda w: w * (1 + 1e-4))
    assert read_model_info(nudged).fingerprint == read_model_info(small_model).fingerprint
    with Catalog.open(tmp_path / "catalog", nudged) as catalog:
        assert_same_ranking(catalog.search(query, k=3), before, tie=1e-4)
    moved = with_first_convolution(small_model, tmp_path / "moved.onnx", lambda w: w[::-1].copy())
    assert read_model_info(moved).fingerprint == read_model_info(small_model).fingerprint
    with (
        Catalog.open(tmp_path / "catalog", moved) as catalog,
        pytest.raises(ModelMismatchError, match="probe similarity"),
    ):
        catalog.search(query, k=3)
