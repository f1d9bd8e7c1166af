"""The int8 model keeps the contract and stays close to fp32 on real images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fashionrec_export.quantize import quantize_int8

from fashionrec_onnx import Catalog, Embedder, ModelMismatchError, read_model_info
from fashionrec_onnx.quality.datasets import SAMPLE_DIR

# Floor for the cosine between int8 and fp32 embeddings of the same real image (measured: median
# 0.9996, minimum 0.999 with random weights at 224 px; the floor leaves room for other weights).
MIN_COSINE = 0.98


@pytest.fixture(scope="module")
def int8_model(tmp_path_factory: pytest.TempPathFactory, small_model: Path) -> Path:
    out = tmp_path_factory.mktemp("int8") / "int8.onnx"
    quantize_int8(small_model, out, count=32)
    return out


@pytest.fixture(scope="module")
def real_images() -> list[Path]:
    return sorted(SAMPLE_DIR.glob("*/*.png"))[::10]  # 100 images, every category


def test_int8_keeps_the_contract_and_marks_its_metadata(int8_model: Path, small_model: Path) -> None:
    fp32, int8 = read_model_info(small_model), read_model_info(int8_model)
    assert int8.precision == "int8" and int8.calibration == "fashion-mnist-sample:32 images"
    assert int8.fingerprint != fp32.fingerprint
    same = ("input_size", "resize", "dim", "weights", "weights_sha256", "pooling", "normalized")
    assert all(getattr(int8, name) == getattr(fp32, name) for name in same)
    with Embedder(int8_model) as embedder:
        vectors = embedder.embed(SAMPLE_DIR / "bag" / "test-00598.png")
    assert vectors.dtype == np.float32 and vectors.shape == (1, 2048)
    assert np.linalg.norm(vectors) == pytest.approx(1.0, abs=1e-5)


def test_int8_embeddings_stay_close_to_fp32_on_real_images(
    int8_model: Path, small_model: Path, real_images: list[Path]
) -> None:
    with Embedder(small_model) as fp32, Embedder(int8_model) as int8:
        cosine = np.sum(fp32.embed(real_images) * int8.embed(real_images), axis=1)
    assert cosine.min() >= MIN_COSINE, float(cosine.min())


def test_the_file_is_smaller(int8_model: Path, small_model: Path) -> None:
    assert int8_model.stat().st_size < small_model.stat().st_size / 3


def test_an_fp32_catalog_refuses_the_int8_model(tmp_path: Path, small_model: Path, int8_model: Path) -> None:
    with Catalog.create(tmp_path / "c", small_model) as catalog:
        catalog.add("a", SAMPLE_DIR / "bag" / "test-00598.png")
    with pytest.raises(ModelMismatchError, match="int8"):
        Catalog.open(tmp_path / "c", int8_model)


def test_quantising_twice_is_refused(int8_model: Path, tmp_path: Path) -> None:
    from fashionrec_onnx import ExportError

    with pytest.raises(ExportError, match="already int8"):
        quantize_int8(int8_model, tmp_path / "again.onnx")
