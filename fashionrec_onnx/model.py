"""The model contract: metadata written by the exporter, and the one place that opens a session.

Only onnxruntime is needed here: reading a model never imports TensorFlow.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, asdict, dataclass, field
from pathlib import Path

import onnxruntime as ort

from .errors import ModelError

log = logging.getLogger(__name__)

FORMAT_VERSION = "1"
METADATA_PREFIX = "fashionrec."
INPUT_NAME = "image"
OUTPUT_NAME = "embedding"
RESIZE_METHODS = ("squash", "pad")
# What a model computes, the fields its fingerprint hashes: architecture (backbone, pooling, dim),
# weights (sha256 of the arrays before conversion), input contract (size, resize, colour order),
# preprocessing, normalisation, precision and calibration. Not the tools that wrote the graph:
# TensorFlow, tf2onnx and the opset are recorded as information only, so the same weights exported
# by another toolchain are the same model. Numerics are held by two behavioural checks instead: the
# export's parity with Keras (every converter's output within 1e-4 of the reference, or nothing is
# written) and a catalog's probe embedding (a model that embeds the probe image otherwise is refused).
IDENTITY_FIELDS = (
    "backbone",
    "pooling",
    "dim",
    "weights_sha256",
    "input_size",
    "resize",
    "color_order",
    "preprocessing",
    "normalized",
    "precision",
    "calibration",
)
FINGERPRINT_SCHEME = "fashionrec-model-identity/2"


@dataclass(frozen=True)
class ModelInfo:
    """What the exporter recorded about a model; the runtime trusts this, not guesses."""

    format_version: str
    backbone: str
    pooling: str
    input_size: int
    resize: str
    color_order: str
    preprocessing: str
    weights: str
    weights_sha256: str
    normalized: bool
    dim: int
    opset: int
    tensorflow_version: str
    tf2onnx_version: str
    precision: str = "fp32"
    calibration: str = ""
    # Derived from the fields above, never taken from a file: a model or catalog that recorded an
    # older fingerprint (one that hashed the graph and the tool versions) gets today's on reading.
    fingerprint: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "fingerprint", model_fingerprint(self))

    def to_metadata(self) -> dict[str, str]:
        """Flatten to ONNX ``metadata_props`` (string to string)."""
        return {METADATA_PREFIX + key: _metadata_value(value) for key, value in asdict(self).items()}

    @classmethod
    def from_metadata(cls, props: Mapping[str, str], source: str = "model") -> ModelInfo:
        """Parse ``metadata_props``; a model without our keys is a clear error."""
        ours = {k[len(METADATA_PREFIX) :]: v for k, v in props.items() if k.startswith(METADATA_PREFIX)}
        if not ours:
            raise ModelError(
                f"{source} has no fashionrec metadata: it was not made by `fashionrec export`. "
                "Export a model with `fashionrec export --out model.onnx`."
            )
        if ours.get("format_version") != FORMAT_VERSION:
            raise ModelError(
                f"{source} has metadata format {ours.get('format_version')!r}, this library reads "
                f"{FORMAT_VERSION!r}. Re-export it with this version of `fashionrec export`."
            )
        fields = cls.__dataclass_fields__
        missing = [name for name, f in fields.items() if f.init and name not in ours and f.default is MISSING]
        if missing:
            raise ModelError(f"{source} metadata lacks {', '.join(missing)}; re-export the model.")
        kwargs: dict[str, object] = {}
        try:
            for name, f in fields.items():
                if name not in ours or not f.init:  # the recorded fingerprint is computed again
                    continue
                raw = ours[name]
                if f.type in ("int", int):
                    kwargs[name] = int(raw)
                elif f.type in ("bool", bool):
                    kwargs[name] = raw == "true"
                else:
                    kwargs[name] = raw
        except ValueError as exc:
            raise ModelError(f"{source} has malformed metadata ({exc}); re-export the model.") from exc
        info = cls(**kwargs)  # type: ignore[arg-type]
        if info.resize not in RESIZE_METHODS:
            raise ModelError(f"{source} records unknown resize method {info.resize!r}.")
        return info

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def _metadata_value(value: object) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def model_fingerprint(info: ModelInfo) -> str:
    """16 hex digits naming what the model computes (``IDENTITY_FIELDS``), whatever wrote it.

    Values are hashed as they are written to metadata, so an exported model, the same model read
    back and a catalog's copy of its metadata all give one fingerprint.
    """
    identity = {name: _metadata_value(getattr(info, name)) for name in IDENTITY_FIELDS}
    payload = json.dumps([FINGERPRINT_SCHEME, identity], sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def recorded_fingerprint(props: Mapping[str, str]) -> str | None:
    """The fingerprint a model file or catalog recorded: an earlier scheme's in files written
    before the fingerprint named only what the model computes (it hashed the graph and tool
    versions), today's otherwise. Only for recognising what those files were paired with."""
    return props.get(METADATA_PREFIX + "fingerprint")


