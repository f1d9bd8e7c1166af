"""The demo's first start offline, and the starts after it: each runs in its own process, for real.

The ImageNet export is really attempted (and fails: no cached weights, a dead proxy). The
fallback model is the session's 224 px random-weights test model, copied to where the demo
would export the same model (same settings, same fingerprint), to keep the tests short.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from fashionrec_demo.app import WEIGHTS_UNAVAILABLE_MARKER
from fashionrec_demo.screenshot import free_port
from fashionrec_export.export_resnet50 import IMAGENET_NOTOP_FILE

FASHIONREC = str(Path(sys.executable).with_name("fashionrec"))
IMAGENET_ATTEMPT = "[export] build ResNet50 (imagenet"
START = """
import json, logging, sys
from pathlib import Path
from fashionrec_demo.app import default_catalog

logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
catalog, banner = default_catalog(Path(sys.argv[1]), retry_weights=sys.argv[2:] == ["--retry-weights"])
print(json.dumps({"items": len(catalog), "banner": banner is not None, "weights": catalog.info.weights,
                  "tensorflow_loaded": "tensorflow" in sys.modules}))
catalog.close()
"""


def start(home: Path, env: dict[str, str], *flags: str) -> tuple[dict, str]:
    """One start of the demo's bootstrap (what `fashionrec demo` does before serving)."""
    result = subprocess.run(
        [sys.executable, "-c", START, str(home), *flags],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, **env},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("\n") == 1, result.stdout
    return json.loads(result.stdout), result.stderr


@pytest.fixture(scope="module")
def first_start(tmp_path_factory: pytest.TempPathFactory, test_model: Path, offline_env):
    root = tmp_path_factory.mktemp("bootstrap")
    home = root / "home"
    home.mkdir()
    shutil.copyfile(test_model, home / "resnet50-random-seed0.onnx")
    env = offline_env(root / "keras")
    summary, stderr = start(home, env)
    return home, env, summary, stderr


@pytest.fixture()
def home_after_first_start(first_start, tmp_path: Path) -> Path:
    """A private copy of the home the first start left, for a test that starts again."""
    home = tmp_path / "home"
    shutil.copytree(first_start[0], home)
    return home


def test_first_start_offline_falls_back_to_random_weights_with_a_banner(first_start) -> None:
    _, _, summary, stderr = first_start
    assert IMAGENET_ATTEMPT in stderr and IMAGENET_NOTOP_FILE in stderr
    assert "FALLING BACK TO SEEDED RANDOM WEIGHTS" in stderr
    assert summary["banner"] and summary["weights"] == "random:seed=0" and summary["items"] == 1000


def test_first_start_offline_remembers_that_the_weights_were_unavailable(first_start) -> None:
    home = first_start[0]
    marker = home / WEIGHTS_UNAVAILABLE_MARKER
    assert IMAGENET_NOTOP_FILE in marker.read_text()
    assert not (home / "resnet50-imagenet.onnx").exists()


def test_the_export_runs_in_a_child_so_tensorflow_never_loads_in_the_demo(first_start) -> None:
    assert first_start[2]["tensorflow_loaded"] is False


def test_a_second_start_after_an_offline_failure_does_not_try_the_export_again(
    first_start, home_after_first_start: Path
) -> None:
    marker = home_after_first_start / WEIGHTS_UNAVAILABLE_MARKER
    before = marker.read_text()
    summary, stderr = start(home_after_first_start, first_start[1])
    assert IMAGENET_ATTEMPT not in stderr
    assert "not trying again" in stderr and "--retry-weights" in stderr
    assert marker.read_text() == before
    assert summary["banner"] and summary["tensorflow_loaded"] is False


def test_a_weights_file_put_in_the_keras_cache_is_tried_without_the_flag(
    first_start, home_after_first_start: Path, tmp_path: Path, offline_env
) -> None:
    keras_home = tmp_path / "keras"
    (keras_home / "models").mkdir(parents=True)
    (keras_home / "models" / IMAGENET_NOTOP_FILE).write_bytes(b"not the real weights")
    summary, stderr = start(home_after_first_start, offline_env(keras_home))
    assert IMAGENET_ATTEMPT in stderr
    assert summary["banner"]  # a broken file: tried, refused, and the demo still starts


def test_fashionrec_demo_retry_weights_tries_the_export_again(
    first_start, home_after_first_start: Path
) -> None:
    home = home_after_first_start
    marker = home / WEIGHTS_UNAVAILABLE_MARKER
    marker.write_text("2000-01-01 00:00:00\nan old failure\n")
    port = free_port()
    command = [FASHIONREC, "demo", "--home", str(home), "--port", str(port), "--retry-weights"]
    process = subprocess.Popen(
        command,
        env={**os.environ, **first_start[1]},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/config", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(1)
    finally:
        process.terminate()
        output = process.communicate(timeout=60)[0]
    assert IMAGENET_ATTEMPT in output, output
    assert "serving 1000 photos of 394 products" in output
    assert marker.read_text().startswith(time.strftime("%Y-"))  # the new failure replaced the old one
