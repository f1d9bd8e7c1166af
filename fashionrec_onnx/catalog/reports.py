"""What the jobs built on the catalog return (`Catalog.index_folder`, `sync`, `import_vectors`,
`export_vectors`, `refine`), and the download limits `sync` takes: plain dataclasses.

They are defined here, below the packages that do the work (`feeds`, `interchange`, `quality`,
which re-export them under their old names), so that `Catalog` can name its methods' types
without importing those packages: the catalog imports none of the jobs built on it, not even for
type checking.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..embedder import Failure
from ..model import ModelInfo


@dataclass
class IndexReport:
    """What `index_folder` did; ``embedded`` counts images that went through the model."""

    scanned: int = 0
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    moved: int = 0  # same file at a new place: path updated, not re-embedded
    removed: int = 0
    metadata_updated: int = 0
    skipped_removed: int = 0  # files whose key was removed with `remove` (see `removals`)
    failures: list[Failure] = field(default_factory=list)
    metadata: MetadataMatch | None = None  # how the metadata rows met the images, when given
    seconds: float = 0.0

    @property
    def embedded(self) -> int:
        return self.added + self.updated


# The rule `feeds.metadata_match` applies, as a report states it.
RULE = (
    "a row names one image: its key is the image's path relative to the indexed folder "
    "(dress/001.jpg), its file name (001.jpg) or its file name without extension (001), "
    "tried in that order"
)


@dataclass(frozen=True)
class Row:
    """A row as a report shows it: its line in the file (None for a dict) and its key."""

    line: int | None
    key: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.key!r}" if self.line is not None else repr(self.key)


@dataclass(frozen=True)
class AmbiguousRow:
    row: Row
    images: tuple[str, ...]  # the first few images it would fit
    count: int  # how many it would fit


@dataclass
class MetadataMatch:
    """How the rows of a metadata file met the scanned images. ``problem`` when rows were given
    and none fit an image, or some fit several (those are given to none)."""

    source: str | None = None
    key_column: str | None = None
    rows: int = 0
    matched_rows: int = 0
    images: int = 0
    images_without_row: int = 0
    unmatched: list[Row] = field(default_factory=list)  # the first few
    unmatched_count: int = 0
    ambiguous: list[AmbiguousRow] = field(default_factory=list)  # the first few
    ambiguous_count: int = 0
    image_examples: list[str] = field(default_factory=list)
    hint: str | None = None
    rule: str = RULE

    @property
    def problem(self) -> bool:
        return bool(self.rows) and (self.matched_rows == 0 or self.ambiguous_count > 0)

    def lines(self) -> list[str]:
        """The report in words: a summary, then the rows that need attention."""
        where = f"{self.source} " if self.source else ""
        column = f", keyed by column {self.key_column!r}" if self.key_column else ""
        out = [
            f"metadata {where}{self.rows} rows{column}: {self.matched_rows} matched an image, "
            f"{self.unmatched_count} matched none, {self.ambiguous_count} fit several images; "
            f"{self.images_without_row} of {self.images} images have no row"
        ]
        if self.unmatched_count:
            shown = _listed(list(map(str, self.unmatched)), self.unmatched_count)
            out.append(f"  rows matching no image: {shown}")
        for row in self.ambiguous:
            images = _listed(list(row.images), row.count)
            out.append(f"  row {row.row} fits {row.count} images ({images}): given to none of them")
        if self.ambiguous_count > len(self.ambiguous):
            out.append(f"  ... and {self.ambiguous_count - len(self.ambiguous)} more ambiguous rows")
        if self.unmatched_count or self.ambiguous_count:
            examples = ", ".join(map(repr, self.image_examples))
            out.append(f"  the images' relative paths look like {examples}; rule: {self.rule}")
        if self.hint:
            out.append(f"  {self.hint}")
        return out


def _listed(shown: list[str], count: int) -> str:
    return ", ".join(shown) + (f" and {count - len(shown)} more" if count > len(shown) else "")


@dataclass
class SyncReport:
    """What a sync did: ``added`` and ``reembedded`` went through the model, ``updated`` had only
    their fields rewritten, ``removed`` left the feed. ``downloaded`` images were transferred,
    ``not_modified`` ones answered 304 from the cache."""

    rows: int = 0
    added: int = 0
    reembedded: int = 0
    updated: int = 0
    removed: int = 0
    unchanged: int = 0
    failed: list[FailedRow] = field(default_factory=list)
    downloaded: int = 0
    not_modified: int = 0
    seconds: float = 0.0

    @property
    def changed(self) -> bool:
        return bool(self.added or self.reembedded or self.updated or self.removed)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "changed": self.changed}


@dataclass(frozen=True)
class FailedRow:
    """A feed row that was not synced; its item (if any) is kept as it was."""

    line: int
    key: str | None
    image: str | None
    reason: str


@dataclass(frozen=True)
class DownloadSettings:
    """Limits of one image download; the defaults suit a shop's CDN."""

    timeout: float = 10.0  # seconds the server may stay silent (connect, or between reads)
    deadline: float = 60.0  # seconds for one image in all: every attempt, pause and redirect
    max_bytes: int = 32 * 1024 * 1024
    retries: int = 2  # attempts after the first, for 5xx, 408, 429, timeouts, dropped connections
    backoff: float = 0.5  # seconds before the first retry, doubled for each next one
    workers: int = 8  # downloads in flight at once
    allow_private_network: bool = False  # loopback and private ranges too (never link-local)


@dataclass
class ImportReport:
    """What an import did; ``skipped`` lists (key, reason) of rows that carry no usable vector."""

    rows: int = 0
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    files: int = 0
    seconds: float = 0.0
    product_field: str | None = None  # taken from the files by a catalog that had none

    @property
    def vectors_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0


@dataclass
class ExportReport:
    rows: int = 0
    files: list[str] = field(default_factory=list)
    seconds: float = 0.0
    damaged: list[str] = field(default_factory=list)  # keys left out: their stored vector is damaged


@dataclass(frozen=True)
class RefineReport:
    """The refined model written (and catalog, if asked), with the training report."""

    model: Path
    info: ModelInfo
    base_fingerprint: str
    label_field: str
    product_field: str | None
    training: TrainingReport
    catalog_out: Path | None
    seconds: float

    def to_dict(self) -> dict[str, object]:
        return {
            "model": str(self.model),
            "fingerprint": self.info.fingerprint,
            "base_fingerprint": self.base_fingerprint,
            "dim": self.info.dim,
            "label_field": self.label_field,
            "product_field": self.product_field,
            "catalog_out": str(self.catalog_out) if self.catalog_out else None,
            "seconds": self.seconds,
            **self.training.to_dict(),
        }


@dataclass(frozen=True)
class TrainingReport:
    """What was learned from what, and how the held-out items scored before and after."""

    items: int
    train_items: int
    held_out_items: int
    labels: int
    products: int
    dim: int
    k: int
    map_k: int
    before: dict[str, float]
    after: dict[str, float]
    best_epoch: int
    curve: list[Epoch] = field(default_factory=list)
    dropped_items: int = 0
    seed: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class Epoch:
    """One point of the training curve: mean training loss, held-out scores after the epoch."""

    epoch: int
    loss: float
    precision: float
    map: float
    seconds: float
