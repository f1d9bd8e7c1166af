"""What every worker process needs to build the app, passed through one environment variable
(uvicorn starts several workers from an import string, so they cannot share Python objects)."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass

ENV_NAME = "FASHIONREC_SERVE_CONFIG"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client reads it when it is imported
# Set to "1" by `benchmarks.service_load` only, to measure the service as it was before its
# latency tuning (uvicorn's pure-Python h11 and asyncio loop, no GC freeze) in the same run.
UNTUNED_ENV = "FASHIONREC_SERVE_UNTUNED"


def untuned() -> bool:
    return os.environ.get(UNTUNED_ENV) == "1"
MAX_UPLOAD_MB = 10.0
MAX_K = 100
# Bounds on what one query may ask, checked before any work (a longer list is a 422): each costs
# the service work per entry, and none is needed by a real query.
MAX_KEYS = 100  # keys of a "more like these" query, and negatives
MAX_FILTER_FIELDS = 20  # fields one filter names
MAX_FILTER_VALUES = 100  # values one filter field may match ("any of")
MAX_TEXT = 1000  # characters of a key, a field name, a filter value, group_by
MAX_VECTOR = 8192  # numbers in a query vector (the catalog checks its own dimension after)
MAX_FORM_FIELD = 64 * 1024  # bytes of a form field other than the photo (filter, negative...)
MAX_UPLOAD_PIXELS = 50_000_000  # pixels of an uploaded photo, read from its header before decoding


@dataclass(frozen=True)
class ServiceConfig:
    """``api_key_env`` names the environment variable holding the key (the key itself never
    goes on a command line, where `ps` shows it)."""

    catalog: str
    model: str | None = None
    api_key_env: str | None = None
    max_upload_mb: float = MAX_UPLOAD_MB
    expose_paths: bool = False
    threads: int | None = None
    max_k: int = MAX_K
    max_upload_pixels: int = MAX_UPLOAD_PIXELS

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1_000_000)

    def api_key(self) -> str | None:
        return (os.environ.get(self.api_key_env) or None) if self.api_key_env else None

    def to_env(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_env(cls) -> ServiceConfig:
        text = os.environ.get(ENV_NAME)
        if not text:
            raise RuntimeError(f"{ENV_NAME} is not set; start the service with `fashionrec serve`.")
        return cls(**json.loads(text))
