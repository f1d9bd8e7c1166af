"""Export Keras ResNet50 (no top) + global pooling to one self-contained ONNX embedding model.

The graph takes uint8 RGB images and does ResNet50's "caffe" preprocessing itself, so the runtime
never re-implements it. Every export is checked against Keras before the file is written.

    python export/export_resnet50.py --out model.onnx                 # imagenet weights
    python export/export_resnet50.py --weights random --seed 0 --out m.onnx
    fashionrec export ...                                             # the same code

TensorFlow and tf2onnx are imported only here.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from fashionrec_export.tensorflow_logs import import_tensorflow

from fashionrec_onnx.errors import ExportError, FashionrecError, WeightsUnavailableError
from fashionrec_onnx.model import FORMAT_VERSION, INPUT_NAME, OUTPUT_NAME, ModelInfo

IMAGENET_NOTOP_FILE = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
CAFFE_MEANS_BGR = (103.939, 116.779, 123.68)
NORM_EPS = 1e-12
PARITY_MIN_COSINE = 0.9999
PARITY_MAX_ABS = 1e-4
DEFAULT_OPSET = 17


@dataclass(frozen=True)
class ExportConfig:
    out: Path
    weights: str = "imagenet"
    seed: int = 0
    pooling: str = "max"
    size: int = 224
    resize: str = "squash"
    opset: int = DEFAULT_OPSET


@dataclass(frozen=True)
class ParityReport:
    images: int
    max_abs_diff: float
    min_cosine: float

    @property
    def ok(self) -> bool:
        return self.min_cosine >= PARITY_MIN_COSINE and self.max_abs_diff <= PARITY_MAX_ABS


def say(message: str) -> None:
    """Progress and results of the export, for the person running it (stderr)."""
    print(message, file=sys.stderr, flush=True)


@contextmanager
def _stage(name: str) -> Iterator[None]:
    say(f"[export] {name}...")
    start = time.perf_counter()
    yield
    say(f"[export] {name} done in {time.perf_counter() - start:.1f}s")


def keras_cache_dir() -> Path:
    """Where Keras looks for downloaded weights (honours KERAS_HOME like Keras does)."""
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "models"


def check_output_path(out: Path) -> None:
    """Fail before a minute of work if the output cannot be written."""
    parent = out.parent if str(out.parent) else Path(".")
    if out.exists() and out.is_dir():
        raise ExportError(f"--out {out} is a directory; give a file name such as {out / 'model.onnx'}.")
    if not parent.is_dir():
        raise ExportError(f"output directory {parent} does not exist; create it or choose another --out.")
    if not os.access(parent, os.W_OK):
        raise ExportError(f"output directory {parent} is not writable; choose another --out.")


def check_weights_argument(weights: str) -> None:
    if weights in ("imagenet", "random"):
        return
    path = Path(weights)
    if not path.is_file():
        raise ExportError(
            f"weights file {weights} does not exist; pass --weights imagenet, --weights random, "
            "or the path of a ResNet50 no-top weights file (.h5 / .weights.h5)."
        )
    if not path.name.endswith(".h5"):
        raise ExportError(
            f"weights file {weights} is not a Keras weights file; expected a .h5 or .weights.h5 "
            "file for ResNet50 without its top layers."
        )


def build_keras_model(config: ExportConfig):  # -> keras.Model
    """Backbone + pooling, float input already preprocessed (Keras' own ResNet50 convention)."""
    import_tensorflow()
    import keras

    # A fresh Keras session per export: layer names (and so the ONNX node names) must not depend
    # on how many models this process built before.
    keras.backend.clear_session()
    keras.utils.set_random_seed(config.seed)
    shape = (config.size, config.size, 3)
    if config.weights == "random":
        keras_weights = None
    elif config.weights == "imagenet":
        keras_weights = "imagenet"
    else:
        keras_weights = str(Path(config.weights).resolve())
    try:
        base = keras.applications.ResNet50(include_top=False, weights=keras_weights, input_shape=shape)
    except Exception as exc:  # Keras raises bare Exception for download failures
        if config.weights == "imagenet":
            raise WeightsUnavailableError(
                "cannot get the ImageNet weights (no network?). Keras expects "
                f"{IMAGENET_NOTOP_FILE} in {keras_cache_dir()}/: copy it there from a machine with "
                "internet, pass --weights PATH, or use --weights random for a smoke run."
            ) from exc
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(
            f"cannot load weights from {config.weights}: {first_line}. Expected Keras weights for "
            "ResNet50 without its top layers."
        ) from exc
    pool_layer = {"max": keras.layers.GlobalMaxPool2D, "avg": keras.layers.GlobalAveragePooling2D}
    pooled = pool_layer[config.pooling](name=f"global_{config.pooling}_pool")(base.output)
    return keras.Model(base.input, pooled, name=f"resnet50_{config.pooling}")


def make_serving_function(model, size: int) -> Any:  # a tf.function
    """uint8 RGB in, unit float32 vectors out; preprocessing and normalisation inside the graph."""
    import tensorflow as tf

    signature = [tf.TensorSpec([None, size, size, 3], tf.uint8, name=INPUT_NAME)]

    @tf.function(input_signature=signature)
    def serve(image):
        # Constants are created inside the function: captured eager tensors would become inputs.
        bgr = tf.cast(image, tf.float32)[..., ::-1]
        x = bgr - tf.constant(CAFFE_MEANS_BGR, dtype=tf.float32)
        features = model(x, training=False)
        norm = tf.norm(features, axis=1, keepdims=True)
        return {OUTPUT_NAME: features / tf.maximum(norm, NORM_EPS)}

    return serve


def parity_images(size: int) -> np.ndarray:
    """Ten varied test images: gradients, shapes, stripes, textures, flat colour and noise."""
    rng = np.random.default_rng(1234)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1)
    images = []
    images.append(np.stack([x, y, 1 - x], -1) * 255)  # colour gradient
    r = np.hypot(x - 0.5, y - 0.5)
    images.append(np.stack([(r < 0.3) * 220, (r < 0.2) * 180, np.full_like(r, 40)], -1))  # disc
    stripes = (np.sin(x * 40) > 0).astype(np.float32)
    images.append(np.stack([stripes * 255, stripes * 60, 255 - stripes * 255], -1))  # stripes
    checker = ((np.floor(x * 8) + np.floor(y * 8)) % 2).astype(np.float32)
    images.append(np.stack([checker] * 3, -1) * 255)  # checkerboard
    images.append(np.full((size, size, 3), (200, 30, 90), np.float32))  # flat colour
    images.append(rng.integers(0, 256, (size, size, 3)).astype(np.float32))  # noise
    blob = np.exp(-(((x - 0.3) ** 2 + (y - 0.6) ** 2) / 0.02))
    images.append(np.stack([blob, blob**2, 1 - blob], -1) * 255)  # soft blob
    texture = np.cumsum(rng.normal(size=(size, size)), axis=1)
    texture = (texture - texture.min()) / (np.ptp(texture) + 1e-6)
    images.append(np.stack([texture, texture * 0.7, texture * 0.4], -1) * 255)  # fabric-like
    shirt = np.zeros((size, size), np.float32)
    shirt[int(size * 0.2):int(size * 0.9), int(size * 0.3):int(size * 0.7)] = 1
    shirt[int(size * 0.2):int(size * 0.45), int(size * 0.1):int(size * 0.9)] = 1
    images.append(np.stack([shirt * 30, shirt * 90, shirt * 160], -1) + 230 * (1 - shirt)[..., None])
    images.append(np.zeros((size, size, 3), np.float32))  # black
    return np.clip(images, 0, 255).astype(np.uint8)


