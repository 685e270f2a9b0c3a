"""Typed records of the stream's topics, and their validation at the boundary.

One :class:`faust.Record` per topic. The ingress topics (events, catalogue) arrive as raw bytes so that a
malformed message can be sent to the dead-letter topic with its original bytes: :func:`decode_pack` validates them
and raises :class:`~streams.errors.InvalidRecord` naming the field.

An events message holds one event (a JSON object) or a pack of events (a JSON array): producers pack events
by partition, which is what makes the stream fast (one Kafka message per ~hundreds of events).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import faust
import orjson

from models.trend import TAUS
from streams.errors import InvalidRecord

EVENT_KINDS = frozenset({"stream", "preview", "follow"})
_TYPE_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
_MAX_ID = 256
MAX_TS = 4_102_444_800.0
"""2100-01-01: a later ``ts`` is a corrupt clock or a unit mistake (milliseconds), not a listening event."""
MAX_MS_PLAYED = 2**53
_MAX_TITLE = 1000
_MAX_DESCRIPTION = 10_000
DEAD_LETTER_ORIGINAL_BYTES = 64 * 1024
"""A dead letter keeps at most this much of the original message (and its size, topic, partition and offset,
which locate the whole of it), so a huge poison message cannot make the dead letter itself too big to send."""
R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class ListenEvent:
    """One listening event: ``user_id`` played (or previewed, or followed) ``item_id`` at ``ts``.

    A plain slotted dataclass, not a ``faust.Record``: the events agent builds one per event (tens of thousands
    per second), and a Record costs ten times as much to build. Events travel as JSON (:func:`event_to_dict`).
    """

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
    """A refresh request for an item: its adjacency and its trend levels (one per :data:`models.trend.TAUS`,
    relative to the epoch 0) after the change."""

    item_id: str
    item_type: str
    adjacency: dict[str, Any]
    """Per neighbour, ``(item_type, weight, ts)`` (a tuple when decoded from the columns the agents write)."""
    levels: list[float]


class DeadLetter(faust.Record, serializer="json"):
    """A rejected message: where it came from, why, and its original bytes (latin-1 decoded, the first
    :data:`DEAD_LETTER_ORIGINAL_BYTES` of ``size``)."""

    topic: str
    reason: str
    field: str
    original: str
    size: int = 0
    partition: int = -1
    offset: int = -1


def dead_letter(topic: str, raw: bytes | None, error: InvalidRecord, partition: int = -1,
                offset: int = -1) -> DeadLetter:
    """The dead letter of a rejected message (or of one rejected element of a pack)."""
    raw = raw or b""
    return DeadLetter(topic=topic, reason=str(error), field=error.field,
                      original=raw[:DEAD_LETTER_ORIGINAL_BYTES].decode("latin-1"), size=len(raw),
                      partition=partition, offset=offset)


def _encodable(text: str) -> bool:
    """Whether ``text`` is valid Unicode (JSON allows lone surrogates such as ``"\\ud800"``; Kafka keys cannot)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _identifier(data: Mapping[str, Any], name: str) -> str:
    value = data.get(name)
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise InvalidRecord(name, value, "must be a non-empty string")
    if isinstance(value, int) and not -(10**18) < value < 10**18:
        raise InvalidRecord(name, value, "a numeric id must have at most 18 digits")
    text = str(value)
    if not text or len(text) > _MAX_ID or text != text.strip():
        raise InvalidRecord(name, value, f"must be 1-{_MAX_ID} characters without surrounding spaces")
    if not _encodable(text):
        raise InvalidRecord(name, value, "must be valid Unicode (no lone surrogates)")
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
    ts = _timestamp(data.get("ts"))
    kind = data.get("kind", "stream")
    if not isinstance(kind, str) or kind not in EVENT_KINDS:
        raise InvalidRecord("kind", kind, f"must be one of {sorted(EVENT_KINDS)}")
    ms_played = data.get("ms_played")
    if ms_played is not None and (isinstance(ms_played, bool) or not isinstance(ms_played, int)
                                  or not 0 <= ms_played <= MAX_MS_PLAYED):
        raise InvalidRecord("ms_played", ms_played, f"must be an integer in [0, {MAX_MS_PLAYED}] or null")
    return ListenEvent(
        event_id=_identifier(data, "event_id"),
        user_id=_identifier(data, "user_id"),
        item_id=_identifier(data, "item_id"),
        item_type=_item_type(data),
        ts=ts,
        kind=kind,
        ms_played=ms_played,
    )


