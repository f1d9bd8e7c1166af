"""An `Evaluation` as people read it: a terminal table, and a report directory with a JSON file,
a Markdown report and plots (precision@k per label, the top-1 confusion, a one-page summary).
matplotlib is imported only when plots are drawn (the bench and dev extras install it)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import FashionrecError
from .evaluate import Evaluation, MethodResult

JSON_NAME = "evaluation.json"
MARKDOWN_NAME = "report.md"
PLOTS = {"precision": "precision-by-label.png", "confusion": "confusion.png", "summary": "summary.png"}


def _grid(header: list[str], rows: list[list[str]]) -> list[str]:
    """Columns padded to their widest cell; the first left-aligned, numbers right-aligned."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(
            cell.ljust(width) if i == 0 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(cells, widths))
        ).rstrip()

    return [line(header), *(line(row) for row in rows)]


def _overall(evaluation: Evaluation) -> tuple[list[str], list[list[str]]]:
    ks = evaluation.ks
    header = ["method", "queries", *(f"P@{k}" for k in ks), *(f"mAP@{k}" for k in ks)]
    rows = [
        [
            method.name,
            str(method.scores.queries),
            *(f"{method.scores.precision[k]:.3f}" for k in ks),
            *(f"{method.scores.map[k]:.3f}" for k in ks),
        ]
        for method in evaluation.methods
    ]
    return header, rows


def _by_label(evaluation: Evaluation) -> tuple[list[str], list[list[str]]]:
    k = max(evaluation.ks)
    main = evaluation.methods[0].scores.by_label
    header = ["label", "queries", *(method.name for method in evaluation.methods)]
    rows = []
    for label, figures in main.items():
        cells = []
        for method in evaluation.methods:
            value = method.scores.by_label.get(label, {}).get(f"precision@{k}")
            cells.append("-" if value is None else f"{value:.3f}")
        rows.append([label, str(int(figures["queries"])), *cells])
    return header, rows


def _heading(evaluation: Evaluation) -> str:
    left_out = (
        f"its whole {evaluation.product_field!r} left out" if evaluation.product_field else "itself left out"
    )
    search = "exact search" if evaluation.exact else "the HNSW graph"
    return (
        f'{len(evaluation.query_keys)} items of {evaluation.catalog} searched as "more like this" '
        f"({left_out}, {search}); a hit is relevant when its {evaluation.label_field!r} is the query's."
    )


def table(evaluation: Evaluation) -> str:
    """What `fashionrec evaluate` prints."""
    lines = [_heading(evaluation), "", *_grid(*_overall(evaluation)), ""]
    lines += [f"precision@{max(evaluation.ks)} by label", *_grid(*_by_label(evaluation))]
    lines += ["", *(f"{m.name}: {m.description}" for m in evaluation.methods)]
    return "\n".join(lines)


def _markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


def _confusion_markdown(method: MethodResult) -> list[str]:
    scores = method.scores
    header = ["query \\ first hit", *scores.labels]
    rows = [[label, *(str(n) for n in counts)] for label, counts in zip(scores.labels, scores.confusion)]
    rows = [row for row, counts in zip(rows, scores.confusion) if sum(counts)]
    return [f"### {method.name}", "", *_markdown_table(header, rows), ""]


def markdown(evaluation: Evaluation) -> str:
    k = max(evaluation.ks)
    lines = [
        "# Retrieval quality",
        "",
        _heading(evaluation),
        "",
        "![summary](summary.png)",
        "",
        "## Overall",
        "",
        *_markdown_table(*_overall(evaluation)),
        "",
        *(f"- **{m.name}**: {m.description}" for m in evaluation.methods),
        "",
        f"## precision@{k} by label",
        "",
        *_markdown_table(*_by_label(evaluation)),
        "",
        f"![precision@{k} by label]({PLOTS['precision']})",
        "",
        "## Top-1 confusion",
        "",
        "Rows: the query's label; columns: the label of its first hit.",
        "",
        f"![confusion]({PLOTS['confusion']})",
        "",
    ]
    for method in evaluation.methods:
        lines += _confusion_markdown(method)
    return "\n".join(lines)


