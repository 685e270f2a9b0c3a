"""A list-backed harness for the stream's two agents, with crashes you can place.

:class:`LogHarness` runs :func:`~streams.agents.fold_events` and :func:`~streams.agents.fold_pairs` over in-memory
partitioned logs exactly as the Faust agents do (outputs appended before state is written, offsets committed
last), and lets a test crash a micro-batch at either point:

* ``crash="before_state"``: the batch's outputs reach their logs, its table writes and its commit do not;
* ``crash="before_changelog"``: outputs and the local (RocksDB) table writes happen, their changelog records and
  the commit do not (the worker died with its producer buffer unflushed);
* ``crash="before_commit"``: outputs, table writes and changelog happen, the input offsets are not committed.

After any of them, the next batch re-reads from the committed offset, as a restarted worker does. The local
tables survive (the same machine); :meth:`LogHarness.move` replaces them with what their changelogs hold, as a
worker that takes the partitions over elsewhere restores them. So a test reads as
``harness.produce(rows); harness.run(schedule); assert harness.users() == build_graph(rows).users``.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from models import trend
from models.graph import Adjacency, UserState
from streams.agents import (
    ItemEntry,
    StreamConfig,
    UserEntry,
    decode_item,
    decode_user,
    encode_item,
    encode_user,
    fold_events,
    fold_pairs,
    fold_pairs_log,
    pack_pairs,
    partition_for,
)
from streams.records import CatalogItem

if TYPE_CHECKING:
    from models.synthetic import SyntheticData

Crash = Literal["before_state", "before_changelog", "before_commit"] | None


@dataclass
class LogHarness:
    """The events and pairs topics as lists per partition, the two tables as dicts of encoded values."""

    config: StreamConfig
    per_message: int = 50
    events: dict[int, list[bytes]] = field(default_factory=lambda: defaultdict(list))
    pairs: dict[int, list[bytes]] = field(default_factory=lambda: defaultdict(list))
    user_table: dict[str, bytes] = field(default_factory=dict)
    item_table: dict[str, bytes] = field(default_factory=dict)
    user_changelog: dict[str, bytes] = field(default_factory=dict)
    item_changelog: dict[str, bytes] = field(default_factory=dict)
    committed: dict[tuple[str, int], int] = field(default_factory=lambda: defaultdict(int))
    user_updates: list[bytes] = field(default_factory=list)
    item_updates: list[bytes] = field(default_factory=list)

    def produce(self, rows: Iterable[tuple[str, str, str, str, float]], pack: int = 7, partition: int | None = None
                ) -> None:
        """Append ``(event_id, user_id, item_id, item_type, ts)`` rows as packs of ``pack`` events, each on its
        user's partition (or all on ``partition``, to test misrouting)."""
        by_partition: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for event_id, user_id, item_id, item_type, ts in rows:
            home = partition_for(user_id, self.config.partitions) if partition is None else partition
            by_partition[home].append({"event_id": event_id, "user_id": user_id, "item_id": item_id,
                                       "item_type": item_type, "ts": ts})
        for home, events in by_partition.items():
            for start in range(0, len(events), pack):
                self.events[home].append(json.dumps(events[start : start + pack]).encode())

    def events_batch(self, partition: int, max_messages: int, crash: Crash = None) -> int:
        """One events micro-batch from ``partition``; returns how many messages it read."""
        start = self.committed[("events", partition)]
        log = self.events[partition]
        messages = [(log[o], 0.0, partition, o) for o in range(start, min(len(log), start + max_messages))]
        if not messages:
            return 0
        batch = fold_events(messages, self._user, self.config)
        for home, rows in batch.rerouted.items():
            self.events[home].append(json.dumps(rows).encode())
        for target, groups in batch.pairs.items():
            self.pairs[target].extend(pack_pairs(groups, self.per_message))
        values = {}
        for user_id, entry in batch.users.items():
            values[user_id], update = encode_user(user_id, entry, batch.sent_at[user_id])
            self.user_updates.append(update)
        self._write(self.user_table, self.user_changelog, values, crash)
        if crash is None:
            self.committed[("events", partition)] = messages[-1][3] + 1
        return len(messages)

    @staticmethod
    def _write(table: dict[str, bytes], changelog: dict[str, bytes], values: dict[str, bytes], crash: Crash) -> None:
        if crash == "before_state":
            return
        table.update(values)
        if crash != "before_changelog":
            changelog.update(values)

    def move(self) -> None:
        """The partitions move to another worker: it restores the tables from their changelogs."""
        self.user_table = dict(self.user_changelog)
        self.item_table = dict(self.item_changelog)

    def pairs_batch(self, partition: int, max_messages: int, crash: Crash = None) -> int:
        """One pairs micro-batch from ``partition``; returns how many messages it read."""
        start = self.committed[("pairs", partition)]
        log = self.pairs[partition]
        messages = [(log[o], partition, o) for o in range(start, min(len(log), start + max_messages))]
        if not messages:
            return 0
        batch = fold_pairs(messages, self._item, self.config.graph.max_degree)
        values = {}
        for item_id, entry in batch.items.items():
            values[item_id], update = encode_item(item_id, entry)
            self.item_updates.append(update)
        self._write(self.item_table, self.item_changelog, values, crash)
        if crash is None:
            self.committed[("pairs", partition)] = messages[-1][2] + 1
        return len(messages)

    def drain(self, max_messages: int = 3) -> None:
        """Run fault-free batches until every log is consumed."""
        while True:
            moved = sum(self.events_batch(p, max_messages) for p in range(self.config.partitions))
            moved += sum(self.pairs_batch(p, max_messages) for p in range(self.config.partitions))
            if not moved:
                return

    def _user(self, user_id: str) -> UserEntry | None:
        raw = self.user_table.get(user_id)
        return None if raw is None else decode_user(raw)

    def _item(self, item_id: str) -> ItemEntry | None:
        raw = self.item_table.get(item_id)
        return None if raw is None else decode_item(raw)

    def users(self, changelog: bool = False) -> dict[str, UserState]:
        """Every user's state (without the stream's offsets), in the local table or its changelog."""
        table = self.user_changelog if changelog else self.user_table
        return {user_id: decode_user(raw).state for user_id, raw in table.items()}

    def adjacency(self, changelog: bool = False) -> dict[str, Adjacency]:
        """Every item's adjacency, in the local table or its changelog."""
        table = self.item_changelog if changelog else self.item_table
        return {item_id: decode_item(raw).adjacency for item_id, raw in table.items()}

    def levels(self, changelog: bool = False) -> dict[str, list[float]]:
        """Every item's trend levels (one per :data:`models.trend.TAUS`), in the local table or its changelog."""
        table = self.item_changelog if changelog else self.item_table
        return {item_id: decode_item(raw).levels for item_id, raw in table.items()}

    def fold_pairs_log(self) -> dict[str, Adjacency]:
        """The adjacency that folding each pairs partition once, in its order, gives (see
        :func:`streams.agents.fold_pairs_log`)."""
        return fold_pairs_log(self.pairs.items(), self.config.graph.max_degree)


