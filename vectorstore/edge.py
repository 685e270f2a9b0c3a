"""The embedded backend: Qdrant's engine in-process (qdrant-edge-py), one shard per collection.

A shard directory can be opened by one process at a time, so in embedded mode the refresher and the query API
share one process (``gfm worker api`` starts the refresher beside the API).

**Flushing.** qdrant-edge writes every update to its write-ahead log and its segments, but (unlike the Qdrant
server, whose flush worker runs every few seconds) persists the segments and truncates the log only on
``flush()``. Until then the log keeps every update and the payload storage cannot reuse the blocks that
replaced payloads freed, so both grow with the updates, not with the points (the 10-minute soak's API process:
2.1 -> 3.3 GiB over the second half unflushed, 1.3 -> 1.6 GiB flushed). The store flushes after an upsert when
``flush_interval_s`` has passed since its last flush.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import qdrant_edge as q

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
_DISTANCES = {"cosine": q.Distance.Cosine, "dot": q.Distance.Dot}
_FILTER_MAX_EXCLUDED = 64
"""Up to this many excluded ids go into the query's filter; more are dropped from a wider result."""
_OVERFETCH = 32
log = logging.getLogger(__name__)


class EdgeStore(VectorStore):
    """Two qdrant-edge shards under ``path``: ``items/`` and ``users/``.

    Args:
        path: the directory of the shards.
        hnsw_ef: the size of the HNSW search's candidate list (at least the number of results asked for);
            larger is more exact and slower; None searches exactly (brute force over the filtered items).
        flush_interval_s: the longest time between an upsert and the flush that persists it and lets the shard
            drop its write-ahead log and reuse freed payload blocks (0: flush after every upsert).
        clock: monotonic seconds (tests pass their own).
    """

    in_process = True

    def __init__(self, path: Path, hnsw_ef: int | None = 256, flush_interval_s: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        if flush_interval_s < 0:
            raise ValueError(f"flush_interval_s must be >= 0, got {flush_interval_s}")
        self.path = path
        self.hnsw_ef = hnsw_ef
        self.flush_interval_s = flush_interval_s
        self._clock = clock
        self._items: q.EdgeShard | None = None
        self._users: q.EdgeShard | None = None
        self._lock = threading.Lock()
        self._flushing = threading.Lock()
        self._flushed_at = clock()
        self.flushes = 0
        """How many times :meth:`flush` ran (monitoring, tests)."""

    def _open(self, name: str, dim: int, distance: Distance) -> q.EdgeShard:
        directory = self.path / name
        config = q.EdgeConfig(vectors=q.EdgeVectorParams(size=dim, distance=_DISTANCES[distance]))
        if directory.exists() and any(directory.iterdir()):
            stored = _stored_dim(directory)
            if stored is not None and stored != dim:
                raise DimensionMismatch(str(directory), stored, dim)
            marker = directory.parent / f"{name}.distance"
            existing = marker.read_text() if marker.exists() else "cosine"  # a store from before the marker
            if existing != distance:
                raise DistanceMismatch(str(directory), existing, distance)
            return q.EdgeShard.load(str(directory))
        directory.mkdir(parents=True, exist_ok=True)
        shard = q.EdgeShard.create(str(directory), config)
        if name == "items":
            shard.update(q.UpdateOperation.create_field_index("item_type", q.PayloadSchemaType.Keyword))
        (directory.parent / f"{name}.dim").write_text(str(dim))
        (directory.parent / f"{name}.distance").write_text(distance)
        return shard

    def ensure(self, dim: int, distance: Distance = "cosine") -> None:
        with self._lock:
            if self._items is None:
                self._items = self._open("items", dim, distance)
                self._users = self._open("users", dim, distance)

    @property
    def items(self) -> q.EdgeShard:
        if self._items is None:
            raise RuntimeError("call ensure(dim) before using the store")
        return self._items

    @property
    def users(self) -> q.EdgeShard:
        if self._users is None:
            raise RuntimeError("call ensure(dim) before using the store")
        return self._users

    def upsert_items(self, points: Sequence[ItemPoint]) -> None:
        if points:
            self.items.update(
                q.UpdateOperation.upsert_points(
                    [q.Point(item_point_id(p.item_id), p.vector.tolist(), item_payload(p)) for p in points]
                )
            )
            self._remember_types(points)
            self._flush_when_due()

    def _read_item_types(self) -> list[str]:
        facet = self.items.facet(q.FacetRequest(key="item_type", limit=_MAX_TYPES, exact=True))
        return [str(hit.value) for hit in facet.hits]

    def upsert_users(self, points: Sequence[UserPoint]) -> None:
        if points:
            self.users.update(
                q.UpdateOperation.upsert_points(
                    [q.Point(user_point_id(p.user_id), p.vector.tolist(), user_payload(p)) for p in points]
                )
            )
            self._flush_when_due()

    def _flush_when_due(self) -> None:
        # upserts may come from several threads: one flushes, the others go on (their writes are in the log)
        if self._clock() - self._flushed_at >= self.flush_interval_s and self._flushing.acquire(blocking=False):
            try:
                self.flush()
            finally:
                self._flushing.release()

    def flush(self) -> None:
        """Persist both shards: their write-ahead logs are truncated and freed payload blocks become reusable."""
        started = time.perf_counter()
        self.items.flush()
        self.users.flush()
        self._flushed_at = self._clock()
        self.flushes += 1
        log.debug("flushed the embedded store in %.3f s", time.perf_counter() - started)

    def get_item(self, item_id: str) -> ItemPoint | None:
        found = self.items.retrieve([item_point_id(item_id)], with_payload=True, with_vector=True)
        return item_from(found[0].payload or {}, _dense(found[0].vector)) if found else None

    def get_user(self, user_id: str) -> UserPoint | None:
        found = self.users.retrieve([user_point_id(user_id)], with_payload=True, with_vector=True)
        return user_from(found[0].payload or {}, _dense(found[0].vector)) if found else None

    def item_inputs(self, item_ids: Sequence[str], features: bool) -> dict[str, tuple[str, np.ndarray]]:
        if not item_ids:
            return {}
        found = self.items.retrieve([item_point_id(i) for i in item_ids],
                                    with_payload=INPUT_FIELDS if features else HIT_FIELDS[:2],
                                    with_vector=not features)
        out = {}
        for point in found:
            got = inputs_from(point.payload or {}, None if features else _dense(point.vector), features)
            if got is not None:
                out[got[0]] = got[1:]
        return out

    def search(
        self, vector: np.ndarray, k: int, item_type: str | None = None, exclude: Iterable[str] = (),
        exclude_points: Iterable[str] = (),
    ) -> list[Hit]:
        must = [q.FieldCondition(key="item_type", match=q.MatchValue(item_type))] if item_type else None
        excluded = excluded_point_ids(exclude, exclude_points)
        query = q.Query.Nearest(vector.tolist())
        if len(excluded) <= _FILTER_MAX_EXCLUDED:
            must_not: list[q.HasIdCondition] | None = [q.HasIdCondition(excluded)] if excluded else None  # type: ignore[arg-type]
            found = self._query(query, k, q.Filter(must=must, must_not=must_not), with_payload=True)  # type: ignore[arg-type]
            return [hit_from(p.payload or {}, p.score) for p in found]
        # Thousands of excluded ids: turning them into a filter costs more than the search (~2 ms for 2,000
        # UUIDs), so fetch a few more than k without payloads, drop the excluded, widening until k remain or
        # nothing is left, then read the payloads of the k kept (a payload costs more than the search's hit).
        limit = k + _OVERFETCH
        while True:
            found = self._query(query, limit, q.Filter(must=must), with_payload=False)  # type: ignore[arg-type]
            kept = [p for p in found if str(p.id) not in excluded]
            if len(kept) >= k or len(found) < limit or limit >= k + len(excluded):
                break
            limit = min(limit * 4, k + len(excluded))
        kept = kept[:k]
        read = self.items.retrieve([p.id for p in kept], with_payload=HIT_FIELDS, with_vector=False)
        payloads = {str(r.id): r.payload or {} for r in read}
        return [hit_from(payloads[str(p.id)], p.score) for p in kept if str(p.id) in payloads]

    def _query(self, query: q.Query, limit: int, where: q.Filter, with_payload: bool) -> list[q.ScoredPoint]:
        ef = self.hnsw_ef
        params = q.SearchParams(exact=True) if ef is None else q.SearchParams(hnsw_ef=max(ef, limit))
        return self.items.query(q.QueryRequest(limit=limit, query=query, filter=where,
                                               with_payload=HIT_FIELDS if with_payload else False,
                                               params=params))

    def unindexed_items(self) -> int:
        """Item points not in the vector index yet (searched by brute force)."""
        info = self.items.info()
        return max(0, info.points_count - info.indexed_vectors_count)

    def optimize(self, min_unindexed: int = 1) -> bool:
        """Build the vector (HNSW) index over the items written since the last call, when at least
        ``min_unindexed`` of them are not indexed yet. qdrant-edge does this only when asked, and its
        ``optimize()`` holds the GIL until done (about a minute for 100k 128-dim items on 2 cores), so call it
        where the process may pause: before serving, after a bulk load; returns whether it ran."""
        unindexed = self.unindexed_items()
        if unindexed < max(1, min_unindexed):
            return False
        started = time.perf_counter()
        self.items.optimize()
        log.info("indexed %d item vectors in %.1f s", unindexed, time.perf_counter() - started)
        return True

    def count_items(self) -> int:
        return self.items.info().points_count

    def close(self) -> None:
        with self._lock:
            for shard in (self._items, self._users):
                if shard is not None:
                    shard.flush()
                    shard.close()
            self._items = self._users = None


def _stored_dim(directory: Path) -> int | None:
    marker = directory.parent / f"{directory.name}.dim"
    return int(marker.read_text()) if marker.exists() else None


def _dense(vector: object) -> list[float]:
    if isinstance(vector, dict):
        vector = next(iter(vector.values()))
    return list(vector)  # type: ignore[call-overload]