def _timestamp(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidRecord("ts", value, "must be a positive number of unix seconds")
    try:
        ts = float(value)
    except OverflowError:
        ts = math.inf
    if not math.isfinite(ts) or not 0 < ts <= MAX_TS:
        raise InvalidRecord("ts", value, f"must be a positive number of unix seconds, at most {MAX_TS:.0f} (2100)")
    return ts


def _text(data: Mapping[str, Any], name: str, limit: int, required: bool) -> str:
    value = data.get(name)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value.strip()):
        raise InvalidRecord(name, value, "must be a non-empty string" if required else "must be a string")
    if len(value) > limit:
        raise InvalidRecord(name, value, f"must be at most {limit} characters (got {len(value)})")
    if not _encodable(value):
        raise InvalidRecord(name, value, "must be valid Unicode (no lone surrogates)")
    return value


def validate_catalog_item(data: Any) -> CatalogItem:
    """Check one decoded catalogue entry and build its record.

    Raises:
        InvalidRecord: naming the first field that is missing or wrong.
    """
    if not isinstance(data, Mapping):
        raise InvalidRecord("<item>", data, "a catalogue item must be a JSON object")
    title = _text(data, "title", _MAX_TITLE, required=True)
    description = _text(data, "description", _MAX_DESCRIPTION, required=False)
    return CatalogItem(
        item_id=_identifier(data, "item_id"),
        item_type=_item_type(data),
        title=title.strip(),
        description=description,
    )


def load_json(raw: bytes | None) -> Any:
    """Decode a message value as JSON.

    Raises:
        InvalidRecord: for a null value (a tombstone), bytes that are not UTF-8 JSON (NaN, Infinity and lone
            surrogates included), or JSON nested more than 1,024 levels deep. Nothing else escapes.
    """
    if raw is None:
        raise InvalidRecord("<message>", None, "a null value (tombstone) is not a record")
    if not isinstance(raw, bytes | bytearray | str):
        raise InvalidRecord("<message>", raw, "the message value must be bytes")
    try:
        return orjson.loads(raw)  # strict: no NaN or Infinity, no lone surrogates, at most 1,024 levels deep
    except ValueError as exc:
        raise InvalidRecord("<message>", raw[:60], f"not valid JSON: {exc}") from None


def decode_pack(raw: bytes | None, validate: Callable[[Any], R]) -> tuple[list[R], list[tuple[Any, InvalidRecord]]]:
    """Decode a message holding one record (a JSON object) or a pack of them (a JSON array).

    Args:
        raw: the message value.
        validate: :func:`validate_event` or :func:`validate_catalog_item`.

    Returns:
        ``(valid, rejected)`` where ``rejected`` pairs each bad element with its error.

    Raises:
        InvalidRecord: when the message as a whole is unreadable.
    """
    data = load_json(raw)
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


