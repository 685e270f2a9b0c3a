"""The query API (FastAPI): recommendations and similar items from the vector store, event ingestion.

I/O is injected: the store, an event sink (anything with ``send(events)``, the Kafka producer in production)
and a health probe, so tests build the app around their own parts.

Ingestion must never slow queries down. Queries run in Starlette's thread pool; ``POST /events`` does not
touch it: its body is bounded (:class:`ApiLimits`) and buffered by an ASGI middleware that refuses a declared
oversized ``Content-Length`` before reading a byte, and its JSON decoding, validation and the Kafka send run
in a small pool of their own, with a bound on the requests in progress (more are answered 503 at once).
Error messages quote client values shortened, never whole.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from fastapi import FastAPI, HTTPException, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, TypeAdapter, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from monitoring.metrics import ApiMetrics
from streams.errors import InvalidRecord
from streams.records import ListenEvent, validate_event
from vectorstore.base import Hit, ItemPoint, UserPoint, VectorStore

_QUOTE_CHARS = 80
_MAX_ERRORS = 10


class EventSink(Protocol):
    """Where accepted events go."""

    def send(self, events: Sequence[ListenEvent], wait: bool = True) -> Any:
        """Deliver ``events``; raise when they could not be delivered."""
        ...


@dataclass(frozen=True)
class ApiLimits:
    """Bounds on what clients may send (``workers.settings.ApiSettings`` carries them in deployments).

    Attributes:
        max_k: the largest ``k`` a client may ask for.
        max_body_bytes: the largest request body; a larger one is answered 413 (a declared
            ``Content-Length`` over it at once, without reading the body).
        max_batch: the most events in one ``POST /events``.
        ts_min: the earliest event time accepted (unix seconds; 2000-01-01T00:00:00Z).
        ts_future_s: how far past now an event time may be (clock skew between clients and the API).
        ingest_threads: threads that decode, validate and send posted events (not the queries' pool).
        ingest_in_flight: the most ``POST /events`` in progress; more are answered 503 with Retry-After.
    """

    max_k: int = 200
    max_body_bytes: int = 1_048_576
    max_batch: int = 1000
    ts_min: float = 946_684_800.0
    ts_future_s: float = 86_400.0
    ingest_threads: int = 2
    ingest_in_flight: int = 32

    def __post_init__(self) -> None:
        for name in ("max_k", "max_body_bytes", "max_batch", "ingest_threads", "ingest_in_flight"):
            if getattr(self, name) < 1:
                raise ValueError(f"ApiLimits.{name} must be at least 1, got {getattr(self, name)}")


class EventIn(BaseModel):
    """A listening event as clients post it; ``event_id`` and ``ts`` default to a new UUID and now."""

    model_config = ConfigDict(extra="forbid")

    user_id: str = Field(min_length=1, max_length=256)
    item_id: str = Field(min_length=1, max_length=256)
    item_type: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$")
    ts: StrictFloat | None = Field(None, gt=0, description="unix seconds; now when omitted; within the live window")
    kind: str = Field("stream", description="stream, preview or follow")
    ms_played: StrictInt | None = Field(None, ge=0, description="a JSON integer (true/false or 3.0 are refused)")
    event_id: str | None = Field(None, min_length=1, max_length=256)


class ItemOut(BaseModel):
    """One recommended or similar item."""

    item_id: str
    item_type: str
    title: str
    score: float


class Recommendations(BaseModel):
    """A ranked list of items for a user or an item."""

    query: str
    item_type: str | None
    model_version: str
    updated_at: float
    items: list[ItemOut]


class Accepted(BaseModel):
    """The result of POST /events."""

    accepted: int
    event_ids: list[str]


_EVENT = TypeAdapter(EventIn)


def quote(value: object, limit: int = _QUOTE_CHARS) -> str:
    """``repr(value)`` cut to ``limit`` characters, saying how long it was: error messages never echo a huge
    value, and ``repr`` escapes what UTF-8 cannot encode (lone surrogates)."""
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


def _validation_detail(errors: Sequence[Any], prefix: tuple[str | int, ...] = ()) -> list[dict[str, Any]]:
    """Pydantic errors as the API reports them: location, message, the offending input shortened."""
    detail = [
        {"loc": [*prefix, *error["loc"]], "msg": error["msg"], "type": error["type"],
         "input": quote(error.get("input"))}
        for error in errors[:_MAX_ERRORS]
    ]
    if len(errors) > _MAX_ERRORS:
        detail.append({"loc": list(prefix), "msg": f"... and {len(errors) - _MAX_ERRORS} more errors", "type": "more"})
    return detail


def _unknown_fields(errors: Sequence[Any]) -> list[str]:
    return sorted({quote(e["loc"][-1], 40) for e in errors if e["type"] == "extra_forbidden"})


def _items(hits: list[Hit]) -> list[ItemOut]:
    return [ItemOut(item_id=h.item_id, item_type=h.item_type, title=h.title, score=h.score) for h in hits]


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class BodyLimit:
    """ASGI middleware: buffers request bodies up to ``max_bytes`` and answers 413 beyond.

    A declared ``Content-Length`` over the bound is refused before any of the body is read (the server then
    closes the connection); a chunked body is counted as it arrives and refused when it passes the bound.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS", "DELETE"):
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                await self._refuse(send, 400, f"Content-Length {quote(declared.decode('latin-1'))} is not a number")
                return
            if size > self.max_bytes:
                await self._refuse(send, 413, self._too_large(f"declared {size} bytes"))
                return
        chunks: list[bytes] = []
        received = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            received += len(chunk)
            if received > self.max_bytes:
                await self._refuse(send, 413, self._too_large(f"more than {self.max_bytes} bytes sent"))
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    def _too_large(self, what: str) -> str:
        return f"request body too large ({what}); the limit is {self.max_bytes} bytes: send smaller batches"

    @staticmethod
    async def _refuse(send: Send, status: int, detail: str) -> None:
        body = json.dumps({"detail": detail}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


class Measure:
    """ASGI middleware: counts requests by route and status and times them (a plain ASGI middleware: Starlette's
    ``BaseHTTPMiddleware`` costs a task group per request)."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            name = getattr(scope.get("route"), "path", "unmatched")  # the router records the matched route
            self.metrics.latency.labels(name).observe(time.perf_counter() - started)
            self.metrics.requests.labels(name, str(status)).inc()


def _events_body_schema(limits: ApiLimits) -> dict[str, Any]:
    """The OpenAPI schema of POST /events' body (the route reads the raw body so that decoding and validation
    run off the event loop, so FastAPI cannot derive it)."""
    event = _EVENT.json_schema()
    event["additionalProperties"] = False
    ts = event["properties"]["ts"]["anyOf"][0]
    ts.pop("exclusiveMinimum", None)
    ts["minimum"] = limits.ts_min
    return {
        "required": True,
        "content": {"application/json": {"schema": {"anyOf": [
            event, {"type": "array", "items": event, "minItems": 1, "maxItems": limits.max_batch},
        ]}}},
    }


def create_api(
    store: VectorStore,
    sink: EventSink | None,
    registry: CollectorRegistry,
    max_k: int | None = None,
    health: Callable[[], dict[str, Any]] | None = None,
    limits: ApiLimits | None = None,
    users: Callable[[UserPoint], UserPoint] | None = None,
) -> FastAPI:
    """Build the HTTP API.

    Args:
        store: the vector store to query.
        sink: where POST /events sends events (None: the route answers 503).
        registry: the Prometheus registry that GET /metrics exposes; the API's own metrics go there too.
        max_k: the largest ``k`` a client may ask for (overrides ``limits.max_k``).
        health: extra facts for GET /healthz (e.g. the refresher's state); ``{"ok": False}`` makes it 503.
        limits: bounds on requests; the defaults of :class:`ApiLimits` when omitted.
        users: composes a stored user's vector from their state (``vectorstore.compose.ComposedUsers``, what
            the live stack passes); None serves the vector stored with the user.
    """
    limits = limits or ApiLimits()
    top_k = max_k if max_k is not None else limits.max_k
    ingest = ThreadPoolExecutor(limits.ingest_threads, thread_name_prefix="api-ingest")
    in_flight = 0

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> Any:
        yield
        ingest.shutdown(wait=True, cancel_futures=True)

    app = FastAPI(title="gfm", version="0.1.0", lifespan=lifespan,
                  description="Fresh recommendations from a graph foundation model, updated from a live stream.")
    metrics = ApiMetrics.create(registry)
    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes)
    app.add_middleware(Measure, metrics=metrics)  # added last, so outermost: it also counts what BodyLimit refuses

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, error: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _validation_detail(error.errors())}, status_code=422)

    def check_type(item_type: str | None) -> None:
        if item_type is not None and not store.has_item_type(item_type):
            known = ", ".join(sorted(store.item_types())) or "none yet"
            raise HTTPException(404, f"unknown item type {quote(item_type)}; the store holds: {known}")

    def ranked(query: str, point: ItemPoint | UserPoint, item_type: str | None, k: int,
               exclude: Sequence[str] = (), exclude_points: Sequence[str] = ()) -> Recommendations:
        hits = store.search(point.vector, k, item_type=item_type, exclude=exclude, exclude_points=exclude_points)
        return Recommendations(query=query, item_type=item_type, model_version=point.model_version,
                               updated_at=point.updated_at, items=_items(hits))

    not_found: dict[int | str, dict[str, Any]] = {
        404: {"description": "unknown user, item or item type (the message lists the known types)"}}

    async def answer(call: Callable[..., Recommendations], *args: Any) -> Recommendations:
        # An in-process store computes under the GIL: a thread would add a hand-over and GIL contention between
        # concurrent requests (measured: 1.3x the requests/s and half the p99 on the loop; bench/query_bench.py).
        # A store over the network waits on I/O: threads let concurrent requests overlap their waits.
        return call(*args) if store.in_process else await run_in_threadpool(call, *args)

    def recommendations(user_id: str, item_type: str | None, k: int) -> Recommendations:
        check_type(item_type)
        user = store.get_user(user_id)
        if user is None:
            raise HTTPException(404, f"unknown user {quote(user_id)}: no events from them have been processed yet")
        if users is not None:
            user = users(user)
        if not user.vector.any():
            raise HTTPException(404, f"user {quote(user_id)} has no vector yet: none of their items is embedded")
        return ranked(user_id, user, item_type, k, exclude_points=user.excluded_points())

    def similar_items(item_id: str, item_type: str | None, k: int) -> Recommendations:
        check_type(item_type)
        item = store.get_item(item_id)
        if item is None:
            raise HTTPException(404, f"unknown item {quote(item_id)}: not in the catalogue or not embedded yet")
        return ranked(item_id, item, item_type, k, exclude=[item_id])

    @app.get("/users/{user_id}/recommendations", response_model=Recommendations, responses=not_found)
    async def recommend(
        user_id: str,
        type: str | None = Query(None, description="item type to recommend; all types when omitted"),
        k: int = Query(10, ge=1, le=top_k),
    ) -> Recommendations:
        """Items of ``type`` that the user has not consumed, best first."""
        return await answer(recommendations, user_id, type, k)

    @app.get("/items/{item_id}/similar", response_model=Recommendations, responses=not_found)
    async def similar(
        item_id: str,
        type: str | None = Query(None, description="item type of the results; all types when omitted"),
        k: int = Query(10, ge=1, le=top_k),
    ) -> Recommendations:
        """Items nearest to ``item_id``, itself excluded."""
        return await answer(similar_items, item_id, type, k)

    def decode(body: bytes) -> list[ListenEvent]:
        """The posted events, validated, all or nothing (runs in the ingest pool)."""
        try:
            data = json.loads(body)
        except (ValueError, RecursionError) as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            metrics.events_rejected.inc()
            raise HTTPException(400, f"the body is not valid JSON: {quote(str(error), 200)}") from None
        batch = data if isinstance(data, list) else [data]
        try:
            return validate_batch(batch)
        except HTTPException:
            metrics.events_rejected.inc(len(batch))
            raise

    def validate_batch(batch: list[Any]) -> list[ListenEvent]:
        if not batch:
            raise HTTPException(422, "empty batch: send one event or a non-empty list")
        if len(batch) > limits.max_batch:
            raise HTTPException(413, f"batch of {len(batch)} events; at most {limits.max_batch} per request")
        now = time.time()
        latest = now + limits.ts_future_s
        events = []
        for index, raw in enumerate(batch):
            try:
                event = _EVENT.validate_python(raw)
            except ValidationError as error:
                errors = error.errors()
                unknown = _unknown_fields(errors)
                if unknown:
                    known = ", ".join(EventIn.model_fields)
                    raise HTTPException(422, f"event {index}: unknown fields {', '.join(unknown)}; "
                                             f"an event has: {known}") from None
                raise HTTPException(422, _validation_detail(errors, ("body", index))) from None
            data = event.model_dump()
            data["event_id"] = data["event_id"] or str(uuid.uuid4())
            data["ts"] = data["ts"] or now
            if not limits.ts_min <= data["ts"] <= latest:
                raise HTTPException(422, (
                    f"event {index}: ts={quote(data['ts'])}: must be between {_iso(limits.ts_min)} and "
                    f"{_iso(latest)} ({limits.ts_future_s:g} s after now), in unix seconds; this API takes "
                    "live events: load history with `gfm replay`"))
            try:
                _encodable(data)
                events.append(validate_event(data))
            except InvalidRecord as error:
                raise HTTPException(422, f"event {index}: {error}") from None
        return events

    def accept(body: bytes) -> Accepted:
        """Decode, validate and produce one request's events, all or nothing (runs in the ingest pool)."""
        assert sink is not None
        events = decode(body)
        try:
            sink.send(events, wait=True)
        except Exception as error:
            raise HTTPException(503, f"the event stream did not accept the events: {quote(str(error), 200)}") from None
        metrics.events_accepted.inc(len(events))
        return Accepted(accepted=len(events), event_ids=[e.event_id for e in events])

    @app.post("/events", status_code=202, response_model=Accepted,
              openapi_extra={"requestBody": _events_body_schema(limits)},
              responses={400: {"description": "the body is not JSON"},
                         413: {"description": "body or batch too large"},
                         422: {"description": "an invalid event: the message names it and the field"},
                         503: {"description": "ingestion busy or the event stream is down; retry"}})
    async def post_events(request: Request) -> Accepted:
        """Validate one event or a batch and produce it to Kafka; all or nothing."""
        nonlocal in_flight
        if sink is None:
            raise HTTPException(503, "event ingestion is not configured on this API instance")
        if in_flight >= limits.ingest_in_flight:
            raise HTTPException(503, f"ingestion busy: {in_flight} requests in progress; retry shortly",
                                headers={"Retry-After": "1"})
        in_flight += 1
        try:
            body = await request.body()
            return await asyncio.get_running_loop().run_in_executor(ingest, accept, body)
        finally:
            in_flight -= 1

    @app.get("/healthz", responses={503: {"description": "the in-process refresher died"}})
    def healthz() -> JSONResponse:
        """Liveness and what the store holds."""
        facts: dict[str, Any] = {"ok": True}
        if health is not None:
            facts.update(health())
        try:
            facts["items"] = store.count_items()
        except Exception as error:  # the store is down: say so, do not fail the probe itself
            facts.update(ok=False, status="degraded", items=None, store_error=repr(error)[:300])
        return JSONResponse(facts, status_code=200 if facts["ok"] else 503)

    @app.get("/metrics", response_class=Response,
             responses={200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {}}, "description": "exposition"}})
    def prometheus() -> Response:
        """Prometheus exposition of this process's metrics."""
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app


def _encodable(data: dict[str, Any]) -> None:
    """Refuse strings that UTF-8 cannot carry (JSON's ``\\ud800`` escapes decode to lone surrogates)."""
    for name, value in data.items():
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise InvalidRecord(name, value, "must be valid Unicode (no lone surrogate escapes)") from None
