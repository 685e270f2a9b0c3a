"""The Faust app and its two agents, thin around plain batch functions.

Data path (``P`` partitions everywhere, every key routed by Kafka's murmur2 partitioner)::

    events (user-keyed packs) --process_events--> users table
                                          |-----> user-updates   (refresh request: the user's new state)
                                          '-----> pairs (packs routed by item) --update_edges--> adjacency table
                                                                                      '-----> item-updates

The pairs topic carries, per item, both its new co-interaction pairs and its consumptions (their times): the
edges agent folds each consumption into the item's trend levels (:mod:`models.trend`, one level per time constant
of :data:`models.trend.TAUS`, relative to the epoch 0), which live in the item's table value beside its adjacency
and travel with it in the item's refresh request.

Both agents read micro-batches with ``stream.take_events`` and fold them with :func:`fold_events` /
:func:`fold_pairs`.

**Exactly the fold of the log.** The state is right after any crash, restart or redelivery because of three rules:

1. *Offsets live with the state they produced.* A user's table value records, per events partition, the offset of
   the last message applied to it; an item's records, per events partition, the offset of the events message whose
   pairs and consumptions it last merged (every pair group carries that origin). A redelivered message, or a pair
   group sent again, is recognised by its offset and skipped. A user's events all come from one partition
   (producers route by user; a misrouted event is forwarded to its partition), so one offset per partition orders
   them.
2. *Outputs before state.* A batch's outputs (pairs, refresh requests, dead letters) are sent and their delivery
   awaited *before* the batch's table writes. A crash in between leaves the old state, so the batch is
   processed again and sends the same outputs again (its computation is deterministic), which rule 1 makes
   harmless downstream.
3. *The state store survives a restart.* Tables live in RocksDB (:mod:`streams.store`), changelogged to Kafka;
   Faust commits input offsets only after flushing the producer, so a committed offset never runs ahead of the
   changelog.

Redelivered *events* (the same ``event_id`` produced twice, by a client retry) are dropped by event id (the last
``max_event_ids`` per user, see :mod:`models.graph`). Delivery into the state is therefore effectively once;
the refresh-request and dead-letter topics are at least once (consumers are idempotent).

Messages that cannot be decoded go to the dead-letter topic with their reason, partition and offset; the agents
never crash on input. An unexpected error (the broker unreachable, a bug) stops the worker, so that its supervisor
restarts it and the unapplied messages are delivered again.

**Liveness.** Faust can lose fetched messages before they reach an agent, silently (its streams skip messages
fetched while the flow is suspended or under another consumer generation, expecting a seek back). Seen on tansu
right after a restart: the consumer had fetched every event, the agent sat idle with an empty buffer, and nothing
more was applied. :class:`StallWatch` notices a partition whose fetched messages an idle agent has not applied
for ``stall_s`` and the worker exits (status 70) so that its supervisor restarts it; the restarted worker
resumes from the committed offset (rules 1-3 make that exact).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import math
import os
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import aiokafka
import faust
import mode
import numpy as np
import orjson
from kafka.partitioner.default import murmur2

from models import trend
from models._graphc import expand_groups, pack_groups, well_typed_triples
from models.graph import Adjacency, GraphConfig, UserState, apply_consumption, merge_neighbours, new_user_state
from monitoring.metrics import StreamMetrics
from streams.errors import InvalidRecord
from streams.records import (
    ListenEvent,
    dead_letter,
    decode_pack,
    event_to_dict,
    load_json,
    validate_event,
)

log = logging.getLogger(__name__)

E = TypeVar("E")


@dataclass(frozen=True)
class StreamConfig:
    """What the Faust app needs to know; built from the deployment settings by ``workers``."""

    broker: str = "gfm-kafka://127.0.0.1:19092"
    app_id: str = "gfm-streams"
    topic_prefix: str = "gfm"
    partitions: int = 4
    take_max: int = 100
    pairs_take_max: int = 500
    take_within_s: float = 0.02
    pairs_take_within_s: float = 0.5
    stall_s: float = 30.0
    min_stream_ms: int = 30_000
    producer_max_batch_size: int = 16_384
    """Bytes per batch of Faust's producer, which writes the tables' changelogs (see ``streams.transport`` for why
    that is safe on tansu)."""
    output_max_batch_size: int = 16_384
    """The agents' outputs' producer (:class:`Outputs`): batches of this many bytes per partition."""
    cache_entries: int = 20_000
    rocksdb_write_buffer_mib: int = 4
    rocksdb_block_cache_mib: int = 16
    datadir: str = "var/faust"
    store: str = "gfm-rocksdb://"
    graph: GraphConfig = field(default_factory=GraphConfig)
    agents: str = "all"
    """Which agents this process runs: ``all``, or with the edges agent split into processes of its own, ``events``
    or ``edges``."""
    edges_group: str | None = None
    """The edges agent's consumer group when it runs in processes of its own (``None``: ``app_id``)."""

    def __post_init__(self) -> None:
        if self.agents not in AGENT_ROLES:
            raise ValueError(f"agents={self.agents!r}: expected one of {', '.join(AGENT_ROLES)}")

    @property
    def group(self) -> str:
        """This process's consumer group (Faust's app id): the edges processes have their own when split, so that
        neither kind's rebalances or restarts pause the other."""
        return (self.edges_group or self.app_id) if self.agents == "edges" else self.app_id

    def topic(self, name: str) -> str:
        """The full name of one of the project's topics."""
        return f"{self.topic_prefix}-{name}"


AGENT_ROLES = ("all", "events", "edges")
"""What one stream process can run: both agents, or one of them (the edges agent in processes of its own)."""

EXIT_AGENT_CRASHED = 70
"""The stream worker's exit status when an agent failed (EX_SOFTWARE)."""

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


