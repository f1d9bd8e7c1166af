"""The FastAPI app: routes, the API key, the upload limit, metrics and JSON errors.

`create_app(config)` builds one app; `app_from_env()` is the factory uvicorn's workers call (the
config comes through the environment, see `config`). Each worker opens the catalog read-only;
every search first catches up with what other processes wrote (`fashionrec index`, `sync`).
"""

from __future__ import annotations

import contextlib
import gc
import hmac
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from .._version import __version__
from ..catalog import Catalog
from ..errors import BadArgumentError, FashionrecError, StorageUnavailableError
from ..images import parse_box
from .config import MAX_FORM_FIELD, MAX_TEXT, ServiceConfig, untuned
from .errors import ServiceError, bad_parameter
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .metrics import Metrics, MetricsMiddleware
from .schemas import (
    FILTER_FIELD,
    KEYS_FIELD,
    MULTIPART_SCHEMA,
    ErrorOut,
    Health,
    ItemOut,
    JsonQuery,
    SearchAnswer,
)
from .searching import Query, Searcher, check_filter, parse_flag, parse_json_field, parse_k, problems
from .upload_guard import MULTIPART_OVERHEAD, UploadGuard

log = logging.getLogger("fashionrec.service")

ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorOut, "description": text}
    for status, text in {
        400: "unreadable image",
        401: "missing or wrong API key",
        404: "unknown key",
        413: "upload over the limit",
        422: "bad parameters",
    }.items()
}
FORM_FIELDS = ("k", "filter", "group_by", "box", "collapse_duplicates", "negative")


def _error(status: int, error: str, detail: str) -> JSONResponse:
    return JSONResponse(ServiceError(status, error, detail).body(), status_code=status)


