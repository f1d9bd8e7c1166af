"""The write path's fast checks give the answers of the careful ones they stand in front of."""

from __future__ import annotations

from collections.abc import Generator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fashionrec_onnx import Catalog
from fashionrec_onnx.catalog.kernels import _scaled, row_norms
from fashionrec_onnx.catalog.pca import PCA
from fashionrec_onnx.interchange.vector_transfer import read_ahead
from fashionrec_onnx.json_values import DepthError, bad_field, check_depth


def careful_norms(rows: np.ndarray) -> np.ndarray:
    scaled, scale = _scaled(rows)
    with np.errstate(all="ignore"):
        return np.linalg.norm(scaled, axis=-1) * scale


def test_float32_norms_summed_in_float64_blocks_equal_the_scaled_norms() -> None:
    rng = np.random.default_rng(3)
    rows = rng.standard_normal((1_100, 64)).astype(np.float32)  # more than one block
    rows[1] *= 3e37  # squares past float32's range
    rows[2] *= 1e-30  # squares below it
    rows[3] = 0.0
    rows[4, 5] = np.nan
    rows[5, 0] = np.inf
    fast, careful = row_norms(rows), careful_norms(rows)
    finite = np.isfinite(careful)
    assert np.array_equal(finite, np.isfinite(fast)) and not finite[4] and not finite[5]
    assert np.allclose(fast[finite], careful[finite], rtol=1e-12, atol=0)
    assert fast[3] == 0.0 and fast[1] > 1e38
    half = rows[6:9].astype(np.float16)
    assert np.allclose(row_norms(half), careful_norms(half))
    huge = np.full((1, 4), 5e307)  # float64 keeps the scaled path: its squares would overflow
    assert np.isfinite(row_norms(huge)).all()


METADATA = [  # (metadata, the field refused or None)
    ({"a": "x", "b": True, "c": None, "d": 1.5, "e": -(2**63), "f": 2**63 - 1}, None),
    ({"a": ["x"] * 3, "b": {"c": [None]}}, None),
    ({}, None),
    ({"a": "\ud83d\ude00"}, "a"),  # two lone surrogates stay lone side by side
    ({"ok": "y", "\udc00": "x"}, "\\udc00"),
    ({"a\x00b": 1}, "a\\x00b"),
    ({"ok": 1, "a": float("nan")}, "a"),
    ({"a": float("-inf")}, "a"),
    ({"a": 2**63}, "a"),
    ({"a": -(2**63) - 1}, "a"),
    ({1: "x"}, "1"),
    ({"a": [1, {"b": float("inf")}]}, "a"),
    ({"a": {"b": "\ud800"}}, "a"),
    ({"a": b"bytes"}, "a"),
    ({"a": 1, "b": object()}, "b"),
]


@pytest.mark.parametrize(("metadata", "refused"), METADATA, ids=range(len(METADATA)))
def test_the_plain_metadata_shortcut_refuses_what_the_field_walk_refuses(
    metadata: dict, refused: str | None
) -> None:
    bad = bad_field(metadata)
    assert (bad[0] if bad else None) == refused


def test_the_depth_check_counts_brackets_before_walking_them() -> None:
    check_depth("[" * 5 + "]" * 5, 5)
    check_depth('{"a": "' + "[" * 50 + '"}', 5)  # inside a string: not nesting
    with pytest.raises(DepthError):
        check_depth("[" * 6 + "]" * 6, 5)
    with pytest.raises(DepthError):
        check_depth('{"a": ' * 6 + "1" + "}" * 6, 5)


def test_the_scatter_matrix_fit_equals_the_svd_fit_up_to_sign() -> None:
    rng = np.random.default_rng(7)
    basis = np.linalg.qr(rng.standard_normal((48, 48)))[0]
    rows = (rng.standard_normal((600, 48)) * np.geomspace(10, 0.1, 48)) @ basis.T
    fitted = PCA.fit(rows, 8)
    centred = rows - rows.mean(axis=0)
    _, singular, axes = np.linalg.svd(centred, full_matrices=False)
    agreement = np.abs(np.sum(fitted.components * axes[:8], axis=1))
    assert np.allclose(agreement, 1.0, atol=1e-6)
    assert np.allclose(fitted.scales, singular[:8] / np.sqrt(600), rtol=1e-5)
    assert fitted.explained_variance_ratio == pytest.approx((singular[:8] ** 2).sum() / (singular**2).sum())
    few = PCA.fit(rows[:20], 8)  # fewer rows than dimensions: the SVD itself
    assert np.allclose(few.components @ few.components.T, np.eye(8), atol=1e-5)


def test_a_batch_replacing_stored_keys_removes_each_old_row_once(small_model: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    first = rng.standard_normal((1_200, 2048)).astype(np.float32)
    with Catalog.create(tmp_path / "c", small_model) as catalog:
        keys = [f"k{i}" for i in range(len(first))]
        catalog.add_many(keys, first, metadata=[{"n": i} for i in range(len(first))])
        again = rng.standard_normal((1_100, 2048)).astype(np.float32)  # more than one statement's keys
        catalog.add_many(keys[100:], again)
        assert len(catalog) == 1_200
        assert catalog.get("k5").metadata == {"n": 5} and catalog.get("k500").metadata == {}
        expected = again[400] / np.linalg.norm(again[400])
        assert np.allclose(catalog.vector("k500"), expected, atol=1e-6)
        assert catalog.search(expected, k=1)[0].key == "k500"
        assert catalog.check(k=1, sample=50).recall == 1.0


def test_read_ahead_yields_every_batch_in_order_and_raises_where_the_reading_failed() -> None:
    closed: list[bool] = []

    def batches(fail_at: int | None) -> Generator[Any, None, None]:
        try:
            for number in range(5):
                if number == fail_at:
                    raise OSError(f"batch {number} unreadable")
                yield number
        finally:
            closed.append(True)

    assert list(read_ahead(batches(None))) == [0, 1, 2, 3, 4]
    seen = []
    with pytest.raises(OSError, match="batch 3 unreadable"):
        for batch in read_ahead(batches(3)):
            seen.append(batch)
    assert seen == [0, 1, 2]
    early = read_ahead(batches(None))
    assert next(early) == 0
    early.close()  # the caller stopped: the reader's generator is closed too
    assert closed == [True, True, True]


def test_a_sample_with_almost_no_variance_past_some_axes_is_fitted_by_the_svd() -> None:
    rng = np.random.default_rng(5)
    basis = np.linalg.qr(rng.standard_normal((64, 64)))[0]
    rows = (rng.standard_normal((500, 64)) * np.geomspace(1.0, 1e-8, 64)) @ basis.T
    fitted = PCA.fit(rows, 60)
    _, singular, axes = np.linalg.svd(rows - rows.mean(axis=0), full_matrices=False)
    assert np.allclose(fitted.scales, singular[:60] / np.sqrt(500), rtol=1e-4)
    assert np.allclose(np.abs(np.sum(fitted.components * axes[:60], axis=1)), 1.0, atol=1e-6)
