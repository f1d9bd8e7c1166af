"""The shapes of requests and answers: validated on the way in, described in the OpenAPI docs."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    model_validator,
)

from .config import MAX_FILTER_FIELDS, MAX_FILTER_VALUES, MAX_KEYS, MAX_TEXT, MAX_VECTOR

# Every list and text a caller sends is bounded here, so an oversized query is a 422 before any
# work; JSON is parsed by pydantic's parser, whose nesting limit makes a deep structure a 422 too.
Text = Annotated[str, StringConstraints(max_length=MAX_TEXT)]
Number = Annotated[float, Field(allow_inf_nan=False)]  # JSON's NaN and 1e999 are not values
Scalar = Text | int | Number | bool
FilterValue = Scalar | list[Scalar]


def _filter_bounds(value: Any) -> Any:
    """The counts first, in words (the union of value types would otherwise report one error per
    type it tried)."""
    if isinstance(value, dict):
        if len(value) > MAX_FILTER_FIELDS:
            raise ValueError(f"at most {MAX_FILTER_FIELDS} fields, got {len(value)}")
        for name, values in value.items():
            if isinstance(values, list) and len(values) > MAX_FILTER_VALUES:
                raise ValueError(
                    f"at most {MAX_FILTER_VALUES} values for one field, got {len(values)} for {name[:40]!r}"
                )
    return value


Filter = Annotated[dict[Text, FilterValue], BeforeValidator(_filter_bounds)]
Keys = Annotated[list[Text], Field(max_length=MAX_KEYS)]
FILTER_DOC = (
    'metadata values to match, {"category": "Dress"}; a list means any of its values '
    f"(at most {MAX_FILTER_FIELDS} fields, {MAX_FILTER_VALUES} values each)"
)
# The multipart form's JSON fields, validated as the JSON body's are.
FILTER_FIELD: TypeAdapter[dict] = TypeAdapter(Filter)
KEYS_FIELD: TypeAdapter[list] = TypeAdapter(Keys)


class JsonQuery(BaseModel):
    """A search by catalog key(s) or by a vector. Keys are only ever keys, never server files."""

    model_config = ConfigDict(extra="forbid")

    key: Text | None = Field(None, description="more like this stored item (itself left out)")
    keys: Keys | None = Field(None, description=f"several positives (at most {MAX_KEYS}): items like all")
    vector: Annotated[list[Number], Field(max_length=MAX_VECTOR)] | None = Field(
        None, description="an embedding of the catalog's model"
    )
    negative: Keys | None = Field(None, description=f"keys the results should be unlike (at most {MAX_KEYS})")
    k: int = Field(5, description="how many hits (or products, with group_by)")
    filter: Filter | None = Field(None, description=FILTER_DOC)
    group_by: Text | None = Field(None, description='"product": the k best distinct products')
    collapse_duplicates: bool = Field(False, description="one image per group of near-duplicates")

    @model_validator(mode="after")
    def _one_query(self) -> JsonQuery:
        given = [name for name in ("key", "keys", "vector") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of key, keys or vector (got {', '.join(given) or 'none'})")
        if self.keys is not None and not self.keys:
            raise ValueError("keys must name at least one item")
        return self


class HitOut(BaseModel):
    rank: int
    key: str
    similarity: float
    distance: float = Field(description="squared L2 distance; similarity = 1 - distance / 2")
    metadata: dict[str, object]
    product: str | None = Field(None, description="the item's product id (catalogs with products)")
    photos: list[str] | None = Field(None, description="group_by: the product's other keys, best first")
    path: str | None = Field(None, description="the image's file on the server (only with --expose-paths)")


class SearchAnswer(BaseModel):
    hits: list[HitOut]
    timings_ms: dict[str, float] = Field(description="read, embed (image queries), search, total")
    model: str = Field(description="fingerprint of the catalog's model")


class ItemOut(BaseModel):
    key: str
    metadata: dict[str, object]
    product: str | None = None
    path: str | None = None


class Health(BaseModel):
    status: str
    items: int
    model: str
    generation: int = Field(description="the catalog's change counter; it grows with every write")


class ErrorOut(BaseModel):
    status: int
    error: str = Field(description="a short code: bad_parameter, unknown_key, unreadable_image...")
    detail: str


MULTIPART_SCHEMA = {
    "type": "object",
    "required": ["image"],
    "properties": {
        "image": {"type": "string", "format": "binary", "description": "a photo (JPEG, PNG, WebP...)"},
        "k": {"type": "integer", "default": 5},
        "filter": {"type": "string", "description": f"a JSON object: {FILTER_DOC}"},
        "group_by": {"type": "string", "description": '"product"'},
        "box": {"type": "string", "description": "LEFT,TOP,RIGHT,BOTTOM: search for this region only"},
        "collapse_duplicates": {"type": "boolean", "default": False},
        "negative": {"type": "string", "description": "a JSON list of keys the results should be unlike"},
    },
}
