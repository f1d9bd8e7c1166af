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
from pathlib import Path

from fashionrec_export.tensorflow_logs import import_tensorflow


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
    from tf2onnx.convert import _convert_common  # what tf2onnx.convert.from_function runs after freezing

    logging.getLogger("tf2onnx").setLevel(logging.WARNING)
    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(graph_path.read_bytes())
    with tf.device("/cpu:0"):
        model_proto, _ = _convert_common(
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
    except Exception as exc:  # the parent turns this line into its ExportError
        print(f"error: tf2onnx could not convert the model: {exc!r}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
