"""The vector store's one interface; :mod:`vectorstore.edge` and :mod:`vectorstore.server` implement it.

Items and users live in two collections of the same space. Point ids are UUIDv5 of the item or user id, so
any component can address a point without a lookup; the original id is kept in the payload. Filtering by
item type and excluding consumed items happen inside the vector query.

An item point carries, besides its vector, what a user vector reads of it (``user_features``: the trained user
tower's per-item input, stored as base64 of float32 so it round-trips exactly and decodes in microseconds; absent
for the text-propagation model, whose users read the item vectors). A user point carries the user's state
(``recent`` items with times, ``counts``, ``consumed``), from which the query API composes the user's vector when
asked (``vectorstore/compose.py``); its stored vector is zero. The state's lists (``consumed``, their point ids,
``recent``) are stored as one JSON string, ``lists``: qdrant-edge converts a payload list element by element, ~5 us
each (turning a user with 2,000 consumed items into a point took 23 ms, with the string 0.09 ms;
``bench/payload_bench.py``), and the refresher's users thread, which writes every state as it arrives, spent most of
its time there.
"""

from __future__ import annotations

import base64
import functools
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from models.embedding import Distance

_NAMESPACE = uuid.UUID("6f1d3c1e-9a55-4a4e-9d1f-0b9f6b7f4a10")


@functools.lru_cache(maxsize=1 << 17)
def item_point_id(item_id: str) -> str:
    """The point id of an item (cached: a uuid5 costs ~3 us and users hold thousands of consumed items)."""
    return str(uuid.uuid5(_NAMESPACE, f"item:{item_id}"))


def user_point_id(user_id: str) -> str:
    """The point id of a user."""
    return str(uuid.uuid5(_NAMESPACE, f"user:{user_id}"))


@dataclass(frozen=True)
class ItemPoint:
    """An item's vector and payload."""

    item_id: str
    item_type: str
    title: str
    vector: np.ndarray
    model_version: str
    updated_at: float
    user_features: np.ndarray | None = None
    """What a user vector reads of this item (``VectorModel.user_features``); None: its vector."""


@dataclass(frozen=True)
class UserPoint:
    """A user's state (what their vector is composed from at query time), what they consumed (excluded from
    their recommendations), and when; ``vector`` is what the store holds (zero when composed at query time)."""

    user_id: str
    vector: np.ndarray
    model_version: str
    updated_at: float
    event_ts: float
    consumed: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    consumed_points: list[str] | None = None
    """The point ids of ``consumed`` as stored with the user (computed once, when the user is written)."""
    recent: dict[str, list[list[Any]]] = field(default_factory=dict)
    """The state's recent items per type, ``[[item_id, ts], ...]`` oldest first (``models.graph.UserState``)."""

    def state(self) -> dict[str, Any]:
        """The user's state as the user tower reads it (``recent`` and ``counts`` of a ``UserState``)."""
        return {"recent": self.recent, "counts": self.counts}

    def excluded_points(self) -> list[str]:
        """The point ids to leave out of the user's recommendations."""
        if self.consumed_points is not None:
            return self.consumed_points
        return [item_point_id(i) for i in self.consumed]


@dataclass(frozen=True)
class Hit:
    """One search result."""

    item_id: str
    item_type: str
    title: str
    score: float


class VectorStore(ABC):
    """Items and users in one vector space.

    The item types the store holds are cached (:meth:`item_types`, :meth:`has_item_type`): types upserted
    through this object count at once; a type it has not seen makes it re-read the store, at most once per
    ``types_refresh_s``, so that writes by another process (a Qdrant server shared with the refresher) show.
    Subclasses call ``super().__init__()``.
    """

    types_refresh_s: float = 1.0
    in_process: bool = False
    """Whether the store computes in this process (holding the GIL) rather than waiting on a server: the API
    calls an in-process store on its event loop and a server's client from a thread pool."""

    def __init__(self) -> None:
        self._types: frozenset[str] = frozenset()
        self._types_read_at: float | None = None
        self._types_lock = threading.Lock()

    @abstractmethod
    def _read_item_types(self) -> Iterable[str]:
        """The distinct ``item_type`` values of the stored items, read from the store."""

    def _remember_types(self, points: Sequence[ItemPoint]) -> None:
        new = {p.item_type for p in points} - self._types
        if new:
            with self._types_lock:
                self._types = self._types | new

    def _reread_types(self) -> frozenset[str]:
        with self._types_lock:
            self._types = self._types | frozenset(self._read_item_types())
            self._types_read_at = time.monotonic()
            return self._types

    def item_types(self) -> frozenset[str]:
        """The item types of the stored items (cached; read from the store the first time)."""
        if self._types_read_at is None:
            return self._reread_types()
        return self._types

    def has_item_type(self, item_type: str) -> bool:
        """Whether any stored item has ``item_type``; a miss re-reads the store at most once per
        ``types_refresh_s``."""
        if item_type in self._types:
            return True
        read_at = self._types_read_at
        if read_at is None or time.monotonic() - read_at >= self.types_refresh_s:
            return item_type in self._reread_types()
        return False

    @abstractmethod
    def ensure(self, dim: int, distance: Distance = "cosine") -> None:
        """Create the collections for ``dim``-sized vectors ranked by ``distance`` if they do not exist (``dot``: a
        model with the trend coordinate, whose vectors are not unit vectors; see ``models.embedding.Distance``).

        Raises:
            DimensionMismatch: when they exist with another size.
            DistanceMismatch: when they exist with another distance.
        """

    @abstractmethod
    def upsert_items(self, points: Sequence[ItemPoint]) -> None:
        """Insert or replace item points."""

    @abstractmethod
    def upsert_users(self, points: Sequence[UserPoint]) -> None:
        """Insert or replace user points."""

    @abstractmethod
    def get_item(self, item_id: str) -> ItemPoint | None:
        """An item with its vector, or None."""

    @abstractmethod
    def get_user(self, user_id: str) -> UserPoint | None:
        """A user with their vector, or None."""

    @abstractmethod
    def item_inputs(self, item_ids: Sequence[str], features: bool) -> dict[str, tuple[str, np.ndarray]]:
        """What user vectors read of the stored items among ``item_ids``: ``{item_id: (item_type, row)}``, the row
        being the item's ``user_features`` when ``features`` (items stored without them are left out), else its
        vector. Reads only those fields."""

    @abstractmethod
    def search(
        self, vector: np.ndarray, k: int, item_type: str | None = None, exclude: Iterable[str] = (),
        exclude_points: Iterable[str] = (),
    ) -> list[Hit]:
        """The ``k`` items nearest ``vector`` (cosine), of ``item_type`` if given, none of ``exclude`` (item
        ids) nor ``exclude_points`` (their point ids, as :meth:`UserPoint.excluded_points` gives them)."""

    def optimize(self, min_unindexed: int = 1) -> bool:
        """Build the vector index over recently written items if at least ``min_unindexed`` are not indexed;
        returns whether it ran. The default does nothing: a Qdrant server indexes in the background."""
        return False

    @abstractmethod
    def count_items(self) -> int:
        """How many items the store holds."""

    @abstractmethod
    def close(self) -> None:
        """Release the store."""


