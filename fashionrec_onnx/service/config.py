"""What every worker process needs to build the app, passed through one environment variable
(uvicorn starts several workers from an import string, so they cannot share Python objects)."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass

ENV_NAME = "FASHIONREC_SERVE_CONFIG"
MAX_UPLOAD_MB = 10.0
MAX_K = 100


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
