"""Keeping a catalog in step with a product feed (`Catalog.sync`, `fashionrec sync`).

The rules, which docs/feed-sync.md states for users:

- **Keys.** A row's item is stored under ``key_prefix`` (default ``feed/``) + its image as
  written in the feed (``feed/dress/red-1.jpg``, ``feed/https://cdn.shop/p/1042-front.jpg``).
  The image identifies the photo; which product it belongs to is a field that may change.
- **Ownership.** Each item a sync writes records its feed (the key prefix). An item of the feed
  whose image is no longer in the feed is removed; nothing else ever is: items indexed from a
  folder are never removed by a sync, even under the same prefix (a feed row naming such a key
  takes it over). Two feeds in one catalog need two prefixes.
- **Confinement.** A local image must resolve inside the images root (the feed's folder by
  default): ``../``, absolute paths and symlinks leading out are refused with the same answer
  whether or not the file exists. Control characters in an image or product id, and metadata
  values SQLite cannot store (NaN, Infinity), make that row fail, not the sync.
- **One at a time.** A sync holds ``<catalog>/.sync.lock``; a second sync of the same catalog, or
  an `index --prune`, is refused at once (two would remove each other's fresh items).
- **Changes.** A local image is re-embedded when its path, size or mtime changed (as `index`
  does); a URL image when its bytes changed: it is cached in ``<catalog>/feed-images/`` under
  the digest of its bytes, and the item's path is that file. Changed fields are rewritten in
  place, without re-embedding.
- **Failures.** A row that cannot be synced (no product id, a missing file, 404, a timeout, too
  large, not an image) is reported, and its item, if it had one, is left exactly as it was:
  neither removed nor changed. The next sync tries again. While a line of the feed cannot be read
  at all (not JSON), nothing is removed: the image it names is unknown.
- **Idempotence and crashes.** What a run writes depends only on the feed and the catalog, each
  batch is one transaction, and removals come last: a second run writes nothing (the catalog's
  generation stays), and a run killed at any moment then run again ends where an uninterrupted
  run would have.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from tqdm import tqdm

from ..catalog import thumbnails
from ..catalog.reports import FailedRow as FailedRow
from ..catalog.reports import SyncReport as SyncReport
from ..errors import CatalogError
from .download import DownloadSettings, Fetched, ImageCache, is_url
from .feed import Feed, FeedRow, read_feed
from .lock import catalog_home, one_remover

if TYPE_CHECKING:
    from ..catalog import Catalog

log = logging.getLogger(__name__)

DEFAULT_KEY_PREFIX = "feed/"
CACHE_FOLDER = "feed-images"
REMOVE_BATCH = 500
T = TypeVar("T")


@dataclass(frozen=True)
class _Image:
    """A row's image, ready to compare with the stored item and to embed."""

    row: FeedRow
    key: str
    path: str
    size: int | None
    mtime_ns: int | None


def sync_feed(
    catalog: Catalog,
    feed: str | os.PathLike[str],
    *,
    images_root: str | os.PathLike[str] | None = None,
    product_column: str = "product_id",
    image_column: str = "image",
    key_prefix: str = DEFAULT_KEY_PREFIX,
    batch_size: int = 32,
    download: DownloadSettings | None = None,
    progress: bool = False,
) -> SyncReport:
    started = time.perf_counter()
    if not key_prefix:
        raise CatalogError(
            "a feed needs a key prefix (default 'feed/'): it owns the keys under it, and with none it "
            "would own, and could remove, every item of the catalog."
        )
    catalog.require_writable("a sync")
    with one_remover(catalog_home(catalog)):
        return _sync(
            catalog, feed, images_root, product_column, image_column, key_prefix, batch_size, download,
            progress, started,
        )  # fmt: skip