def _install_error_handlers(app: FastAPI) -> None:
    """Every failure becomes JSON ``{"status", "error", "detail"}``; nothing sends a traceback."""

    @app.exception_handler(ServiceError)
    async def service_error(request: Request, exc: ServiceError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "bad_request")
        return _error(exc.status_code, code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(422, "bad_parameter", "; ".join(str(e.get("msg")) for e in exc.errors()))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error answering %s %s", request.method, request.url.path)
        return _error(500, "internal", "the server failed to answer; the error is in its log")


def _api_key_check(config: ServiceConfig):  # -> a FastAPI dependency
    key = config.api_key()

    async def require_key(request: Request) -> None:
        if key is None:
            return
        given = request.headers.get("x-api-key", "")
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer":
            given = given or token.strip()
        if not hmac.compare_digest(given.encode(), key.encode()):
            raise ServiceError(
                401, "unauthorized", "send the API key in an X-API-Key or Authorization: Bearer header"
            )

    return require_key


async def _form_query(request: Request, config: ServiceConfig) -> Query:
    """A multipart search: the upload is read here (the guard has bounded the whole body)."""
    try:
        form = await request.form(max_files=1, max_fields=len(FORM_FIELDS), max_part_size=MAX_FORM_FIELD)
    except HTTPException as exc:  # the parser's bounds: too many fields, a field too long
        raise bad_parameter(
            f"the form: {exc.detail} (fields other than the image hold at most {MAX_FORM_FIELD // 1024} kB, "
            f"{len(FORM_FIELDS)} of them: {', '.join(FORM_FIELDS)})"
        ) from None
    try:
        unknown = sorted(set(form) - {"image", *FORM_FIELDS})
        if unknown:
            raise bad_parameter(
                f"unknown form field(s): {', '.join(unknown)}; the fields are image, {', '.join(FORM_FIELDS)}"
            )
        upload = form.get("image")
        if not isinstance(upload, UploadFile):
            raise bad_parameter("a multipart search needs the photo in a file field named 'image'")
        fields = {name: str(form[name]) for name in FORM_FIELDS if isinstance(form.get(name), str)}
        query = Query(image=await upload.read())
    finally:
        await form.close()
    query.k = parse_k(fields.get("k", "5"), config.max_k)
    if "filter" in fields:
        query.filter = check_filter(parse_json_field("filter", fields["filter"], FILTER_FIELD))
    if "negative" in fields:
        query.negative = parse_json_field("negative", fields["negative"], KEYS_FIELD)
    if len(fields.get("group_by", "")) > MAX_TEXT:
        raise bad_parameter(f"group_by: at most {MAX_TEXT} characters")
    if fields.get("box"):
        try:
            query.box = parse_box(fields["box"])
        except BadArgumentError as exc:
            raise bad_parameter(str(exc)) from None
    query.group_by = fields.get("group_by") or None
    query.collapse_duplicates = parse_flag("collapse_duplicates", fields.get("collapse_duplicates", ""))
    return query


def _json_query(body: bytes, config: ServiceConfig) -> Query:
    try:
        given = JsonQuery.model_validate_json(body or b"{}")
    except ValidationError as exc:
        raise bad_parameter(problems(exc)) from None
    return Query(
        k=parse_k(given.k, config.max_k),
        key=given.key,
        keys=given.keys,
        vector=given.vector,
        negative=given.negative,
        filter=check_filter(given.filter),
        group_by=given.group_by,
        collapse_duplicates=given.collapse_duplicates,
    )


def create_app(config: ServiceConfig, catalog: Catalog | None = None) -> FastAPI:
    """The service for one catalog (opened read-only at startup unless one is given)."""
    metrics = Metrics()
    state: dict[str, Searcher] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        opened = catalog or Catalog.open(config.catalog, config.model, readonly=True, threads=config.threads)
        state["searcher"] = Searcher(opened, config)
        try:
            await run_in_threadpool(lambda: opened.embedder)  # the first upload need not wait for it
        except FashionrecError as exc:
            log.warning("image searches will fail until the model is found: %s", exc)
        if not untuned():
            # What startup made (modules, the app, the catalog, the model) lives as long as the
            # worker: out of the collector's sight, a full collection no longer walks it all.
            # Unfrozen, one such pass took 30-40 ms of CPU, 100-600 ms on a loaded machine, about
            # once per 1,000 requests, and every request in flight waited for it: p99's tail.
            gc.collect()
            gc.freeze()
        try:
            yield
        finally:
            state["searcher"].decoder.shutdown(wait=False, cancel_futures=True)
            if catalog is None:
                opened.close()

    app = FastAPI(
        title="fashionrec",
        version=__version__,
        summary="Visual search over a fashionrec catalog: by photo, by catalog key, by vector.",
        lifespan=lifespan,
    )
    _install_error_handlers(app)
    guarded = Depends(_api_key_check(config))

    @app.post(
        "/search",
        response_model=SearchAnswer,
        responses=ERRORS,
        dependencies=[guarded],
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "multipart/form-data": {"schema": MULTIPART_SCHEMA},
                    "application/json": {"schema": JsonQuery.model_json_schema()},
                },
            }
        },
    )
    async def search(request: Request) -> JSONResponse:
        """A photo upload (multipart, field `image`) or a JSON query by `key`, `keys` or `vector`."""
        start = time.perf_counter()
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind == "multipart/form-data":
            query = await _form_query(request, config)
        elif kind in ("application/json", ""):
            query = _json_query(await request.body(), config)
        else:
            raise bad_parameter(
                f"send multipart/form-data with an image, or application/json; not {kind[:60]!r}"
            )
        query.timings["read"] = (time.perf_counter() - start) * 1000
        answer = await run_in_threadpool(state["searcher"].answer, query)
        answer["timings_ms"]["total"] = (time.perf_counter() - start) * 1000
        return JSONResponse(answer)

    @app.get("/items/{key:path}", response_model=ItemOut, responses=ERRORS, dependencies=[guarded])
    def item(key: str) -> JSONResponse:
        """One stored item: its metadata (and product)."""
        if len(key) > MAX_TEXT:  # the bound of every key a query names
            raise bad_parameter(f"key: at most {MAX_TEXT} characters, got {len(key):,}")
        return JSONResponse(state["searcher"].item(key))

    @app.get("/health", response_model=Health)
    def health() -> JSONResponse:
        """Items, the model's fingerprint and the catalog's generation (no API key needed); 503
        when the catalog's server (Milvus) cannot be reached, so a load balancer routes around."""
        try:
            return JSONResponse(state["searcher"].health())
        except StorageUnavailableError as exc:
            log.error("health: %s", exc)
            return _error(503, "unavailable", str(exc))

    @app.get("/metrics", response_class=PlainTextResponse, dependencies=[guarded])
    def prometheus() -> Response:
        """Prometheus text: requests by route, method and status, latency histogram, items (the
        figures of every worker process, added up)."""
        gauges = {"fashionrec_catalog_items": ("items in the catalog", len(state["searcher"].catalog))}
        return Response(metrics.render(gauges), media_type=METRICS_CONTENT_TYPE)

    limit = config.max_upload_bytes + MULTIPART_OVERHEAD
    app.add_middleware(UploadGuard, max_bytes=limit, guarded=lambda path: path == "/search", as_json=True)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app


def app_from_env() -> FastAPI:
    """uvicorn's factory in each worker process (``fashionrec serve`` sets the environment)."""
    return create_app(ServiceConfig.from_env())
