"""Shared fixtures: the exported test models are built once per session (and cached on disk).

Tests use seeded random weights: ImageNet weights cannot be downloaded here, and the pipeline's
behaviour (contract, parity, storage, search) does not depend on which weights are loaded.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODEL_CACHE = ROOT / ".cache" / "test-models"
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


def _export_cached(name: str, **config: object) -> Path:
    """Export under a file lock: parallel test workers (pytest-xdist) wait for one export."""
    import fcntl

    from fashionrec_export.export_resnet50 import export_cached

    MODEL_CACHE.mkdir(parents=True, exist_ok=True)
    with open(MODEL_CACHE / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return export_cached(MODEL_CACHE, name, **config)


@pytest.fixture(scope="session")
def test_model() -> Path:
    """The contract-sized model: 224 px, max pooling, random weights with seed 0."""
    return _export_cached("resnet50-224-seed0", weights="random", seed=0, size=224)


@pytest.fixture(scope="session")
def small_model() -> Path:
    """Same architecture at 64 px: Fashion-MNIST images are 28 px, and it embeds ~10x faster."""
    return _export_cached("resnet50-64-seed0", weights="random", seed=0, size=64)


@pytest.fixture()
def model_copy(tmp_path: Path, test_model: Path) -> Path:
    """A private copy for tests that move, corrupt or delete the model file."""
    target = tmp_path / "model.onnx"
    shutil.copyfile(test_model, target)
    return target


@pytest.fixture()
def bare_model(tmp_path: Path, small_model: Path) -> Path:
    """The test model with its fashionrec metadata stripped: an ONNX file that is not ours."""
    import onnx

    model = onnx.load(str(small_model))
    del model.metadata_props[:]
    path = tmp_path / "bare.onnx"
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="session")
def fashion_mnist_dir() -> Path:
    if not (FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz").exists():
        pytest.fail(
            f"{FASHION_MNIST_DIR} is missing: install the Debian package dataset-fashion-mnist "
            "(.ci/run does)."
        )
    return FASHION_MNIST_DIR


@pytest.fixture(scope="session")
def offline_env() -> Callable[[Path], dict[str, str]]:
    """Environment for a child process without the ImageNet weights: an empty Keras cache at the
    given path and a dead proxy (offline even where there is network)."""

    def env(keras_home: Path) -> dict[str, str]:
        dead_proxy = "http://127.0.0.1:9"
        return {
            "KERAS_HOME": str(keras_home),
            **{name: dead_proxy for name in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy")},
            "NO_PROXY": "127.0.0.1,localhost",  # the demo's own server stays reachable
            "no_proxy": "127.0.0.1,localhost",
        }

    return env


@pytest.fixture(autouse=True, scope="session")
def _quiet_tensorflow() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


# --- Milvus: one real server per session, started only when a test asks for it ---------------------


@pytest.fixture(scope="session")
def milvus_server(tmp_path_factory: pytest.TempPathFactory):
    """A Milvus 2.3 standalone server (PyPI `milvus`, in the dev extra) on free loopback ports,
    its data in a temporary directory; started on first use (about 10 s), stopped at the end."""
    from milvus_server import TestServer

    server = TestServer(tmp_path_factory.mktemp("milvus-server"))
    server.start()
    yield server
    server.stop()


@pytest.fixture()
def milvus_uri(milvus_server, request: pytest.FixtureRequest) -> str:
    """A fresh collection name on the session's server (dropped after the test)."""
    import uuid

    uri = milvus_server.uri(f"t_{uuid.uuid4().hex[:16]}")
    yield uri
    _drop_collection(uri)


def _drop_collection(uri: str) -> None:
    from fashionrec_onnx.catalog.location import parse
    from fashionrec_onnx.catalog.milvus_backend import MilvusBackend

    backend = MilvusBackend.connect(parse(uri))
    try:
        backend.drop()
    finally:
        backend.close()


@pytest.fixture(params=["local", "milvus"])
def new_location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where a new catalog goes, once per backend: a local directory, then a Milvus collection."""
    if request.param == "local":
        return str(tmp_path / "catalog")
    return request.getfixturevalue("milvus_uri")
