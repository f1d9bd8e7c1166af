"""fashionrec-onnx: visual product search for fashion on onnxruntime and hnswlib.

``import fashionrec_onnx`` never imports TensorFlow or Gradio.
"""

from __future__ import annotations

import logging

from .catalog import Catalog, CheckReport, DuplicateGroup, DuplicateReport, Hit, IndexReport, Item
from .embedder import Embedder, EmbedResult, Failure
from .errors import (
    BadArgumentError,
    CatalogCorruptError,
    CatalogError,
    DiskFullError,
    ExportError,
    FashionrecError,
    ImageLoadError,
    ModelError,
    ModelMismatchError,
    UnknownKeyError,
    WeightsUnavailableError,
)
from .images import load_image, prepare_image
from .model import ModelInfo, read_model_info

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "Catalog",
    "CheckReport",
    "DuplicateGroup",
    "DuplicateReport",
    "EmbedResult",
    "Embedder",
    "Failure",
    "Hit",
    "IndexReport",
    "Item",
    "load_image",
    "prepare_image",
    "BadArgumentError",
    "CatalogCorruptError",
    "DiskFullError",
    "CatalogError",
    "ExportError",
    "FashionrecError",
    "ImageLoadError",
    "ModelError",
    "ModelInfo",
    "ModelMismatchError",
    "UnknownKeyError",
    "WeightsUnavailableError",
    "__version__",
    "read_model_info",
]