def item_levels(rows: Iterable[tuple[str, str, str, str, float]]) -> dict[str, list[float]]:
    """The reference for the stream's trend levels: per item, :func:`models.trend.levels` (epoch 0) over the
    consumptions ``(event_id, user_id, item_id, item_type, ts)``, each distinct ``(user_id, event_id)`` once (the
    stream drops a redelivered event by its id), one level per time constant of :data:`models.trend.TAUS`."""
    distinct = {(user_id, event_id): (item_id, ts) for event_id, user_id, item_id, _, ts in rows}
    ids = sorted({item_id for item_id, _ in distinct.values()})
    index = {item_id: k for k, item_id in enumerate(ids)}
    items = np.fromiter((index[i] for i, _ in distinct.values()), dtype=np.int64, count=len(distinct))
    ts = np.fromiter((t for _, t in distinct.values()), dtype=np.float64, count=len(distinct))
    columns = np.stack([trend.levels(items, ts, len(ids), tau, 0.0) for tau in trend.TAUS], axis=1)
    return dict(zip(ids, columns.tolist(), strict=True))


def refresh_records(data: SyntheticData, config: StreamConfig, topic: Callable[[str], str], seed: int,
                    late_every: int) -> list[tuple[str, bytes, int, int]]:
    """The catalogue and the refresh requests that the agents publish for a generated stream (folded by a
    :class:`LogHarness`, one message per micro-batch), as ``(topic, value, partition, offset)`` records for the
    refresher: the updates in a seeded shuffle, and every ``late_every``-th catalogue record after them (texts
    that arrive after the edges and users that name their items).

    Args:
        data: the generated catalogue and events.
        config: the agents' configuration (partitions, degree cap).
        topic: the full name of one of the project's topics (``KafkaSettings.topic``).
        seed: the shuffle's seed.
        late_every: which catalogue records come last.
    """
    types = {i.item_id: i.item_type for i in data.items}
    harness = LogHarness(config)
    harness.produce((f"e{n}", e.user_id, e.item_id, types[e.item_id], e.ts) for n, e in enumerate(data.events))
    harness.drain(max_messages=1)
    catalog = [(topic("catalog"), CatalogItem(item_id=i.item_id, item_type=i.item_type, title=i.title,
                                              description=i.text).dumps(), 0, n)
               for n, i in enumerate(data.items)]
    updates = [(topic("user-updates"), v, 0, n) for n, v in enumerate(harness.user_updates)]
    updates += [(topic("item-updates"), v, 0, n) for n, v in enumerate(harness.item_updates)]
    random.Random(seed).shuffle(updates)
    late = catalog[::late_every]
    return [r for r in catalog if r not in late] + updates + late


