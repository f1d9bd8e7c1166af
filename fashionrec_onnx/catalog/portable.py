"""A catalog directory that moves as one piece: its model copied inside it.

A catalog records the path of its model; a model inside the catalog directory is recorded relative
to it (see `opening.recorded_model_path`), so copying the directory to a server keeps it working.
``Catalog.create(path, copy_model_into(path, model))`` (or ``fashionrec index --copy-model``)
makes such a catalog; an existing one finds a ``model.onnx`` copied into its directory by itself.
"""

from __future__ import annotations

import filecmp
import os
import shutil
from pathlib import Path

from .opening import MODEL_NAME


def copy_model_into(catalog: str | os.PathLike[str], model: str | os.PathLike[str]) -> Path:
    """``model`` copied to ``catalog/model.onnx`` (atomically; kept when already the same file).
    Returns the copy, to create or open the catalog with."""
    root = Path(catalog).expanduser()
    source = Path(model).expanduser().resolve()
    target = root / MODEL_NAME
    root.mkdir(parents=True, exist_ok=True)
    if target.resolve() == source or (target.is_file() and filecmp.cmp(source, target, shallow=False)):
        return target.resolve()
    partial = root / f"{MODEL_NAME}.copying-{os.getpid()}"
    try:
        shutil.copyfile(source, partial)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return target.resolve()
