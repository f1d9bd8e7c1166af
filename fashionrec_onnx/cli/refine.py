"""`fashionrec refine`: learn a projection from a catalog's labels; its grammar and what it does."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable

from ..errors import BadArgumentError
from .common import _catalog_arg, path, subcommand, text, whole_number


def _cmd_refine(args: argparse.Namespace) -> int:
    from ..catalog import Catalog
    from ..quality.refine import apply_refined, refine

    if args.model is not None:
        if args.catalog_out is None or args.label_field is not None:
            raise BadArgumentError(
                "with --model (a refined model), give --catalog-out and no --label-field: it derives a "
                "catalog, it learns nothing"
            )
        with Catalog.open(args.catalog, readonly=True) as catalog:
            written = apply_refined(catalog, args.model, args.catalog_out)
        print(
            f"wrote catalog {args.catalog_out}: {written} items under {args.model} (stored vectors projected)"
        )
        return 0
    if args.label_field is None or args.out is None:
        raise BadArgumentError(
            "give --label-field and --out (or --model and --catalog-out to apply a refined model)"
        )
    with Catalog.open(args.catalog, readonly=True) as catalog:
        report = refine(
            catalog,
            args.label_field,
            args.out,
            product_field=args.product_field,
            dim=args.dim,
            catalog_out=args.catalog_out,
            seed=args.seed,
            epochs=args.epochs,
        )
    if args.json:
        print(json.dumps(report.to_dict(), indent=2, default=str))
        return 0
    training = report.training
    k, map_k = training.k, training.map_k
    print(
        f"learned a {catalog.dim}->{training.dim} projection from {training.train_items} items "
        f"({training.labels} {report.label_field} labels"
        + (f", {training.products} products" if report.product_field else "")
        + f") in {report.seconds:.1f}s"
    )
    print(f"held out {training.held_out_items} items" + (" (whole products)" if report.product_field else ""))
    print(f"  epoch  loss     precision@{k}  mAP@{map_k}")
    for epoch in training.curve:
        loss = "-" if epoch.epoch == 0 else f"{epoch.loss:.4f}"
        mark = "  <- kept" if epoch.epoch == training.best_epoch else ""
        print(f"  {epoch.epoch:5d}  {loss:7s}  {epoch.precision:12.4f}  {epoch.map:7.4f}{mark}")
    before, after = training.before, training.after
    print(
        f"held-out precision@{k} {before[f'precision@{k}']:.4f} -> {after[f'precision@{k}']:.4f}, "
        f"mAP@{map_k} {before[f'mAP@{map_k}']:.4f} -> {after[f'mAP@{map_k}']:.4f} (base -> refined)"
    )
    print(f"wrote {report.model} (fingerprint {report.info.fingerprint}, base {report.base_fingerprint})")
    if report.catalog_out:
        print(f"wrote catalog {report.catalog_out} under the refined model (stored vectors projected)")
    return 0


HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {"refine": _cmd_refine}


def add_commands(sub: argparse._SubParsersAction) -> None:
    parser = subcommand(
        sub,
        "refine",
        "learn a projection of the embeddings from the catalog's own labels",
        "Reads the stored vectors (no re-embedding) and the metadata field --label-field (a\n"
        "category); with --product-field, photos of one product are pulled together hardest. Part\n"
        "of the labelled items (whole products, with products) is held out and scored before and\n"
        "after each training epoch; the best epoch is kept. --out gets one ONNX model: the base\n"
        "model with the projection and the L2 normalisation appended, usable by every command\n"
        "(index, search, serve; int8 with fashionrec_export.quantize.quantize_int8).\n"
        "--catalog-out writes a copy of the catalog under the refined model from the stored\n"
        "vectors, so it searches as a catalog indexed with the refined model would. With --model\n"
        "REFINED instead of --label-field/--out, another catalog of the base model (held-out\n"
        "photos) is derived under an existing refined model, for `fashionrec evaluate --compare`.",
        "  fashionrec refine --catalog ./catalog --label-field category --out refined.onnx\n"
        "  fashionrec refine --catalog ./catalog --label-field category --product-field product_id \\\n"
        "      --dim 128 --out refined.onnx --catalog-out ./catalog-refined\n"
        "  fashionrec refine --catalog ./test --model refined.onnx --catalog-out ./test-refined\n"
        "  fashionrec evaluate --catalog ./test --compare ./test-refined",
    )
    _catalog_arg(parser)
    parser.add_argument(
        "--label-field", type=text, metavar="FIELD", help="metadata field to learn from (with --out)"
    )
    parser.add_argument(
        "--product-field",
        type=text,
        metavar="FIELD",
        help="metadata field naming each photo's product (default: none, every photo stands alone)",
    )
    parser.add_argument(
        "--dim",
        type=whole_number(2, 4096),
        default=128,
        metavar="D",
        help="dimension of the refined embeddings",
    )
    parser.add_argument("--out", type=path, metavar="FILE", help="the refined ONNX model to write")
    parser.add_argument(
        "--model",
        type=path,
        metavar="FILE",
        help="instead of learning: a refined model made from this catalog's model; with --catalog-out, "
        "derives this catalog under it (held-out photos, for `evaluate --compare`)",
    )
    parser.add_argument(
        "--catalog-out",
        type=path,
        metavar="DIR",
        help="also write a refined copy of the catalog here (a new directory)",
    )
    parser.add_argument(
        "--seed", type=whole_number(0), default=0, help="seed of the held-out split and training"
    )
    parser.add_argument(
        "--epochs", type=whole_number(1, 1000), default=30, help="most training epochs (early stop)"
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
