"""The query API (FastAPI): recommendations and similar items from the vector store, event ingestion.

I/O is injected: the store, an event sink (anything with ``send(events)``, the Kafka producer in production)
and a health probe, so tests build the app around their own parts.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from fastapi import FastAPI, HTTPException, Query, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import BaseModel, Field

from monitoring.metrics import ApiMetrics
from streams.errors import InvalidRecord
from streams.records import ListenEvent, validate_event
from vectorstore.base import Hit, ItemPoint, UserPoint, VectorStore


class EventSink(Protocol):
    """Where accepted events go."""

    def send(self, events: Sequence[ListenEvent], wait: bool = True) -> Any:
        """Deliver ``events``; raise when they could not be delivered."""
        ...


class EventIn(BaseModel):
    """A listening event as clients post it; ``event_id`` and ``ts`` default to a new UUID and now."""

    user_id: str = Field(min_length=1, max_length=256)
    item_id: str = Field(min_length=1, max_length=256)
    item_type: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$")
    ts: float | None = Field(None, gt=0, description="unix seconds; now when omitted")
    kind: str = Field("stream", description="stream, preview or follow")
    ms_played: int | None = Field(None, ge=0)
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


def _items(hits: list[Hit]) -> list[ItemOut]:
    return [ItemOut(item_id=h.item_id, item_type=h.item_type, title=h.title, score=h.score) for h in hits]


def create_api(
    store: VectorStore,
    sink: EventSink | None,
    registry: CollectorRegistry,
    max_k: int = 200,
    health: Callable[[], dict[str, Any]] | None = None,
) -> FastAPI:
    """Build the HTTP API.

    Args:
        store: the vector store to query.
        sink: where POST /events sends events (None: the route answers 503).
        registry: the Prometheus registry that GET /metrics exposes; the API's own metrics go there too.
        max_k: the largest ``k`` a client may ask for.
        health: extra facts for GET /healthz (e.g. the refresher's state); ``{"ok": False}`` makes it 503.
    """
    app = FastAPI(title="gfm", version="0.1.0",
                  description="Fresh recommendations from a graph foundation model, updated from a live stream.")
    metrics = ApiMetrics.create(registry)

    @app.middleware("http")
    async def measure(request: Request, call_next: Callable[[Request], Any]) -> Response:
        started = time.perf_counter()
        response: Response = await call_next(request)
        route = request.scope.get("route")
        name = getattr(route, "path", "unmatched")
        metrics.latency.labels(name).observe(time.perf_counter() - started)
        metrics.requests.labels(name, str(response.status_code)).inc()
        return response

    def ranked(query: str, point: ItemPoint | UserPoint, item_type: str | None, k: int,
               exclude: list[str]) -> Recommendations:
        hits = store.search(point.vector, k, item_type=item_type, exclude=exclude)
        return Recommendations(query=query, item_type=item_type, model_version=point.model_version,
                               updated_at=point.updated_at, items=_items(hits))

    @app.get("/users/{user_id}/recommendations", response_model=Recommendations)
    def recommend(
        user_id: str,
        type: str | None = Query(None, description="item type to recommend; all types when omitted"),
        k: int = Query(10, ge=1, le=max_k),
    ) -> Recommendations:
        """Items of ``type`` that the user has not consumed, best first."""
        user = store.get_user(user_id)
        if user is None:
            raise HTTPException(404, f"unknown user {user_id!r}: no events from them have been processed yet")
        return ranked(user_id, user, type, k, exclude=user.consumed)

    @app.get("/items/{item_id}/similar", response_model=Recommendations)
    def similar(
        item_id: str,
        type: str | None = Query(None, description="item type of the results; all types when omitted"),
        k: int = Query(10, ge=1, le=max_k),
    ) -> Recommendations:
        """Items nearest to ``item_id``, itself excluded."""
        item = store.get_item(item_id)
        if item is None:
            raise HTTPException(404, f"unknown item {item_id!r}: not in the catalogue or not embedded yet")
        return ranked(item_id, item, type, k, exclude=[item_id])

    @app.post("/events", status_code=202, response_model=Accepted)
    def post_events(body: EventIn | list[EventIn]) -> Accepted:
        """Validate one event or a batch and produce it to Kafka; all or nothing."""
        if sink is None:
            raise HTTPException(503, "event ingestion is not configured on this API instance")
        batch = body if isinstance(body, list) else [body]
        if not batch:
            raise HTTPException(422, "empty batch: send one event or a non-empty list")
        events = []
        now = time.time()
        for index, event in enumerate(batch):
            data = event.model_dump()
            data["event_id"] = data["event_id"] or str(uuid.uuid4())
            data["ts"] = data["ts"] or now
            try:
                events.append(validate_event(data))
            except InvalidRecord as error:
                metrics.events_rejected.inc(len(batch))
                raise HTTPException(422, f"event {index}: {error}") from None
        try:
            sink.send(events, wait=True)
        except Exception as error:
            raise HTTPException(503, f"the event stream did not accept the events: {error}") from None
        metrics.events_accepted.inc(len(events))
        return Accepted(accepted=len(events), event_ids=[e.event_id for e in events])

    @app.get("/healthz")
    def healthz() -> JSONResponse:
        """Liveness and what the store holds."""
        facts: dict[str, Any] = {"ok": True, "items": store.count_items()}
        if health is not None:
            facts.update(health())
        return JSONResponse(facts, status_code=200 if facts["ok"] else 503)

    @app.get("/metrics")
    def prometheus() -> Response:
        """Prometheus exposition of this process's metrics."""
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app
