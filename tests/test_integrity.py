"""Data integrity under attack and accident: racing creators, full disks, doctored models,
rebuilds under readers, lost PCA files, writers racing searches, read-only media."""

from __future__ import annotations

import contextlib
import gc
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from fashionrec_onnx import (
    Catalog,
    CatalogCorruptError,
    CatalogError,
    DiskFullError,
    ModelMismatchError,
    UnknownKeyError,
)
from fashionrec_onnx.cli import main
from fashionrec_onnx.quality.datasets import SAMPLE_DIR

DIM = 2048


def unit_vectors(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(6, DIM))
    vectors = centres[rng.integers(0, 6, n)] + 0.5 * rng.normal(size=(n, DIM))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def run_python(code: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args], capture_output=True, text=True, timeout=timeout
    )


@contextlib.contextmanager
def tmpfs(path: Path, megabytes: int):
    """A small file system of its own, so the disk can really fill up (needs root, as in CI)."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(path)])
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (not root?): the full-disk tests need one")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def remount_read_only(disk: Path) -> None:
    """The medium turns read-only. A writable mapping still held by an object awaiting the garbage
    collector makes the kernel refuse ("busy"): collect, and try again a few times."""
    for _ in range(5):
        gc.collect()
        if subprocess.run(["mount", "-o", "remount,ro", str(disk)]).returncode == 0:
            return
        time.sleep(0.5)
    subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)


def fill(disk: Path, leave_bytes: int) -> Path:
    """Fill the file system until ``leave_bytes`` remain."""
    filler = disk / "filler"
    free = shutil.disk_usage(disk).free - leave_bytes
    with filler.open("wb") as handle:
        handle.write(b"\0" * max(0, free))
    return filler


# -- creation is atomic -------------------------------------------------------------------------------

CREATOR = """
import sys, time
from pathlib import Path
import numpy as np
from fashionrec_onnx import Catalog, ModelMismatchError
go = Path(sys.argv[3])
while not go.exists():
    time.sleep(0.001)
try:
    with Catalog.open_or_create(sys.argv[1], sys.argv[2]) as catalog:
        catalog.add_many([sys.argv[4]], np.ones((1, 2048), np.float32))
    print("created-or-opened")
except ModelMismatchError as exc:
    print("mismatch:", exc)
"""


@pytest.mark.parametrize("attempt", range(3))
def test_two_processes_creating_one_catalog_with_different_models_leave_exactly_one_model(
    tmp_path: Path, small_model: Path, test_model: Path, attempt: int
) -> None:
    root, go = tmp_path / "race", tmp_path / "go"
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", CREATOR, str(root), str(model), str(go), f"from-{model.name}"],
            stdout=subprocess.PIPE, text=True,
        )
        for model in (small_model, test_model)
    ]  # fmt: skip
    time.sleep(1.5)  # both are waiting for the start signal
    go.touch()
    outputs = [p.communicate(timeout=300)[0] for p in processes]
    assert sorted(o.split(":")[0].strip() for o in outputs) == ["created-or-opened", "mismatch"], outputs
    with Catalog.open(root) as catalog:
        assert len(catalog) == 1  # only the winner's model wrote


# -- a full disk ------------------------------------------------------------------------------------------


def test_a_full_disk_fails_the_write_keeps_the_previous_state_and_says_so(
    tmp_path: Path, small_model: Path
) -> None:
    with tmpfs(tmp_path / "disk", 24) as disk:
        with Catalog.create(disk / "catalog", small_model) as catalog:
            catalog.add_many([f"a-{i}" for i in range(200)], unit_vectors(200, 1))
            before = catalog.exact_search(unit_vectors(1, 9)[0], k=5)
            filler = fill(disk, 300_000)
            with pytest.raises(DiskFullError, match="full"):
                catalog.add_many([f"b-{i}" for i in range(200)], unit_vectors(200, 2))  # 1.6 MB of vectors
            with pytest.raises(DiskFullError, match="full"):
                catalog.rebuild()  # a whole new graph file: written short, then refused
            assert len(catalog) == 200 and catalog.exact_search(unit_vectors(1, 9)[0], k=5) == before
            filler.unlink()
            catalog.add_many([f"b-{i}" for i in range(200)], unit_vectors(200, 2))
        with Catalog.open(disk / "catalog") as reopened:
            assert len(reopened) == 400 and reopened.verify() == []


def test_index_and_remove_on_a_full_disk_are_one_clear_line(
    tmp_path: Path, small_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images = tmp_path / "images"
    shutil.copytree(SAMPLE_DIR / "bag", images)
    with tmpfs(tmp_path / "disk", 24) as disk:
        catalog = str(disk / "catalog")
        assert main(["index", str(images), "--catalog", catalog, "--model", str(small_model), "--quiet"]) == 0
        fill(disk, 0)
        extra = tmp_path / "more"
        shutil.copytree(SAMPLE_DIR / "coat", extra)
        capsys.readouterr()
        assert main(["index", str(extra), "--catalog", catalog, "--key-prefix", "more/", "--quiet"]) == 2
        assert main(["remove", "test-00598.png", "--catalog", catalog]) == 2
        errors = capsys.readouterr().err.strip().splitlines()
        assert len(errors) == 2 and all(e.startswith("error:") and "full" in e for e in errors), errors
        assert "Traceback" not in "".join(errors)


# -- models whose weights do not match their metadata ------------------------------------------------------


def doctored(model: Path, target: Path, how: str) -> Path:
    """The same file and metadata with other weights: scaled (other vectors) or NaN."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(model))
    for initializer in graph.graph.initializer:
        weights = numpy_helper.to_array(initializer)
        if weights.ndim == 4 and weights.dtype == np.float32:  # the first convolution
            changed = np.full_like(weights, np.nan) if how == "nan" else weights[::-1].copy()
            initializer.CopyFrom(numpy_helper.from_array(changed, initializer.name))
            break
    onnx.save(graph, str(target))
    return target


