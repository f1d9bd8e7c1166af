"""The wheel builds without setuptools' warnings and holds the code, the sample and the licences."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, list[str]]:
    """`pip wheel . --no-deps` (verbose, so the build backend's warnings are in the output).

    From a copy of the source tree: setuptools never cleans its build/ folder, so a build in
    place could ship files (a deleted module, say) that the configuration no longer names.
    """
    source = tmp_path_factory.mktemp("source") / "fashionrec-onnx"
    junk = (".git", ".venv*", ".cache", "build", "dist", "*.egg-info", "__pycache__", ".*_cache")
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*junk))
    out = tmp_path_factory.mktemp("wheel")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "-v", "-w", str(out)],
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


def test_the_wheel_holds_every_module_of_the_three_packages(built) -> None:
    _, names = built
    for folder, package in (("fashionrec_onnx", "fashionrec_onnx"), ("export", "fashionrec_export"),
                            ("demo", "fashionrec_demo")):  # fmt: skip
        modules = [p.relative_to(ROOT / folder).as_posix() for p in (ROOT / folder).rglob("*.py")]
        modules = [m for m in modules if "__pycache__" not in m]
        assert modules and "__init__.py" in modules
        missing = [m for m in modules if f"{package}/{m}" not in names]
        assert not missing, f"{package}: {missing}"


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


def _pins() -> dict[str, str]:
    """constraints.txt as {canonical name: version}; every line a comment or one `name==version`."""
    from packaging.utils import canonicalize_name

    lines = [line for line in (ROOT / "constraints.txt").read_text().splitlines() if line.strip()]
    pins = [line.split("==") for line in lines if not line.startswith("#")]
    malformed = [p for p in pins if len(p) != 2 or not p[0] or not p[1] or " " in "".join(p)]
    assert not malformed, f"constraints.txt: one `name==version` a line, not {malformed}"
    names = [canonicalize_name(name) for name, _ in pins]
    assert names == sorted(names, key=str.lower), "constraints.txt is kept sorted by name"
    assert len(set(names)) == len(names), "constraints.txt pins each package once"
    return {name: version for name, (_, version) in zip(names, pins)}


def test_constraints_pin_every_requirement_that_make_install_installs() -> None:
    """`make install` installs the tested set: a dependency added without its pin fails here."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = re.search(r"^EXTRAS := (\S+)$", (ROOT / "Makefile").read_text(), re.M)
    assert extras, "the Makefile names the extras `make install` installs"
    requirements = list(project["dependencies"])
    for extra in extras.group(1).split(","):
        requirements += project["optional-dependencies"][extra]
    pins = _pins()
    for requirement in map(Requirement, requirements):
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} is required by pyproject.toml but not pinned in constraints.txt"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"constraints.txt pins {name}=={pins[name]}, outside pyproject.toml's {requirement}"
        )
    assert canonicalize_name(project["name"]) not in pins, "the project itself is not pinned"
