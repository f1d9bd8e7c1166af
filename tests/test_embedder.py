"""The embedder: unit vectors from any input, bad inputs reported, thread-safe, Keras parity."""

from __future__ import annotations

import io
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fashionrec_onnx import Embedder, EmbedResult, ImageLoadError, ModelError, load_image, prepare_image
from fashionrec_onnx.quality.datasets import SAMPLE_DIR


@pytest.fixture(scope="module")
def embedder(small_model: Path) -> Embedder:
    with Embedder(small_model, threads=2) as shared:
        yield shared


@pytest.fixture(scope="module")
def sample_files() -> list[Path]:
    return sorted(SAMPLE_DIR.glob("*/*.png"))[:24]


def test_vectors_are_float32_unit_length_of_the_model_dimension(
    embedder: Embedder, sample_files: list[Path]
) -> None:
    vectors = embedder.embed(sample_files, batch_size=5)
    assert vectors.dtype == np.float32 and vectors.shape == (len(sample_files), embedder.dim)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_settings_come_from_the_model_metadata(embedder: Embedder) -> None:
    assert embedder.input_size == 64 and embedder.dim == 2048
    assert embedder.info.resize == "squash" and len(embedder.fingerprint) == 16


def test_batch_size_does_not_change_results(embedder: Embedder, sample_files: list[Path]) -> None:
    one = embedder.embed(sample_files, batch_size=1)
    many = embedder.embed(sample_files, batch_size=16)
    np.testing.assert_allclose(one, many, atol=1e-5)


def test_every_input_type_gives_the_same_vector(embedder: Embedder, sample_files: list[Path]) -> None:
    path = sample_files[0]
    data = path.read_bytes()
    pixels = np.asarray(Image.open(path))
    sources = [str(path), path, data, io.BytesIO(data), Image.open(path), pixels, np.dstack([pixels] * 3)]
    vectors = embedder.embed(sources)
    for row in vectors[1:]:
        np.testing.assert_allclose(row, vectors[0], atol=1e-5)


def test_a_single_input_gives_one_row_and_embed_one_a_vector(
    embedder: Embedder, sample_files: list[Path]
) -> None:
    assert embedder.embed(sample_files[0]).shape == (1, embedder.dim)
    vector = embedder.embed_one(sample_files[0])
    assert vector.shape == (embedder.dim,)
    np.testing.assert_allclose(vector, embedder.embed([sample_files[0]])[0], atol=1e-6)


def test_the_embedder_prepares_pixels_exactly_as_the_model_records(
    embedder: Embedder, sample_files: list[Path]
) -> None:
    expected = prepare_image(load_image(sample_files[3]), embedder.input_size, embedder.info.resize)
    np.testing.assert_array_equal(embedder.prepare(sample_files[3]), expected)


def test_raise_mode_stops_at_the_first_bad_input_naming_it(
    embedder: Embedder, sample_files: list[Path], tmp_path: Path
) -> None:
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(ImageLoadError, match="broken.jpg"):
        embedder.embed([sample_files[0], bad, sample_files[1]])


def test_skip_mode_returns_the_good_rows_and_why_the_others_failed(
    embedder: Embedder, sample_files: list[Path], tmp_path: Path
) -> None:
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    inputs = [sample_files[0], empty, b"garbage", sample_files[1], tmp_path / "missing.jpg"]
    result = embedder.embed(inputs, batch_size=2, on_error="skip")
    assert isinstance(result, EmbedResult)
    assert result.indices.tolist() == [0, 3]
    assert result.vectors.shape == (2, embedder.dim)
    np.testing.assert_allclose(result.vectors, embedder.embed([sample_files[0], sample_files[1]]), atol=1e-5)
    reasons = {failure.index: failure.reason for failure in result.failures}
    assert set(reasons) == {1, 2, 4}
    assert "empty" in reasons[1] and "not an image" in reasons[2] and "not found" in reasons[4]
    assert result.failures[0].source == str(empty)


def test_streaming_batches_cover_every_input_once(embedder: Embedder, sample_files: list[Path]) -> None:
    batches = list(embedder.iter_batches(iter(sample_files[:10]), batch_size=3))
    assert [len(batch) for batch in batches] == [3, 3, 3, 1]
    assert np.concatenate([b.indices for b in batches]).tolist() == list(range(10))


def test_empty_input_gives_an_empty_matrix(embedder: Embedder) -> None:
    assert embedder.embed([]).shape == (0, embedder.dim)


def test_invalid_arguments_are_refused(embedder: Embedder, sample_files: list[Path]) -> None:
    with pytest.raises(ValueError, match="on_error"):
        embedder.embed(sample_files[:1], on_error="ignore")  # type: ignore[call-overload]
    with pytest.raises(ValueError, match="batch_size"):
        embedder.embed(sample_files[:1], batch_size=0)
    with pytest.raises(ValueError, match="uint8"):
        embedder.embed_pixels(np.zeros((1, 64, 64, 3), np.float32))


def test_one_embedder_shared_by_threads_matches_serial_use(
    embedder: Embedder, sample_files: list[Path]
) -> None:
    serial = embedder.embed(sample_files, batch_size=4)
    results: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []

    def work(worker: int) -> None:
        try:
            order = sample_files[worker % 3 :] + sample_files[: worker % 3]  # different batches
            vectors = embedder.embed(order, batch_size=3 + worker)
            results[worker] = np.roll(vectors, worker % 3, axis=0)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors
    assert len(results) == 6
    for vectors in results.values():
        np.testing.assert_allclose(vectors, serial, atol=1e-5)


def test_model_without_fashionrec_metadata_is_refused(bare_model: Path) -> None:
    with pytest.raises(ModelError, match="fashionrec export"):
        Embedder(bare_model)


def test_end_to_end_matches_keras_fed_the_same_resized_pixels(test_model: Path, tmp_path: Path) -> None:
    from fashionrec_export.export_resnet50 import ExportConfig, build_keras_model, keras_embeddings

    rng = np.random.default_rng(7)
    photo = tmp_path / "photo.jpg"
    base = np.asarray(Image.open(sorted(SAMPLE_DIR.glob("dress/*.png"))[0]).convert("RGB").resize((600, 900)))
    noisy = np.clip(base.astype(int) + rng.integers(-20, 20, base.shape), 0, 255).astype(np.uint8)
    Image.fromarray(noisy).save(photo, quality=90)
    with Embedder(test_model) as embedder:
        ours = embedder.embed([photo])
        pixels = embedder.prepare(photo)[None]
    keras_model = build_keras_model(ExportConfig(out=test_model, weights="random", seed=0, size=224))
    reference = keras_embeddings(keras_model, pixels)
    assert float(np.sum(ours * reference)) >= 0.9999


def test_embed_with_progress_shows_a_bar_counting_every_image_and_is_silent_without(
    embedder: Embedder, sample_files: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    files = [*sample_files[:5], Path("missing.jpg")]
    with_bar = embedder.embed(files, batch_size=2, on_error="skip", progress=True)
    bar = capsys.readouterr().err
    assert "embedding" in bar and f"{len(files)}/{len(files)}" in bar
    without = embedder.embed(files, batch_size=2, on_error="skip")
    assert capsys.readouterr().err == ""
    np.testing.assert_array_equal(with_bar.vectors, without.vectors)
