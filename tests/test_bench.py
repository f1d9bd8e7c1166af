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
