"""The refresher: refresh requests in, fresh item vectors and user states out.

It reads three topics in micro-batches (at most ``batch_max`` records, at most ``wait_ms`` of waiting):
the catalogue (text to embed), item updates (an item's adjacency changed) and user updates (a user's history
changed). It keeps a :class:`~models.embedding.LiveGraph` mirror of them, asks the :class:`VectorModel` for the
vectors of what changed, and upserts them.

**What a change refreshes.** A changed text or adjacency moves the vectors of the items that read it
(:meth:`LiveGraph.affected`, by the model's number of hops); each refreshed item is stored with its vector and what
a user vector reads of it (:meth:`VectorModel.user_features`). An item update also carries the item's trend levels
(every consumption moves them, one per time constant of ``models.trend.TAUS``, relative to the epoch 0): for a
model that reads the trend (:attr:`VectorModel.trend`), an item whose levels moved is rewritten, its level for
the model's time constant rebased to the model's epoch (:meth:`~models.embedding.ServedTrend.levels`) and handed
to :meth:`VectorModel.item_vectors`; only its last coordinate moves, and no other item reads it. An update whose
adjacency is the one already held changes no adjacency (no HGNN work, no follower moved).

A user update stores the user's state (recent items with times, counts, consumed) with no model call: user vectors
are composed at query time from the state and the stored item inputs (``vectorstore/compose.py``), so a moved item
moves no stored user vector and users never wait in a frontier; :class:`RefresherLoop` reads user updates in a
thread of their own, so a state is written within a poll of its arrival, whatever an item refresh costs. Direct
changes (the items named by the batch's records) are refreshed in the same micro-batch. The indirect ones (the
frontier: followers of a changed item) wait in an ordered pending set and are drained at most
``dependents_per_batch`` at a time, so that a hub's change (thousands of followers) never delays fresh events. Once
the input is idle and the frontier empty, every stored item vector and input is what the model computes from the
final graph, and every stored state the user's latest, whatever the batch boundaries were: a restarted refresher
converges to the same store.

On start it reads the three topics from the beginning: they are the mirror's changelog (compacted by key on a
real Kafka), so a restarted refresher rebuilds the same state. Until it has read what the topics held when it
started, it only folds records into its state and the frontier (``apply(defer=True)``); the frontier is then
drained as usual, so the model computes the history once, not once per historical micro-batch. Upserts are
idempotent, so replaying is safe.

**Replicas.** ``refresher.replicas`` refreshers share the work by Kafka partition (:class:`Ownership`): replica ``r``
owns the users and items whose partition (Kafka's murmur2 partitioner, as every keyed topic routes them) is ``r``
modulo ``replicas``. Each replica reads the whole catalogue and item-updates topics, since an item's vector reads
its neighbours', but only its own partitions of user-updates, and upserts only its
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
    origins: dict[str, float] = field(default_factory=dict)
    """Per updated item, the earliest event time (unix seconds) behind its update, when known (the item-update
    record's Kafka timestamp): event -> item vector latency is measured from it, for the item and the frontier
    it reaches."""


def collect(records: Iterable[Record], kafka: KafkaSettings, keys: Iterable[bytes | None] | None = None) -> Changes:
    """Sort raw records into a :class:`Changes`; undecodable ones become dead letters (nothing else escapes).

    An item or user update carries the whole state of its key, so the latest valid record of a key is the one that
    counts. With ``keys`` (the records' Kafka keys, in the same order), the updates are read newest first and a
    record whose key already has a valid later update is skipped without being decoded, as Kafka's log compaction
    would drop it: a refresher behind by several stream batches (or replaying its topics after a restart) decodes
    each item's adjacency once, not once per batch. A skipped record is not checked, so a malformed record
    superseded in the same poll is not dead-lettered; an invalid latest record still is, and the latest valid one
    before it counts.
    """
    changes = Changes()
    catalog, items, users = kafka.topic("catalog"), kafka.topic("item-updates"), kafka.topic("user-updates")
    listed = list(records)
    keyed = list(keys) if keys is not None else [None] * len(listed)
    if len(keyed) != len(listed):
        raise ValueError(f"{len(keyed)} keys for {len(listed)} records")
    dead: list[tuple[int, DeadLetter]] = []  # with the record's position: reported in record order
    for position, (topic, value, partition, offset) in enumerate(listed):
        if topic == catalog:
            try:
                valid, rejected = decode_pack(value, validate_catalog_item)
            except InvalidRecord as error:
                dead.append((position, dead_letter(topic, value, error, partition, offset)))
                continue
            for element, problem in rejected:
                dead.append((position, dead_letter(topic, repr(element).encode(), problem, partition, offset)))
            for entry in valid:
                changes.catalog[entry.item_id] = entry
    found: set[tuple[str, bytes]] = set()
    latest_items: list[ItemUpdate] = []
    latest_users: list[UserUpdate] = []
    for position in range(len(listed) - 1, -1, -1):
        topic, value, partition, offset = listed[position]
        key = keyed[position]
        if topic not in (items, users) or (key is not None and (topic, key) in found):
            continue
        try:
            if topic == items:
                latest_items.append(validate_item_update(load_json(value)))
            else:
                latest_users.append(validate_user_update(load_json(value)))
        except InvalidRecord as error:
            dead.append((position, dead_letter(topic, value, error, partition, offset)))
            continue
        if key is not None:
            found.add((topic, key))
    for update in reversed(latest_items):  # oldest first, so that a later record of a key replaces an earlier one
        changes.items[update.item_id] = update
    for user in reversed(latest_users):
        changes.users[user.user_id] = user
    changes.dead = [letter for _, letter in sorted(dead, key=lambda pair: pair[0])]
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
        self.pending_items: dict[str, float] = {}
        """The frontier, in order: per item, the earliest event time behind its pending refresh (0: unknown)."""
        self.degraded: str | None = None
        """Why the last vector store call failed, while it is being retried; None when healthy."""
        self._retry("ensure", lambda: self.store.ensure(model.dim, model.distance))
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
        level_changed: set[str] = set()
        for update in changes.items.values():
            if not self.graph.same_adjacency(update.item_id, update.adjacency):
                self.graph.set_adjacency(update.item_id, update.item_type, update.adjacency)
                adjacency_changed.add(update.item_id)
            if self.graph.set_levels(update.item_id, update.item_type, update.levels) and self.model.trend is not None:
                level_changed.add(update.item_id)  # its last coordinate moves; nothing reads it
        direct_items = text_changed | adjacency_changed | level_changed
        origin = min(changes.origins.values(), default=0.0)
        for item_id in self.graph.affected(adjacency_changed, text_changed, self.model.hops) - direct_items:
            self.pending_items[item_id] = _earliest(self.pending_items.get(item_id, 0.0), origin)
        self.write_users(changes, now)
        if defer:
            for item_id in sorted(direct_items):
                self.pending_items[item_id] = _earliest(self.pending_items.get(item_id, 0.0),
                                                        changes.origins.get(item_id, 0.0))
            self.metrics.pending.labels("item").set(len(self.pending_items))
            return

        origins = {i: _earliest(self.pending_items.get(i, 0.0), changes.origins.get(i, 0.0)) for i in direct_items}
        origins.update(self._take(self.pending_items, self.batch.dependents_per_batch, direct_items))
        items = sorted(direct_items) + [i for i in origins if i not in direct_items]
        if items:
            self._refresh_items(items, origins)
        self.metrics.batches.inc()
        self.metrics.catalog_items.set(len(self.graph))
        self.metrics.pending.labels("item").set(len(self.pending_items))
        self.metrics.batch_seconds.observe(time.perf_counter() - started)

    @staticmethod
    def _take(pending: dict[str, float], limit: int, skip: Iterable[str]) -> dict[str, float]:
        for key in skip:
            pending.pop(key, None)
        taken: dict[str, float] = {}
        for key, origin in pending.items():
            if len(taken) >= limit:
                break
            taken[key] = origin
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

    def _refresh_items(self, item_ids: list[str], origins: dict[str, float]) -> None:
        rows = [self.graph.rows[i] for i in item_ids]
        trend = self.model.trend  # the stream's levels for the model's time constant, at the model's epoch
        vectors = self.model.item_vectors(rows, self.graph, None if trend is None else trend.levels(self.graph, rows))
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
        done = time.time()
        for point in mine:  # event -> item vector, for the items an event changed and the frontier it reached
            if origins.get(point.item_id, 0.0) > 0:
                self.metrics.item_freshness_seconds.observe(max(0.0, done - origins[point.item_id]))
        self.items_refreshed += len(mine)
        self.metrics.upserts.labels("item").inc(len(mine))

    def write_users(self, changes: Changes, now: float | None = None) -> None:
        """Store the states of ``changes.users`` (this replica's), with no model call: the next query composes
        each user's vector from it (``RefresherLoop`` calls this from its users' thread, as updates arrive)."""
        if self.ownership.replicas > 1:  # another replica's users (the loop reads only this one's partitions)
            changes.users = {k: u for k, u in changes.users.items() if self.ownership.owns(k)}
        if changes.users:
            self._write_users(list(changes.users.values()), now)

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


def item_origins(polled: dict[Any, list[Any]], topic: str) -> dict[str, float]:
    """Per item of the polled item-update records, the earliest Kafka timestamp (unix seconds): the stream sets
    it to the earliest event time of the micro-batch that changed the item."""
    out: dict[str, float] = {}
    for tp, batch in polled.items():
        if tp.topic == topic:
            for record in batch:
                if record.key and record.timestamp and record.timestamp > 0:
                    key = record.key.decode("utf-8", "replace")
                    out[key] = _earliest(out.get(key, 0.0), record.timestamp / 1000.0)
    return out


def _earliest(a: float, b: float) -> float:
    """The earlier of two event times, 0 meaning unknown."""
    return min(a, b) if a > 0 and b > 0 else max(a, b)


class RefresherLoop:
    """Feeds a :class:`Refresher` from Kafka until stopped; run it in a thread with :meth:`start`.

    Two consumers, two threads: the items' (catalogue and item updates: the model's work, up to seconds per
    micro-batch on a dense graph) and the users' (user updates: states written as they arrive, no model call), so
    that a user's fresh state never waits behind an item refresh.

    Args:
        refresher: what applies the records.
        kafka: topics and the broker.
        dead_letters: where rejected records go (the dead-letter topic in production).
        on_caught_up: called once, from the items' thread, when :attr:`caught_up` is set (the process entry points
            pass ``gc.freeze``: see :func:`workers.services.tune_gc`).
    """

    def __init__(self, refresher: Refresher, kafka: KafkaSettings,
                 dead_letters: Callable[[list[DeadLetter]], None] | None = None,
                 on_caught_up: Callable[[], None] | None = None) -> None:
        self.refresher = refresher
        self.kafka = kafka
        self.dead_letters = dead_letters
        self.on_caught_up = on_caught_up
        self.stop_event = refresher.stop
        self.caught_up = threading.Event()
        """Set once the refresher has read everything that was in its topics when it started."""
        self._users_caught_up = threading.Event()
        self.error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._users_thread: threading.Thread | None = None

    def _consumer(self, names: tuple[str, ...]) -> tuple[KafkaConsumer, dict[TopicPartition, int]]:
        # fetch_max_wait_ms: the broker may hold a fetch this long waiting for data; tansu holds it for most of that
        # even when records arrive (as for the stream worker, streams/transport.py); with kafka-python's 500 ms default
        # a user update waited 0.11 s at the median before this thread saw it, 0.02 s with 100 ms (README *Freshness*)
        consumer = KafkaConsumer(bootstrap_servers=self.kafka.bootstrap, client_id="gfm-refresher",
                                 fetch_max_wait_ms=self.refresher.batch.wait_ms,
                                 fetch_max_bytes=64 * 1024 * 1024, max_partition_fetch_bytes=16 * 1024 * 1024,
                                 # commits only so that its lag can be read from Kafka (monitoring/lag.py)
                                 group_id=refresher_group(self.kafka.topic_prefix), enable_auto_commit=True,
                                 auto_commit_interval_ms=1000)
        partitions = []
        for name in names:
            topic = self.kafka.topic(name)
            found = consumer.partitions_for_topic(topic) or set()
            partitions += [TopicPartition(topic, p) for p in sorted(found)
                           if name != "user-updates" or self.refresher.ownership.partition(p)]
        if not partitions:
            consumer.close()
            raise RuntimeError("the refresher's topics do not exist yet: run `gfm up` or create them first")
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        return consumer, consumer.end_offsets(partitions)

    def _collect(self, polled: dict[Any, list[Any]]) -> tuple[Changes, int]:
        records: list[Record] = [
            (tp.topic, r.value, tp.partition, r.offset) for tp, batch in polled.items() for r in batch
        ]
        changes = collect(records, self.kafka, [r.key for batch in polled.values() for r in batch])
        if changes.dead and self.dead_letters is not None:
            self.dead_letters(changes.dead)
        return changes, len(records)

    def run(self) -> None:
        """Poll, collect, apply, until :attr:`stop_event` is set: items in this thread, users in another."""
        self._users_thread = threading.Thread(target=self._guarded, args=(self.run_users,), name="refresher-users",
                                              daemon=True)
        self._users_thread.start()
        consumer, targets = self._consumer(("catalog", "item-updates"))
        settings = self.refresher.batch
        try:
            while not self.stop_event.is_set():
                polled = consumer.poll(timeout_ms=0 if not self.refresher.idle else settings.wait_ms,
                                       max_records=settings.batch_max)
                if polled or not self.refresher.idle:
                    changes, count = self._collect(polled)
                    changes.origins = item_origins(polled, self.kafka.topic("item-updates"))
                    # the topics' history (before caught up) only builds the state; vectors follow once
                    self.refresher.apply(changes, defer=bool(count) and not self.caught_up.is_set())
                self.refresher.metrics.observe_batch(self.refresher, polled)  # monitoring only
                if not self.caught_up.is_set() and self._users_caught_up.is_set() and all(
                    consumer.position(tp) >= end for tp, end in targets.items()
                ):
                    log.info("refresher caught up: %d items known", len(self.refresher.graph))
                    self.caught_up.set()
                    if self.on_caught_up is not None:
                        self.on_caught_up()
        finally:
            consumer.close()
            self._users_thread.join(10)

    def run_users(self) -> None:
        """Write the users' states as their updates arrive (no model call), until :attr:`stop_event` is set."""
        consumer, targets = self._consumer(("user-updates",))
        settings = self.refresher.batch
        try:
            while not self.stop_event.is_set():
                polled = consumer.poll(timeout_ms=settings.wait_ms, max_records=settings.batch_max)
                if polled:
                    changes, _ = self._collect(polled)
                    self.refresher.write_users(changes)
                if not self._users_caught_up.is_set() and all(
                    consumer.position(tp) >= end for tp, end in targets.items()
                ):
                    self._users_caught_up.set()
        finally:
            consumer.close()

    def _guarded(self, run: Callable[[], None]) -> None:
        try:
            run()
        except BaseException as error:  # surfaced through .error and /healthz; the other thread stops too
            self.error = error
            log.exception("refresher stopped")
            self.stop_event.set()

    def _run_guarded(self) -> None:
        self._guarded(self.run)

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
        """Whether the loop's threads run."""
        return (self._thread is not None and self._thread.is_alive() and self._users_thread is not None
                and self._users_thread.is_alive())

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