def l2_normalize(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norm, NORM_EPS)


def keras_embeddings(model, images: np.ndarray) -> np.ndarray:
    """The reference: Keras' own preprocess_input and model.predict, normalised."""
    import keras

    x = keras.applications.resnet50.preprocess_input(images.astype(np.float32))
    return l2_normalize(model.predict(x, verbose=0, batch_size=16))


def check_parity(want: np.ndarray, onnx_bytes: bytes, images: np.ndarray) -> ParityReport:
    """The ONNX model's embeddings of ``images`` against Keras' (``want``, computed before the
    conversion, so that the Keras model can go before the ONNX session is built)."""
    import onnxruntime as ort

    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    got = session.run([OUTPUT_NAME], {INPUT_NAME: images})[0]
    cosine = np.sum(l2_normalize(got) * l2_normalize(want), axis=1)
    return ParityReport(len(images), float(np.abs(got - want).max()), float(cosine.min()))


def weights_digest(model) -> str:
    """sha256 over every weight array, so the digest names the weights whatever their source."""
    digest = hashlib.sha256()
    for weight in model.weights:
        digest.update(np.ascontiguousarray(weight.numpy()).tobytes())
    return digest.hexdigest()


def weights_source(config: ExportConfig) -> str:
    if config.weights == "random":
        return f"random:seed={config.seed}"
    if config.weights == "imagenet":
        return "imagenet"
    return f"file:{Path(config.weights).name}"