Message = tuple[bytes | None, float, int, int]
"""One consumed message: ``(value, produce time in unix s, partition, offset)``."""

Dead = tuple[bytes | None, InvalidRecord, int, int]
"""A rejected message or pack element: ``(bytes, why, partition, offset)``."""


@dataclass
class UserEntry:
    """A user's table value: their state (see :mod:`models.graph`) and, per events partition, the offset of the
    last message applied to it."""

    state: UserState
    offsets: dict[str, int] = field(default_factory=dict)


STREAM_EPOCH = 0.0
"""The epoch of the levels the stream keeps (a model moves them to its own with :func:`models.trend.rebase`)."""


def empty_levels() -> list[float]:
    """The trend levels of an item never consumed: one per time constant of :data:`models.trend.TAUS`."""
    return [trend.EMPTY_LEVEL] * len(trend.TAUS)


@dataclass
class ItemEntry:
    """An item's table value: its type, its adjacency, its trend levels (one per :data:`models.trend.TAUS`, epoch
    :data:`STREAM_EPOCH`, float64) and, per events partition, the offset of the events message whose pairs and
    consumptions it last merged."""

    item_type: str
    adjacency: Adjacency = field(default_factory=dict)
    offsets: dict[str, int] = field(default_factory=dict)
    levels: list[float] = field(default_factory=empty_levels)


