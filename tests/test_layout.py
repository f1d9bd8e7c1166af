"""The package's layout (issue 24): subpackages by job, arrows one way, no import circles, a small
top level, every package saying what it is for, and a light ``import fashionrec_onnx``."""

from __future__ import annotations

import ast
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

PACKAGE = "fashionrec_onnx"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE

# Who may import whom: a module imports only modules of its own layer or of a lower one.
# The package __init__ is the public API, above everything; `_moved` aliases old paths.
LAYERS = {
    "core": 0,  # errors, images, model, embedder, _version
    "catalog": 1,
    "feeds": 2,
    "interchange": 2,
    "quality": 2,
    "service": 3,
    "cli": 3,
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}
PACKAGES = {name for name, p in MODULES.items() if p.name == "__init__.py"}


def _imports(name: str) -> set[str]:
    """The package modules ``name`` imports, wherever the import stands: at module level, inside
    functions, and under ``if TYPE_CHECKING:`` too (an import for type annotations only still ties
    the modules together: a type checker, a reader and the docs follow it)."""
    path = MODULES[name]
    package = name if name in PACKAGES else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in MODULES else target)
    return {m for m in found if m in MODULES and m != name}


GRAPH = {name: _imports(name) for name in MODULES}


def _package(name: str) -> str | None:
    """The subpackage a module belongs to ("core" for the top-level modules); None for the public
    API (the package __init__) and `_moved`, which sit above everything."""
    parts = name.split(".")
    if len(parts) == 1 or parts[1] == "_moved":
        return None
    return parts[1] if f"{PACKAGE}.{parts[1]}" in PACKAGES else "core"


# The same arrows between packages: feeds -> catalog when any module of feeds imports one of catalog.
PACKAGE_GRAPH: dict[str, set[str]] = {}
for _a, _targets in GRAPH.items():
    for _b in _targets:
        _pa, _pb = _package(_a), _package(_b)
        if _pa is not None and _pb is not None and _pa != _pb:
            PACKAGE_GRAPH.setdefault(_pa, set()).add(_pb)


def _layer(name: str) -> int | None:
    """None for the public API (the package __init__) and `_moved`: they sit above everything."""
    parts = name.split(".")
    if len(parts) == 1 or parts[1] == "_moved":
        return None
    return LAYERS.get(parts[1], LAYERS["core"])


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def strongconnect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    return found


def test_the_import_graph_sees_the_known_arrows():
    """The graph is not empty by mistake: a few arrows every reader of the code can check."""
    assert "fashionrec_onnx.catalog.store" in GRAPH["fashionrec_onnx.catalog.core"]
    assert "fashionrec_onnx.catalog.jobs" in GRAPH["fashionrec_onnx.feeds"]
    assert "fashionrec_onnx.cli.common" in GRAPH["fashionrec_onnx.cli.sync"]
    assert "fashionrec_onnx.feeds.sync" in GRAPH["fashionrec_onnx.feeds"]  # a function-level import


def test_type_checking_imports_count():
    """An import under ``if TYPE_CHECKING:`` is an arrow too."""
    assert "fashionrec_onnx.catalog" in GRAPH["fashionrec_onnx.feeds.lock"]  # only for type checking


def test_there_are_no_import_circles():
    assert _cycles(GRAPH) == []


def test_there_are_no_circles_between_packages():
    """feeds, interchange and quality share a layer; among them too the arrows point one way."""
    assert _cycles(PACKAGE_GRAPH) == []
    assert PACKAGE_GRAPH["catalog"] == {"core"}


def test_arrows_point_one_way():
    """cli/service -> feeds/interchange/quality -> catalog -> core (errors, images, model, embedder)."""
    wrong = []
    for a, targets in GRAPH.items():
        for b in targets:
            low, high = _layer(a), _layer(b)
            if low is not None and (high is None or high > low):
                wrong.append(f"{a} -> {b}")
    assert wrong == []


def test_the_catalog_imports_none_of_the_jobs_built_on_it():
    above = ("feeds", "interchange", "quality", "cli", "service")
    wrong = [
        f"{a} -> {b}"
        for a, targets in GRAPH.items()
        if a.startswith(f"{PACKAGE}.catalog")
        for b in targets
        if b.split(".")[1] in above
    ]
    assert wrong == []


def test_cli_command_modules_import_only_the_shared_helpers():
    """One module per command group; they share `cli.common`, and only `main` assembles them."""
    wrong = [
        f"{a} -> {b}"
        for a, targets in GRAPH.items()
        if a.startswith(f"{PACKAGE}.cli.") and a not in (f"{PACKAGE}.cli.main", f"{PACKAGE}.cli.__main__")
        for b in targets
        if b.startswith(f"{PACKAGE}.cli") and b != f"{PACKAGE}.cli.common"
    ]
    assert wrong == []