def attach_metadata(onnx_model, info_fields: dict[str, object]) -> ModelInfo:
    """Record the contract, and the fingerprint derived from it, in ``metadata_props``."""
    import onnx

    info = ModelInfo(**info_fields)  # type: ignore[arg-type]
    onnx.helper.set_model_props(onnx_model, info.to_metadata())
    onnx_model.doc_string = f"fashionrec ResNet50 + global {info.pooling} pool, unit embeddings"
    return info


def write_atomically(data: bytes, out: Path) -> None:
    """Temp file in the target directory, fsync, rename: readers never see half a model."""
    parent = out.parent if str(out.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; a model is an ordinary file
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def export_model(config: ExportConfig) -> tuple[ModelInfo, ParityReport]:
    """Build, convert, check, write. Raises ExportError; never writes a model that failed parity."""
    if config.pooling not in ("max", "avg"):
        raise ExportError(f"--pooling must be 'max' or 'avg', not {config.pooling!r}.")
    if config.resize not in ("squash", "pad"):
        raise ExportError(f"--resize must be 'squash' or 'pad', not {config.resize!r}.")
    if not 32 <= config.size <= 1024:
        raise ExportError(f"--size must be between 32 and 1024 pixels, not {config.size}.")
    check_output_path(config.out)
    check_weights_argument(config.weights)

    with _stage(f"build ResNet50 ({weights_source(config)}, {config.pooling} pool, {config.size}px)"):
        model = build_keras_model(config)
        images = parity_images(config.size)
        reference = keras_embeddings(model, images)  # now: the Keras model goes after conversion
        digest = weights_digest(model)
    with _stage(f"convert to ONNX (opset {config.opset})"):
        import onnx
        import tensorflow as tf
        import tf2onnx

        dim = int(model.output_shape[-1])
        with tempfile.TemporaryDirectory(prefix="fashionrec-export-") as tmp:
            graph, spec = Path(tmp) / "frozen.pb", Path(tmp) / "spec.json"
            frozen_graph(model, config, graph, spec)
            del model
            _free_tensorflow()  # the Keras model and traced graphs go before the conversion
            onnx_model = onnx.load_from_string(_convert_in_child(graph, spec, Path(tmp) / "converted.onnx"))
        info = attach_metadata(
            onnx_model,
            {
                "format_version": FORMAT_VERSION,
                "backbone": "resnet50",
                "pooling": config.pooling,
                "input_size": config.size,
                "resize": config.resize,
                "color_order": "RGB",
                "preprocessing": "caffe:bgr,mean=" + ",".join(map(str, CAFFE_MEANS_BGR)),
                "weights": weights_source(config),
                "weights_sha256": digest,
                "normalized": True,
                "dim": dim,
                "opset": config.opset,
                "tensorflow_version": tf.__version__,
                "tf2onnx_version": tf2onnx.__version__,
            },
        )
        data = onnx_model.SerializeToString()
        del onnx_model
    with _stage("parity check against Keras"):
        report = check_parity(reference, data, images)
    say(
        f"[export] parity on {report.images} images: max abs diff {report.max_abs_diff:.3g} "
        f"(limit {PARITY_MAX_ABS:g}), min cosine {report.min_cosine:.6f} (limit {PARITY_MIN_COSINE})"
    )
    if not report.ok:
        raise ParityError(report)
    write_atomically(data, config.out)
    say(f"[export] wrote {config.out} ({len(data) / 1e6:.1f} MB, fp32, fingerprint {info.fingerprint})")
    return info, report


def frozen_graph(model, config: ExportConfig, graph: Path, spec: Path) -> None:  # model: keras.Model
    """The serving function frozen (weights as constants) and simplified by TensorFlow's own
    optimiser, as tf2onnx's ``from_function`` does it, written to ``graph``; ``spec`` gets what
    the conversion needs besides (tensor names, their ONNX names, the opset)."""
    import json

    import tensorflow as tf
    from tf2onnx import tf_loader
    from tf2onnx.convert import tensor_names_from_structed

    serve = make_serving_function(model, config.size)
    concrete = serve.get_concrete_function(*serve.input_signature)
    inputs = [t.name for t in concrete.inputs if t.dtype != tf.dtypes.resource]
    outputs = [t.name for t in concrete.outputs if t.dtype != tf.dtypes.resource]
    rename = tensor_names_from_structed(concrete, inputs, outputs)
    with tf.device("/cpu:0"):
        graph_def = tf_loader.from_function(concrete, inputs, outputs)
    graph.write_bytes(graph_def.SerializeToString())
    name = concrete.name.decode() if isinstance(concrete.name, bytes) else str(concrete.name)
    fields = {"name": name, "opset": config.opset, "inputs": inputs, "outputs": outputs, "rename": rename}
    spec.write_text(json.dumps(fields))


def _convert_in_child(graph: Path, spec: Path, out: Path) -> bytes:
    """`fashionrec_export.convert_graph` in a fresh Python: tf2onnx's memory leaves with it (the
    export's peak is the larger of this process and that one, not their sum)."""
    import subprocess

    command = [sys.executable, "-m", "fashionrec_export.convert_graph", str(graph), str(spec), str(out)]
    # protobuf's compiled (upb) messages keep every replaced sub-message in their arena until the
    # whole message goes: tf2onnx rewrites each node's attributes, weights included, after each of
    # its optimiser passes, so the conversion grew by the weights (94 MB) a pass, to 4.07 GB. The
    # pure-Python protobuf frees them: 1.27 GB, the same bytes written, and no slower here (9 s).
    environment = {**os.environ, "PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION": "python"}
    result = subprocess.run(command, capture_output=True, text=True, errors="replace", env=environment)
    if result.returncode != 0:
        errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
        detail = errors[-1].removeprefix("error: ") if errors else result.stderr.strip()[-2000:]
        if result.returncode < 0:
            detail = f"the conversion process was killed by signal {-result.returncode} (out of memory?)"
        raise ExportError(f"{detail}; nothing was written.")
    return out.read_bytes()


def _free_tensorflow() -> None:
    """Let the Keras model and the traced graphs go before the parity check's ONNX session."""
    import gc

    import keras

    keras.backend.clear_session()
    gc.collect()


def export_cached(cache_dir: Path, name: str, **config: object) -> Path:
    """Export once per exporter version, toolchain and settings; later calls reuse the file.

    For tests and benchmarks, which need the same model many times but never stale ones: a new
    TensorFlow or tf2onnx (`make constraints`) exports again, so the tests see what it writes.
    """
    from importlib.metadata import PackageNotFoundError, version

    def installed(package: str) -> str:
        try:
            return version(package)
        except PackageNotFoundError:
            return "-"

    toolchain = [installed(p) for p in ("tensorflow", "keras", "tf2onnx", "onnx", "onnxruntime", "numpy")]
    key = hashlib.sha256(Path(__file__).read_bytes() + repr((sorted(config.items()), toolchain)).encode())
    path = Path(cache_dir) / f"{name}-{key.hexdigest()[:12]}.onnx"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        export_model(ExportConfig(out=path, **config))  # type: ignore[arg-type]
    return path


class ParityError(ExportError):
    """ONNX and Keras disagree: the model is not written."""

    def __init__(self, report: ParityReport) -> None:
        self.report = report
        super().__init__(
            f"parity check failed (max abs diff {report.max_abs_diff:.3g}, min cosine "
            f"{report.min_cosine:.6f}); the model was not written. Please report this with your "
            "tensorflow and tf2onnx versions."
        )


EXPORT_DESCRIPTION = """\
Export Keras ResNet50 (without its top) + global pooling to one ONNX embedding model:
uint8 RGB images in, unit-length float32 vectors out, ResNet50's preprocessing inside the graph.
Every export is checked against Keras before anything is written."""

EXPORT_EPILOG = """\
examples:
  fashionrec export --out model.onnx                         # ImageNet weights (94 MB download, once)
  fashionrec export --weights random --seed 0 --out m.onnx   # untrained but deterministic: offline runs
  fashionrec export --weights resnet50_notop.h5 --pooling avg --out avg.onnx   # your weights file
  fashionrec export --size 320 --resize pad --opset 18 --out m320.onnx
  fashionrec export --quantize int8 --calibration ./photos --out m.onnx         # int8 at m.onnx
  fashionrec export --quantize int8 --keep-fp32 --calibration-images 128 --out m.onnx  # + m-fp32.onnx

exit codes: 0 written; 1 ONNX and Keras disagree (nothing written); 2 bad arguments, weights that
cannot be had, or an output that cannot be written.
An export needs a few GB of memory for a minute or two: docs/model.md gives the measured peak."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Shared by this script and `fashionrec export`: the options, with their examples."""
    parser.description = parser.description or EXPORT_DESCRIPTION  # `fashionrec export` has its own
    parser.epilog = EXPORT_EPILOG
    if parser.formatter_class is argparse.HelpFormatter:
        parser.formatter_class = argparse.RawDescriptionHelpFormatter  # keep the examples' lines
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("model.onnx"),
        metavar="FILE",
        help="where the model goes; with --quantize, the quantised one (default: %(default)s)",
    )
    parser.add_argument(
        "--weights",
        default="imagenet",
        metavar="imagenet|random|FILE",
        help="'imagenet' (Keras' loader and cache), 'random' (seeded, see --seed), or the path of a "
        "Keras weights file (.h5) of ResNet50 without its top (default: %(default)s)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of --weights random: the same seed gives the same model (default: %(default)s)",
    )
    parser.add_argument(
        "--pooling",
        choices=("max", "avg"),
        default="max",
        help="how the last feature map becomes one 2048-d vector: global max pooling (the classic "
        "fashion recommender) or global average pooling (default: %(default)s)",
    )
    parser.add_argument(
        "--size",
        type=int,
        default=224,
        metavar="PIXELS",
        help="input height = width in pixels, 32 to 1024; smaller is faster, ImageNet weights were "
        "trained at 224 (default: %(default)s)",
    )
    parser.add_argument(
        "--resize",
        choices=("squash", "pad"),
        default="squash",
        help="how the runtime fits images to the input: squash (like Keras load_img) or pad to a "
        "white square (keeps the aspect ratio); recorded in the model (default: %(default)s)",
    )
    parser.add_argument(
        "--opset",
        type=int,
        default=DEFAULT_OPSET,
        help="ONNX operator set of the graph (tf2onnx writes up to 18); lower it only to run the "
        "model on an older ONNX runtime (default: %(default)s)",
    )
    from fashionrec_export import quantize

    quantize.add_arguments(parser)


def config_from_args(args: argparse.Namespace) -> ExportConfig:
    return ExportConfig(
        out=args.out,
        weights=args.weights,
        seed=args.seed,
        pooling=args.pooling,
        size=args.size,
        resize=args.resize,
        opset=args.opset,
    )


def run(args: argparse.Namespace) -> int:
    """Exit code: 0 written, 1 parity failed, 2 bad arguments / weights / output."""
    from fashionrec_export import quantize

    try:
        config = config_from_args(args)
        if args.quantize:
            quantize.export_quantized(config, args.calibration, args.calibration_images, args.keep_fp32)
        elif args.keep_fp32:
            raise ExportError("--keep-fp32 keeps the fp32 model beside a quantised one; add --quantize int8.")
        else:
            export_model(config)
    except ParityError as exc:
        say(f"error: {exc}")
        return 1
    except FashionrecError as exc:
        say(f"error: {exc}")
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
