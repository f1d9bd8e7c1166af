"""Products: photos grouped by the metadata field the catalog names as its product id.

A shop sells products, each shown by several photos (front, back, detail, worn). The catalog
records which metadata field identifies the product (setting ``product.field``); a search can then
return distinct products (``group_by="product"``), and "more like this" on a photo leaves out the
photo's whole product. An item without the field is a product of its own.

Grouping reuses the filter columns (an int32 code per label, kept current by the change log), so
it costs one stable argsort per catalog generation and nothing per visited graph node.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import BadArgumentError

SETTING = "product.field"
GROUP_BY = "product"  # the only grouping: by the catalog's product field


def checked_field(name: object) -> str | None:
    """A product field name as the catalog records it (None: no products)."""
    if name is None or name == "":
        return None
    if not isinstance(name, str) or not name.strip() or len(name) > 200 or "\x00" in name:
        raise BadArgumentError(f"a product field is a metadata field name, got {name!r}")
    return name


def checked_group_by(group_by: object, field: str | None) -> bool:
    """Whether a search groups by product; ``group_by`` may name the product field itself."""
    if group_by is None:
        return False
    if group_by not in (GROUP_BY, field):
        raise BadArgumentError(f"group_by takes {GROUP_BY!r} (the catalog's product field), got {group_by!r}")
    if field is None:
        raise BadArgumentError(
            "this catalog has no product field, so there is nothing to group by: name the metadata "
            "field holding the product id with Catalog.set_product_field('product_id') or with "
            "--product-field product_id (fashionrec index, import or sync)."
        )
    return True


@dataclass(frozen=True)
class Products:
    """Which product each label belongs to, for one catalog generation."""

    codes: np.ndarray  # int32 per label; -1: no product id (a product of its own) or gone
    names: list[str]  # product id of each code
    order: np.ndarray  # labels with a product, sorted by code
    sorted_codes: np.ndarray

    @classmethod
    def of(cls, codes: np.ndarray, names: list[str]) -> Products:
        order = np.argsort(codes, kind="stable")
        order = order[codes[order] >= 0]
        return cls(codes, list(names), order, codes[order])

    def name(self, label: int) -> str | None:
        code = int(self.codes[label]) if 0 <= label < len(self.codes) else -1
        return self.names[code] if code >= 0 else None

    def members(self, label: int) -> np.ndarray:
        """The labels of ``label``'s product (just itself when it has no product id)."""
        code = int(self.codes[label]) if 0 <= label < len(self.codes) else -1
        if code < 0:
            return np.asarray([label], np.int64)
        start, stop = np.searchsorted(self.sorted_codes, [code, code + 1])
        return self.order[start:stop].astype(np.int64)

    def whole(self, labels: np.ndarray) -> np.ndarray:
        """``labels`` and every other photo of their products (what "more like this" leaves out)."""
        if len(labels) == 0:
            return labels
        return np.unique(np.concatenate([self.members(int(label)) for label in labels]))
