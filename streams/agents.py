"""The Faust app and its two agents, thin around plain batch functions.

Data path (``P`` partitions everywhere, every key routed by Kafka's murmur2 partitioner)::

    events (user-keyed packs) --process_events--> users table
                                          |-----> user-updates   (refresh request: the user's new state)
                                          '-----> pairs (packs routed by item) --update_edges--> adjacency table
                                                                                      '-----> item-updates

Both agents read micro-batches with ``stream.take_events`` (acked only after the batch's table writes and
sends are issued, so delivery is at least once), fold them with :func:`fold_events` / :func:`fold_pairs`,
write each touched table key once, and publish one refresh request per touched user or item. Tables are
written inside ``take`` so they use ``use_partitioner=True`` with ``bytes`` keys: a key's changelog partition
is then the partition its source messages arrive on, which keeps state right across rebalances.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import faust
from kafka.partitioner.default import murmur2

from models.graph import Adjacency, GraphConfig, UserState, apply_consumption, merge_neighbour, new_user_state
from monitoring.metrics import StreamMetrics
from streams.errors import InvalidRecord
from streams.records import DeadLetter, ItemUpdate, ListenEvent, UserUpdate, decode_pack, validate_event

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StreamConfig:
    """What the Faust app needs to know; built from the deployment settings by ``workers``."""

    broker: str = "kafka://127.0.0.1:19092"
    app_id: str = "gfm-streams"
    topic_prefix: str = "gfm"
    partitions: int = 4
    take_max: int = 100
    pairs_take_max: int = 500
    take_within_s: float = 0.1
    min_stream_ms: int = 30_000
    producer_max_batch_size: int = 1
    datadir: str = "var/faust"
    graph: GraphConfig = field(default_factory=GraphConfig)

    def topic(self, name: str) -> str:
        """The full name of one of the project's topics."""
        return f"{self.topic_prefix}-{name}"


PAIRS_PER_MESSAGE = 2000
"""Pairs per message of the pairs topic (about 60 kB), far below Kafka's default 1 MB message limit."""


@functools.lru_cache(maxsize=1 << 17)
def partition_for(key: str, partitions: int) -> int:
    """The partition Kafka's default partitioner picks for ``key`` (murmur2, as aiokafka and kafka-python).

    Cached: murmur2 is pure Python here, and every pair of every event needs one.
    """
    return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions


def counts_as_consumption(event: ListenEvent, min_stream_ms: int) -> bool:
    """A follow, or a stream of at least ``min_stream_ms`` (or of unknown length), is a consumption."""
    if event.kind == "follow":
        return True
    if event.kind == "stream":
        return event.ms_played is None or event.ms_played >= min_stream_ms
    return False


@dataclass
class EventBatch:
    """What one micro-batch of event messages changed."""

    users: dict[str, UserState] = field(default_factory=dict)
    sent_at: dict[str, float] = field(default_factory=dict)
    """Per touched user: the earliest produce time (unix s) of the messages that changed them."""
    pairs: dict[int, dict[str, list[Any]]] = field(default_factory=lambda: defaultdict(dict))
    """Per partition, per source item: ``[src, src_type, dst, dst_type, ts, dst, dst_type, ts, ...]``, the
    item's new pairs in order (see :func:`pack_pairs`)."""
    pair_count: int = 0
    dead: list[tuple[bytes, InvalidRecord]] = field(default_factory=list)
    outcomes: dict[str, int] = field(default_factory=lambda: defaultdict(int))


