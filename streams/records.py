"""Typed records of the stream's topics, and their validation at the boundary.

One :class:`faust.Record` per topic. The ingress topics (events, catalogue) arrive as raw bytes so that a
malformed message can be sent to the dead-letter topic with its original bytes: :func:`decode_pack` validates them
and raises :class:`~streams.errors.InvalidRecord` naming the field.

An events message holds one event (a JSON object) or a pack of events (a JSON array): producers pack events
by partition, which is what makes the stream fast (one Kafka message per ~hundreds of events).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import faust

from streams.errors import InvalidRecord

EVENT_KINDS = frozenset({"stream", "preview", "follow"})
_TYPE_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
_MAX_ID = 256
R = TypeVar("R")


class ListenEvent(faust.Record, serializer="json"):
    """One listening event: ``user_id`` played (or previewed, or followed) ``item_id`` at ``ts``."""

    event_id: str
    user_id: str
    item_id: str
    item_type: str
    ts: float
    kind: str = "stream"
    ms_played: int | None = None


class CatalogItem(faust.Record, serializer="json"):
    """One catalogue entry: an item of some type, with the text the language model reads."""

    item_id: str
    item_type: str
    title: str
    description: str = ""


class UserUpdate(faust.Record, serializer="json"):
    """A refresh request for a user: their state after the change (see :mod:`models.graph`)."""

    user_id: str
    state: dict[str, Any]
    event_ts: float


class ItemUpdate(faust.Record, serializer="json"):
    """A refresh request for an item: its adjacency after the change."""

    item_id: str
    item_type: str
    adjacency: dict[str, list[Any]]


class DeadLetter(faust.Record, serializer="json"):
    """A rejected message: where it came from, why, and its original bytes (latin-1 decoded)."""

    topic: str
    reason: str
    field: str
    original: str


def _identifier(data: Mapping[str, Any], name: str) -> str:
    value = data.get(name)
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise InvalidRecord(name, value, "must be a non-empty string")
    text = str(value)
    if not text or len(text) > _MAX_ID or text != text.strip():
        raise InvalidRecord(name, value, f"must be 1-{_MAX_ID} characters without surrounding spaces")
    return text


def _item_type(data: Mapping[str, Any]) -> str:
    value = data.get("item_type")
    if not isinstance(value, str) or not _TYPE_RE.match(value):
        raise InvalidRecord("item_type", value, "must match [a-z0-9][a-z0-9_-]{0,31}")
    return value


def validate_event(data: Any) -> ListenEvent:
    """Check one decoded event and build its record.

    Raises:
        InvalidRecord: naming the first field that is missing or wrong.
    """
    if not isinstance(data, Mapping):
        raise InvalidRecord("<event>", data, "an event must be a JSON object")
    ts = data.get("ts")
    if isinstance(ts, bool) or not isinstance(ts, int | float) or not math.isfinite(ts) or ts <= 0:
        raise InvalidRecord("ts", ts, "must be a positive number of unix seconds")
    kind = data.get("kind", "stream")
    if kind not in EVENT_KINDS:
        raise InvalidRecord("kind", kind, f"must be one of {sorted(EVENT_KINDS)}")
    ms_played = data.get("ms_played")
    if ms_played is not None and (isinstance(ms_played, bool) or not isinstance(ms_played, int) or ms_played < 0):
        raise InvalidRecord("ms_played", ms_played, "must be a non-negative integer or null")
    return ListenEvent(
        event_id=_identifier(data, "event_id"),
        user_id=_identifier(data, "user_id"),
        item_id=_identifier(data, "item_id"),
        item_type=_item_type(data),
        ts=float(ts),
        kind=kind,
        ms_played=ms_played,
    )


def validate_catalog_item(data: Any) -> CatalogItem:
    """Check one decoded catalogue entry and build its record.

    Raises:
        InvalidRecord: naming the first field that is missing or wrong.
    """
    if not isinstance(data, Mapping):
        raise InvalidRecord("<item>", data, "a catalogue item must be a JSON object")
    title = data.get("title")
    if not isinstance(title, str) or not title.strip():
        raise InvalidRecord("title", title, "must be a non-empty string")
    description = data.get("description", "")
    if description is None:
        description = ""
    if not isinstance(description, str):
        raise InvalidRecord("description", description, "must be a string")
    return CatalogItem(
        item_id=_identifier(data, "item_id"),
        item_type=_item_type(data),
        title=title.strip(),
        description=description,
    )


def _load_json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidRecord("<message>", raw[:60], f"not valid JSON: {exc}") from None


def decode_pack(raw: bytes, validate: Callable[[Any], R]) -> tuple[list[R], list[tuple[Any, InvalidRecord]]]:
    """Decode a message holding one record (a JSON object) or a pack of them (a JSON array).

    Args:
        raw: the message value.
        validate: :func:`validate_event` or :func:`validate_catalog_item`.

    Returns:
        ``(valid, rejected)`` where ``rejected`` pairs each bad element with its error.

    Raises:
        InvalidRecord: when the message as a whole is unreadable.
    """
    data = _load_json(raw)
    valid: list[R] = []
    rejected: list[tuple[Any, InvalidRecord]] = []
    for element in data if isinstance(data, list) else [data]:
        try:
            valid.append(validate(element))
        except InvalidRecord as error:
            rejected.append((element, error))
    return valid, rejected


def event_to_dict(event: ListenEvent) -> dict[str, Any]:
    """The JSON form of an event, as producers send it."""
    return {
        "event_id": event.event_id,
        "user_id": event.user_id,
        "item_id": event.item_id,
        "item_type": event.item_type,
        "ts": event.ts,
        "kind": event.kind,
        "ms_played": event.ms_played,
    }