def _sync(
    catalog: Catalog,
    feed: str | os.PathLike[str],
    images_root: str | os.PathLike[str] | None,
    product_column: str,
    image_column: str,
    key_prefix: str,
    batch_size: int,
    download: DownloadSettings | None,
    progress: bool,
    started: float,
) -> SyncReport:
    parsed = read_feed(feed, product_column=product_column, image_column=image_column)
    root = Path(images_root).expanduser() if images_root is not None else parsed.path.parent
    if not root.is_dir() and not all(is_url(row.image) for row in parsed.rows):
        raise CatalogError(f"the images root {root} is not a folder; nothing was done. Check --images-root.")
    _claim_product_field(catalog, product_column)
    report = SyncReport(rows=len(parsed.rows) + len(parsed.bad))
    report.failed.extend(
        FailedRow(bad.line, key_prefix + bad.image if bad.image else None, bad.image, bad.reason)
        for bad in parsed.bad
    )
    cache = ImageCache(catalog_home(catalog) / CACHE_FOLDER, download)
    if any(is_url(row.image) for row in parsed.rows):
        cache.check_writable()  # before the first download, not after every one
    fetched: list[Fetched] = []
    owned_before = set(_owned(catalog, key_prefix))
    # The bar counts every row of the report's total, each once when it is done: the rows handed
    # to the model's chunks, and those that failed before (unreadable lines, missing files, URLs
    # that could not be had: the last of these may fail after the last chunk).
    handed = failed_in_chunks = 0
    with tqdm(total=report.rows, unit="row", desc="syncing", disable=not progress) as bar:
        for chunk in _chunks(
            _images(parsed, root.resolve(), key_prefix, cache, report, fetched), batch_size * 4
        ):
            failed_before = len(report.failed)
            _apply(catalog, chunk, report, batch_size, key_prefix, owned_before)
            failed_in_chunks += len(report.failed) - failed_before
            handed += len(chunk)
            bar.update(handed + len(report.failed) - failed_in_chunks - bar.n)
        bar.update(handed + len(report.failed) - failed_in_chunks - bar.n)
    owned = _owned(catalog, key_prefix)
    present = {key_prefix + row.image for row in parsed.rows} | {f.key for f in report.failed if f.key}
    gone = [key for key in owned if key not in present]
    if gone and (unreadable := [bad.line for bad in parsed.bad if bad.unreadable]):
        log.warning(
            "%s: %d line(s) could not be read (line %d first), so the images they name are unknown: "
            "the %d item(s) whose images are not in the feed are kept until every line reads",
            parsed.path, len(unreadable), unreadable[0], len(gone),
        )  # fmt: skip
        gone = []
    for batch in _chunks(gone, REMOVE_BATCH):
        report.removed += _forget(catalog, batch)
    catalog.save()
    _prune_cache(catalog, cache, fetched)
    report.failed.sort(key=lambda failed: failed.line)  # in the feed's order, wherever each failed
    report.seconds = time.perf_counter() - started
    if report.failed:
        log.warning(
            "%d feed row(s) could not be synced; their items were left as they were", len(report.failed)
        )
    return report


def _claim_product_field(catalog: Catalog, column: str) -> None:
    """The feed's product column names the catalog's products, unless they are named otherwise."""
    current = catalog.product_field
    if current is None:
        catalog.set_product_field(column)
    elif current != column:
        raise CatalogError(
            f"{catalog.path} groups photos into products by the field {current!r}, but this feed's "
            f"product column is {column!r}. Pass --product-column {current} (product_column="
            f"{current!r}) if that column holds the product ids, or change the catalog's product "
            f"field (--product-field {column}, Catalog.set_product_field({column!r}))."
        )


def _images(
    feed: Feed, root: Path, prefix: str, cache: ImageCache, report: SyncReport, fetched: list[Fetched]
) -> Iterator[_Image]:
    """Every row's image: local files first (a stat each), then URLs (downloaded several at a
    time); rows whose image cannot be had go to the report."""
    urls = []
    for row in feed.rows:
        if is_url(row.image):
            urls.append(row)
            continue
        if "://" in row.image:
            reason = "only http:// and https:// URLs are downloaded; give other images as paths"
            report.failed.append(FailedRow(row.line, prefix + row.image, row.image, reason))
            continue
        path = Path(os.path.realpath(root / row.image))  # symlinks and ../ resolved
        if not path.is_relative_to(root):  # the same answer whether or not the file exists
            reason = f"outside the images root {root}: a feed's images must lie inside it"
            report.failed.append(FailedRow(row.line, prefix + row.image, row.image, reason))
            continue
        try:
            info = path.stat()
        except OSError as exc:
            reason = (
                "file not found" if isinstance(exc, FileNotFoundError) else f"cannot read it ({exc.strerror})"
            )
            report.failed.append(FailedRow(row.line, prefix + row.image, row.image, f"{reason}: {path}"))
            continue
        if not path.is_file():
            report.failed.append(FailedRow(row.line, prefix + row.image, row.image, f"not a file: {path}"))
            continue
        yield _Image(row, prefix + row.image, str(path), info.st_size, info.st_mtime_ns)
    for row, (_, result) in zip(urls, cache.fetch_many(row.image for row in urls)):
        if isinstance(result, Fetched):
            fetched.append(result)
            report.downloaded += result.transferred
            report.not_modified += not result.transferred
            yield _Image(row, prefix + row.image, str(result.path), result.size, None)
        else:
            report.failed.append(FailedRow(row.line, prefix + row.image, row.image, result.reason))