def _check_model_file(path: Path) -> None:
    if not path.exists():
        raise ModelError(
            f"model file {path} does not exist; create it with `fashionrec export --out {path}`."
        )
    if not path.is_file():
        raise ModelError(f"model path {path} is not a file.")


def read_model_info(path: str | os.PathLike[str]) -> ModelInfo:
    """Read a model's metadata without building a full inference session."""
    path = Path(path)
    _check_model_file(path)
    return ModelInfo.from_metadata(_session_metadata(create_session(path, threads=1)), str(path))


def _session_metadata(session: ort.InferenceSession) -> dict[str, str]:
    return dict(session.get_modelmeta().custom_metadata_map)


def default_threads() -> int:
    """Intra-op threads: all cores the process may use (2 on the reference machine)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def create_session(
    path: str | os.PathLike[str] | bytes,
    threads: int | None = None,
    providers: Sequence[str] | None = None,
) -> ort.InferenceSession:
    """Build the onnxruntime session: the only place session options and providers are set.

    ``path`` may also be a serialised model (the library's own small helper graphs)."""
    model: str | bytes = path if isinstance(path, bytes) else str(path)
    path = Path("<in-memory model>") if isinstance(path, bytes) else Path(path)
    if isinstance(model, str):
        _check_model_file(path)
    available = ort.get_available_providers()
    chosen = list(providers) if providers else ["CPUExecutionProvider"]
    unknown = [p for p in chosen if p not in available]
    if unknown:
        raise ModelError(
            f"onnxruntime provider(s) {', '.join(unknown)} not available here; "
            f"available: {', '.join(available)}."
        )
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or default_threads()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    # Idle inference threads sleep instead of spinning, leaving the cores to the decoding pool
    # that overlaps inference during ingest.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(model, sess_options=options, providers=chosen)
    except Exception as exc:  # onnxruntime raises its own, untyped errors
        raise ModelError(f"onnxruntime cannot load {path}: {exc}. Is it an ONNX model file?") from exc


def load_model(
    path: str | os.PathLike[str],
    threads: int | None = None,
    providers: Sequence[str] | None = None,
) -> tuple[ort.InferenceSession, ModelInfo]:
    """Open a session and check it honours the model contract."""
    session = create_session(path, threads=threads, providers=providers)
    info = ModelInfo.from_metadata(_session_metadata(session), str(path))
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name: o for o in session.get_outputs()}
    if INPUT_NAME not in inputs or OUTPUT_NAME not in outputs or len(inputs) != 1:
        raise ModelError(
            f"{path} does not follow the contract (one input {INPUT_NAME!r}, output "
            f"{OUTPUT_NAME!r}); got inputs {list(inputs)} and outputs {list(outputs)}."
        )
    if inputs[INPUT_NAME].type != "tensor(uint8)":
        raise ModelError(f"{path} input {INPUT_NAME!r} is {inputs[INPUT_NAME].type}, expected uint8.")
    log.debug("loaded %s (%s, %s px, dim %d)", path, info.weights, info.input_size, info.dim)
    return session, info
