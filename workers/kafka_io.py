"""Kafka at the edges: topic creation, the event and catalogue producers, and dataset replay (kafka-python)."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from models.datasets import Item, count_events, iter_events, load_items
from streams.agents import partition_for
from streams.records import CatalogItem, ListenEvent, event_to_dict, validate_catalog_item
from workers.settings import KafkaSettings

log = logging.getLogger(__name__)

TOPICS = ("events", "pairs", "user-updates", "item-updates", "catalog", "dead-letter")
COMPACTED = frozenset({"user-updates", "item-updates", "catalog"})
"""Keyed topics whose latest record per key is the state (the refresher rebuilds its mirror from them): Kafka
keeps that record per key forever and drops older ones. The others are logs, kept for the broker's retention."""


def ensure_topics(kafka: KafkaSettings, timeout_s: float = 30.0) -> None:
    """Create the project's topics that do not exist yet (retrying while the broker starts)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            admin = KafkaAdminClient(bootstrap_servers=kafka.bootstrap, client_id="gfm-admin")
            break
        except KafkaError as error:
            if time.monotonic() > deadline:
                raise ConnectionError(f"kafka.bootstrap={kafka.bootstrap!r}: broker not reachable ({error})") from None
            time.sleep(0.3)
    try:
        existing = set(admin.list_topics())
        wanted = [
            NewTopic(kafka.topic(name), 1 if name == "dead-letter" else kafka.partitions, kafka.replication,
                     topic_configs={"cleanup.policy": "compact" if name in COMPACTED else "delete"})
            for name in TOPICS
            if kafka.topic(name) not in existing
        ]
        if wanted:
            with contextlib.suppress(TopicAlreadyExistsError):  # another process created them first
                admin.create_topics(wanted)
            log.info("created topics %s", [t.name for t in wanted])
    finally:
        admin.close()


def make_producer(kafka: KafkaSettings, linger_ms: int = 5) -> KafkaProducer:
    """A producer for the project's JSON messages."""
    # acks=all: an accepted event is on every in-sync replica. Idempotence off: tansu does not support it (a
    # retried send may then duplicate a pack, which the stream drops by event id).
    return KafkaProducer(bootstrap_servers=kafka.bootstrap, linger_ms=linger_ms, acks="all", enable_idempotence=False,
                         client_id="gfm-producer", max_request_size=8 * 1024 * 1024)


class EventSink:
    """Produces listening events to the events topic, packed by partition (one message per pack).

    Args:
        producer: the Kafka producer.
        kafka: topic names and partitions.
        pack_size: most events per message.
    """

    def __init__(self, producer: KafkaProducer, kafka: KafkaSettings, pack_size: int = 200) -> None:
        self.producer = producer
        self.topic = kafka.topic("events")
        self.partitions = kafka.partitions
        self.pack_size = pack_size

    def send(self, events: Sequence[ListenEvent], wait: bool = True) -> list[tuple[Any, int]]:
        """Produce ``events``; with ``wait``, block until the broker has them.

        Returns:
            One ``(future, number of events)`` per message.

        Raises:
            KafkaError: when the broker did not take them (nothing is reported as accepted then).
        """
        by_partition: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for event in events:
            by_partition[partition_for(event.user_id, self.partitions)].append(event_to_dict(event))
        futures = []
        for partition, rows in by_partition.items():
            for start in range(0, len(rows), self.pack_size):
                payload = json.dumps(rows[start : start + self.pack_size]).encode()
                future = self.producer.send(self.topic, value=payload, partition=partition)
                futures.append((future, min(self.pack_size, len(rows) - start)))
        if wait:
            for future, _ in futures:
                future.get(timeout=30)
        return futures


def publish_catalog(producer: KafkaProducer, kafka: KafkaSettings, items: Iterable[Item]) -> int:
    """Validate and produce catalogue items, one message per item keyed by item id; returns the count.

    Raises:
        InvalidRecord: on the first invalid item, before anything is produced.
    """
    records: list[CatalogItem] = [
        validate_catalog_item(
            {"item_id": i.item_id, "item_type": i.item_type, "title": i.title or i.item_id, "description": i.text}
        )
        for i in items
    ]
    topic = kafka.topic("catalog")
    for record in records:
        producer.send(topic, key=record.item_id.encode(), value=record.dumps())
    producer.flush()
    return len(records)


@dataclass(frozen=True)
class ReplaySummary:
    """What a replay did."""

    sent: int
    failed: int
    skipped_unknown_item: int
    seconds: float

    @property
    def events_per_s(self) -> float:
        """Achieved rate."""
        return self.sent / self.seconds if self.seconds > 0 else 0.0


def dataset_events(folder: Path, limit: int | None = None) -> tuple[Iterator[ListenEvent | None], int]:
    """A dataset's events as :class:`ListenEvent` (None for an event whose item is not in the catalogue),
    and how many there are."""
    types = {item.item_id: item.item_type for item in load_items(folder)}
    total = count_events(folder) if limit is None else min(limit, count_events(folder))
    name = folder.resolve().name

    def generate() -> Iterator[ListenEvent | None]:
        for n, event in enumerate(iter_events(folder, limit)):
            item_type = types.get(event.item_id)
            yield None if item_type is None else ListenEvent(
                event_id=f"{name}:{n}", user_id=event.user_id, item_id=event.item_id,
                item_type=item_type, ts=event.ts, kind="stream", ms_played=None,
            )

    return generate(), total


def replay(
    events: Iterable[ListenEvent | None],
    sink: EventSink,
    total: int,
    rate: float | None = None,
    progress: bool = True,
    tick_s: float = 0.01,
) -> ReplaySummary:
    """Produce ``events`` at ``rate`` events/s (as fast as possible when None), with a progress bar.

    Events are grouped per tick (``rate * tick_s`` events) or in chunks of 2,000 when unthrottled, and
    packed by partition. Failed sends are counted, not retried.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    chunk = max(1, int(rate * tick_s)) if rate else 2000
    sent = failed = unknown = 0
    started = time.monotonic()
    pending: list[tuple[Any, int]] = []

    def settle(block: bool) -> None:
        nonlocal sent, failed
        keep = []
        for future, n in pending:
            if not block and not future.is_done:
                keep.append((future, n))
                continue
            try:
                future.get(timeout=30)
                sent += n
            except KafkaError as error:
                failed += n
                log.warning("send failed: %s", error)
        pending[:] = keep

    columns = (TextColumn("replay"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
               TextColumn("{task.fields[rate]:>8.0f} ev/s"))
    with Progress(*columns, disable=not progress) as bar:
        task = bar.add_task("replay", total=total, rate=0.0)
        buffer: list[ListenEvent] = []
        done = 0

        def flush() -> None:
            nonlocal done
            if not buffer:
                return
            pending.extend(sink.send(buffer, wait=False))
            done += len(buffer)
            buffer.clear()
            settle(block=False)
            elapsed = time.monotonic() - started
            bar.update(task, completed=done + unknown, rate=done / elapsed if elapsed else 0.0)
            if rate:
                ahead = done / rate - elapsed
                if ahead > 0:
                    time.sleep(ahead)

        for event in events:
            if event is None:
                unknown += 1
                continue
            buffer.append(event)
            if len(buffer) >= chunk:
                flush()
        flush()
        sink.producer.flush()
        settle(block=True)
    return ReplaySummary(sent=sent, failed=failed, skipped_unknown_item=unknown,
                         seconds=time.monotonic() - started)
