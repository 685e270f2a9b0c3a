"""The server backend: a Qdrant server through qdrant-client (or its ``:memory:`` mode in tests)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from qdrant_client import QdrantClient
from qdrant_client import models as m

from models.embedding import Distance
from vectorstore.base import (
    HIT_FIELDS,
    INPUT_FIELDS,
    Hit,
    ItemPoint,
    UserPoint,
    VectorStore,
    excluded_point_ids,
    hit_from,
    inputs_from,
    item_from,
    item_payload,
    item_point_id,
    user_from,
    user_payload,
    user_point_id,
)
from vectorstore.errors import DimensionMismatch, DistanceMismatch

_MAX_TYPES = 10_000
_DISTANCES = {"cosine": m.Distance.COSINE, "dot": m.Distance.DOT}


class ServerStore(VectorStore):
    """Two collections, ``{prefix}-items`` and ``{prefix}-users``, on a Qdrant server.

    Args:
        location: the server URL (``http://host:6333``) or ``":memory:"``.
        prefix: collection name prefix.
        api_key: the server's API key, if any.
    """

    def __init__(self, location: str, prefix: str = "gfm", api_key: str | None = None) -> None:
        super().__init__()
        if location == ":memory:":
            self.client = QdrantClient(location=":memory:")
        else:
            self.client = QdrantClient(url=location, api_key=api_key)
        self.items = f"{prefix}-items"
        self.users = f"{prefix}-users"

    def ensure(self, dim: int, distance: Distance = "cosine") -> None:
        wanted = _DISTANCES[distance]
        for name in (self.items, self.users):
            if self.client.collection_exists(name):
                params = self.client.get_collection(name).config.params.vectors
                if isinstance(params, m.VectorParams):
                    if params.size != dim:
                        raise DimensionMismatch(name, params.size, dim)
                    if params.distance != wanted:
                        raise DistanceMismatch(name, str(params.distance.value).lower(), distance)
                continue
            self.client.create_collection(name, vectors_config=m.VectorParams(size=dim, distance=wanted))
            if name == self.items:
                self.client.create_payload_index(name, "item_type", m.PayloadSchemaType.KEYWORD)

    def upsert_items(self, points: Sequence[ItemPoint]) -> None:
        if points:
            self.client.upsert(
                self.items,
                [m.PointStruct(id=item_point_id(p.item_id), vector=p.vector.tolist(), payload=item_payload(p))
                 for p in points],
            )
            self._remember_types(points)

    def _read_item_types(self) -> list[str]:
        facet = self.client.facet(self.items, "item_type", limit=_MAX_TYPES, exact=True)
        return [str(hit.value) for hit in facet.hits]

    def upsert_users(self, points: Sequence[UserPoint]) -> None:
        if points:
            self.client.upsert(
                self.users,
                [m.PointStruct(id=user_point_id(p.user_id), vector=p.vector.tolist(), payload=user_payload(p))
                 for p in points],
            )

    def get_item(self, item_id: str) -> ItemPoint | None:
        found = self.client.retrieve(self.items, [item_point_id(item_id)], with_payload=True, with_vectors=True)
        return item_from(found[0].payload or {}, found[0].vector) if found else None  # type: ignore[arg-type]

    def get_user(self, user_id: str) -> UserPoint | None:
        found = self.client.retrieve(self.users, [user_point_id(user_id)], with_payload=True, with_vectors=True)
        return user_from(found[0].payload or {}, found[0].vector) if found else None  # type: ignore[arg-type]

    def item_inputs(self, item_ids: Sequence[str], features: bool) -> dict[str, tuple[str, np.ndarray]]:
        if not item_ids:
            return {}
        found = self.client.retrieve(self.items, [item_point_id(i) for i in item_ids],
                                     with_payload=INPUT_FIELDS if features else HIT_FIELDS[:2],
                                     with_vectors=not features)
        out = {}
        for point in found:
            got = inputs_from(point.payload or {}, None if features else point.vector, features)  # type: ignore[arg-type]
            if got is not None:
                out[got[0]] = got[1:]
        return out

    def search(
        self, vector: np.ndarray, k: int, item_type: str | None = None, exclude: Iterable[str] = (),
        exclude_points: Iterable[str] = (),
    ) -> list[Hit]:
        must: list[m.Condition] = (
            [m.FieldCondition(key="item_type", match=m.MatchValue(value=item_type))] if item_type else []
        )
        excluded: list[m.ExtendedPointId] = list(excluded_point_ids(exclude, exclude_points))
        must_not: list[m.Condition] = [m.HasIdCondition(has_id=excluded)] if excluded else []
        result = self.client.query_points(
            self.items,
            query=vector.tolist(),
            query_filter=m.Filter(must=must or None, must_not=must_not or None),
            limit=k,
            with_payload=HIT_FIELDS,
        )
        return [hit_from(p.payload or {}, p.score) for p in result.points]

    def count_items(self) -> int:
        return self.client.count(self.items, exact=True).count

    def close(self) -> None:
        self.client.close()