@pytest.mark.parametrize("how", ["other-weights", "nan"])
def test_a_model_with_changed_weights_but_the_same_metadata_is_refused_before_anything_is_written(
    tmp_path: Path, small_model: Path, how: str
) -> None:
    images = tmp_path / "images"
    shutil.copytree(SAMPLE_DIR / "dress", images)
    with Catalog.create(tmp_path / "catalog", small_model) as catalog:
        catalog.index_folder(images, progress=False)
        count = len(catalog)
    bad = doctored(small_model, tmp_path / "doctored.onnx", how)
    more = tmp_path / "more"
    shutil.copytree(SAMPLE_DIR / "bag", more)
    with (
        Catalog.open(tmp_path / "catalog", bad) as catalog,
        pytest.raises(ModelMismatchError, match="weights"),
    ):
        catalog.index_folder(more, progress=False, key_prefix="more/")
    with Catalog.open(tmp_path / "catalog") as catalog:
        assert len(catalog) == count and catalog.verify() == []


def test_vectors_that_are_not_finite_unit_vectors_of_the_right_width_are_never_committed(
    tmp_path: Path, small_model: Path
) -> None:
    with Catalog.create(tmp_path / "catalog", small_model) as catalog:
        good = unit_vectors(3, 1)
        for bad in (np.full((3, DIM), np.nan, np.float32), np.zeros((3, DIM), np.float32), good[:, :100]):
            with pytest.raises(CatalogError):
                catalog.add_many(["a", "b", "c"], bad)
        with pytest.raises(CatalogError):
            catalog.add("d", np.full(DIM, np.inf, np.float32))
        assert len(catalog) == 0
        catalog.add_many(["a", "b", "c"], good * 7.0)  # any length is normalised
        assert np.allclose(np.linalg.norm(catalog.vectors(["a", "b", "c"]), axis=1), 1.0, atol=1e-6)


# -- rebuild under readers, and killed ---------------------------------------------------------------------


def test_readers_opening_during_a_rebuild_never_see_a_corrupt_graph(
    tmp_path: Path, small_model: Path
) -> None:
    with Catalog.create(tmp_path / "catalog", small_model) as catalog:
        catalog.add_many([f"a-{i}" for i in range(1500)], unit_vectors(1500, 3))
    errors: list[BaseException] = []
    stop = threading.Event()

    def opener() -> None:
        while not stop.is_set():
            try:
                with Catalog.open(tmp_path / "catalog", readonly=True) as reader:
                    assert len(reader.search("a-7", k=3)) == 3
            except BaseException as exc:  # reported below
                errors.append(exc)

    thread = threading.Thread(target=opener)
    thread.start()
    try:
        with Catalog.open(tmp_path / "catalog") as writer:
            for _ in range(4):
                writer.rebuild()
    finally:
        stop.set()
        thread.join(timeout=120)
    assert not errors, errors[:3]


