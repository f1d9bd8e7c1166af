"""The shapes of requests and answers: validated on the way in, described in the OpenAPI docs."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

Scalar = str | int | float | bool
FilterValue = Scalar | list[Scalar]
FILTER_DOC = 'metadata values to match, {"category": "Dress"}; a list means any of its values'


class JsonQuery(BaseModel):
    """A search by catalog key(s) or by a vector. Keys are only ever keys, never server files."""

    model_config = ConfigDict(extra="forbid")

    key: str | None = Field(None, description="more like this stored item (itself left out)")
    keys: list[str] | None = Field(None, description="several positives: items like all of these")
    vector: list[float] | None = Field(None, description="an embedding of the catalog's model")
    negative: list[str] | None = Field(None, description="keys of items the results should be unlike")
    k: int = Field(5, description="how many hits (or products, with group_by)")
    filter: dict[str, FilterValue] | None = Field(None, description=FILTER_DOC)
    group_by: str | None = Field(None, description='"product": the k best distinct products')
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
