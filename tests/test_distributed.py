"""Embedding on a real Ray (started once for this file) into vectors files, and back into catalogs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import ray
from oracle import assert_same_ranking

from fashionrec_onnx import Catalog, Embedder, FashionrecError
from fashionrec_onnx.cli import main
from fashionrec_onnx.feeds.scan import read_metadata
from fashionrec_onnx.interchange import vector_files as vf
from fashionrec_onnx.interchange.distributed import embed_to_parquet
from fashionrec_onnx.interchange.vector_transfer import import_vectors
from fashionrec_onnx.quality.datasets import SAMPLE_DIR

LABELS = SAMPLE_DIR / "labels.csv"


@pytest.fixture(scope="session")
def local_ray() -> None:
    """One Ray for the session: two CPUs, no dashboard, a small object store."""
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=300 * 1024**2, log_to_driver=False)
    yield
    ray.shutdown()


def copy_sample(folder: Path, per_category: int) -> Path:
    for category in sorted(p for p in SAMPLE_DIR.iterdir() if p.is_dir()):
        (folder / category.name).mkdir(parents=True, exist_ok=True)
        for path in sorted(category.glob("*.png"))[:per_category]:
            shutil.copyfile(path, folder / category.name / path.name)
    return folder


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """30 sample images (3 per category) and one file that is not an image."""
    folder = copy_sample(tmp_path_factory.mktemp("images"), 3)
    (folder / "bag" / "broken.png").write_bytes(b"these bytes are not a PNG")
    return folder


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory, local_ray: None, small_model: Path, images: Path):
    out = tmp_path_factory.mktemp("embedded") / "vectors"
    summary = embed_to_parquet(
        images, small_model, out, workers=2, batch_size=4, metadata=LABELS, key_prefix="shop/", progress=False
    )
    return summary, out


def read_all(folder: Path) -> tuple[list[vf.VectorBatch], dict[str, np.ndarray]]:
    batches = list(vf.read_batches(folder))
    return batches, {key: vector for b in batches for key, vector in zip(b.keys, b.vectors)}


def test_vectors_equal_the_embedder_on_the_same_files(embedded, small_model: Path, images: Path) -> None:
    _, out = embedded
    _, vectors = read_all(out)
    keys = sorted(vectors)
    with Embedder(small_model) as embedder:
        expected = embedder.embed([images / key.removeprefix("shop/") for key in keys])
    np.testing.assert_allclose(np.stack([vectors[k] for k in keys]), expected, rtol=0, atol=1e-5)


def test_keys_paths_and_metadata_are_those_index_folder_gives(embedded, images: Path) -> None:
    _, out = embedded
    batches, vectors = read_all(out)
    table = read_metadata(LABELS)
    expected_keys = sorted(f"shop/{p.relative_to(images).as_posix()}" for p in images.rglob("*.png"))
    assert sorted({*vectors, "shop/bag/broken.png"}) == expected_keys
    for batch in batches:
        for key, path, meta in zip(batch.keys, batch.paths, batch.metadata):
            relative = key.removeprefix("shop/")
            assert path == str(images / relative)
            assert meta == table[relative]


def test_a_broken_file_becomes_an_error_row_and_the_job_finishes(embedded) -> None:
    summary, out = embedded
    batches, _ = read_all(out)
    errors = [error for batch in batches for error in batch.errors]
    assert errors == [("shop/bag/broken.png", "not an image (unrecognised format)")]
    assert summary.failures == errors
    assert (summary.images, summary.embedded, summary.workers) == (31, 30, 2)
    assert summary.images_per_second > 0 and sum(summary.nodes.values()) == 31


def test_a_uri_is_listed_and_read_through_pyarrow_filesystems(
    embedded, local_ray: None, small_model: Path, images: Path, tmp_path: Path
) -> None:
    _, local_out = embedded
    summary = embed_to_parquet(
        f"file://{images}", small_model, tmp_path / "v", workers=1, key_prefix="shop/", progress=False
    )
    _, local = read_all(local_out)
    batches, remote = read_all(tmp_path / "v")
    assert summary.images == 31 and sorted(remote) == sorted(local)
    assert batches[0].paths[0] == f"file://{images}/{batches[0].keys[0].removeprefix('shop/')}"
    for key, vector in remote.items():
        np.testing.assert_allclose(vector, local[key], atol=1e-5)


def test_importing_embedded_vectors_searches_like_index_folder(
    embedded, tmp_path: Path, small_model: Path, images: Path
) -> None:
    _, out = embedded
    with (
        Catalog.create(tmp_path / "imported", small_model) as imported,
        Catalog.create(tmp_path / "indexed", small_model) as indexed,
    ):
        report = import_vectors(imported, out)
        indexed.index_folder(images, metadata=LABELS, key_prefix="shop/", progress=False)
        assert report.added == len(indexed) == 30
        for query in ["shop/dress/" + p.name for p in sorted((images / "dress").glob("*.png"))]:
            ours, theirs = imported.search(query, k=5), indexed.search(query, k=5)
            assert_same_ranking(ours, theirs)
            assert all(h.metadata == indexed.get(h.key).metadata for h in ours)
            np.testing.assert_allclose([h.distance for h in ours], [h.distance for h in theirs], atol=1e-5)


def test_a_pool_larger_than_the_cluster_is_refused_before_it_waits_forever(
    local_ray: None, small_model: Path, images: Path, tmp_path: Path
) -> None:
    with pytest.raises(FashionrecError, match="5 workers of 1 CPU each do not fit"):
        embed_to_parquet(images, small_model, tmp_path / "out", workers=5, progress=False)


def test_cli_embed_writes_vectors_and_exits_1_when_a_file_failed(
    local_ray: None, small_model: Path, images: Path, tmp_path: Path, capsys
) -> None:
    args = ["embed", str(images), "--model", str(small_model), "--out", str(tmp_path / "v"), "--quiet"]
    assert main([*args, "--workers", "1", "--batch-size", "8"]) == 1
    out = capsys.readouterr().out
    assert "embedded 30 of 31 images" in out and "failed bag/broken.png: not an image" in out
    assert sum(info.rows for info in vf.inspect(tmp_path / "v")) == 31


def test_cli_embed_reports_how_the_metadata_fit_as_index_does(
    local_ray: None, small_model: Path, images: Path, tmp_path: Path, capsys
) -> None:
    labels = tmp_path / "labels.csv"
    labels.write_text("key,category\ndress/test-00013.png,Dress\nno-such.png,Bag\n")
    args = ["embed", str(images), "--model", str(small_model), "--out", str(tmp_path / "v"), "--quiet"]
    assert main([*args, "--metadata", str(labels)]) == 1
    out = capsys.readouterr().out
    assert "metadata " in out and "1 matched an image, 1 matched none" in out
    assert "30 of 31 images have no row" in out and "rows matching no image: line 3: 'no-such.png'" in out


def test_cli_embed_on_its_own_ray_says_nothing_on_stderr_but_errors(
    small_model: Path, images: Path, tmp_path: Path
) -> None:
    """Ray's start, execution plan and actor-restart lines are nothing a user can act on."""
    fashionrec = str(Path(sys.executable).with_name("fashionrec"))
    command = [fashionrec, "embed", str(images), "--model", str(small_model), "--out", str(tmp_path / "v"),
               "--quiet", "--workers", "1"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 1 and "embedded 30 of 31 images" in result.stdout, result.stderr
    assert result.stderr == ""


TWO_NODES = textwrap.dedent(
    """
    import json, sys
    from ray.cluster_utils import Cluster
    import ray
    from fashionrec_onnx.interchange.distributed import embed_to_parquet

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False,
                                                            "object_store_memory": 200 * 1024**2})
    for _ in range(2):
        cluster.add_node(num_cpus=1, object_store_memory=200 * 1024**2)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        summary = embed_to_parquet(sys.argv[1], sys.argv[2], sys.argv[3], workers=2, batch_size=4,
                                   progress=False)
        head = ray.get_runtime_context().get_node_id()
    finally:
        ray.shutdown()
        cluster.shutdown()
    print(json.dumps({"nodes": summary.nodes, "head": head, "images": summary.images}))
    """
)


def test_a_two_node_cluster_embeds_images_on_both_worker_nodes(test_model: Path, tmp_path: Path) -> None:
    """The 224 px model makes embedding the slow stage, so work queues up for both actors (Ray
    prefers the actor on the node that read a block while it keeps up)."""
    images = copy_sample(tmp_path / "images", 4)
    result = subprocess.run(
        [sys.executable, "-c", TWO_NODES, str(images), str(test_model), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["images"] == 40
    assert len(summary["nodes"]) == 2 and summary["head"] not in summary["nodes"]
    assert all(count > 0 for count in summary["nodes"].values())
    assert sum(summary["nodes"].values()) == 40
