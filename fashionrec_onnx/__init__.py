"""fashionrec-onnx: visual product search for fashion on onnxruntime and hnswlib.

``import fashionrec_onnx`` never imports TensorFlow or Gradio.
"""

from __future__ import annotations

import logging

from . import _moved
from . import interchange as interchange  # registers Catalog.import_vectors/export_vectors
from . import quality as quality  # registers Catalog.refine
from ._version import __version__
from .catalog import Catalog, CheckReport, DuplicateGroup, DuplicateReport, Hit, Item
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
from .feeds import IndexReport  # and registers Catalog.index_folder/sync
from .images import load_image, prepare_image
from .model import ModelInfo, read_model_info

logging.getLogger(__name__).addHandler(logging.NullHandler())
_moved.install()  # 0.1 import paths (fashionrec_onnx.index, ...) warn and still work

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
