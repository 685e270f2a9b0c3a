"""The vector store's one interface; :mod:`vectorstore.edge` and :mod:`vectorstore.server` implement it.

Items and users live in two collections of the same space. Point ids are UUIDv5 of the item or user id, so
any component can address a point without a lookup; the original id is kept in the payload. Filtering by
item type and excluding consumed items happen inside the vector query.
"""

from __future__ import annotations

import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

_NAMESPACE = uuid.UUID("6f1d3c1e-9a55-4a4e-9d1f-0b9f6b7f4a10")


def item_point_id(item_id: str) -> str:
    """The point id of an item."""
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


@dataclass(frozen=True)
class UserPoint:
    """A user's vector, what they consumed (excluded from their recommendations), and when."""

    user_id: str
    vector: np.ndarray
    model_version: str
    updated_at: float
    event_ts: float
    consumed: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Hit:
    """One search result."""

    item_id: str
    item_type: str
    title: str
    score: float


class VectorStore(ABC):
    """Items and users in one vector space."""

    @abstractmethod
    def ensure(self, dim: int) -> None:
        """Create the collections for ``dim``-sized vectors if they do not exist.

        Raises:
            DimensionMismatch: when they exist with another size.
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
    def search(
        self, vector: np.ndarray, k: int, item_type: str | None = None, exclude: Iterable[str] = ()
    ) -> list[Hit]:
        """The ``k`` items nearest ``vector`` (cosine), of ``item_type`` if given, none of ``exclude``."""

    @abstractmethod
    def count_items(self) -> int:
        """How many items the store holds."""

    @abstractmethod
    def close(self) -> None:
        """Release the store."""


def item_payload(point: ItemPoint) -> dict[str, object]:
    """The payload stored with an item."""
    return {
        "item_id": point.item_id,
        "item_type": point.item_type,
        "title": point.title,
        "model_version": point.model_version,
        "updated_at": point.updated_at,
    }


def user_payload(point: UserPoint) -> dict[str, object]:
    """The payload stored with a user."""
    return {
        "user_id": point.user_id,
        "model_version": point.model_version,
        "updated_at": point.updated_at,
        "event_ts": point.event_ts,
        "consumed": point.consumed,
        "counts": point.counts,
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
    )


def user_from(payload: dict[str, object], vector: Sequence[float]) -> UserPoint:
    """Rebuild a user from their payload and vector."""
    return UserPoint(
        user_id=str(payload["user_id"]),
        vector=np.asarray(vector, dtype=np.float32),
        model_version=str(payload.get("model_version", "")),
        updated_at=float(payload.get("updated_at", 0.0)),  # type: ignore[arg-type]
        event_ts=float(payload.get("event_ts", 0.0)),  # type: ignore[arg-type]
        consumed=list(payload.get("consumed", [])),  # type: ignore[call-overload]
        counts=dict(payload.get("counts", {})),  # type: ignore[call-overload]
    )


def hit_from(payload: dict[str, object], score: float) -> Hit:
    """A search hit from a stored item's payload."""
    return Hit(str(payload["item_id"]), str(payload["item_type"]), str(payload.get("title", "")), float(score))
