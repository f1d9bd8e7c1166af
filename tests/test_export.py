"""The exported model honours its contract, matches Keras, and the exporter fails cleanly."""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnx.utils
import onnxruntime as ort
import pytest
from fashionrec_export.export_resnet50 import (
    IMAGENET_NOTOP_FILE,
    ExportConfig,
    add_arguments,
    build_keras_model,
    keras_embeddings,
    parity_images,
)
from fashionrec_export.isolated import export_in_child

from fashionrec_onnx import ModelError, ModelInfo, WeightsUnavailableError, read_model_info
from fashionrec_onnx.errors import ExportError
from fashionrec_onnx.model import INPUT_NAME, OUTPUT_NAME, load_model

FASHIONREC = str(Path(sys.executable).with_name("fashionrec"))
TF_LOG_RECORD = re.compile(r"^[IWEF]\d{4} ")  # a line of TensorFlow's C++ log: I0000 00:00:...


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [FASHIONREC, *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **(env or {})},
    )


def embed(model: Path, images: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return session.run([OUTPUT_NAME], {INPUT_NAME: images})[0]


# --- contract -------------------------------------------------------------------------------


def test_model_has_one_uint8_image_input_and_one_float_embedding_output(test_model: Path) -> None:
    session = ort.InferenceSession(str(test_model), providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    (out,) = session.get_outputs()
    assert inp.name == "image" and inp.type == "tensor(uint8)"
    assert inp.shape[1:] == [224, 224, 3] and not isinstance(inp.shape[0], int)
    assert out.name == "embedding" and out.type == "tensor(float)"
    assert out.shape[1] == 2048


@pytest.mark.parametrize("batch", [1, 3])
def test_embeddings_are_float32_unit_vectors_for_any_batch(test_model: Path, batch: int) -> None:
    vectors = embed(test_model, parity_images(224)[:batch])
    assert vectors.dtype == np.float32 and vectors.shape == (batch, 2048)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_different_images_give_different_embeddings(test_model: Path) -> None:
    vectors = embed(test_model, parity_images(224))
    cosine = vectors @ vectors.T
    off_diagonal = cosine[~np.eye(len(vectors), dtype=bool)]
    assert off_diagonal.max() < 0.99999


def test_all_zero_feature_row_normalises_to_zeros_not_nan(test_model: Path, tmp_path: Path) -> None:
    # Cut the real graph at the pooled features (the numerator of the final division) and feed
    # zeros: the normaliser must divide by max(norm, eps), never by zero.
    model = onnx.load(str(test_model), load_external_data=False)
    (division,) = [n for n in model.graph.node if OUTPUT_NAME in n.output]
    assert division.op_type == "Div"
    features = division.input[0]
    tail = tmp_path / "normaliser.onnx"
    onnx.utils.extract_model(str(test_model), str(tail), [features], [OUTPUT_NAME])
    session = ort.InferenceSession(str(tail), providers=["CPUExecutionProvider"])
    rows = np.zeros((2, 2048), np.float32)
    rows[1, 7] = 3.0
    out = session.run([OUTPUT_NAME], {features: rows})[0]
    assert not np.isnan(out).any()
    assert np.all(out[0] == 0.0)
    assert out[1, 7] == pytest.approx(1.0)


# --- metadata ---------------------------------------------------------------------------------


def test_metadata_reads_back_without_tensorflow(test_model: Path) -> None:
    info = read_model_info(test_model)
    assert info.backbone == "resnet50" and info.pooling == "max"
    assert info.input_size == 224 and info.dim == 2048 and info.normalized
    assert info.resize == "squash" and info.color_order == "RGB"
    assert info.preprocessing.startswith("caffe:bgr")
    assert info.weights == "random:seed=0" and len(info.weights_sha256) == 64
    assert info.opset == 17 and info.tensorflow_version and info.tf2onnx_version
    assert info.precision == "fp32" and len(info.fingerprint) == 16


def test_metadata_round_trips_through_metadata_props(test_model: Path) -> None:
    info = read_model_info(test_model)
    assert ModelInfo.from_metadata(info.to_metadata()) == info


def test_load_model_checks_the_contract(test_model: Path) -> None:
    session, info = load_model(test_model, threads=1)
    assert info == read_model_info(test_model)
    assert session.get_inputs()[0].name == INPUT_NAME


def test_model_without_our_metadata_is_refused_with_advice(bare_model: Path) -> None:
    with pytest.raises(ModelError, match="fashionrec export"):
        read_model_info(bare_model)


def test_missing_model_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="does not exist"):
        read_model_info(tmp_path / "nope.onnx")


def test_unknown_provider_lists_the_available_ones(test_model: Path) -> None:
    with pytest.raises(ModelError, match="CPUExecutionProvider"):
        load_model(test_model, providers=["NoSuchExecutionProvider"])


def test_import_does_not_load_tensorflow_or_gradio() -> None:
    code = (
        "import sys, fashionrec_onnx, fashionrec_onnx.cli; "
        "bad = [m for m in ('tensorflow', 'keras', 'tf2onnx', 'gradio') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# --- parity and determinism ---------------------------------------------------------------------


def test_onnx_matches_keras_on_varied_images(test_model: Path) -> None:
    keras_model = build_keras_model(ExportConfig(out=test_model, weights="random", seed=0, size=224))
    images = parity_images(224)
    assert len(images) >= 8
    want = keras_embeddings(keras_model, images)
    got = embed(test_model, images)
    assert np.abs(got - want).max() <= 1e-4
    assert np.sum(got * want, axis=1).min() >= 0.9999


@pytest.fixture(scope="module")
def cli_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path]:
    """`fashionrec export` of the small model's settings, run once for the tests that read it."""
    out = tmp_path_factory.mktemp("cli-export") / "again.onnx"
    result = run_cli("export", "--weights", "random", "--seed", "0", "--size", "64", "--out", str(out))
    assert result.returncode == 0, result.stderr
    return result, out


def test_cli_export_is_deterministic_per_seed(cli_export, small_model: Path) -> None:
    _, out = cli_export
    images = parity_images(64)
    np.testing.assert_array_equal(embed(out, images), embed(small_model, images))
    assert read_model_info(out).fingerprint == read_model_info(small_model).fingerprint


def test_cli_export_prints_parity_and_where_the_model_went(cli_export) -> None:
    result, out = cli_export
    assert "max abs diff" in result.stderr and "min cosine" in result.stderr
    assert f"wrote {out} (" in result.stderr and "fp32" in result.stderr


def test_cli_export_leaves_one_ordinary_readable_file(cli_export) -> None:
    _, out = cli_export
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no temp files
    assert out.stat().st_mode & 0o044  # an ordinary readable file, not mkstemp's private one


def test_tensorflow_start_up_log_lines_are_not_printed(cli_export) -> None:
    result, _ = cli_export
    assert "absl::InitializeLog" not in result.stderr
    assert not [line for line in result.stderr.splitlines() if TF_LOG_RECORD.match(line)], result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == len(set(lines)), result.stderr  # nothing twice


def test_tensorflow_start_up_log_lines_show_when_tf_cpp_min_log_level_asks(tmp_path: Path) -> None:
    fake = tmp_path / "broken.h5"  # fails right after TensorFlow is imported: a quick run
    fake.write_bytes(b"\x00garbage" * 100)
    result = run_cli(
        "export", "--weights", str(fake), "--out", str(tmp_path / "m.onnx"), env={"TF_CPP_MIN_LOG_LEVEL": "0"}
    )
    assert result.returncode == 2, result.stderr
    assert [line for line in result.stderr.splitlines() if TF_LOG_RECORD.match(line)], result.stderr


# --- --quantize int8: the int8 model at --out, the fp32 one only if asked ---------------------


@pytest.fixture(scope="module")
def int8_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path]:
    out = tmp_path_factory.mktemp("int8-export") / "m.onnx"
    result = run_cli(
        "export", "--weights", "random", "--size", "64", "--out", str(out),
        "--quantize", "int8", "--calibration-images", "16",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result, out


def test_quantize_int8_writes_the_int8_model_at_out(int8_export) -> None:
    _, out = int8_export
    info = read_model_info(out)
    assert info.precision == "int8" and info.calibration == "fashion-mnist-sample:16 images"


def test_quantize_int8_keeps_no_fp32_model_or_temp_files(int8_export) -> None:
    _, out = int8_export
    assert [p.name for p in out.parent.iterdir()] == ["m.onnx"]


def test_quantize_int8_says_where_each_model_went(int8_export) -> None:
    result, out = int8_export
    assert f"wrote {out} (" in result.stderr and "int8" in result.stderr
    assert f"deleted the intermediate fp32 model (--keep-fp32 keeps it as {out.parent / 'm-fp32.onnx'})" in (
        result.stderr
    )


def test_keep_fp32_keeps_the_fp32_model_beside_the_int8_one(tmp_path: Path, small_model: Path) -> None:
    out = tmp_path / "m.onnx"
    result = run_cli(
        "export", "--weights", "random", "--seed", "0", "--size", "64", "--out", str(out),
        "--quantize", "int8", "--keep-fp32", "--calibration-images", "16",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    fp32 = tmp_path / "m-fp32.onnx"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m-fp32.onnx", "m.onnx"]
    assert read_model_info(out).precision == "int8"
    assert read_model_info(fp32).fingerprint == read_model_info(small_model).fingerprint
    assert f"wrote {fp32} (" in result.stderr and f"wrote {out} (" in result.stderr


def test_keep_fp32_without_quantize_is_refused(tmp_path: Path) -> None:
    result = run_cli("export", "--weights", "random", "--keep-fp32", "--out", str(tmp_path / "m.onnx"))
    assert_clean_failure(result, "--keep-fp32", "--quantize int8")
    assert not list(tmp_path.iterdir())


def test_a_missing_calibration_folder_fails_before_the_export(tmp_path: Path) -> None:
    out = tmp_path / "m.onnx"
    result = run_cli(
        "export", "--weights", "random", "--quantize", "int8", "--calibration", str(tmp_path / "nope"),
        "--out", str(out),
    )  # fmt: skip
    assert_clean_failure(result, "calibration folder", "nope")
    assert "[export] build" not in result.stderr
    assert not out.exists()


# --- help -------------------------------------------------------------------------------------


def export_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fashionrec export")
    add_arguments(parser)  # what `fashionrec export` and the script both use
    return parser


def test_every_export_option_has_help_that_shows_its_default() -> None:
    options = [a for a in export_parser()._actions if a.option_strings and a.dest != "help"]
    assert {"pooling", "opset", "quantize", "keep_fp32"} <= {a.dest for a in options}
    for action in options:
        assert action.help and "default: " in action.help, action.option_strings


def test_export_help_has_a_description_and_examples_that_parse() -> None:
    result = run_cli("export", "--help")
    assert result.returncode == 0
    assert "ONNX embedding model" in result.stdout and "examples:" in result.stdout
    assert "exit codes:" in result.stdout
    assert "default: max" in result.stdout and "default: 17" in result.stdout
    lines = [line.strip() for line in result.stdout.splitlines()]
    examples = [line for line in lines if line.startswith("fashionrec export ")]
    assert len(examples) >= 5
    for example in examples:
        export_parser().parse_args(shlex.split(example, comments=True)[2:])  # exits on an unknown option


def test_a_different_seed_gives_a_different_model(tmp_path: Path, small_model: Path) -> None:
    out = tmp_path / "seed1.onnx"
    result = run_cli("export", "--weights", "random", "--seed", "1", "--size", "64", "--out", str(out))
    assert result.returncode == 0, result.stderr
    images = parity_images(64)
    cosine = np.sum(embed(out, images) * embed(small_model, images), axis=1)
    assert cosine.max() < 0.999
    assert read_model_info(out).fingerprint != read_model_info(small_model).fingerprint


# --- error paths: one line, exit code 2, no traceback, nothing written ------------------------


def assert_clean_failure(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1, result.stderr
    for needle in needles:
        assert needle in error_lines[0]


def test_missing_weights_file(tmp_path: Path) -> None:
    out = tmp_path / "m.onnx"
    result = run_cli("export", "--weights", str(tmp_path / "nope.h5"), "--out", str(out))
    assert_clean_failure(result, "nope.h5", "does not exist")
    assert not out.exists()


def test_weights_file_of_the_wrong_type(tmp_path: Path) -> None:
    notes = tmp_path / "weights.txt"
    notes.write_text("not weights")
    result = run_cli("export", "--weights", str(notes), "--out", str(tmp_path / "m.onnx"))
    assert_clean_failure(result, "weights.txt", "not a Keras weights file")


def test_corrupt_h5_weights_file(tmp_path: Path) -> None:
    fake = tmp_path / "broken.h5"
    fake.write_bytes(b"\x00garbage" * 100)
    out = tmp_path / "m.onnx"
    result = run_cli("export", "--weights", str(fake), "--out", str(out))
    assert_clean_failure(result, "broken.h5", "cannot load weights")
    assert not out.exists()


@pytest.mark.parametrize("where", ["missing-dir", "file-as-dir", "is-a-dir"])
def test_unwritable_output(tmp_path: Path, where: str) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    out = {
        "missing-dir": tmp_path / "no" / "such" / "m.onnx",
        "file-as-dir": blocker / "m.onnx",
        "is-a-dir": tmp_path,
    }[where]
    result = run_cli("export", "--weights", "random", "--out", str(out))
    assert_clean_failure(result, "--out" if where == "is-a-dir" else "output directory")


def test_imagenet_unavailable_offline_names_the_file_and_where_to_put_it(tmp_path: Path, offline_env) -> None:
    keras_home = tmp_path / "keras-home"
    out = tmp_path / "m.onnx"
    result = run_cli("export", "--weights", "imagenet", "--out", str(out), env=offline_env(keras_home))
    assert_clean_failure(result, IMAGENET_NOTOP_FILE, str(keras_home / "models"))
    assert not out.exists()


# --- in a child process (the demo's first start) -----------------------------------------------


def test_export_in_child_writes_the_model_without_loading_tensorflow_here(
    tmp_path: Path, small_model: Path
) -> None:
    out = tmp_path / "m.onnx"
    code = (
        "import json, sys; from pathlib import Path; "
        "from fashionrec_export.export_resnet50 import ExportConfig; "
        "from fashionrec_export.isolated import export_in_child; "
        f"done = export_in_child(ExportConfig(out=Path({str(out)!r}), weights='random', seed=0, size=64)); "
        "print(json.dumps([done.info.fingerprint, done.peak_rss_bytes, 'tensorflow' in sys.modules]))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    fingerprint, peak_rss, tensorflow_loaded = json.loads(result.stdout)
    assert fingerprint == read_model_info(small_model).fingerprint == read_model_info(out).fingerprint
    assert peak_rss > 500e6  # the child's own peak: TensorFlow and ResNet50 were there, not here
    # ru_maxrss: tf2onnx's graph copies took an export to 7 GB, too much for an 8 GB laptop; then
    # protobuf's arenas kept the conversion at 4.0 GB. Now the Keras process's 3.0 GB is the peak.
    assert peak_rss < 4e9
    assert tensorflow_loaded is False
    assert "[export] parity on 10 images" in result.stderr  # the child's progress passes through


def test_export_in_child_reports_unavailable_weights_as_such(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, offline_env
) -> None:
    for name, value in offline_env(tmp_path / "keras-home").items():
        monkeypatch.setenv(name, value)
    out = tmp_path / "m.onnx"
    with pytest.raises(WeightsUnavailableError, match=IMAGENET_NOTOP_FILE):
        export_in_child(ExportConfig(out=out, weights="imagenet"))
    assert not out.exists()


def test_a_conversion_that_fails_in_its_process_is_one_clear_error(tmp_path: Path) -> None:
    """tf2onnx runs in a process of its own (its memory leaves with it); its failure is an
    ExportError naming the cause, not a traceback."""
    from fashionrec_export.export_resnet50 import _convert_in_child

    graph, spec = tmp_path / "frozen.pb", tmp_path / "spec.json"
    graph.write_bytes(b"not a GraphDef")
    fields = {"name": "x", "opset": 17, "inputs": ["image:0"], "outputs": ["y:0"], "rename": {}}
    spec.write_text(json.dumps(fields))
    with pytest.raises(ExportError, match=r"tf2onnx could not convert the model: .*nothing was written"):
        _convert_in_child(graph, spec, tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists()


def test_a_tf2onnx_without_the_private_converter_is_named_with_the_tested_version() -> None:
    """The conversion calls tf2onnx's private `_convert_common`: another tf2onnx that lacks it is
    one line naming the installed and the tested version, not an AttributeError."""
    from types import ModuleType

    from fashionrec_export.convert_graph import TESTED_TF2ONNX, private_converter

    with pytest.raises(ExportError) as raised:
        private_converter(ModuleType("tf2onnx.convert"))
    message = str(raised.value)
    assert "has no tf2onnx.convert._convert_common" in message and "\n" not in message
    assert f"tested with tf2onnx {TESTED_TF2ONNX}" in message
    assert f"pip install 'tf2onnx=={TESTED_TF2ONNX}'" in message


def test_the_tested_tf2onnx_is_the_one_constraints_txt_pins() -> None:
    """`make constraints` moving tf2onnx fails here: check `_convert_common` again, then say so."""
    from fashionrec_export.convert_graph import TESTED_TF2ONNX

    root = Path(__file__).resolve().parents[1]
    pins = dict(
        line.split("==") for line in (root / "constraints.txt").read_text().splitlines() if "==" in line
    )
    assert pins["tf2onnx"] == TESTED_TF2ONNX
