"""The refresher: refresh requests in, fresh vectors out.

It reads three topics in micro-batches (at most ``batch_max`` records, at most ``wait_ms`` of waiting):
the catalogue (text to embed), item updates (an item's adjacency changed) and user updates (a user's history
changed). It keeps a :class:`~models.embedding.LiveGraph` mirror of them, asks the :class:`VectorModel` for
the vectors of what changed (items first, so users see their items' fresh vectors), and upserts them.

On start it reads the three topics from the beginning: they are the mirror's changelog (compacted by key on a
real Kafka), so a restarted refresher rebuilds the same state. Upserts are idempotent, so replaying is safe.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from kafka import KafkaConsumer, TopicPartition

from models.embedding import LiveGraph, VectorModel
from models.graph import UserState
from models.text import TextEncoder, item_text
from monitoring.lag import refresher_group
from monitoring.metrics import RefresherMetrics
from streams.errors import InvalidRecord
from streams.records import CatalogItem, ItemUpdate, UserUpdate, decode_pack, validate_catalog_item
from vectorstore.base import ItemPoint, UserPoint, VectorStore
from workers.settings import KafkaSettings, RefresherSettings

log = logging.getLogger(__name__)


@dataclass
class Changes:
    """What one micro-batch asks to refresh (later records of a key replace earlier ones)."""

    catalog: dict[str, CatalogItem]
    items: dict[str, ItemUpdate]
    users: dict[str, UserUpdate]
    invalid: int = 0


def collect(records: Iterable[tuple[str, bytes]], kafka: KafkaSettings) -> Changes:
    """Sort raw ``(topic, value)`` records into a :class:`Changes`."""
    changes = Changes({}, {}, {})
    catalog, items, users = kafka.topic("catalog"), kafka.topic("item-updates"), kafka.topic("user-updates")
    for topic, value in records:
        try:
            if topic == catalog:
                valid, rejected = decode_pack(value, validate_catalog_item)
                changes.invalid += len(rejected)
                for entry in valid:
                    changes.catalog[entry.item_id] = entry
            elif topic == items:
                update = ItemUpdate.loads(value)
                changes.items[update.item_id] = update
            elif topic == users:
                user = UserUpdate.loads(value)
                changes.users[user.user_id] = user
        except (InvalidRecord, ValueError, TypeError, KeyError) as error:
            changes.invalid += 1
            log.warning("refresher skipped an unreadable %s record: %s", topic, error)
    return changes


class Refresher:
    """Turns refresh requests into upserted vectors.

    Args:
        store: where vectors go.
        model: what computes them.
        encoder: the text featuriser for catalogue items.
        metrics: refresher metrics.
        batch: micro-batch bounds.
    """

    def __init__(
        self,
        store: VectorStore,
        model: VectorModel,
        encoder: TextEncoder,
        metrics: RefresherMetrics,
        batch: RefresherSettings,
    ) -> None:
        self.store = store
        self.model = model
        self.encoder = encoder
        self.metrics = metrics
        self.batch = batch
        self.graph = LiveGraph(text_dim=encoder.dim, vector_dim=model.dim)
        self.store.ensure(model.dim)
        self.users_refreshed = 0
        self.items_refreshed = 0

    def apply(self, changes: Changes, now: float | None = None) -> None:
        """Refresh and upsert everything ``changes`` touches."""
        started = time.perf_counter()
        dirty: set[int] = set()
        if changes.catalog:
            entries = list(changes.catalog.values())
            texts = [item_text(e.item_type, e.title, e.description) for e in entries]
            for entry, vector in zip(entries, self.encoder.encode(texts), strict=True):
                self.graph.set_text(entry.item_id, entry.item_type, entry.title, vector)
                dirty.add(self.graph.rows[entry.item_id])
        for update in changes.items.values():
            dirty.add(self.graph.set_adjacency(update.item_id, update.item_type, update.adjacency))
        if dirty:
            self._refresh_items(sorted(dirty))
        if changes.users:
            self._refresh_users(list(changes.users.values()), now)
        self.metrics.batches.inc()
        self.metrics.catalog_items.set(len(self.graph))
        self.metrics.batch_seconds.observe(time.perf_counter() - started)

    def _refresh_items(self, rows: list[int]) -> None:
        vectors = self.model.item_vectors(rows, self.graph)
        keep = np.linalg.norm(vectors, axis=1) > 0  # items with neither text nor known neighbours wait
        rows_kept = [r for r, k in zip(rows, keep, strict=True) if k]
        self.graph.set_vectors(rows_kept, vectors[keep])
        now = time.time()
        points = [
            ItemPoint(self.graph.ids[r], self.graph.types[r], self.graph.titles[r] or self.graph.ids[r], v,
                      self.model.version, now)
            for r, v in zip(rows_kept, vectors[keep], strict=True)
        ]
        self.store.upsert_items(points)
        self.items_refreshed += len(points)
        self.metrics.upserts.labels("item").inc(len(points))

    def _refresh_users(self, updates: list[UserUpdate], now: float | None) -> None:
        states: list[UserState] = [u.state for u in updates]
        vectors = self.model.user_vectors(states, self.graph)
        stamp = time.time()
        points = [
            UserPoint(u.user_id, v, self.model.version, stamp, u.event_ts, list(u.state["consumed"]),
                      dict(u.state["counts"]))
            for u, v in zip(updates, vectors, strict=True)
            if np.linalg.norm(v) > 0
        ]
        self.store.upsert_users(points)
        done = time.time() if now is None else now
        for point in points:
            if point.event_ts > 0:
                self.metrics.freshness_seconds.observe(max(0.0, done - point.event_ts))
        self.users_refreshed += len(points)
        self.metrics.upserts.labels("user").inc(len(points))


class RefresherLoop:
    """Feeds a :class:`Refresher` from Kafka until stopped; run it in a thread with :meth:`start`."""

    def __init__(self, refresher: Refresher, kafka: KafkaSettings) -> None:
        self.refresher = refresher
        self.kafka = kafka
        self.stop_event = threading.Event()
        self.caught_up = threading.Event()
        """Set once the refresher has read everything that was in its topics when it started."""
        self.error: BaseException | None = None
        self._thread: threading.Thread | None = None

    def _consumer(self) -> tuple[KafkaConsumer, dict[TopicPartition, int]]:
        consumer = KafkaConsumer(bootstrap_servers=self.kafka.bootstrap, client_id="gfm-refresher",
                                 fetch_max_bytes=64 * 1024 * 1024,
                                 # commits only so that its lag can be read from Kafka (monitoring/lag.py)
                                 group_id=refresher_group(self.kafka.topic_prefix), enable_auto_commit=True,
                                 auto_commit_interval_ms=1000)
        partitions = []
        for name in ("catalog", "item-updates", "user-updates"):
            topic = self.kafka.topic(name)
            found = consumer.partitions_for_topic(topic) or set()
            partitions += [TopicPartition(topic, p) for p in sorted(found)]
        if not partitions:
            raise RuntimeError("the refresher's topics do not exist yet: run `gfm up` or create them first")
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        return consumer, consumer.end_offsets(partitions)

    def run(self) -> None:
        """Poll, collect, apply, until :attr:`stop_event` is set."""
        consumer, targets = self._consumer()
        settings = self.refresher.batch
        try:
            while not self.stop_event.is_set():
                polled = consumer.poll(timeout_ms=settings.wait_ms, max_records=settings.batch_max)
                records: list[tuple[str, Any]] = [
                    (tp.topic, r.value) for tp, batch in polled.items() for r in batch
                ]
                if records:
                    self.refresher.apply(collect(records, self.kafka))
                self.refresher.metrics.observe_batch(self.refresher, polled)  # monitoring only
                if not self.caught_up.is_set() and all(
                    consumer.position(tp) >= end for tp, end in targets.items()
                ):
                    log.info("refresher caught up: %d items known", len(self.refresher.graph))
                    self.caught_up.set()
        finally:
            consumer.close()

    def _run_guarded(self) -> None:
        try:
            self.run()
        except BaseException as error:  # surfaced through .error and /healthz
            self.error = error
            log.exception("refresher stopped")

    def start(self) -> RefresherLoop:
        """Run in a daemon thread."""
        self._thread = threading.Thread(target=self._run_guarded, name="refresher", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the loop to stop and wait for it."""
        self.stop_event.set()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        """Whether the loop's thread runs."""
        return self._thread is not None and self._thread.is_alive()