def fold_events(
    messages: Iterable[tuple[bytes, float]],
    lookup_user: Callable[[str], UserState | None],
    config: StreamConfig,
) -> EventBatch:
    """Apply a micro-batch of event messages ``(raw value, produce time)`` to user states.

    Args:
        messages: the raw messages, in offset order.
        lookup_user: the stored state of a user, or None.
        config: bounds and partitions.

    Returns:
        The touched users' new states, the pairs to publish by partition, and the rejected elements.
    """
    batch = EventBatch()
    for raw, sent_at in messages:
        try:
            events, rejected = decode_pack(raw, validate_event)
        except InvalidRecord as unreadable:
            batch.dead.append((raw, unreadable))
            batch.outcomes["invalid"] += 1
            continue
        for element, reason in rejected:
            batch.dead.append((json.dumps(element, default=str).encode(), reason))
            batch.outcomes["invalid"] += 1
        for event in events:
            if not counts_as_consumption(event, config.min_stream_ms):
                batch.outcomes["not_consumption"] += 1
                continue
            state = batch.users.get(event.user_id) or lookup_user(event.user_id) or new_user_state()
            changed, pairs = apply_consumption(
                state, event.event_id, event.item_id, event.item_type, event.ts, config.graph
            )
            if not changed:
                batch.outcomes["duplicate"] += 1
                continue
            batch.outcomes["consumed"] += 1
            batch.users[event.user_id] = state
            batch.sent_at[event.user_id] = min(batch.sent_at.get(event.user_id, sent_at), sent_at)
            for src, src_type, dst, dst_type, pair_ts in pairs:
                groups = batch.pairs[partition_for(src, config.partitions)]
                group = groups.get(src)
                if group is None:
                    group = groups[src] = [src, src_type]
                group += (dst, dst_type, pair_ts)
            batch.pair_count += len(pairs)
    return batch


def pack_pairs(groups: dict[str, list[Any]], per_message: int) -> Iterator[bytes]:
    """Messages of the pairs topic: JSON lists of source groups, about ``per_message`` pairs each.

    Grouping by source item keeps each item's pairs in order (all that its adjacency depends on) and makes
    the messages much cheaper to parse than one small list per pair.
    """
    chunk: list[list[Any]] = []
    size = 0
    for group in groups.values():
        chunk.append(group)
        size += (len(group) - 2) // 3
        if size >= per_message:
            yield json.dumps(chunk, separators=(",", ":")).encode()
            chunk, size = [], 0
    if chunk:
        yield json.dumps(chunk, separators=(",", ":")).encode()


def fold_pairs(
    messages: Iterable[bytes],
    lookup_item: Callable[[str], dict[str, Any] | None],
    max_degree: int,
) -> tuple[dict[str, dict[str, Any]], int]:
    """Merge a micro-batch of pair messages (see :func:`pack_pairs`) into item adjacencies, in order.

    Returns:
        Each touched item's entry ``{"type": item_type, "adj": Adjacency}``, and how many pairs were merged.
    """
    touched: dict[str, dict[str, Any]] = {}
    merged = 0
    for raw in messages:
        for group in json.loads(raw):
            src = group[0]
            entry = touched.get(src) or lookup_item(src) or {"type": group[1], "adj": {}}
            adjacency: Adjacency = entry["adj"]
            for k in range(2, len(group), 3):
                merge_neighbour(adjacency, group[k], group[k + 1], group[k + 2], max_degree)
            touched[src] = entry
            merged += (len(group) - 2) // 3
    return touched, merged