def hostile_messages(n: int, seed: int = 0, huge: int = 4) -> list[tuple[str, bytes | None]]:
    """``n`` poison messages for the stream's topics, as ``(topic name without prefix, value)``, each of which
    must end as exactly one dead letter: wrong types, huge numbers, NaN and infinities, deep nesting, ``huge``
    values of 1 MB, invalid UTF-8 and lone surrogates, nulls (tombstones), truncated JSON, bad pair groups and
    refresh requests of the wrong shape."""
    import random

    rng = random.Random(seed)
    good = {"event_id": "h", "user_id": "hostile", "item_id": "i", "item_type": "podcast", "ts": 1.7e9}

    def event(**change: Any) -> bytes:
        return json.dumps({**good, "event_id": f"h{rng.random()}", **change}).encode()

    events: list[Any] = [
        lambda: event(kind=[]), lambda: event(ts="yesterday"), lambda: event(ts=-1.0),
        lambda: json.dumps({**good, "ts": 10**400}, allow_nan=True).encode(),
        lambda: b'{"event_id": "x", "user_id": "u", "item_id": "i", "item_type": "podcast", "ts": NaN}',
        lambda: b'[{"event_id": "x", "user_id": "u", "item_id": "i", "item_type": "podcast", "ts": Infinity}]',
        lambda: b"[" * rng.randint(2000, 200_000), lambda: b'{"a":' * 5000,
        lambda: bytes(rng.randrange(256) for _ in range(rng.randint(1, 64))) + b"\xff",
        lambda: b'{"event_id": "\\ud800", "user_id": "u", "item_id": "i", "item_type": "podcast", "ts": 1}',
        lambda: None, lambda: b"", lambda: b"null", lambda: b'"just a string"', lambda: b"[1]",
        lambda: event(user_id={"nested": [1, 2]}), lambda: event(item_type="Not A Type"),
        lambda: event(ms_played=2**80), lambda: event(event_id=True), lambda: event(user_id=""),
        lambda: json.dumps(good)[:-3].encode(),
    ]
    others: list[tuple[str, Any]] = [
        ("catalog", lambda: b'{"item_id": "c", "item_type": "podcast", "title": 7}'),
        ("catalog", lambda: None),
        ("catalog", lambda: json.dumps({"item_id": "c", "item_type": "podcast", "title": "t" * 5000}).encode()),
        ("pairs", lambda: b'[["a", "podcast", 0]]'),
        ("pairs", lambda: b'[["a", "podcast", 0, -5, "b", "podcast", 1.0]]'),
        ("pairs", lambda: b"{}"),
        ("item-updates", lambda: b'{"item_id": "x", "item_type": "podcast", "adjacency": {"y": ["podcast", 0, 1]}}'),
        ("user-updates", lambda: b'{"user_id": "u", "event_ts": 1.0, "state": []}'),
    ]
    out: list[tuple[str, bytes | None]] = [("events", b'"' + b"x" * (1 << 20) + b'"') for _ in range(huge)]
    while len(out) < n:
        if rng.random() < 0.8:
            out.append(("events", rng.choice(events)()))
        else:
            topic, make = rng.choice(others)
            out.append((topic, make()))
    return out