REBUILDER = """
import sys
from fashionrec_onnx import Catalog
with Catalog.open(sys.argv[1]) as catalog:
    print("ready", flush=True)
    while True:
        catalog.rebuild()
"""


def test_sigkill_during_rebuild_leaves_a_catalog_that_opens(tmp_path: Path, small_model: Path) -> None:
    with Catalog.create(tmp_path / "catalog", small_model) as catalog:
        catalog.add_many([f"a-{i}" for i in range(2000)], unit_vectors(2000, 4))
    for delay in (0.3, 0.9, 1.7):
        process = subprocess.Popen(
            [sys.executable, "-c", REBUILDER, str(tmp_path / "catalog")], stdout=subprocess.PIPE
        )
        assert process.stdout is not None and process.stdout.readline().strip() == b"ready"
        time.sleep(delay)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
        with Catalog.open(tmp_path / "catalog") as catalog:
            assert len(catalog) == 2000 and catalog.verify() == []


# -- a lost PCA file --------------------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["missing", "garbage"])
@pytest.mark.parametrize("recovery", [["rebuild"], ["reduce", "--dim", "0"], ["reduce", "--dim", "32"]])
def test_a_missing_or_damaged_pca_file_is_named_and_the_advised_recovery_works(
    tmp_path: Path, small_model: Path, damage: str, recovery: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "catalog"
    with Catalog.create(root, small_model) as catalog:
        catalog.add_many([f"a-{i}" for i in range(600)], unit_vectors(600, 5))
        catalog.reduce(16)
    (pca,) = root.glob("pca-*.npz")
    if damage == "missing":
        pca.unlink()
    else:
        pca.write_bytes(b"not a numpy archive" * 50)
    with pytest.raises(CatalogCorruptError) as caught:
        Catalog.open(root)
    assert pca.name in str(caught.value) and "fashionrec rebuild" in str(caught.value)
    assert main(["search", "a-1", "--catalog", str(root)]) == 2  # one line, no traceback
    assert pca.name in capsys.readouterr().err
    assert main([*recovery, "--catalog", str(root)]) == 0
    with Catalog.open(root) as catalog:
        assert catalog.verify() == [] and len(catalog.search("a-1", k=5)) == 5


# -- searches racing a writer in another process ------------------------------------------------------------

RE_ADDER = """
import sys
from pathlib import Path
import numpy as np
from fashionrec_onnx import Catalog
rng = np.random.default_rng(1)
enough = Path(sys.argv[2])
with Catalog.open(sys.argv[1]) as catalog:
    print("ready", flush=True)
    rounds = 0
    while rounds < 5 or (not enough.exists() and rounds < 5000):
        keys = [f"a-{i}" for i in rng.choice(800, 100, replace=False)]
        catalog.add_many(keys, rng.normal(size=(100, 2048)).astype(np.float32))
        rounds += 1
"""
SEARCHES_DURING_WRITES = 40


def test_more_like_this_sees_one_consistent_state_while_another_process_re_adds_items(
    tmp_path: Path, small_model: Path
) -> None:
    root = tmp_path / "catalog"
    with Catalog.create(root, small_model) as catalog:
        catalog.add_many([f"a-{i}" for i in range(800)], unit_vectors(800, 6))
    enough = tmp_path / "enough"  # the writer re-adds until the reader has searched this often
    command = [sys.executable, "-c", RE_ADDER, str(root), str(enough)]
    writer = subprocess.Popen(command, stdout=subprocess.PIPE)
    assert writer.stdout is not None and writer.stdout.readline().strip() == b"ready"
    errors: list[BaseException] = []
    searches = 0
    with Catalog.open(root, readonly=True) as reader:
        while writer.poll() is None:
            key = f"a-{searches % 800}"
            try:
                hits = reader.more_like_this(key, k=5, filter={} if searches % 2 else None)
                assert len(hits) == 5 and key not in [h.key for h in hits]
            except (UnknownKeyError, AssertionError, IndexError, KeyError) as exc:
                errors.append(exc)
            searches += 1
            if searches == SEARCHES_DURING_WRITES:
                enough.touch()
    assert writer.returncode == 0 and searches >= SEARCHES_DURING_WRITES
    assert not errors, errors[:3]


# -- a read-only medium ---------------------------------------------------------------------------------


def test_a_catalog_on_a_read_only_medium_serves_searches_and_says_it_is_read_only(
    tmp_path: Path, small_model: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with tmpfs(tmp_path / "disk", 64) as disk:
        with Catalog.create(disk / "catalog", small_model) as catalog:
            catalog.add_many([f"a-{i}" for i in range(300)], unit_vectors(300, 7))
        remount_read_only(disk)
        with Catalog.open(disk / "catalog") as catalog:
            assert catalog.readonly and "read-only" in caplog.text
            assert len(catalog.search("a-3", k=5)) == 5 and catalog.verify() == []
            with pytest.raises(CatalogError, match="read-only"):
                catalog.remove("a-3")


# -- false success and silent failures (issue 25) -----------------------------------------------------------


def test_rebuild_and_sync_on_a_read_only_medium_fail_at_once_in_one_line(
    tmp_path: Path, small_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from feed_server import FeedServer, png

    server = FeedServer()
    try:
        server.images["a.png"] = png(1)
        feed = tmp_path / "feed.csv"
        feed.write_text(f"product_id,image\nA,{server.url('/img/a.png')}\n")
        with tmpfs(tmp_path / "disk", 64) as disk:
            with Catalog.create(disk / "catalog", small_model) as catalog:
                catalog.add_many([f"a-{i}" for i in range(50)], unit_vectors(50, 7))
            del catalog
            remount_read_only(disk)
            capsys.readouterr()
            assert main(["rebuild", "--catalog", str(disk / "catalog")]) == 2
            sync = ["sync", str(feed), "--catalog", str(disk / "catalog"), "--allow-private-network"]
            assert main([*sync, "--quiet"]) == 2
            captured = capsys.readouterr()
            errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
            assert "rebuilt" not in captured.out and len(errors) == 2 and "Traceback" not in captured.err
            assert "cannot be written" in errors[0] and "read-only" in errors[1]
            assert server.requests == {}  # nothing was downloaded for a sync that could not be kept
    finally:
        server.stop()


def test_a_tier_remade_on_a_full_disk_stays_of_format_1_and_leaves_nothing_behind(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    v4 = Path(__file__).parent / "data" / "v4-catalogs" / "reduced-float32"
    with tmpfs(tmp_path / "disk", 8) as disk:
        root = disk / "catalog"
        shutil.copytree(v4, root)
        filler = fill(disk, 120_000)  # the wider tier's PCA alone is 270 kB
        with caplog.at_level("WARNING"), Catalog.open(root) as catalog:
            tier = catalog._core.tier
            assert tier is not None and tier.space is None  # the format 1 tier, still serving
            key = next(iter(catalog.keys()))
            assert len(catalog.exact_search(key, k=5)) == 5
        assert "stays of format 1" in caplog.text and "full" in caplog.text
        assert sorted(p.name for p in root.glob("tier-*")) == ["tier-pca-16-1.int8"]
        filler.unlink()
        with Catalog.open(root) as catalog:
            assert catalog._core.tier is not None and catalog._core.tier.widened and catalog.verify() == []
        assert sorted(p.name for p in root.glob("tier-*")) == ["tier-pca-16-1-2.int8", "tier-pca-16-1-2.npz"]


def test_reduce_on_a_full_disk_names_the_file_and_the_state_it_left(
    tmp_path: Path, small_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with tmpfs(tmp_path / "disk", 24) as disk:
        with Catalog.create(disk / "catalog", small_model) as catalog:
            catalog.add_many([f"a-{i}" for i in range(300)], unit_vectors(300, 3))
        filler = fill(disk, 200_000)  # the PCA of 2048 -> 256 needs about 2 MB
        capsys.readouterr()
        assert main(["reduce", "--catalog", str(disk / "catalog"), "--dim", "256"]) == 2
        error = capsys.readouterr().err.strip()
        assert error.startswith("error: the disk holding") and str(disk / "catalog") in error
        assert "PCA file pca-256" in error and "Nothing was changed" in error and len(error.splitlines()) == 1
        assert not list((disk / "catalog").glob("pca-*"))  # no half-written file left behind
        filler.unlink()
        with Catalog.open(disk / "catalog") as reopened:
            assert reopened.reduction is None and len(reopened) == 300 and reopened.verify() == []
