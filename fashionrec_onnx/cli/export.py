"""`fashionrec export`: build the ONNX embedding model (the export extra, TensorFlow)."""

from __future__ import annotations

import argparse

from ..errors import FashionrecError
from .common import (
    Handler,
    subcommand,
)


def _export(sub: argparse._SubParsersAction) -> None:
    parser = subcommand(
        sub,
        "export",
        "export ResNet50 + pooling to an ONNX embedding model",
        "Needs the export extra (TensorFlow, tf2onnx), and only here. The model's metadata records\n"
        "how it was made; a catalog built with it refuses any other model.",
        "  fashionrec export --out model.onnx                        # ImageNet weights\n"
        "  fashionrec export --weights random --seed 0 --out m.onnx  # offline smoke runs",
    )
    # The export code lives in export/ (installed as fashionrec_export); its arguments come from
    # there, and TensorFlow is imported only when an export runs.
    try:
        from fashionrec_export.export_resnet50 import add_arguments
    except ImportError:  # pragma: no cover - package installed without export/
        return
    add_arguments(parser)


def _cmd_export(args: argparse.Namespace) -> int:
    try:
        from fashionrec_export.export_resnet50 import run
    except ImportError as exc:  # pragma: no cover - package installed without export/
        raise FashionrecError(
            "the export code is not installed; install with `pip install 'fashionrec-onnx[export]'`."
        ) from exc
    return run(args)


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register export on the `fashionrec` parser."""
    _export(sub)


HANDLERS: dict[str, Handler] = {
    "export": _cmd_export,
}
