"""The ONNX conversion of a frozen TensorFlow graph, in a process of its own.

`export_model` builds ResNet50 in Keras, freezes its serving function into a GraphDef (94 MB of
weights as constants) and hands that file to this module in a fresh Python. tf2onnx's conversion
is the most memory-hungry step of an export: run here, it starts from the GraphDef alone, not on
top of the Keras model, its traced functions and TensorFlow's caches, and everything it allocated
leaves with the process. Measured figures are in docs/model.md.

    python -m fashionrec_export.convert_graph GRAPH.pb SPEC.json OUT.onnx
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any

from fashionrec_export.tensorflow_logs import import_tensorflow

from fashionrec_onnx.errors import ExportError

# The tf2onnx whose private `_convert_common` this module calls: constraints.txt's pin (a test keeps
# them equal, so `make constraints` moving tf2onnx asks for this call to be checked again).
TESTED_TF2ONNX = "1.17.0"


def tf2onnx_version() -> str:
    try:
        return metadata.version("tf2onnx")
    except metadata.PackageNotFoundError:
        return "(not installed)"


def private_converter(convert_module: ModuleType) -> Callable[..., Any]:
    """tf2onnx's ``_convert_common``: what its public ``from_function`` runs after freezing, the
    one way to convert a GraphDef read from a file. Private, so another tf2onnx may lack it: then
    one line naming the installed and the tested versions, not an AttributeError."""
    converter = getattr(convert_module, "_convert_common", None)
    if not callable(converter):
        raise ExportError(
            f"tf2onnx {tf2onnx_version()} has no tf2onnx.convert._convert_common, which the export "
            f"calls; it was tested with tf2onnx {TESTED_TF2ONNX}: install that version "
            f"(pip install 'tf2onnx=={TESTED_TF2ONNX}', or `make install`, which uses constraints.txt)"
        )
    return converter


def convert(graph_path: Path, spec: dict, out: Path) -> None:
    """``spec``: input and output tensor names, their renames and the opset (see
    `export_resnet50.frozen_graph`). Writes the ONNX model (no metadata yet) to ``out``."""
    # tf2onnx's optimiser copies the whole graph, weights included, before each of its dozen passes
    # (to roll a failing pass back), and the copies are cycles only the garbage collector frees:
    # with them ResNet50's conversion peaked near 7 GB. Without them a failing pass fails the
    # export (nothing written) instead of being skipped; the parity check judges the result.
    os.environ["TF2ONNX_CATCH_ERRORS"] = "FALSE"
    import_tensorflow()
    import logging

    import tensorflow as tf
    import tf2onnx.convert

    convert_common = private_converter(tf2onnx.convert)
    logging.getLogger("tf2onnx").setLevel(logging.WARNING)
    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(graph_path.read_bytes())
    with tf.device("/cpu:0"):
        model_proto, _ = convert_common(
            graph_def,
            name=spec["name"],
            continue_on_error=True,
            opset=spec["opset"],
            input_names=spec["inputs"],
            output_names=spec["outputs"],
            tensors_to_rename=spec["rename"],
        )
    del graph_def
    out.write_bytes(model_proto.SerializeToString())


def main(argv: list[str]) -> int:
    graph, spec, out = argv
    try:
        convert(Path(graph), json.loads(Path(spec).read_text()), Path(out))
    except ExportError as exc:  # the parent turns this line into its ExportError
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
    except Exception as exc:
        version = tf2onnx_version()
        tested = "" if version == TESTED_TF2ONNX else f"; it was tested with tf2onnx {TESTED_TF2ONNX}"
        print(
            f"error: tf2onnx could not convert the model: {exc!r} (tf2onnx {version}{tested})",
            file=sys.stderr,
            flush=True,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
