"""The wheel builds without setuptools' warnings and holds the code, the sample and the licences."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, list[str]]:
    """`pip wheel . --no-deps` (verbose, so the build backend's warnings are in the output)."""
    out = tmp_path_factory.mktemp("wheel")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-v", "-w", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (wheel,) = out.glob("fashionrec_onnx-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        return result.stdout + result.stderr, archive.namelist()


def test_building_prints_no_package_would_be_ignored_warning(built) -> None:
    output, _ = built
    assert "would be ignored" not in output and "is absent from the `packages`" not in output


def test_the_wheel_holds_the_three_packages(built) -> None:
    _, names = built
    for module in (
        "fashionrec_onnx/catalog.py",
        "fashionrec_onnx/cli.py",
        "fashionrec_export/export_resnet50.py",
        "fashionrec_export/quantize.py",
        "fashionrec_export/tensorflow_logs.py",
        "fashionrec_demo/app.py",
    ):
        assert module in names


def test_the_wheel_holds_the_whole_bundled_sample(built) -> None:
    _, names = built
    sample = "fashionrec_onnx/data/fashion-mnist-sample/"
    images = [n for n in names if n.startswith(sample) and n.endswith(".png")]
    assert len(images) == 1000
    assert {sample + "labels.csv", sample + "LICENSE"} <= set(names)


def test_the_wheel_holds_both_licences(built) -> None:
    _, names = built
    licences = {n.split(".dist-info/licenses/", 1)[1] for n in names if ".dist-info/licenses/" in n}
    assert licences == {"LICENSE", "fashionrec_onnx/data/fashion-mnist-sample/LICENSE"}