def _not_taken(
    catalog: Catalog,
    images: list[_Image],
    known: Mapping[str, Any],
    report: SyncReport,
    feed: str,
    owned: set[str],
) -> list[_Image]:
    """The rows whose keys this feed may write. A key held by another feed, or by an item indexed
    from a folder or added by hand, fails its row alone: a feed never takes over an item it did not
    add (it would then remove it when the row leaves the feed). Items that a version before 0.2
    synced (no owner recorded) are recognised by their path: this row's image, or the sync's cache."""
    strangers = [image for image in images if image.key in known and image.key not in owned]
    if not strangers:
        return images
    owners = catalog.feed_owners(image.key for image in strangers)
    cache = str(catalog_home(catalog) / CACHE_FOLDER) + os.sep
    refused = set()
    for image in strangers:
        owner, stored = owners.get(image.key), known[image.key].path or ""
        if owner is not None and owner != feed:
            reason = f"the key belongs to the feed with key prefix {owner!r}; a feed never takes another's"
        elif owner is None and stored != image.path and not stored.startswith(cache):
            reason = (
                f"the key is an item this feed did not add ({stored or 'no image path'}); a sync never "
                "replaces it: give the feed another --key-prefix, or remove that item first"
            )
        else:
            continue
        report.failed.append(FailedRow(image.row.line, image.key, image.row.image, reason))
        refused.add(image.key)
    return [image for image in images if image.key not in refused]


def _apply(
    catalog: Catalog, images: list[_Image], report: SyncReport, batch_size: int, feed: str, owned: set[str]
) -> None:
    """Compare a chunk of rows with their items; rewrite changed fields, embed changed images.
    Items kept as they are become the feed's (those an older version synced)."""
    known = catalog.get_many(image.key for image in images)
    images = _not_taken(catalog, images, known, report, feed, owned)
    fields: dict[str, dict[str, Any]] = {}
    todo: list[_Image] = []
    kept = [image.key for image in images if image.key in known and image.key not in owned]
    for image in images:
        item = known.get(image.key)
        if item is None or (item.path, item.size, item.mtime_ns) != (
            image.path,
            image.size,
            image.mtime_ns,
        ):
            todo.append(image)
        elif item.metadata != image.row.fields:
            fields[image.key] = image.row.fields
        else:
            report.unchanged += 1
    if fields:
        report.updated += catalog.update_metadata(fields)
    waiting = {image.key for image in todo}
    if kept := [key for key in kept if key not in waiting]:
        catalog.claim_for_feed(feed, kept)
    if not todo:
        return
    core = getattr(catalog, "_core", None)  # a remote catalog has none, and keeps no thumbnails
    made = thumbnails.made if core is not None else None
    for result in catalog.embedder.iter_batches(
        [image.path for image in todo], batch_size=batch_size, also=made
    ):
        done = [todo[int(index)] for index in result.indices]
        if done:
            catalog.add_many(
                [image.key for image in done],
                result.vectors,
                paths=[image.path for image in done],
                metadata=[image.row.fields for image in done],
                sizes=[image.size for image in done],
                mtimes_ns=[image.mtime_ns for image in done],
                feed=feed,
            )
            if made is not None and core is not None:
                thumbnails.keep_indexed(core, dict(zip((image.key for image in done), result.extras)))
        for image in done:
            if image.key in known:
                report.reembedded += 1
            else:
                report.added += 1
        for failure in result.failures:
            image = todo[failure.index]
            report.failed.append(FailedRow(image.row.line, image.key, image.row.image, failure.reason))


def _owned(catalog: Catalog, prefix: str) -> list[str]:
    """Keys of the items this feed added (under its prefix, recorded as its own)."""
    return catalog.feed_keys(prefix)


def _forget(catalog: Catalog, keys: list[str]) -> int:
    """Remove items whose rows left the feed. Like `index --prune`, not like `remove`: the keys
    are not remembered as removed by hand (a row that comes back brings its item back anyway)."""
    return catalog.remove(*keys, remember=False)


def _prune_cache(catalog: Catalog, cache: ImageCache, fetched: list[Fetched]) -> None:
    """Drop cached images no item points to any more (replaced or removed ones)."""
    in_use = catalog.paths_under(cache.folder.resolve())
    removed = cache.prune([*in_use, *(f.path for f in fetched)])
    if removed:
        log.info("removed %d cached image(s) no item uses any more", removed)


def _chunks(values: Iterable[T], size: int) -> Iterator[list[T]]:
    chunk: list[T] = []
    for value in values:
        chunk.append(value)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