def create_app(config: StreamConfig, metrics: StreamMetrics) -> faust.App:
    """Build the Faust app with its topics, tables and agents.

    Args:
        config: broker, topics, bounds.
        metrics: where the agents count what they do.
    """
    app = faust.App(
        config.app_id,
        broker=config.broker,
        store="memory://",
        datadir=config.datadir,
        topic_partitions=config.partitions,
        producer_max_batch_size=config.producer_max_batch_size,
        broker_session_timeout=6.0,
        broker_heartbeat_interval=1.0,
        web_enabled=False,
        web_host="127.0.0.1",
    )
    raw = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw"}
    events_topic = app.topic(config.topic("events"), partitions=config.partitions, **raw)  # type: ignore[arg-type]
    pairs_topic = app.topic(config.topic("pairs"), partitions=config.partitions, **raw)  # type: ignore[arg-type]
    user_updates = app.topic(config.topic("user-updates"), key_type=bytes, value_type=UserUpdate,
                             partitions=config.partitions)
    item_updates = app.topic(config.topic("item-updates"), key_type=bytes, value_type=ItemUpdate,
                             partitions=config.partitions)
    dead_letters = app.topic(config.topic("dead-letter"), value_type=DeadLetter, partitions=1)
    users = app.Table("users", key_type=bytes, value_type=dict, use_partitioner=True,
                      partitions=config.partitions)
    adjacency = app.Table("adjacency", key_type=bytes, value_type=dict, use_partitioner=True,
                          partitions=config.partitions)

    async def send_dead(source: str, raw_value: bytes, error: InvalidRecord) -> None:
        log.warning("dead letter from %s: %s", source, error)
        metrics.dead_letters.labels(source, error.field).inc()
        await dead_letters.send(
            value=DeadLetter(topic=source, reason=str(error), field=error.field,
                             original=raw_value.decode("latin-1"))
        )

    async def handle_events(events: list[Any]) -> None:
        started = time.perf_counter()
        batch = fold_events(
            ((e.value, e.message.timestamp) for e in events),
            lambda user_id: users.get(user_id.encode()),
            config,
        )
        for raw_value, error in batch.dead:
            await send_dead(config.topic("events"), raw_value, error)
        for user_id, state in batch.users.items():
            users[user_id.encode()] = state
            await user_updates.send(
                key=user_id.encode(),
                value=UserUpdate(user_id=user_id, state=state, event_ts=batch.sent_at[user_id]),
            )
        # pair messages carry the batch's earliest event time, for event -> item vector latency (monitoring)
        first_event = min(batch.sent_at.values(), default=None)
        for partition, groups in batch.pairs.items():
            for message in pack_pairs(groups, PAIRS_PER_MESSAGE):
                await pairs_topic.send(value=message, partition=partition, timestamp=first_event)
        metrics.pairs_published.inc(batch.pair_count)
        for outcome, n in batch.outcomes.items():
            metrics.events.labels(outcome).inc(n)
        metrics.user_updates.inc(len(batch.users))
        metrics.batch_seconds.labels("events").observe(time.perf_counter() - started)

    async def handle_pairs(events: list[Any]) -> None:
        started = time.perf_counter()
        values = [e.value for e in events]
        first_event = min(e.message.timestamp for e in events)  # item updates carry it on (monitoring)
        touched, merged = fold_pairs(values, lambda item_id: adjacency.get(item_id.encode()),
                                     config.graph.max_degree)
        for item_id, entry in touched.items():
            adjacency[item_id.encode()] = entry
            await item_updates.send(
                key=item_id.encode(),
                value=ItemUpdate(item_id=item_id, item_type=entry["type"], adjacency=entry["adj"]),
                timestamp=first_event,
            )
        metrics.pairs.inc(merged)
        metrics.item_updates.inc(len(touched))
        metrics.batch_seconds.labels("edges").observe(time.perf_counter() - started)

    async def guarded(handler: Callable[[Any], Awaitable[None]], batch: Any) -> None:
        try:
            await handler(batch)
        except Exception as error:
            # A crashed agent would leave the worker up but idle: stop the worker instead, so that its
            # supervisor restarts it and the unacknowledged messages are delivered again.
            log.critical("stream agent crashed: %r; stopping the worker", error)
            await app.crash(error)
            raise

    @app.agent(events_topic)
    async def process_events(stream: faust.StreamT) -> None:
        # take_events (not in faust's type stubs) keeps each message's timestamp, for freshness
        takes = stream.take_events(config.take_max, within=config.take_within_s)  # type: ignore[attr-defined]
        async for events in takes:
            await guarded(handle_events, events)

    @app.agent(pairs_topic)
    async def update_edges(stream: faust.StreamT) -> None:
        takes = stream.take_events(config.pairs_take_max, within=config.take_within_s)  # type: ignore[attr-defined]
        async for events in takes:
            await guarded(handle_pairs, events)

    return app