def _mapping(data: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = data.get(name)
    if not isinstance(value, Mapping):
        raise InvalidRecord(name, value, "must be a JSON object")
    return value


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise InvalidRecord(name, value, "must be a number")
    return float(value)


def validate_user_update(data: Any) -> UserUpdate:
    """Check a decoded refresh request for a user (as :mod:`streams.agents` writes them).

    Raises:
        InvalidRecord: naming the first field that is missing or wrong.
    """
    if not isinstance(data, Mapping):
        raise InvalidRecord("<user-update>", data, "must be a JSON object")
    user_id = _identifier(data, "user_id")
    event_ts = _number(data.get("event_ts"), "event_ts")
    state = _mapping(data, "state")
    recent = _mapping(state, "recent")
    for item_type, rows in recent.items():
        if not isinstance(rows, list):
            raise InvalidRecord("state.recent", item_type, "must map item types to lists")
        for row in rows:
            if not (isinstance(row, list) and len(row) == 2 and isinstance(row[0], str)):
                raise InvalidRecord("state.recent", row, "rows must be [item_id, ts]")
            _number(row[1], "state.recent.ts")
    _mapping(state, "consumed")
    for item_type, count in _mapping(state, "counts").items():
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise InvalidRecord("state.counts", {item_type: count}, "counts must be non-negative integers")
    return UserUpdate(user_id=user_id, state=dict(state), event_ts=event_ts)


def _adjacency_ok(adjacency: Mapping[str, Any]) -> bool:
    """Whether every entry is ``[item_type, weight >= 1, ts]`` (``ts`` a number, not NaN) with a valid type: one
    pass with exact types (what JSON decoding yields), each distinct type's pattern checked once. An item update
    carries up to a few hundred entries and the refresher reads hundreds of updates per micro-batch; the slow path
    in :func:`validate_item_update` names the first bad entry when this says no."""
    entries = adjacency.values()
    return all(
        (type(e) is tuple or type(e) is list) and len(e) == 3 and type(e[0]) is str and type(e[1]) is int and e[1] > 0
        and (type(e[2]) is float or type(e[2]) is int) and e[2] == e[2]
        for e in entries
    ) and all(_TYPE_RE.match(t) for t in {e[0] for e in entries})


def validate_item_update(data: Any) -> ItemUpdate:
    """Check a decoded refresh request for an item (as :mod:`streams.agents` writes them).

    Raises:
        InvalidRecord: naming the first field that is missing or wrong.
    """
    if not isinstance(data, Mapping):
        raise InvalidRecord("<item-update>", data, "must be a JSON object")
    item_id = _identifier(data, "item_id")
    item_type = _item_type(data)
    if "neighbours" in data:  # the columns the agents write (streams.agents.adjacency_columns)
        adjacency = _adjacency_from_columns(data)
    else:  # one [item_type, weight, ts] array per neighbour (as the agents wrote it before the columns)
        adjacency = dict(_mapping(data, "adjacency"))
        _check_entries(adjacency)
    levels = data.get("levels")
    if not (isinstance(levels, list) and len(levels) == len(TAUS)):
        raise InvalidRecord("levels", levels, f"must be a list of {len(TAUS)} numbers (one per trend time constant)")
    return ItemUpdate(item_id=item_id, item_type=item_type, adjacency=adjacency,
                      levels=[_number(level, "levels") for level in levels])


def _check_entries(adjacency: Mapping[str, Any]) -> None:
    if not _adjacency_ok(adjacency):  # the common case checked in bulk; the slow path names the first bad entry
        _name_bad_entry(adjacency)


def _name_bad_entry(adjacency: Mapping[str, Any]) -> None:
    """Raise :class:`InvalidRecord` naming the first entry that is not ``[item_type, weight >= 1, ts]``."""
    for neighbour, entry in adjacency.items():
        if not (isinstance(entry, list | tuple) and len(entry) == 3 and isinstance(entry[0], str)
                and _TYPE_RE.match(entry[0]) and not isinstance(entry[1], bool) and isinstance(entry[1], int)
                and entry[1] > 0):
            raise InvalidRecord("adjacency", {neighbour: entry}, "entries must be [item_type, weight >= 1, ts]")
        _number(entry[2], "adjacency.ts")


def _adjacency_from_columns(data: Mapping[str, Any]) -> dict[str, tuple[str, int, float]]:
    """The adjacency of a refresh request in columns: ``neighbours`` (distinct ids), ``types``, ``weights`` (>= 1)
    and ``ts``, parallel arrays; per neighbour a ``(item_type, weight, ts)`` tuple."""
    names = ("neighbours", "types", "weights", "ts")
    columns: list[list[Any]] = [c for c in (data.get(name) for name in names) if type(c) is list]
    if len(columns) != len(names) or len({len(c) for c in columns}) != 1:
        raise InvalidRecord("adjacency", {n: len(c) if type(c) is list else type(c).__name__
                                          for n, c in ((n, data.get(n)) for n in names)},
                            "neighbours, types, weights and ts must be arrays of one length")
    neighbours, types, weights, times = columns
    if not _types_are(neighbours, str) or "" in neighbours:
        raise InvalidRecord("adjacency.neighbours", neighbours[:20], "must be distinct non-empty strings")
    adjacency = dict(zip(neighbours, zip(types, weights, times, strict=True), strict=True))
    if len(adjacency) != len(neighbours):
        raise InvalidRecord("adjacency.neighbours", neighbours[:20], "must be distinct non-empty strings")
    # the common case checked column by column in C (map, set, min); the slow path names the first bad entry
    if not (_types_are(types, str) and all(_TYPE_RE.match(t) for t in set(types))
            and _types_are(weights, int) and (not weights or min(weights) > 0)
            and _types_are(times, int, float) and not any(map(math.isnan, times))):
        _name_bad_entry(adjacency)
    return adjacency


def _types_are(values: list[Any], *kinds: type) -> bool:
    """Whether every value's exact type is one of ``kinds`` (so not a bool where an int is asked)."""
    return set(map(type, values)) <= set(kinds)