def test_the_top_level_holds_at_most_twelve_modules():
    top = sorted(p.name for p in ROOT.glob("*.py"))
    assert len(top) <= 12, top


def test_every_package_says_in_two_lines_what_it_is_for():
    for name in sorted(PACKAGES):
        doc = ast.get_docstring(ast.parse(MODULES[name].read_text()))
        assert doc, f"{name} has no docstring"
        summary = doc.split("\n\n")[0]
        assert len(summary.splitlines()) <= 2, f"{name}: {summary!r}"


def test_importing_the_package_leaves_the_heavy_extras_alone():
    heavy = ["tensorflow", "gradio", "ray", "pymilvus", "pyarrow", "fastapi"]
    code = (
        "import sys, fashionrec_onnx; "
        f"print(' '.join(m for m in {heavy!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("fashionrec_onnx.index", "fashionrec_onnx.catalog.hnsw"),
        ("fashionrec_onnx.sync", "fashionrec_onnx.feeds.sync"),
        ("fashionrec_onnx.catalog.indexing", "fashionrec_onnx.feeds.folders"),
        ("fashionrec_onnx.evaluate_report", "fashionrec_onnx.quality.report"),
        ("fashionrec_onnx.cli_args", "fashionrec_onnx.cli.common"),
    ],
)
def test_an_old_import_path_warns_and_is_the_moved_module(old, new):
    import importlib

    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=new.replace(".", r"\.")):
        module = importlib.import_module(old)
    assert module is importlib.import_module(new)


def test_every_moved_path_still_imports():
    import importlib

    from fashionrec_onnx._moved import MOVED

    for old in MOVED:
        if old.endswith("distributed"):
            continue  # needs the ray extra's pyarrow; covered by test_distributed
        sys.modules.pop(f"{PACKAGE}.{old}", None)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            assert importlib.import_module(f"{PACKAGE}.{old}").__name__ == f"{PACKAGE}.{MOVED[old]}"


def test_the_catalog_s_job_methods_are_registered_from_above():
    """`Catalog.index_folder` and friends run what `feeds` and `interchange` registered."""
    import fashionrec_onnx.feeds
    from fashionrec_onnx.catalog import jobs

    assert jobs.job("index_folder") is fashionrec_onnx.feeds.index_folder
    assert {"sync", "import_vectors", "export_vectors"} <= set(jobs._registered)
    with pytest.raises(ValueError, match="no Catalog method 'reindex'"):
        jobs.register("reindex", print)


@pytest.mark.parametrize(
    ("old", "name"),
    [
        ("fashionrec_onnx.feeds.folders", "IndexReport"),
        ("fashionrec_onnx.feeds.metadata_match", "MetadataMatch"),
        ("fashionrec_onnx.feeds.metadata_match", "RULE"),
        ("fashionrec_onnx.feeds.sync", "SyncReport"),
        ("fashionrec_onnx.feeds.sync", "FailedRow"),
        ("fashionrec_onnx.feeds.download", "DownloadSettings"),
        ("fashionrec_onnx.interchange.vector_transfer", "ImportReport"),
        ("fashionrec_onnx.interchange.vector_transfer", "ExportReport"),
        ("fashionrec_onnx.quality.refine", "RefineReport"),
        ("fashionrec_onnx.quality.refine_learning", "TrainingReport"),
        ("fashionrec_onnx", "IndexReport"),
    ],
)
def test_the_job_reports_keep_their_old_paths(old, name):
    """The reports moved down into `catalog.reports` (so the catalog can name them without
    importing the jobs); where users imported them from still gives the same objects."""
    import importlib

    from fashionrec_onnx.catalog import reports

    assert getattr(importlib.import_module(old), name) is getattr(reports, name)


@pytest.mark.parametrize(
    ("module", "name"),
    [
        ("fashionrec_onnx.catalog.facade", "Catalog"),
        ("fashionrec_onnx.catalog.facade", "REDUCE_AFTER"),
        ("fashionrec_onnx.catalog.store", "Store"),
        ("fashionrec_onnx.catalog.store", "DB_NAME"),
        ("fashionrec_onnx.catalog.store", "SCHEMA_VERSION"),
        ("fashionrec_onnx.catalog.store", "is_disk_full"),
        ("fashionrec_onnx.catalog.remote", "RemoteCatalog"),
        ("fashionrec_onnx.catalog.remote", "FORMAT"),
    ],
)
def test_the_split_catalog_modules_keep_their_names(module, name):
    import importlib

    assert hasattr(importlib.import_module(module), name)


def test_no_module_is_too_long_to_read():
    """One job a module: past ~550 lines a module holds more than one (split it by job)."""
    long = {name: n for name, p in MODULES.items() if (n := len(p.read_text().splitlines())) > 550}
    assert long == {}
