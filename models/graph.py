"""The co-interaction graph and user histories, as plain functions on plain data.

The stream agents (``streams/agents.py``) and the batch builder (:func:`build_graph`) call the same two
functions, so a graph built from a replayed stream equals the graph built in one pass:

* :func:`apply_consumption` folds one consumption into a user's state and returns the co-interaction
  pairs it creates: the new item with each of the user's ``window`` most recent *other* items. A pair
  is created only the first time a user consumes an item, so an edge weight counts users (co-counts),
  not replays.
* :func:`merge_neighbours` adds pairs to an item's adjacency and enforces the degree cap.

Degree rule: an item holds at most ``2 * max_degree`` neighbours. When a new neighbour brings it to
``2 * max_degree``, it is pruned to the ``max_degree`` neighbours with the highest ``(weight, last_ts,
item_id)``: the heaviest edges, the most recently reinforced among equals. Pruning half at once makes the
cap cost O(log d) per pair, amortised, instead of a scan of all neighbours for every new one; heavy edges
survive, and the cap bounds memory and message size.

Data shapes (JSON-friendly so they travel through Kafka and Faust tables unchanged):

* ``UserState``: ``{"recent": {type: [[item_id, ts], ...]}, "consumed": {item_id: ts},
  "event_ids": {event_id: 1}, "counts": {type: n}}``; oldest first (dicts keep insertion order, and give
  O(1) membership), each bounded by :class:`GraphConfig`.
* ``Adjacency``: ``{neighbour_id: [neighbour_type, weight, last_ts]}``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice, repeat
from operator import itemgetter
from typing import Any

from models import _graphc

UserState = dict[str, Any]
Adjacency = dict[str, list[Any]]

_FIRST, _SECOND, _THIRD = itemgetter(0), itemgetter(1), itemgetter(2)


@dataclass(frozen=True)
class GraphConfig:
    """Bounds of the co-interaction graph and of user histories.

    Attributes:
        window: pair a new item with this many of the user's most recent other items (all types).
        history_per_type: recent items kept per user and item type (what the user tower reads).
        max_consumed: consumed item ids kept per user, to exclude them from recommendations.
        max_event_ids: recent event ids kept per user, to drop redelivered duplicates.
        max_degree: neighbours kept per item after pruning (see the degree rule in the module docstring).
    """

    window: int = 20
    history_per_type: int = 50
    max_consumed: int = 2000
    max_event_ids: int = 200
    max_degree: int = 100


Pair = tuple[str, str, str, str, float]
"""One directed co-interaction ``(src, src_type, dst, dst_type, ts)``: ``src`` gained ``dst`` as a neighbour
at time ``ts``. A plain tuple: millions are made per minute, and a NamedTuple costs twice as much."""


def new_user_state() -> UserState:
    """An empty user state."""
    return {"recent": {}, "consumed": {}, "event_ids": {}, "counts": {}}


def recent_items(state: UserState, limit: int | None = None) -> list[tuple[str, str, float]]:
    """The user's recent items of all types as ``(item_id, item_type, ts)``, newest first (ties: the greater
    ``(item_id, item_type)`` first); the first ``limit`` of them.

    In C for states of plain JSON types (``models/_graphc.c``; one call per consumption in the events agent, where
    the Python version took 7 % of the stream worker's CPU), else :func:`recent_items_reference`, its definition,
    which the tests hold it to."""
    if limit is None or limit >= 0:
        found = _graphc.recent_items(state["recent"], -1 if limit is None else limit)
        if found is not None:
            return found
    return recent_items_reference(state, limit)


def recent_items_reference(state: UserState, limit: int | None = None) -> list[tuple[str, str, float]]:
    """What :func:`recent_items` returns, in Python: the definition, and the path for states off C's fast path."""
    merged: list[tuple[float, str, str]] = []
    for itype, rows in state["recent"].items():
        merged += zip(map(_SECOND, rows), map(_FIRST, rows), repeat(itype), strict=False)
    merged.sort(reverse=True)
    return [(item, itype, ts) for ts, item, itype in (merged if limit is None else merged[:limit])]


def apply_consumption(
    state: UserState,
    event_id: str,
    item_id: str,
    item_type: str,
    ts: float,
    config: GraphConfig,
) -> tuple[bool, list[Pair]]:
    """Fold one consumption into ``state`` (in place).

    Args:
        state: the user's state, from :func:`new_user_state` or an earlier call.
        event_id: the event's id; an id seen recently is a redelivery and changes nothing.
        item_id: the consumed item.
        item_type: its type.
        ts: event time, unix seconds.
        config: the bounds.

    Returns:
        ``(changed, pairs)``: whether the state changed, and the directed pairs (both directions) that
        this consumption adds to the graph.
    """
    event_ids: dict[str, int] = state["event_ids"]
    if event_id in event_ids:
        return False, []
    event_ids[event_id] = 1
    _trim_oldest(event_ids, config.max_event_ids)

    consumed: dict[str, float] = state["consumed"]
    pairs: list[Pair] = []
    if item_id not in consumed:
        for other, other_type, _ in recent_items(state, config.window):
            pairs.append((item_id, item_type, other, other_type, ts))
            pairs.append((other, other_type, item_id, item_type, ts))
        consumed[item_id] = ts
        _trim_oldest(consumed, config.max_consumed)
        state["counts"][item_type] = state["counts"].get(item_type, 0) + 1

    rows: list[list[Any]] = state["recent"].setdefault(item_type, [])
    rows[:] = [row for row in rows if row[0] != item_id]
    rows.append([item_id, ts])
    del rows[: -config.history_per_type]
    return True, pairs


def _trim_oldest(entries: dict[str, Any], limit: int) -> None:
    excess = len(entries) - limit
    if excess > 0:
        for key in list(entries)[:excess]:
            del entries[key]


def merge_neighbour(adjacency: Adjacency, dst: str, dst_type: str, ts: float, max_degree: int) -> None:
    """Add the pair ``(src, dst)`` to ``adjacency`` (that of ``src``), in place, under the degree rule."""
    merge_neighbours(adjacency, (dst, dst_type, ts), max_degree)


merge_neighbours = _graphc.merge_neighbours
"""``merge_neighbours(adjacency, flat, max_degree, start=0)``: add pairs ``(src, dst)`` to ``adjacency`` (that of
``src``), in order, in place, under the degree rule; ``flat`` is ``dst, dst_type, ts, dst, dst_type, ts, ...`` from
index ``start`` on (the layout of a pair group, see ``streams.agents.pack_pairs``), so that a group is merged without
copying it.

The hot loop of the edges agent (tens of millions of pairs) and of :func:`build_graph`, written once for both, in C
(``models/_graphc.c``): in Python the merge and its prune took about half of the stream worker's CPU. Its definition
is :func:`merge_neighbours_reference`, which the tests hold it to on random streams."""


def merge_neighbours_reference(adjacency: Adjacency, flat: Sequence[Any], max_degree: int, start: int = 0) -> None:
    """What :data:`merge_neighbours` does, in Python: the definition, kept as the tests' oracle."""
    cap = 2 * max_degree
    get = adjacency.get
    triples = islice(flat, start, None)
    for dst, dst_type, ts in zip(triples, triples, triples, strict=False):
        entry = get(dst)
        if entry is not None:
            entry[1] += 1
            if ts > entry[2]:
                entry[2] = ts
            continue
        adjacency[dst] = [dst_type, 1, ts]
        if len(adjacency) >= cap:
            _prune(adjacency, max_degree)


def _prune(adjacency: Adjacency, max_degree: int) -> None:
    """Keep the ``max_degree`` neighbours with the highest ``(weight, last_ts, item_id)``, heaviest first."""
    rows = adjacency.values()
    ranked = sorted(zip(map(_SECOND, rows), map(_THIRD, rows), adjacency, strict=True), reverse=True)  # weight, ts
    kept = [(dst, adjacency[dst]) for _, _, dst in ranked[:max_degree]]
    adjacency.clear()
    adjacency.update(kept)


@dataclass
class CoGraph:
    """A whole co-interaction graph in memory: item types, adjacencies and user states."""

    config: GraphConfig = field(default_factory=GraphConfig)
    item_types: dict[str, str] = field(default_factory=dict)
    adjacency: dict[str, Adjacency] = field(default_factory=dict)
    users: dict[str, UserState] = field(default_factory=dict)

    def consume(self, event_id: str, user_id: str, item_id: str, item_type: str, ts: float) -> list[Pair]:
        """Apply one consumption event, exactly as the stream agents do; returns the pairs it added."""
        state = self.users.setdefault(user_id, new_user_state())
        _, pairs = apply_consumption(state, event_id, item_id, item_type, ts, self.config)
        self.item_types.setdefault(item_id, item_type)
        for src, _, dst, dst_type, pair_ts in pairs:
            merge_neighbour(self.adjacency.setdefault(src, {}), dst, dst_type, pair_ts, self.config.max_degree)
        return pairs

    def edges(self) -> Iterator[tuple[str, str, int]]:
        """Every directed edge as ``(src, dst, weight)``."""
        for src, adjacency in self.adjacency.items():
            for dst, (_, weight, _) in adjacency.items():
                yield src, dst, weight


def build_graph(
    events: Iterable[tuple[str, str, str, str, float]], config: GraphConfig | None = None
) -> CoGraph:
    """Build the graph from ``(event_id, user_id, item_id, item_type, ts)`` rows in time order."""
    graph = CoGraph(config or GraphConfig())
    for event_id, user_id, item_id, item_type, ts in events:
        graph.consume(event_id, user_id, item_id, item_type, ts)
    return graph
