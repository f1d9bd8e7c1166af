"""The benchmark harness runs end to end at a tiny size, so it cannot rot. No timing is asserted."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.__main__ import main


def test_tiny_benchmark_writes_json_report_and_plots(tmp_path: Path) -> None:
    assert main(["--tiny", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "tiny.json").read_text())
    sections = {"machine", "embedding", "search", "quality", "int8", "reduction", "float16", "duplicates"}
    assert sections <= set(results)
    assert results["machine"]["cores"] >= 1 and results["machine"]["onnxruntime"]
    assert "keras_predict_batch1 (baseline)" in results["embedding"]["methods"]
    search = results["search"][0]["methods"]
    assert {"hnswlib (ours)", "sklearn_brute (baseline)", "numpy_matmul"} == set(search)
    assert 0.0 <= search["hnswlib (ours)"]["recall@5"] <= 1.0
    assert all(v["weights"] for v in results["quality"]["methods"].values())  # weights beside every figure
    report = (tmp_path / "tiny.md").read_text()
    assert "## Headline" in report and "random:seed=0" in report and "## Near-duplicates" in report
    assert 0.0 <= results["duplicates"]["thresholds"][0]["recall"] <= 1.0
    for plot in ("tiny-recall-vs-qps.png", "tiny-embedding.png", "tiny-precision.png"):
        assert (tmp_path / plot).read_bytes().startswith(b"\x89PNG")


def test_peers_side_by_side_at_a_tiny_size(tmp_path: Path, milvus_uri: str) -> None:
    """Every peer's row is there, on the same vectors, with recall a working index has."""
    from benchmarks import peers

    out = tmp_path / "peers"
    tiny = ["--items", "2000", "--real", "600", "--uri", milvus_uri]  # the session's Milvus server
    argv = [*tiny, "--work", str(tmp_path), "--out", str(out)]
    assert peers.main(argv) == 0
    results = json.loads(out.with_suffix(".json").read_text())
    names = [row["row"].split(" ")[0] for row in results["rows"]]
    assert names == ["fashionrec", "fashionrec", "faiss", "usearch", "fashionrec"]
    assert "Milvus" in results["rows"][-1]["row"]
    for row in results["rows"]:
        assert row["build_s"] > 0 and row["search"]["median_ms"] > 0
        assert row["search"]["recall@5"] >= 0.9, row  # a graph of 2,000 items finds its neighbours
        if "usearch" in row["row"]:
            assert "filter_1%" not in row  # no filtered search in its Python API: said, not faked
        else:
            assert 0.0 < row["filter_1%"]["recall@5"] <= 1.0
    catalogs = [row for row in results["rows"] if row["row"].startswith("fashionrec")]
    assert len(catalogs) == 3 and all(row["filter_1%"]["recall@5"] >= 0.9 for row in catalogs)
    report = out.with_suffix(".md").read_text()
    assert "| 1% filter p50 ms |" in report and "load average" in report and "Command:" in report


def test_graph_load_puts_both_loaders_side_by_side(tmp_path: Path, small_model: Path, capsys) -> None:
    import numpy as np

    from benchmarks import graph_load
    from fashionrec_onnx import Catalog

    vectors = np.random.default_rng(5).standard_normal((500, 2048)).astype(np.float32)
    with Catalog.create(tmp_path / "catalog", small_model) as catalog:
        catalog.add_many(
            [f"a-{i}" for i in range(500)], vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        )
    assert graph_load.main([str(tmp_path / "catalog"), "--rounds", "2"]) == 0
    printed = capsys.readouterr().out
    for how in ("load_index", "hnsw_file.load", "Catalog.open", "hnsw_file.load / load_index"):
        assert how in printed


def test_parquet_import_beside_add_many_at_a_tiny_size(tmp_path: Path) -> None:
    from benchmarks import parquet_import

    out = tmp_path / "import"
    assert (
        parquet_import.main(["--items", "2000", "--real", "600", "--work", str(tmp_path), "--out", str(out)])
        == 0
    )
    results = json.loads(out.with_suffix(".json").read_text())
    assert results["added"] == 2000 and results["import_s"] > 0 and results["add_many_s"] > 0
    assert results["rebuild_s"] > 0
    report = out.with_suffix(".md").read_text()
    assert "import / add_many" in report and "Command:" in report