def write(evaluation: Evaluation, out: Path) -> list[Path]:
    """The JSON file, the Markdown report and the plots in ``out``; returns what was written."""
    pyplot = _pyplot()
    out.mkdir(parents=True, exist_ok=True)
    written = [out / JSON_NAME, out / MARKDOWN_NAME]
    written[0].write_text(json.dumps(evaluation.to_dict(), indent=2, ensure_ascii=False))
    written[1].write_text(markdown(evaluation))
    for name, draw in (
        ("precision", _plot_precision),
        ("confusion", _plot_confusion),
        ("summary", _plot_summary),
    ):
        figure = draw(pyplot, evaluation)
        figure.savefig(out / PLOTS[name], dpi=110)
        pyplot.close(figure)
        written.append(out / PLOTS[name])
    return written


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as exc:
        raise FashionrecError(
            "the report's plots need matplotlib: `pip install 'fashionrec-onnx[bench]'` (or leave out --out)"
        ) from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot

    return pyplot


def _precision_axes(axes: Any, evaluation: Evaluation) -> None:
    k = max(evaluation.ks)
    labels = list(evaluation.methods[0].scores.by_label)
    width = 0.8 / len(evaluation.methods)
    for number, method in enumerate(evaluation.methods):
        heights = [method.scores.by_label.get(label, {}).get(f"precision@{k}", 0.0) for label in labels]
        positions = [i + number * width for i in range(len(labels))]
        axes.bar(positions, heights, width, label=f"{method.name} ({method.scores.precision[k]:.3f})")
    axes.set_xticks(
        [i + 0.4 - width / 2 for i in range(len(labels))], labels, rotation=30, ha="right", fontsize=8
    )
    axes.set_ylim(0, 1)
    axes.set_ylabel(f"precision@{k}")
    axes.set_title(f"precision@{k} by label (overall in brackets)")
    axes.legend(fontsize=7)
    axes.grid(axis="y", alpha=0.3)


def _confusion_axes(axes: Any, method: MethodResult) -> None:
    import numpy as np

    scores = method.scores
    rows = [i for i, counts in enumerate(scores.confusion) if sum(counts)]
    counts = np.asarray(scores.confusion, np.float64)[rows]
    share = counts / counts.sum(axis=1, keepdims=True)
    axes.imshow(share, cmap="Blues", vmin=0, vmax=1, aspect="auto")
    axes.set_xticks(range(len(scores.labels)), scores.labels, rotation=45, ha="right", fontsize=7)
    axes.set_yticks(range(len(rows)), [scores.labels[i] for i in rows], fontsize=7)
    if len(scores.labels) <= 20:
        for (row, column), value in np.ndenumerate(share):
            if value >= 0.005:
                colour = "white" if value > 0.6 else "black"
                axes.text(column, row, f"{value:.2f}", ha="center", va="center", fontsize=6, color=colour)
    axes.set_xlabel("label of the first hit", fontsize=8)
    axes.set_ylabel("query label", fontsize=8)
    axes.set_title(f"top-1 confusion: {method.name}", fontsize=9)


def _plot_precision(pyplot: Any, evaluation: Evaluation) -> Any:
    figure, axes = pyplot.subplots(figsize=(9, 4.5))
    _precision_axes(axes, evaluation)
    figure.tight_layout()
    return figure


def _plot_confusion(pyplot: Any, evaluation: Evaluation) -> Any:
    count = len(evaluation.methods)
    figure, axes = pyplot.subplots(1, count, figsize=(5.2 * count, 4.8), squeeze=False)
    for each, method in zip(axes[0], evaluation.methods):
        _confusion_axes(each, method)
    figure.tight_layout()
    return figure


def _plot_summary(pyplot: Any, evaluation: Evaluation) -> Any:
    """The report on one page: the overall table, precision per label, the catalog's confusion."""
    figure = pyplot.figure(figsize=(13, 8.5))
    grid = figure.add_gridspec(2, 2, height_ratios=(1, 2.6), width_ratios=(1.5, 1))
    text = figure.add_subplot(grid[0, :])
    text.axis("off")
    header, rows = _overall(evaluation)
    first = 0.3
    widths = [first] + [(1 - first) / (len(header) - 1)] * (len(header) - 1)
    cells = text.table(cellText=rows, colLabels=header, loc="center", cellLoc="right", colWidths=widths)
    for (_, column), cell in cells.get_celld().items():
        if column == 0:
            cell.set_text_props(ha="left")
            cell.PAD = 0.02
    cells.auto_set_font_size(False)
    cells.set_fontsize(9)
    cells.scale(1, 1.3)
    text.set_title(_heading(evaluation), fontsize=9, wrap=True)
    _precision_axes(figure.add_subplot(grid[1, 0]), evaluation)
    _confusion_axes(figure.add_subplot(grid[1, 1]), evaluation.methods[0])
    figure.tight_layout()
    return figure
