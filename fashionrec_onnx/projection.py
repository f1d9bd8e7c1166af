"""A refined model: the base ONNX graph with a learned projection and the L2 normalisation
appended, so the whole pipeline stays one file of the model contract (uint8 image in, unit
float32 ``embedding`` out, fashionrec metadata).

The base graph's output is renamed and fed through ``unit((x - mean) @ matrix)``; the metadata is
the base model's with the new dimension, a weights digest covering the projection (so a new
fingerprint), and ``fashionrec.refine.*`` entries
naming the base model's fingerprint, the training catalog, the label fields and the held-out
scores. Only the ``onnx`` package is needed (no TensorFlow).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path

import numpy as np

from .errors import ModelError
from .model import METADATA_PREFIX, OUTPUT_NAME, ModelInfo

REFINE_PREFIX = METADATA_PREFIX + "refine."
NORM_EPS = 1e-12  # as the exporter's: an all-zero row stays zero, never NaN
_BASE_OUTPUT = "fashionrec_base_embedding"
_NAME = "fashionrec_refine_"  # prefix of the appended nodes and arrays


def _onnx():  # noqa: ANN202 - the onnx module
    try:
        import onnx
    except ImportError as exc:  # pragma: no cover - a dependency of the package
        raise ModelError("writing a refined model needs the `onnx` package (pip install onnx).") from exc
    return onnx


def refinement_of(path: str | os.PathLike[str]) -> dict[str, str]:
    """The ``fashionrec.refine.*`` metadata of a model (empty for a model that is not refined)."""
    onnx = _onnx()
    model = onnx.load(str(path), load_external_data=False)
    return {
        prop.key[len(REFINE_PREFIX) :]: prop.value
        for prop in model.metadata_props
        if prop.key.startswith(REFINE_PREFIX)
    }


def read_projection(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray, str]:
    """The mean, matrix and base fingerprint a refined model carries (to derive other catalogs of
    the base model under it without re-embedding)."""
    onnx = _onnx()
    from onnx import numpy_helper

    model = onnx.load(str(path))
    arrays = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer if t.name.startswith(_NAME)}
    base = {p.key: p.value for p in model.metadata_props}.get(REFINE_PREFIX + "base_fingerprint")
    if base is None or _NAME + "mean" not in arrays or _NAME + "matrix" not in arrays:
        raise ModelError(f"{path} is not a refined model (made by `fashionrec refine`).")
    return arrays[_NAME + "mean"].astype(np.float32), arrays[_NAME + "matrix"].astype(np.float32), base


def refined_weights_digest(base: ModelInfo, mean: np.ndarray, matrix: np.ndarray) -> str:
    """The refined model's weights: the base model's digest and the projection's arrays. The
    fingerprint derives from it (see `ModelInfo`), so two projections are two models."""
    digest = hashlib.sha256(f"{base.weights_sha256};refine;".encode())
    for array in (mean, matrix):
        array = np.ascontiguousarray(array, dtype="<f4")
        digest.update(f"{array.shape};".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def append_projection(
    base_path: str | os.PathLike[str],
    mean: np.ndarray,
    matrix: np.ndarray,
    out: str | os.PathLike[str],
    provenance: Mapping[str, object],
) -> ModelInfo:
    """Write the refined model to ``out`` (atomically) and return its metadata. ``provenance``
    values are recorded as ``fashionrec.refine.<name>`` (non-strings as JSON)."""
    onnx = _onnx()
    from onnx import TensorProto, helper, numpy_helper

    base_path, out = Path(base_path), Path(out)
    model = onnx.load(str(base_path))
    props = {prop.key: prop.value for prop in model.metadata_props}
    base = ModelInfo.from_metadata(props, str(base_path))
    mean = np.asarray(mean, np.float32).reshape(-1)
    matrix = np.asarray(matrix, np.float32)
    if matrix.ndim != 2 or matrix.shape[0] != base.dim or mean.shape != (base.dim,):
        raise ModelError(
            f"the projection ({mean.shape} mean, {matrix.shape} matrix) does not fit {base_path}'s "
            f"{base.dim}-d embeddings."
        )
    if not (np.all(np.isfinite(matrix)) and np.all(np.isfinite(mean))):
        raise ModelError("the projection holds non-finite numbers; nothing was written.")
    graph = model.graph
    producers = [node for node in graph.node if OUTPUT_NAME in node.output]
    if len(producers) != 1 or [o.name for o in graph.output] != [OUTPUT_NAME]:
        raise ModelError(f"{base_path} does not end in one {OUTPUT_NAME!r} output; is it a fashionrec model?")
    node = producers[0]
    node.output[list(node.output).index(OUTPUT_NAME)] = _BASE_OUTPUT
    for other in graph.node:  # nothing should read the output inside the graph, but be exact
        for i, name in enumerate(other.input):
            if name == OUTPUT_NAME:
                other.input[i] = _BASE_OUTPUT
    dim = int(matrix.shape[1])
    name = _NAME
    graph.initializer.extend(
        [
            numpy_helper.from_array(mean, name + "mean"),
            numpy_helper.from_array(matrix, name + "matrix"),
            numpy_helper.from_array(np.ones((dim, 1), np.float32), name + "ones"),
            numpy_helper.from_array(np.asarray(NORM_EPS, np.float32), name + "eps"),
        ]
    )
    graph.node.extend(
        [
            helper.make_node("Sub", [_BASE_OUTPUT, name + "mean"], [name + "centred"], name=name + "centre"),
            helper.make_node(
                "MatMul", [name + "centred", name + "matrix"], [name + "z"], name=name + "project"
            ),
            helper.make_node("Mul", [name + "z", name + "z"], [name + "squares"], name=name + "square"),
            # a MatMul with ones sums the squares: the same in every opset (ReduceSum's axes moved)
            helper.make_node("MatMul", [name + "squares", name + "ones"], [name + "sum"], name=name + "sum"),
            helper.make_node("Sqrt", [name + "sum"], [name + "norm"], name=name + "sqrt"),
            helper.make_node("Max", [name + "norm", name + "eps"], [name + "safe"], name=name + "floor"),
            helper.make_node("Div", [name + "z", name + "safe"], [OUTPUT_NAME], name=name + "normalise"),
        ]
    )
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N", dim]))
    fields = asdict(base)
    fields.pop("fingerprint")
    fields.update(dim=dim, weights_sha256=refined_weights_digest(base, mean, matrix))
    info = ModelInfo(**fields)
    metadata = info.to_metadata()
    metadata.update(
        {
            REFINE_PREFIX + "base_fingerprint": base.fingerprint,
            **{
                REFINE_PREFIX + key: value if isinstance(value, str) else json.dumps(value, sort_keys=True)
                for key, value in provenance.items()
            },
        }
    )
    helper.set_model_props(model, metadata)
    model.doc_string = f"{model.doc_string}; refined: learned {base.dim}->{dim} projection, unit embeddings"
    _write_atomically(model.SerializeToString(), out)
    return info


def _write_atomically(data: bytes, out: Path) -> None:
    parent = out.parent if str(out.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