@dataclass
class EventBatch:
    """What one micro-batch of event messages changed."""

    users: dict[str, UserEntry] = field(default_factory=dict)
    sent_at: dict[str, float] = field(default_factory=dict)
    """Per touched user: the earliest produce time (unix s) of the messages that changed them."""
    pairs: dict[int, dict[tuple[str, int, int], list[Any]]] = field(default_factory=lambda: defaultdict(dict))
    """Per pairs partition, per ``(source item, events partition, events offset)``: the group
    ``[src, src_type, partition, offset, [ts, ...], dst, dst_type, ts, dst, dst_type, ts, ...]`` (see
    :func:`pack_pairs`)."""
    pair_count: int = 0
    consumptions: int = 0
    """Consumptions sent to their items' groups (one per applied consumption event)."""
    rerouted: dict[int, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    """Events that arrived on another partition than their user's, per the partition they belong to."""
    dead: list[Dead] = field(default_factory=list)
    outcomes: dict[str, int] = field(default_factory=lambda: defaultdict(int))


def fold_events(
    messages: Iterable[Message],
    lookup_user: Callable[[str], UserEntry | None],
    config: StreamConfig,
) -> EventBatch:
    """Apply a micro-batch of event messages to user states.

    Args:
        messages: the raw messages, in offset order within each partition.
        lookup_user: the stored entry of a user, or None.
        config: bounds and partitions.

    Returns:
        The touched users' new entries, the pairs to publish by partition, events to forward to their own
        partition, and the rejected messages and elements.
    """
    batch = EventBatch()
    looked_up: dict[str, UserEntry | None] = {}

    def entry_of(user_id: str) -> UserEntry | None:
        found = batch.users.get(user_id)
        if found is None:
            if user_id not in looked_up:
                looked_up[user_id] = lookup_user(user_id)
            found = looked_up[user_id]
        return found

    message_groups: dict[str, list[Any]] = {}  # this message's pair groups, by source item
    for raw, sent_at, partition, offset in messages:
        try:
            events, rejected = decode_pack(raw, validate_event)
        except InvalidRecord as unreadable:
            batch.dead.append((raw, unreadable, partition, offset))
            batch.outcomes["invalid"] += 1
            continue
        for element, reason in rejected:
            batch.dead.append((json.dumps(element, default=str).encode(), reason, partition, offset))
            batch.outcomes["invalid"] += 1
        source = str(partition)
        changed_here: set[str] = set()
        for event in events:
            home = partition_for(event.user_id, config.partitions)
            if home != partition:
                batch.rerouted[home].append(event_to_dict(event))
                batch.outcomes["rerouted"] += 1
                continue
            if not counts_as_consumption(event, config.min_stream_ms):
                batch.outcomes["not_consumption"] += 1
                continue
            entry = entry_of(event.user_id)
            if entry is not None and entry.offsets.get(source, -1) >= offset:
                # A replay after a crash. The local store may hold this state while the changelog lost it (the
                # write was not flushed when the worker died): write it again, so the changelog catches up.
                batch.outcomes["redelivered"] += 1
                batch.users[event.user_id] = entry
                batch.sent_at.setdefault(event.user_id, sent_at)
                continue
            if entry is None:
                entry = UserEntry(new_user_state())
            changed, pairs = apply_consumption(
                entry.state, event.event_id, event.item_id, event.item_type, event.ts, config.graph
            )
            if not changed:
                batch.outcomes["duplicate"] += 1
                continue
            batch.outcomes["consumed"] += 1
            batch.users[event.user_id] = entry
            changed_here.add(event.user_id)
            batch.sent_at[event.user_id] = min(batch.sent_at.get(event.user_id, sent_at), sent_at)
            # the consumption reaches its item's partition even when it makes no pair (a user's first event, a
            # repeat play): the item's trend levels count every consumption
            group = message_groups.get(event.item_id)
            if group is None:
                group = message_groups[event.item_id] = [event.item_id, event.item_type, partition, offset, []]
            group[4].append(event.ts)
            for src, src_type, dst, dst_type, pair_ts in pairs:
                group = message_groups.get(src)
                if group is None:
                    group = message_groups[src] = [src, src_type, partition, offset, []]
                group += (dst, dst_type, pair_ts)
            batch.pair_count += len(pairs)
            batch.consumptions += 1
        for src, group in message_groups.items():
            batch.pairs[partition_for(src, config.partitions)][(src, partition, offset)] = group
        message_groups.clear()
        for user_id in changed_here:
            batch.users[user_id].offsets[source] = offset
    return batch


def pack_pairs(groups: dict[Any, list[Any]], per_message: int) -> Iterator[bytes]:
    """Messages of the pairs topic, about ``per_message`` pairs (or consumptions) each.

    A group is ``[src, src_type, partition, offset, [ts, ...], dst, dst_type, ts, ...]``: the times of the
    consumptions of item ``src`` in one events message (at ``partition``, ``offset``; empty when it only gained
    neighbours), then the pairs that message gave ``src``, in order. A group is never split across messages, so a
    redelivered group is recognised whole by its origin.

    A message is binary (:data:`PAIRS_MAGIC`, see :func:`encode_pairs`): a pair is 16 bytes, each item id is written
    once per message, and decoding makes one string object per id rather than one per pair. JSON lists of groups
    took 100 MB for the first 100k movielens events, and decoding them a tenth of the stream worker's CPU (README
    *Throughput*).
    """
    chunk: list[list[Any]] = []
    size = 0
    for group in groups.values():
        chunk.append(group)
        size += (len(group) - GROUP_HEAD) // 3 + len(group[4])
        if size >= per_message:
            yield encode_pairs(chunk)
            chunk, size = [], 0
    if chunk:
        yield encode_pairs(chunk)


PAIRS_MAGIC = b"GFP2"
"""The first bytes of a binary pairs message. Then the length of its header (u32, little-endian), the header, a JSON
``[strings, groups]``: the message's item ids and types, and per group ``[src, src_type, partition, offset, [ts,
...], pairs]`` with ``src`` and ``src_type`` indexes into ``strings``; then ``pairs`` 16-byte records per group, in
order: ``(dst, dst_type)`` as u32 indexes into ``strings`` and ``ts`` as a float64, little-endian. A message that
does not begin with it is read as the JSON list of groups that earlier versions wrote."""


def encode_pairs(groups: list[list[Any]]) -> bytes:
    """One binary pairs message holding ``groups`` (see :data:`PAIRS_MAGIC`); the packing is in C."""
    strings, meta, body = pack_groups(groups)
    header = orjson.dumps([strings, meta])
    return PAIRS_MAGIC + len(header).to_bytes(4, "little") + header + body


def decode_pairs(raw: bytes | None) -> list[list[Any]]:
    """Decode and check one message of the pairs topic (see :func:`pack_pairs`): its groups, each as the flat list
    ``[src, src_type, partition, offset, [ts, ...], dst, dst_type, ts, ...]``.

    Raises:
        InvalidRecord: naming what is wrong; nothing else escapes.
    """
    if isinstance(raw, bytes | bytearray) and raw[:4] == PAIRS_MAGIC:
        return _decode_binary_pairs(raw)
    groups = load_json(raw)
    if not isinstance(groups, list):
        raise InvalidRecord("<pairs>", groups, "a pairs message must be a JSON list of groups")
    for group in groups:
        if not isinstance(group, list) or len(group) < GROUP_HEAD or (len(group) - GROUP_HEAD) % 3:
            raise InvalidRecord("<group>", group,
                                "a group is [src, src_type, partition, offset, [ts, ...], (dst, dst_type, ts)*]")
        src, src_type = group[:2]
        if not (isinstance(src, str) and src and isinstance(src_type, str) and src_type):
            raise InvalidRecord("src", group[:2], "source item and type must be non-empty strings")
        _check_origin(group)
        if not _well_typed(group):
            _name_bad_pair(group)
    return groups


def _decode_binary_pairs(raw: bytes | bytearray) -> list[list[Any]]:
    size = int.from_bytes(raw[4:8], "little")
    if len(raw) < 8 or len(raw) < 8 + size:
        raise InvalidRecord("<pairs>", raw[:60], f"a binary pairs message of {len(raw)} bytes, with a header of {size}")
    header = load_json(bytes(raw[8 : 8 + size]))
    if not (isinstance(header, list) and len(header) == 2 and isinstance(header[0], list)
            and isinstance(header[1], list)):
        raise InvalidRecord("<pairs>", raw[:60], "a binary pairs message's header is [strings, groups]")
    try:
        groups = expand_groups(header[0], header[1], memoryview(raw)[8 + size :])
    except ValueError as error:
        raise InvalidRecord("<pairs>", raw[:60], f"a binary pairs message is corrupt: {error}") from None
    for group in groups:
        _check_origin(group)
    return groups


def _check_origin(group: list[Any]) -> None:
    """Check a group's origin (partition, offset) and its consumption times."""
    partition, offset, consumed = group[2:GROUP_HEAD]
    for name, number in (("partition", partition), ("offset", offset)):
        if isinstance(number, bool) or not isinstance(number, int) or not 0 <= number < 2**63:
            raise InvalidRecord(name, number, "must be a non-negative integer")
    if not isinstance(consumed, list) or not set(map(type, consumed)) <= _NUMBER:
        raise InvalidRecord("consumed", consumed, "the consumptions must be a list of times (numbers)")


GROUP_HEAD = 5
"""Where a group's ``(dst, dst_type, ts)`` triples begin (see :func:`pack_pairs`)."""
_NUMBER = frozenset({int, float})


def _well_typed(group: list[Any]) -> bool:
    """Whether every ``(dst, dst_type, ts)`` of a group is well typed: non-empty strings and a number (an int or a
    float; JSON has no NaN or infinity, ``load_json`` is strict). In C (:func:`models._graphc.well_typed_triples`),
    because this runs for every one of the tens of millions of pairs; :func:`_name_bad_pair` names the culprit."""
    return well_typed_triples(group, GROUP_HEAD)


def _name_bad_pair(group: list[Any]) -> None:
    """Raise :class:`InvalidRecord` naming the first ill-typed pair of a group that :func:`_well_typed` refused."""
    for k in range(GROUP_HEAD, len(group), 3):
        dst, dst_type, ts = group[k : k + 3]
        if not (isinstance(dst, str) and dst and isinstance(dst_type, str) and dst_type):
            raise InvalidRecord("dst", group[k : k + 2], "neighbour item and type must be non-empty strings")
        if isinstance(ts, bool) or not isinstance(ts, int | float) or ts != ts:
            raise InvalidRecord("ts", ts, "must be a number")
    raise AssertionError("unreachable: _well_typed refused a group with no bad pair")  # pragma: no cover


@dataclass
class PairBatch:
    """What one micro-batch of pair messages changed."""

    items: dict[str, ItemEntry] = field(default_factory=dict)
    merged: int = 0
    redelivered: int = 0
    consumptions: int = 0
    """Consumptions folded into trend levels."""
    dead: list[Dead] = field(default_factory=list)


def fold_pairs(
    messages: Iterable[tuple[bytes | None, int, int]],
    lookup_item: Callable[[str], ItemEntry | None],
    max_degree: int,
) -> PairBatch:
    """Merge a micro-batch of pair messages ``(value, partition, offset)`` into item adjacencies, and their
    consumptions into the items' trend levels, skipping every group whose origin the item has merged already.

    Each item's groups are merged in the order they arrived, one item after the other (first arrival first): an
    item's adjacency depends only on the order of its own groups, so this equals merging message by message, and
    each adjacency stays in the CPU's caches while all of the batch's pairs for it are merged (the merge is
    memory-bound: the first 100k movielens events took 14.2-14.4 s end to end before and 11.5-11.7 s after, README
    *Throughput*; the cost is the batch's decoded groups, held until merged). A batch's consumptions are gathered
    per item and folded once per item and time constant (:func:`fold_levels`): the fold is order-free, so this
    equals folding them one by one."""
    batch = PairBatch()
    by_item: dict[str, list[list[Any]]] = {}
    for raw, partition, offset in messages:
        try:
            groups = decode_pairs(raw)
        except InvalidRecord as error:
            batch.dead.append((raw, error, partition, offset))
            continue
        for group in groups:
            found = by_item.get(group[0])
            if found is None:
                by_item[group[0]] = [group]
            else:
                found.append(group)
    consumed: dict[str, list[float]] = {}
    for src, groups in by_item.items():
        entry = lookup_item(src)
        for group in groups:
            source, origin = str(group[2]), group[3]
            n = (len(group) - GROUP_HEAD) // 3
            if entry is not None and entry.offsets.get(source, -1) >= origin:
                batch.redelivered += n
                batch.items[src] = entry  # written again: the changelog may have lost it (see fold_events)
                continue
            if entry is None:
                entry = ItemEntry(group[1])
            merge_neighbours(entry.adjacency, group, max_degree, start=GROUP_HEAD)
            if group[4]:
                consumed.setdefault(src, []).extend(group[4])
            entry.offsets[source] = origin
            batch.items[src] = entry
            batch.merged += n
    batch.consumptions = fold_levels(batch.items, consumed)
    return batch


def fold_levels(entries: dict[str, ItemEntry], consumed: dict[str, list[float]]) -> int:
    """Fold each item's consumption times ``consumed[item]`` into ``entries[item].levels`` (in place), one
    vectorised :func:`models.trend.levels` per time constant for the whole batch; returns how many were folded."""
    if not consumed:
        return 0
    ids = list(consumed)
    counts = np.fromiter((len(consumed[i]) for i in ids), dtype=np.int64, count=len(ids))
    index = np.repeat(np.arange(len(ids)), counts)
    times = np.fromiter((t for i in ids for t in consumed[i]), dtype=np.float64, count=int(counts.sum()))
    start = np.array([entries[i].levels for i in ids], dtype=np.float64)  # (items, taus)
    folded = np.stack([trend.levels(index, times, len(ids), tau, STREAM_EPOCH, start=start[:, k])
                       for k, tau in enumerate(trend.TAUS)], axis=1)
    for item_id, row in zip(ids, folded.tolist(), strict=True):
        entries[item_id].levels = row
    return len(times)


class OffsetGap(RuntimeError):
    """A partition's messages arrived with a hole: a message was skipped before it was applied."""


@dataclass
class OffsetTracker:
    """The next offset each partition must deliver, so that no message is applied out of order.

    The agents' state is ordered by offset (rule 1 skips what is at or below a key's recorded offset), so a
    message that the consumer skipped and delivers later would be taken for a replay and lost. Seen under load on
    tansu after restarts. A hole therefore stops the worker *before* anything after it is applied; the restarted
    worker resumes from the committed offset, which is below the hole (the skipped message was never acked).
    Going back (a replay after a rebalance) is fine.

    Cleared on every rebalance; a partition's first batch after it is checked against where the group resumes it
    (``resume_at``: its committed offset, else the log's first). Without that check a hole right at a rebalance
    went unseen: in the two-worker test, 1 run in 10 lost 15 consumptions of 5 users when the second worker
    joined during the first's start (nothing committed yet, a partition handed over was begun mid-log), and
    Faust's commit then moved past them (it lets a one-message hole after the committed offset, and any hole
    before the first commit, pass).
    """

    next: dict[int, int] = field(default_factory=dict)

    def unseen(self, partitions: Iterable[int]) -> set[int]:
        """Those of ``partitions`` with no batch taken since the last rebalance (their start must be checked)."""
        return {p for p in partitions if p not in self.next}

    def check(self, partitions_offsets: Iterable[tuple[int, int]],
              resume_at: Mapping[int, int | None] | None = None) -> None:
        """Accept a batch's ``(partition, offset)`` pairs, in delivery order.

        Args:
            partitions_offsets: the batch's messages.
            resume_at: for partitions this tracker has not seen since the last rebalance, the offset the group
                resumes them from (None: unknown, not checked).

        Raises:
            OffsetGap: naming the partition and the missing offsets.
        """
        for partition, offset in partitions_offsets:
            expected = self.next.get(partition)
            if expected is None and resume_at is not None:
                expected = resume_at.get(partition)
                if expected is not None and offset > expected:
                    raise OffsetGap(f"partition {partition}: the first message after a rebalance is at offset {offset}"
                                    f" but the group resumes at {expected}: offsets {expected}..{offset - 1} were "
                                    "skipped")
            elif expected is not None and offset > expected:
                raise OffsetGap(f"partition {partition}: offsets {expected}..{offset - 1} were skipped")
            self.next[partition] = offset + 1


TopicPartition = tuple[str, int]
"""``(topic, partition)``."""


@dataclass(frozen=True)
class Fetched:
    """How far the consumer has gone in one partition."""

    position: int
    """The next offset the consumer will fetch: every offset below it has been fetched."""
    committed: int | None
    """The committed offset (the next one to process after a restart), if known."""
    drained: bool
    """Whether the consumer has handed (or dropped) a message of this partition to the streams since its last seek."""


@dataclass
class StallWatch:
    """Notices an agent that never receives messages the consumer fetched for it (see the module's *Liveness*).

    A partition is *behind* when offsets it fetched were never applied: its position is past the next offset to
    apply (its agent's :class:`OffsetTracker` knows it once a batch of it was taken since the last rebalance, else
    the committed offset; with neither known, behind as soon as a message was drained). A partition stays behind
    for a while in normal work (a micro-batch fills, an agent is busy). It has *stalled* when it has been behind
    for ``stall_s`` while its agent was idle and started no micro-batch: a healthy agent takes whatever was fetched
    within its batch window (by default 0.02 s for events, 0.5 s for pairs). Time in which the watch itself did not
    run (checks more than ``max_gap_s`` apart: the event loop was blocked, so the agents could not run either) does
    not count.
    """

    stall_s: float
    trackers: Mapping[str, OffsetTracker]
    """Per topic, the tracker of the agent that reads it (its ``next`` offsets are the next ones to apply)."""
    max_gap_s: float = 5.0
    last_check: float | None = None
    busy: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    """Per topic, how many micro-batches are being handled now."""
    started: dict[str, float] = field(default_factory=dict)
    """Per topic, when (monotonic seconds) its agent last started a micro-batch."""
    behind_since: dict[TopicPartition, float] = field(default_factory=dict)

    def begin(self, topic: str, now: float) -> None:
        """An agent of ``topic`` starts a micro-batch."""
        self.busy[topic] += 1
        self.started[topic] = now

    def end(self, topic: str) -> None:
        """An agent of ``topic`` is done with a micro-batch (applied or not)."""
        self.busy[topic] -= 1

    def check(self, fetched: dict[TopicPartition, Fetched], now: float) -> str | None:
        """Update from the consumer's partitions; returns what stalled, or None."""
        if self.last_check is not None and now - self.last_check > self.max_gap_s:
            self.behind_since.clear()
        self.last_check = now
        for key in list(self.behind_since):
            if key not in fetched:
                del self.behind_since[key]
        for key, state in fetched.items():
            topic, partition = key
            tracked = self.trackers[topic].next.get(partition)
            next_offset = tracked if tracked is not None else state.committed
            behind = state.position > next_offset if next_offset is not None else state.drained
            if not behind or self.busy[topic] > 0:
                self.behind_since.pop(key, None)
                continue
            since = max(self.behind_since.setdefault(key, now), self.started.get(topic, -math.inf))
            if now - since >= self.stall_s:
                return (f"{topic}[{partition}]: fetched up to offset {state.position - 1}, next to apply "
                        f"{next_offset if next_offset is not None else 'unknown'}, and its agent started nothing for "
                        f"{now - since:.0f} s")
        return None


def fetched_positions(app: faust.App, topics: Iterable[str]) -> dict[TopicPartition, Fetched]:
    """The consumer's :class:`Fetched` for every assigned partition of ``topics`` (Faust and aiokafka internals,
    read from the event loop's thread; an int or a dict lookup is safe to read while the consumer thread writes)."""
    consumer: Any = app.consumer
    kafka = consumer._thread._ensure_consumer()  # the aiokafka consumer
    assignment = kafka._subscription.subscription.assignment
    wanted = set(topics)
    fetched = {}
    for tp in assignment.tps:
        if tp.topic not in wanted:
            continue
        position = assignment.state_value(tp).position
        if position is None:
            continue
        committed = consumer._committed_offset.get(tp)
        fetched[(tp.topic, tp.partition)] = Fetched(position, committed, consumer._read_offset.get(tp) is not None)
    return fetched


async def resume_offsets(app: faust.App, topic: str, partitions: Iterable[int]) -> dict[int, int | None]:
    """Per partition of ``topic``, the offset the group resumes it from after a rebalance: its committed offset
    (as Faust read it when it sought there, or last committed), else, never committed, the log's first offset;
    None where neither can be read (then :meth:`OffsetTracker.check` does not check that start)."""
    from faust.types import TP

    consumer: Any = app.consumer
    resume: dict[int, int | None] = {}
    for partition in partitions:
        tp = TP(topic, partition)
        committed = consumer._committed_offset.get(tp)  # Faust keeps a committed 0 as None: the log's start
        if committed is None:
            try:
                committed = (await consumer.earliest_offsets(tp)).get(tp)
            except Exception:  # the broker unreachable: the batch's own handling will fail on it
                log.debug("earliest offset of %s not read", tp, exc_info=True)
        resume[partition] = committed
    return resume


FOLD_LOG_CHUNK = StreamConfig.pairs_take_max
"""Messages per batch when :func:`fold_pairs_log` folds a whole log: the agent's default micro-batch."""


def fold_pairs_log(partitions: Iterable[tuple[int, Sequence[bytes | None]]], max_degree: int) -> dict[str, Adjacency]:
    """The adjacency that folding each partition of the pairs topic once, in its order, gives: the reference where
    the degree cap makes cross-partition arrival order matter (redelivered groups in the log are skipped, as the
    agent skips them)."""
    table: dict[str, ItemEntry] = {}
    for partition, values in partitions:
        for start in range(0, len(values), FOLD_LOG_CHUNK):  # a bounded batch: fold_pairs holds its groups decoded
            chunk = ((values[o], partition, o) for o in range(start, min(start + FOLD_LOG_CHUNK, len(values))))
            table.update(fold_pairs(chunk, table.get, max_degree).items)
    return {item_id: entry.adjacency for item_id, entry in table.items()}


def encode_user(user_id: str, entry: UserEntry, event_ts: float) -> tuple[bytes, bytes]:
    """A user's table value and refresh request, encoding the (large) state once for both."""
    state = orjson.dumps(entry.state)
    table = b'{"offsets":' + orjson.dumps(entry.offsets) + b',"state":' + state + b"}"
    update = (b'{"user_id":' + orjson.dumps(user_id) + b',"event_ts":' + orjson.dumps(event_ts) + b',"state":'
              + state + b"}")
    return table, update


def decode_user(raw: bytes) -> UserEntry:
    """A user's table value (see :func:`encode_user`)."""
    value = orjson.loads(raw)
    return UserEntry(value["state"], value["offsets"])


def encode_item(item_id: str, entry: ItemEntry) -> tuple[bytes, bytes]:
    """An item's table value and refresh request, encoding the adjacency and the levels once for both (JSON keeps
    a float64 level exactly: orjson writes the shortest repr that reads back to the same double)."""
    item_type = orjson.dumps(entry.item_type)
    levels = orjson.dumps(entry.levels)
    table = (b'{"type":' + item_type + b',"offsets":' + orjson.dumps(entry.offsets) + b',"levels":' + levels
             + b',"adj":' + orjson.dumps(entry.adjacency) + b"}")
    update = (b'{"item_id":' + orjson.dumps(item_id) + b',"item_type":' + item_type + b',"levels":' + levels
              + b"," + adjacency_columns(entry.adjacency)[1:])
    return table, update


def adjacency_columns(adjacency: Adjacency) -> bytes:
    """An adjacency as a refresh request carries it: four parallel arrays (``neighbours``, ``types``, ``weights``,
    ``ts``) in one JSON object. A refresher decodes this about four times faster than the table's form (an object of
    ``[type, weight, ts]`` arrays, one per neighbour: every entry a list and a dict slot to allocate), and it reads
    hundreds of such requests, each a whole adjacency, per micro-batch."""
    types, weights, times = zip(*adjacency.values(), strict=True) if adjacency else ((), (), ())
    return orjson.dumps({"neighbours": list(adjacency), "types": types, "weights": weights, "ts": times})


class StaleState(RuntimeError):
    """A table value written by an older version of the agents, which this one cannot continue exactly."""


def decode_item(raw: bytes) -> ItemEntry:
    """An item's table value (see :func:`encode_item`).

    Raises:
        StaleState: for a value without trend levels (written before the stream kept them: the consumptions it
            saw are not in it, so no level can be exact; the stream's state must be rebuilt from the events).
    """
    value = orjson.loads(raw)
    if "levels" not in value:
        raise StaleState("an adjacency table value has no trend levels: it was written by an older gfm; rebuild the "
                         "stream's state (delete its changelog topics and GFM_STREAMS__DATADIR, replay the events)")
    return ItemEntry(value["type"], value["adj"], value["offsets"], value["levels"])


class EntryCache(Generic[E]):
    """Decoded table values, so that a key touched by every micro-batch (a popular item, an active user) is
    decoded once rather than once per batch.

    It holds what this worker wrote (after the write) or read; the agents are the tables' only writers and a key
    belongs to one worker at a time, so an entry never goes stale while its partition stays here. Cleared on
    every rebalance. At most ``limit`` entries (the oldest inserted is dropped first).
    """

    def __init__(self, limit: int, load: Callable[[bytes], E | None]) -> None:
        self.limit = limit
        self.load = load
        self.entries: dict[str, E] = {}

    def get(self, key: str) -> E | None:
        """The entry of ``key``: cached, else loaded (and cached), else None."""
        found = self.entries.get(key)
        if found is None:
            found = self.load(key.encode())
            if found is not None:
                self.put(key, found)
        return found

    def put(self, key: str, entry: E) -> None:
        """Remember the entry just written for ``key``."""
        entries = self.entries
        entries[key] = entry
        if len(entries) > self.limit:
            del entries[next(iter(entries))]

    def clear(self) -> None:
        """Forget everything (on a rebalance)."""
        self.entries.clear()


class Outputs:
    """The agents' outputs (pairs, refresh requests, rerouted events, dead letters) on a Kafka producer of their own.

    Faust's producer carries the tables' changelogs. Kept apart, the outputs are batched whatever that producer's
    batch size (it sent one record per batch until restores read the true end offsets, ``streams.transport``; with
    that, a micro-batch's thousands of refresh requests waited for a round trip per record and partition: moving
    them here took the stream's share of a user's latency at 1,000 events/s from p95 0.73 to 0.57 s and item
    vectors from p95 4.6-5.3 to 3.0-3.2 s, README *Freshness*), and rule 2 waits for exactly this batch's outputs:
    :meth:`flush` awaits the acknowledgement of every record sent since the last flush, not the changelog records
    still in flight, and raises the first delivery error, so such a batch writes no state and stops the worker.
    Started on first use (an agent's first batch may come before the app's services start), stopped with the app.
    """

    def __init__(self, bootstrap: str, client_id: str, max_batch_size: int,
                 max_request_size: int = 1_000_000) -> None:
        self.bootstrap = bootstrap
        self.client_id = client_id
        self.max_batch_size = max_batch_size
        self.max_request_size = max_request_size  # Faust's producer's default, as before
        self._producer: aiokafka.AIOKafkaProducer | None = None
        self._pending: list[asyncio.Future[Any]] = []

    async def send(self, topic: str, value: bytes, key: bytes | None = None, partition: int | None = None,
                   timestamp: float | None = None) -> None:
        """Queue one record (``timestamp`` in unix seconds; keyed records go to Kafka's murmur2 partition)."""
        producer = self._producer or await self._start()
        self._pending.append(await producer.send(
            topic, value, key=key, partition=partition,
            timestamp_ms=None if timestamp is None else int(timestamp * 1000)))

    async def flush(self) -> None:
        """Wait until every record sent so far is acknowledged by the broker (acks=all).

        Raises:
            the first delivery error (the producer gave up on a record): the batch must not write its state.
        """
        pending, self._pending = self._pending, []
        if pending:
            await asyncio.gather(*pending)

    async def _start(self) -> aiokafka.AIOKafkaProducer:
        producer = aiokafka.AIOKafkaProducer(
            bootstrap_servers=self.bootstrap, client_id=self.client_id, acks="all",
            max_batch_size=self.max_batch_size, max_request_size=self.max_request_size)
        await producer.start()
        self._producer = producer
        return producer

    async def stop(self) -> None:
        """Deliver what is queued and close the producer."""
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()


def stable_table(app: faust.App, changelog_prefix: str, name: str, **kwargs: Any) -> Any:
    """A Faust table whose changelog topic is ``<changelog_prefix>-<name>-changelog`` whatever the app's id.

    Faust names a changelog after the app id, which is also the consumer group; the edges agent's processes have a
    group of their own when split (:attr:`StreamConfig.group`), and their table must keep the one changelog every
    deployment shape restores from, so that a deployment can be split or joined without losing its state.
    """

    class StableTable(faust.Table):  # type: ignore[misc]
        def _changelog_topic_name(self) -> str:
            return f"{changelog_prefix}-{self.name}-changelog"

    return app.tables.add(StableTable(app, name=name, beacon=app.tables.beacon, **kwargs))


def create_app(config: StreamConfig, metrics: StreamMetrics) -> faust.App:
    """Build the Faust app with its topics, tables and agents.

    Args:
        config: broker, topics, bounds.
        metrics: where the agents count what they do.
    """
    import streams.transport  # noqa: F401  (registers the gfm-kafka:// transport)
    from streams.store import rocksdb_options  # importing it registers the gfm-rocksdb:// store

    app = faust.App(
        config.group,
        broker=config.broker,
        store=config.store,
        datadir=config.datadir,
        topic_partitions=config.partitions,
        producer_max_batch_size=config.producer_max_batch_size,
        producer_acks=-1,
        consumer_max_fetch_size=16 * 1024 * 1024,  # a poison message of several MB must not stall a partition
        broker_session_timeout=6.0,
        broker_heartbeat_interval=1.0,
        web_enabled=False,
        web_host="127.0.0.1",
    )
    raw: dict[str, Any] = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw",
                           "value_serializer": "raw", "partitions": config.partitions}
    events_topic = app.topic(config.topic("events"), **raw)
    pairs_topic = app.topic(config.topic("pairs"), **raw)
    outputs = Outputs(config.broker.split("://", 1)[-1], f"{config.group}-outputs", config.output_max_batch_size)

    @app.service
    class StopOutputs(mode.Service):  # type: ignore[misc]
        async def on_stop(self) -> None:
            await outputs.stop()
    table: dict[str, Any] = {"key_type": bytes, "value_type": bytes, "partitions": config.partitions,
                             "use_partitioner": True}
    runs_events = config.agents in ("all", "events")
    runs_edges = config.agents in ("all", "edges")
    # options: a dict per table (Faust's store pops keys from it)
    users: Any = stable_table(app, config.app_id, "users", **table, options=rocksdb_options(
        config.rocksdb_write_buffer_mib, config.rocksdb_block_cache_mib)) if runs_events else None
    adjacency: Any = stable_table(app, config.app_id, "adjacency", **table, options=rocksdb_options(
        config.rocksdb_write_buffer_mib, config.rocksdb_block_cache_mib)) if runs_edges else None

    async def send_dead(source: str, dead: list[Dead]) -> None:
        for raw_value, error, partition, offset in dead:
            log.warning("dead letter from %s[%d]@%d: %s", source, partition, offset, error)
            metrics.dead_letters.labels(source, error.field[:40]).inc()
            letter = dead_letter(source, raw_value, error, partition, offset)
            await outputs.send(config.topic("dead-letter"), letter.dumps(), partition=0)

    trackers = {name: OffsetTracker() for name, runs in (("events", runs_events), ("pairs", runs_edges)) if runs}
    watched = tuple(config.topic(name) for name in trackers)
    watch = StallWatch(config.stall_s, dict(zip(watched, trackers.values(), strict=True)))

    def stored(table: Any, decode: Callable[[bytes], E]) -> Callable[[bytes], E | None]:
        def load(key: bytes) -> E | None:
            found = table.get(key)
            return None if found is None else decode(found)
        return load

    user_cache = EntryCache(config.cache_entries, stored(users, decode_user))
    item_cache = EntryCache(config.cache_entries, stored(adjacency, decode_item))

    @app.on_partitions_revoked.connect  # type: ignore[misc]
    async def forget_offsets(*_: Any, **__: Any) -> None:
        for tracker in trackers.values():
            tracker.next.clear()
        user_cache.clear()
        item_cache.clear()

    async def check_offsets(tracker: OffsetTracker, topic: str, events: list[Any]) -> None:
        positions = [(e.message.partition, e.message.offset) for e in events]
        unseen = tracker.unseen(p for p, _ in positions)
        tracker.check(positions, await resume_offsets(app, topic, unseen) if unseen else None)

    async def handle_events(events: list[Any]) -> None:
        started = time.perf_counter()
        await check_offsets(trackers["events"], config.topic("events"), events)
        batch = fold_events(
            ((e.value, e.message.timestamp, e.message.partition, e.message.offset) for e in events),
            user_cache.get, config)
        await send_dead(config.topic("events"), batch.dead)
        for partition, rows in batch.rerouted.items():
            await outputs.send(config.topic("events"), orjson.dumps(rows), partition=partition)
        # pair messages carry the batch's earliest event time, for event -> item vector latency (monitoring)
        first_event = min(batch.sent_at.values(), default=None)
        for partition, groups in batch.pairs.items():
            for message in pack_pairs(groups, PAIRS_PER_MESSAGE):
                await outputs.send(config.topic("pairs"), message, partition=partition, timestamp=first_event)
        values = {}
        for user_id, entry in batch.users.items():
            values[user_id], update = encode_user(user_id, entry, batch.sent_at[user_id])
            await outputs.send(config.topic("user-updates"), update, key=user_id.encode())
        await outputs.flush()  # outputs delivered before the state that records them (rule 2)
        for user_id, value in values.items():
            users[user_id.encode()] = value
            user_cache.put(user_id, batch.users[user_id])
        metrics.pairs_published.inc(batch.pair_count)
        for outcome, n in batch.outcomes.items():
            metrics.events.labels(outcome).inc(n)
        metrics.user_updates.inc(len(batch.users))
        metrics.batch_seconds.labels("events").observe(time.perf_counter() - started)

    async def handle_pairs(events: list[Any]) -> None:
        started = time.perf_counter()
        await check_offsets(trackers["pairs"], config.topic("pairs"), events)
        first_event = min(e.message.timestamp for e in events)  # item updates carry it on (monitoring)
        batch = fold_pairs(((e.value, e.message.partition, e.message.offset) for e in events), item_cache.get,
                           config.graph.max_degree)
        await send_dead(config.topic("pairs"), batch.dead)
        values = {}
        for item_id, entry in batch.items.items():
            values[item_id], update = encode_item(item_id, entry)
            await outputs.send(config.topic("item-updates"), update, key=item_id.encode(), timestamp=first_event)
        await outputs.flush()
        for item_id, value in values.items():
            adjacency[item_id.encode()] = value
            item_cache.put(item_id, batch.items[item_id])
        metrics.pairs.inc(batch.merged)
        metrics.consumptions_folded.inc(batch.consumptions)
        metrics.pairs_redelivered.inc(batch.redelivered)
        metrics.item_updates.inc(len(batch.items))
        metrics.batch_seconds.labels("edges").observe(time.perf_counter() - started)

    async def guarded(handler: Callable[[Any], Awaitable[None]], batch: list[Any]) -> None:
        topic = batch[0].message.topic
        watch.begin(topic, time.monotonic())
        try:
            await handler(batch)
        except BaseException as error:
            # Leave the batch unacknowledged: `take_events` acks its events when the agent moves on, even after an
            # error or a cancellation (SIGTERM), and Faust commits acked offsets as it stops. Marking the messages
            # acked here makes that a no-op, so a half-applied batch is delivered again after the restart.
            for event in batch:
                event.message.acked = True
            if isinstance(error, Exception):
                # Input never raises here (it is dead-lettered); this is the broker, a hole in the offsets or a
                # bug. Exit at once so that the supervisor restarts the worker: Faust's own crash path can hang
                # (seen after an OffsetGap: the worker stayed up, idle, for minutes), and an abrupt exit is safe by
                # construction (rules 1-3; the kill -9 tests exercise exactly this).
                log.critical("stream agent crashed: %r; exiting so that the supervisor restarts the worker", error)
                logging.shutdown()
                os._exit(EXIT_AGENT_CRASHED)
            raise
        finally:
            watch.end(topic)

    unread = 0  # consecutive checks that could not read the consumer

    @app.timer(interval=1.0)  # type: ignore[misc]
    async def watchdog() -> None:
        nonlocal unread
        try:
            fetched = fetched_positions(app, watched)
        except Exception:  # the consumer not started yet, or stopping; or Faust's internals changed
            unread += 1
            if unread == 60:
                log.warning("the stall watch has not read the consumer's positions for a minute: it is not "
                            "watching", exc_info=True)
            return
        unread = 0
        stalled = watch.check(fetched, time.monotonic())
        if stalled is not None:
            log.critical("stream agent stalled: %s; exiting so that the supervisor restarts the worker", stalled)
            logging.shutdown()
            os._exit(EXIT_AGENT_CRASHED)

    # take_events (not in faust's type stubs) keeps each message's partition, offset and timestamp
    async def process_events(stream: faust.StreamT) -> None:
        takes = stream.take_events(config.take_max, within=config.take_within_s)  # type: ignore[attr-defined]
        async for events in takes:
            await guarded(handle_events, events)

    async def update_edges(stream: faust.StreamT) -> None:
        takes = stream.take_events(config.pairs_take_max, within=config.pairs_take_within_s)  # type: ignore[attr-defined]
        async for events in takes:
            await guarded(handle_pairs, events)

    if runs_events:
        app.agent(events_topic)(process_events)
    if runs_edges:
        app.agent(pairs_topic)(update_edges)

    return app