HIT_FIELDS = ["item_id", "item_type", "title"]
"""The payload fields a search hit reads."""
INPUT_FIELDS = ["item_id", "item_type", "user_features"]
"""The payload fields :meth:`VectorStore.item_inputs` reads."""


def encode_floats(values: np.ndarray) -> str:
    """float32 values as base64 text (exact, compact, and one JSON string instead of a list of numbers)."""
    return base64.b64encode(np.ascontiguousarray(values, dtype="<f4").tobytes()).decode("ascii")


def decode_floats(text: str) -> np.ndarray:
    """The inverse of :func:`encode_floats`."""
    return np.frombuffer(base64.b64decode(text), dtype="<f4")


def item_payload(point: ItemPoint) -> dict[str, object]:
    """The payload stored with an item."""
    payload: dict[str, object] = {
        "item_id": point.item_id,
        "item_type": point.item_type,
        "title": point.title,
        "model_version": point.model_version,
        "updated_at": point.updated_at,
    }
    if point.user_features is not None:
        payload["user_features"] = encode_floats(point.user_features)
    return payload


def user_payload(point: UserPoint) -> dict[str, object]:
    """The payload stored with a user: scalars as fields, the lists of the state in one JSON string."""
    lists = {"consumed": point.consumed, "consumed_points": point.excluded_points(), "recent": point.recent}
    return {
        "user_id": point.user_id,
        "model_version": point.model_version,
        "updated_at": point.updated_at,
        "event_ts": point.event_ts,
        "counts": point.counts,
        "lists": orjson.dumps(lists).decode(),
    }


def item_from(payload: dict[str, object], vector: Sequence[float]) -> ItemPoint:
    """Rebuild an item from its payload and vector."""
    return ItemPoint(
        item_id=str(payload["item_id"]),
        item_type=str(payload["item_type"]),
        title=str(payload.get("title", "")),
        vector=np.asarray(vector, dtype=np.float32),
        model_version=str(payload.get("model_version", "")),
        updated_at=float(payload.get("updated_at", 0.0)),  # type: ignore[arg-type]
        user_features=decode_floats(str(features)) if (features := payload.get("user_features")) else None,
    )


def inputs_from(payload: dict[str, object], vector: Sequence[float] | None, features: bool
                ) -> tuple[str, str, np.ndarray] | None:
    """``(item_id, item_type, row)`` for :meth:`VectorStore.item_inputs` from a stored item, or None when the
    row asked for is not stored."""
    if features:
        text = payload.get("user_features")
        row = decode_floats(str(text)) if text else None
    else:
        row = None if vector is None else np.asarray(vector, dtype=np.float32)
    return None if row is None else (str(payload["item_id"]), str(payload["item_type"]), row)


def user_from(payload: dict[str, object], vector: Sequence[float]) -> UserPoint:
    """Rebuild a user from their payload (:func:`user_payload`; or written before the lists were one string, with
    each list a payload field) and vector."""
    packed = payload.get("lists")
    lists: dict[str, Any] = orjson.loads(packed) if isinstance(packed, str) else payload
    points = lists.get("consumed_points")
    return UserPoint(
        user_id=str(payload["user_id"]),
        vector=np.asarray(vector, dtype=np.float32),
        model_version=str(payload.get("model_version", "")),
        updated_at=float(payload.get("updated_at", 0.0)),  # type: ignore[arg-type]
        event_ts=float(payload.get("event_ts", 0.0)),  # type: ignore[arg-type]
        consumed=list(lists.get("consumed", [])),
        counts=dict(payload.get("counts", {})),  # type: ignore[call-overload]
        consumed_points=list(points) if isinstance(points, list) else None,
        recent=dict(lists.get("recent", {})),
    )


def excluded_point_ids(exclude: Iterable[str], exclude_points: Iterable[str]) -> set[str]:
    """The point ids a search leaves out: those of the item ids ``exclude``, and ``exclude_points``."""
    excluded = set(exclude_points)
    excluded.update(item_point_id(i) for i in exclude)
    return excluded


def hit_from(payload: dict[str, object], score: float) -> Hit:
    """A search hit from a stored item's payload."""
    return Hit(str(payload["item_id"]), str(payload["item_type"]), str(payload.get("title", "")), float(score))
