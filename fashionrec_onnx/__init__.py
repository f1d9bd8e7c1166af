"""fashionrec-onnx: visual product search for fashion on onnxruntime and hnswlib.

``import fashionrec_onnx`` never imports TensorFlow or Gradio.
"""

from __future__ import annotations

import logging

from .errors import (
    CatalogCorruptError,
    CatalogError,
    ExportError,
    FashionrecError,
    ImageLoadError,
    ModelError,
    ModelMismatchError,
    WeightsUnavailableError,
)
from .model import ModelInfo, read_model_info

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "CatalogCorruptError",
    "CatalogError",
    "ExportError",
    "FashionrecError",
    "ImageLoadError",
    "ModelError",
    "ModelInfo",
    "ModelMismatchError",
    "WeightsUnavailableError",
    "__version__",
    "read_model_info",
]
