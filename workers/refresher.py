"""The refresher: refresh requests in, fresh item vectors and user states out.

It reads three topics in micro-batches (at most ``batch_max`` records, at most ``wait_ms`` of waiting):
the catalogue (text to embed), item updates (an item's adjacency changed) and user updates (a user's history
changed). It keeps a :class:`~models.embedding.LiveGraph` mirror of them, asks the :class:`VectorModel` for the
vectors of what changed, and upserts them.

**What a change refreshes.** A changed text or adjacency moves the vectors of the items that read it
(:meth:`LiveGraph.affected`, by the model's number of hops); each refreshed item is stored with its vector and
what a user vector reads of it (:meth:`VectorModel.user_features`). A user update stores the user's state (recent
items with times, counts, consumed) with no model call: user vectors are composed at query time from the state and
the stored item inputs (``vectorstore/compose.py``), so a moved item moves no stored user vector and users never
wait in a frontier. Direct changes (the items named by the batch's records) are refreshed in the same micro-batch.
The indirect ones (the frontier: followers of a changed item) wait in an ordered pending set and are drained at
most ``dependents_per_batch`` at a time, so that a hub's change (thousands of followers) never delays fresh
events. Once the input is idle and the frontier empty, every stored item vector and input is what the model
computes from the final graph, and every stored state the user's latest, whatever the batch boundaries were: a
restarted refresher converges to the same store.

On start it reads the three topics from the beginning: they are the mirror's changelog (compacted by key on a
real Kafka), so a restarted refresher rebuilds the same state. Until it has read what the topics held when it
started, it only folds records into its state and the frontier (``apply(defer=True)``); the frontier is then
drained as usual, so the model computes the history once, not once per historical micro-batch. Upserts are
idempotent, so replaying is safe.

**Replicas.** ``refresher.replicas`` refreshers share the work by Kafka partition (:class:`Ownership`): replica ``r``
owns the users and items whose partition (Kafka's murmur2 partitioner, as every keyed topic routes them) is ``r``
modulo ``replicas``. Each replica reads the whole catalogue and item-updates topics, since an item's vector reads
its neighbours' and a user's reads any item's, but only its own partitions of user-updates, and upserts only its
own items and users; together they write what one refresher writes.

**Faults.** A record that cannot be decoded goes to the dead-letter topic with its reason. A vector store
error is retried with exponential backoff (the batch is kept, nothing is skipped) while :attr:`Refresher.degraded`
says why, which ``/healthz`` reports.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from kafka import KafkaConsumer, TopicPartition

from models.embedding import LiveGraph, VectorModel
from models.text import TextEncoder, item_text
from monitoring.lag import refresher_group
from monitoring.metrics import RefresherMetrics
from streams.agents import partition_for
from streams.errors import InvalidRecord
from streams.records import (
    CatalogItem,
    DeadLetter,
    ItemUpdate,
    UserUpdate,
    dead_letter,
    decode_pack,
    load_json,
    validate_catalog_item,
    validate_item_update,
    validate_user_update,
)
from vectorstore.base import ItemPoint, UserPoint, VectorStore
from workers.settings import KafkaSettings, RefresherSettings

log = logging.getLogger(__name__)

Record = tuple[str, bytes | None, int, int]
"""One consumed record: ``(topic, value, partition, offset)``."""


@dataclass
class Changes:
    """What one micro-batch asks to refresh (later records of a key replace earlier ones)."""

    catalog: dict[str, CatalogItem] = field(default_factory=dict)
    items: dict[str, ItemUpdate] = field(default_factory=dict)
    users: dict[str, UserUpdate] = field(default_factory=dict)
    dead: list[DeadLetter] = field(default_factory=list)


def collect(records: Iterable[Record], kafka: KafkaSettings) -> Changes:
    """Sort raw records into a :class:`Changes`; undecodable ones become dead letters (nothing else escapes)."""
    changes = Changes()
    catalog, items, users = kafka.topic("catalog"), kafka.topic("item-updates"), kafka.topic("user-updates")
    for topic, value, partition, offset in records:
        try:
            if topic == catalog:
                valid, rejected = decode_pack(value, validate_catalog_item)
                for element, error in rejected:
                    changes.dead.append(dead_letter(topic, repr(element).encode(), error, partition, offset))
                for entry in valid:
                    changes.catalog[entry.item_id] = entry
            elif topic == items:
                update = validate_item_update(load_json(value))
                changes.items[update.item_id] = update
            elif topic == users:
                user = validate_user_update(load_json(value))
                changes.users[user.user_id] = user
        except InvalidRecord as error:
            changes.dead.append(dead_letter(topic, value, error, partition, offset))
    for letter in changes.dead:
        log.warning("refresher rejected a %s record at %d@%d: %s", letter.topic, letter.partition, letter.offset,
                    letter.reason)
    return changes


@dataclass(frozen=True)
class Ownership:
    """Which users and items one refresher replica upserts: those of the Kafka partitions ``p`` with
    ``p % replicas == replica`` (all of them for a lone refresher)."""

    partitions: int = 1
    replicas: int = 1
    replica: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.replica < self.replicas <= self.partitions:
            raise ValueError(f"replica {self.replica} of {self.replicas} over {self.partitions} partitions: need "
                             "0 <= replica < replicas <= partitions")

    def partition(self, partition: int) -> bool:
        """Whether this replica owns ``partition``."""
        return partition % self.replicas == self.replica

    def owns(self, key: str) -> bool:
        """Whether this replica upserts the user or item ``key``."""
        return self.replicas == 1 or self.partition(partition_for(key, self.partitions))


class Refresher:
    """Turns refresh requests into upserted vectors.

    Args:
        store: where vectors go.
        model: what computes them.
        encoder: the text featuriser for catalogue items.
        metrics: refresher metrics.
        batch: micro-batch bounds.
        stop: set to give up a store retry (shutdown).
        ownership: the users and items this replica upserts (all by default).
    """

    def __init__(
        self,
        store: VectorStore,
        model: VectorModel,
        encoder: TextEncoder,
        metrics: RefresherMetrics,
        batch: RefresherSettings,
        stop: threading.Event | None = None,
        ownership: Ownership | None = None,
    ) -> None:
        self.store = store
        self.model = model
        self.encoder = encoder
        self.metrics = metrics
        self.batch = batch
        self.stop = stop or threading.Event()
        self.ownership = ownership or Ownership()
        self.graph = LiveGraph(text_dim=encoder.dim, vector_dim=model.dim)
        self.pending_items: dict[str, None] = {}
        self.degraded: str | None = None
        """Why the last vector store call failed, while it is being retried; None when healthy."""
        self._retry("ensure", lambda: self.store.ensure(model.dim))
        self.users_refreshed = 0
        self.items_refreshed = 0

    @property
    def idle(self) -> bool:
        """No frontier left to drain."""
        return not self.pending_items

    def apply(self, changes: Changes, now: float | None = None, defer: bool = False) -> None:
        """Refresh and upsert everything ``changes`` touches, then drain part of the frontier.

        User states are written at once (no model call). With ``defer`` (a restarted refresher reading its
        topics' history), ``changes`` only update the graph, and the items they touch join the frontier: the model
        computes once, when the frontier is drained, instead of once per historical micro-batch.
        """
        started = time.perf_counter()
        text_changed: set[str] = set()
        if changes.catalog:
            entries = list(changes.catalog.values())
            texts = [item_text(e.item_type, e.title, e.description) for e in entries]
            for entry, vector in zip(entries, self.encoder.encode(texts), strict=True):
                self.graph.set_text(entry.item_id, entry.item_type, entry.title, vector)
                text_changed.add(entry.item_id)
        adjacency_changed: set[str] = set()
        for update in changes.items.values():
            self.graph.set_adjacency(update.item_id, update.item_type, update.adjacency)
            adjacency_changed.add(update.item_id)
        direct_items = text_changed | adjacency_changed
        for item_id in self.graph.affected(adjacency_changed, text_changed, self.model.hops) - direct_items:
            self.pending_items[item_id] = None
        if self.ownership.replicas > 1:  # another replica's users (the loop reads only this one's partitions)
            changes.users = {k: u for k, u in changes.users.items() if self.ownership.owns(k)}
        if changes.users:  # states only, no model call: cheap even for a restart's history
            self._write_users(list(changes.users.values()), now)
        if defer:
            self.pending_items.update(dict.fromkeys(sorted(direct_items)))
            self.metrics.pending.labels("item").set(len(self.pending_items))
            return

        items = sorted(direct_items) + self._take(self.pending_items, self.batch.dependents_per_batch, direct_items)
        if items:
            self._refresh_items(items)
        self.metrics.batches.inc()
        self.metrics.catalog_items.set(len(self.graph))
        self.metrics.pending.labels("item").set(len(self.pending_items))
        self.metrics.batch_seconds.observe(time.perf_counter() - started)

    @staticmethod
    def _take(pending: dict[str, None], limit: int, skip: Iterable[str]) -> list[str]:
        for key in skip:
            pending.pop(key, None)
        taken: list[str] = []
        for key in pending:
            if len(taken) >= limit:
                break
            taken.append(key)
        for key in taken:
            del pending[key]
        return taken

    def _retry(self, what: str, call: Callable[[], Any]) -> Any:
        """Run a vector store call, retrying with exponential backoff until it succeeds (or :attr:`stop`)."""
        delay = self.batch.retry_initial_s
        while True:
            try:
                result = call()
            except Exception as error:
                if self.stop.is_set():
                    raise
                self.degraded = f"vector store {what} failed: {error!r}"[:500]
                self.metrics.store_errors.labels(what).inc()
                log.warning("%s; retrying in %.1f s", self.degraded, delay)
                self.stop.wait(delay)
                delay = min(delay * 2, self.batch.retry_max_s)
                continue
            if self.degraded is not None:
                log.info("vector store %s succeeded again", what)
                self.degraded = None
            return result

    def _refresh_items(self, item_ids: list[str]) -> None:
        rows = [self.graph.rows[i] for i in item_ids]
        vectors = self.model.item_vectors(rows, self.graph)
        keep = np.linalg.norm(vectors, axis=1) > 0  # items with neither text nor known neighbours wait
        rows_kept = [r for r, k in zip(rows, keep, strict=True) if k]
        self.graph.set_vectors(rows_kept, vectors[keep])
        features = self.model.user_features(rows_kept, self.graph)
        now = time.time()
        points = [
            ItemPoint(self.graph.ids[r], self.graph.types[r], self.graph.titles[r] or self.graph.ids[r], v,
                      self.model.version, now, None if features is None else features[k])
            for k, (r, v) in enumerate(zip(rows_kept, vectors[keep], strict=True))
        ]
        mine = [p for p in points if self.ownership.owns(p.item_id)]  # every vector computed, own ones written
        self._retry("upsert", lambda: self.store.upsert_items(mine))
        self.items_refreshed += len(mine)
        self.metrics.upserts.labels("item").inc(len(mine))

    def _write_users(self, updates: list[UserUpdate], now: float | None) -> None:
        stamp = time.time()
        zero = np.zeros(self.model.dim, dtype=np.float32)  # composed at query time, not stored
        points = [
            UserPoint(u.user_id, zero, self.model.version, stamp, u.event_ts, list(u.state["consumed"]),
                      dict(u.state["counts"]), recent=u.state["recent"])
            for u in updates
        ]
        self._retry("upsert", lambda: self.store.upsert_users(points))
        done = time.time() if now is None else now
        for update in updates:  # the next query composes from this state: the user's vector is fresh
            if update.event_ts > 0:
                self.metrics.freshness_seconds.observe(max(0.0, done - update.event_ts))
        self.users_refreshed += len(points)
        self.metrics.upserts.labels("user").inc(len(points))


class RefresherLoop:
    """Feeds a :class:`Refresher` from Kafka until stopped; run it in a thread with :meth:`start`.

    Args:
        refresher: what applies the records.
        kafka: topics and the broker.
        dead_letters: where rejected records go (the dead-letter topic in production).
    """

    def __init__(self, refresher: Refresher, kafka: KafkaSettings,
                 dead_letters: Callable[[list[DeadLetter]], None] | None = None) -> None:
        self.refresher = refresher
        self.kafka = kafka
        self.dead_letters = dead_letters
        self.stop_event = refresher.stop
        self.caught_up = threading.Event()
        """Set once the refresher has read everything that was in its topics when it started."""
        self.error: BaseException | None = None
        self._thread: threading.Thread | None = None

    def _consumer(self) -> tuple[KafkaConsumer, dict[TopicPartition, int]]:
        consumer = KafkaConsumer(bootstrap_servers=self.kafka.bootstrap, client_id="gfm-refresher",
                                 fetch_max_bytes=64 * 1024 * 1024, max_partition_fetch_bytes=16 * 1024 * 1024,
                                 # commits only so that its lag can be read from Kafka (monitoring/lag.py)
                                 group_id=refresher_group(self.kafka.topic_prefix), enable_auto_commit=True,
                                 auto_commit_interval_ms=1000)
        partitions = []
        for name in ("catalog", "item-updates", "user-updates"):
            topic = self.kafka.topic(name)
            found = consumer.partitions_for_topic(topic) or set()
            partitions += [TopicPartition(topic, p) for p in sorted(found)
                           if name != "user-updates" or self.refresher.ownership.partition(p)]
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
                polled = consumer.poll(timeout_ms=0 if not self.refresher.idle else settings.wait_ms,
                                       max_records=settings.batch_max)
                records: list[Record] = [
                    (tp.topic, r.value, tp.partition, r.offset) for tp, batch in polled.items() for r in batch
                ]
                if records or not self.refresher.idle:
                    changes = collect(records, self.kafka)
                    if changes.dead and self.dead_letters is not None:
                        self.dead_letters(changes.dead)
                    # the topics' history (before caught up) only builds the state; vectors follow once
                    self.refresher.apply(changes, defer=bool(records) and not self.caught_up.is_set())
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

    def health(self) -> dict[str, Any]:
        """What ``/healthz`` says about the refresher: ``ok`` false when it stopped or the store is failing."""
        refresher = self.refresher
        status = "down" if not self.alive or self.error else ("degraded" if refresher.degraded else "ok")
        return {
            "ok": status == "ok",
            "status": status,
            "model_version": refresher.model.version,
            "refresher": {
                "alive": self.alive,
                "caught_up": self.caught_up.is_set(),
                "error": None if self.error is None else str(self.error),
                "degraded": refresher.degraded,
                "pending_items": len(refresher.pending_items),
                "items_refreshed": refresher.items_refreshed,
                "users_refreshed": refresher.users_refreshed,
            },
        }
