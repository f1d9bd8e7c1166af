"""`fashionrec embed`, `import` and `export-vectors`: vectors files made on a Ray cluster, moved in
and out of catalogs. Their grammar and what they do, together; Ray and pyarrow are imported only
when one of these commands runs."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from .common import _build_args, _catalog_arg, on_one_line, path, positive, subcommand, text


def _cmd_embed(args: argparse.Namespace) -> int:
    from ..interchange.distributed import embed_to_parquet

    summary = embed_to_parquet(
        args.images,
        args.model,
        args.out,
        ray_address=args.ray_address,
        workers=args.workers,
        threads_per_worker=args.threads_per_worker,
        batch_size=args.batch_size,
        metadata=args.metadata,
        key_prefix=args.key_prefix,
        progress=not args.quiet,
        ray_logs=args.verbose,
    )
    print(
        f"embedded {summary.embedded} of {summary.images} images in {summary.seconds:.1f}s "
        f"({summary.images_per_second:.1f} images/s, {summary.steady_images_per_second:.1f} once the "
        f"{summary.workers} workers were up on {len(summary.nodes)} node(s); Ray connected in "
        f"{summary.ray_start_seconds:.1f}s): {len(summary.failures)} failed"
    )
    for key, reason in summary.failures:
        print(on_one_line(f"  failed {key}: {reason}"))
    print(f"wrote {len(summary.files)} vectors file(s) to {args.out}")
    if summary.metadata is not None:  # as `index` reports it: rows matching no image, images without a row
        for line in summary.metadata.lines():
            print(line)
    return 1 if summary.failures or (summary.metadata is not None and summary.metadata.problem) else 0


def _cmd_import(args: argparse.Namespace) -> int:
    from ..interchange.vector_files import check_model, inspect
    from ..interchange.vector_transfer import import_vectors
    from ..model import read_model_info
    from .common import _open_for_indexing

    # Checked before a catalog is created: a wrong folder or model never leaves an empty one behind.
    infos = inspect(args.vectors)
    new = "://" not in str(args.catalog) and not Path(args.catalog).exists()
    if new and args.model is not None and infos:
        model = read_model_info(args.model)
        check_model(infos[0], model.fingerprint, model.dim, f"--model {args.model}")
    with _open_for_indexing(args) as catalog:  # a new catalog takes index's options
        report = import_vectors(catalog, args.vectors, progress=not args.quiet)
        print(
            f"imported {report.rows} rows from {report.files} file(s) in {report.seconds:.1f}s "
            f"({report.vectors_per_second:.0f} vectors/s): {report.added} added, {report.updated} "
            f"updated, {report.unchanged} unchanged, {len(report.skipped)} skipped"
        )
        for key, reason in report.skipped:
            print(on_one_line(f"  skipped {key}: {reason}"))
        if report.product_field:
            print(f"  product field {report.product_field!r}, as in the catalog the files were exported from")
        print(f"catalog {args.catalog}: {len(catalog)} items")
    return 1 if report.skipped else 0


def _cmd_export_vectors(args: argparse.Namespace) -> int:
    from ..catalog import Catalog
    from ..interchange.vector_transfer import export_vectors

    with Catalog.open(args.catalog, readonly=True) as catalog:
        report = export_vectors(catalog, args.out)
    print(f"exported {report.rows} vectors in {report.seconds:.1f}s to {len(report.files)} file(s)")
    if report.damaged:
        print(
            f"  left out {len(report.damaged)} item(s) whose stored vector is damaged (first: "
            f"{report.damaged[0][:200]!r}); remove them and index their images again "
            f"(`fashionrec verify --catalog {args.catalog}` counts them)"
        )
        return 1
    return 0


HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {
    "embed": _cmd_embed,
    "import": _cmd_import,
    "export-vectors": _cmd_export_vectors,
}


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register the three commands on the `fashionrec` parser."""
    embed = subcommand(
        sub,
        "embed",
        "embed images on a Ray cluster into Parquet vectors files",
        "Lists the images under IMAGES (a folder, the same path on every node, or a URI pyarrow\n"
        "reads), embeds them in a pool of Ray actors (one onnxruntime session each) and writes\n"
        "vectors files into OUT, a new folder or URI; `fashionrec import` adds them to a catalog.\n"
        "Keys and metadata are matched as `fashionrec index` matches them. Without --ray-address\n"
        "Ray starts on this machine for the job. Files that cannot be read or decoded are listed\n"
        "as failed (rows with an error and no vector) and the exit code is 1.",
        "  fashionrec embed ./images --model model.onnx --out ./vectors\n"
        "  fashionrec embed s3://shop/photos --model model.onnx --out s3://shop/vectors/run-1 \\\n"
        "      --ray-address auto --threads-per-worker 4 --metadata products.csv",
    )
    embed.add_argument("images", type=text, help="folder of images, or a URI such as s3://bucket/prefix")
    embed.add_argument("--model", required=True, type=path, metavar="FILE", help="ONNX model")
    embed.add_argument(
        "--out", required=True, type=text, metavar="DIR", help="new folder (or URI) for the files"
    )
    embed.add_argument(
        "--ray-address",
        type=text,
        metavar="ADDRESS",
        help="Ray cluster to use: auto, ray://HOST:10001 or HOST:6379 (default: start Ray on this machine)",
    )
    embed.add_argument(
        "--workers", type=positive, metavar="N", help="embedding actors (default: as many as the CPUs hold)"
    )
    embed.add_argument(
        "--threads-per-worker", type=positive, metavar="N", default=1, help="onnxruntime threads per actor"
    )
    embed.add_argument("--batch-size", type=positive, metavar="N", default=32, help="images per model call")
    embed.add_argument(
        "--metadata", type=path, metavar="FILE", help="CSV or JSON lines naming images as `index` does"
    )
    embed.add_argument(
        "--key-prefix", type=text, metavar="PREFIX", default="", help="put before every key (e.g. shop-b/)"
    )
    embed.add_argument("--quiet", action="store_true", help="no Ray progress")

    load = subcommand(
        sub,
        "import",
        "add Parquet vectors files to a catalog (incremental)",
        "Reads the vectors files of VECTORS (a folder, a URI or one file) batch by batch. Files of\n"
        "another model or dimension are refused before anything is written. New keys are added,\n"
        "changed ones replaced, the rest left alone; each batch is one transaction, so a killed\n"
        "import resumes when run again. Rows with an error are listed as skipped (exit code 1).",
        "  fashionrec import ./vectors --catalog ./catalog --model model.onnx\n"
        "  fashionrec import s3://shop/vectors/run-1 --catalog ./catalog",
    )
    load.add_argument("vectors", type=text, help="folder (or URI) of vectors files, or one file")
    _catalog_arg(load)
    _build_args(load, embeds=False)  # index's options for a new catalog (--reduce, --vector-dtype...)

    export = subcommand(
        sub,
        "export-vectors",
        "write a catalog's vectors as Parquet vectors files",
        "The layout `fashionrec embed` writes: vectors move to another catalog with `fashionrec\n"
        "import`, and pyarrow, pandas or DuckDB read them as they are.",
        "  fashionrec export-vectors --catalog ./catalog --out ./vectors",
    )
    _catalog_arg(export)
    export.add_argument(
        "--out", required=True, type=text, metavar="DIR", help="new folder (or URI) for the files"
    )
