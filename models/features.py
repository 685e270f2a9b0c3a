"""What the models read, built once for training, evaluation and serving.

Two functions turn the stream's data into model inputs, and every path calls them, so a model serves on the graph
and the histories it was trained on:

* :func:`graph_tensors`: a co-interaction graph (per item, its adjacency as the stream keeps it) -> the HGNN's
  typed tensors. **Messages flow neighbour -> owner**: an item aggregates the neighbours *it* keeps (its own
  adjacency, after the degree rule), weighted by co-count. Why this direction and not owner -> neighbour: an
  item's inputs are then exactly its own adjacency record, which the stream publishes per item (one item update
  changes one item's first layer); its fan-in is bounded by the degree cap (a hub aggregates at most
  ``2 * max_degree`` neighbours, not every item that lists it); and the reverse index the refresher keeps
  (:attr:`~models.embedding.LiveGraph.followers`) is the set of items a change reaches. Without pruning both
  directions give the same graph (pairs are made in both directions); with pruning they differ, so one had to
  be chosen. An item's weighted degree (the item tower's popularity) is then the sum of its own adjacency's
  weights.
* :func:`user_tower_features`: user states (``models.graph.UserState``, folded by
  :func:`~models.graph.apply_consumption`) -> the user tower's input. **The user tower reads the stream's state**:
  each item once, in the order of its latest consumption (a repeat play moves an item to the front, it does not
  count twice), at most ``history_per_type`` per type, and per type the number of distinct items consumed. Why:
  the live system has only the state, bounded by design, and it is what a user vector is refreshed from;
  training reads the same thing by folding each user's training events through the same function
  (:meth:`Histories.states`), so a training example is the state the live system would hold at that moment.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np

from models.graph import Adjacency, GraphConfig, UserState, apply_consumption, new_user_state, recent_items
from models.hgnn import TypedGraph


def graph_tensors(adjacency: Mapping[str, Adjacency], rows: Mapping[str, int], item_type: np.ndarray,
                  type_names: list[str]) -> TypedGraph:
    """The HGNN's typed graph of a co-interaction graph: an edge ``neighbour -> owner`` of weight ``co-count``
    for every entry of every item's adjacency.

    Args:
        adjacency: per owner item id, its adjacency ``{neighbour_id: [type, weight, last_ts]}``.
        rows: item id -> row (the graph's node index); every owner and neighbour must have one.
        item_type: per row, the index of its type in ``type_names``.
        type_names: the model's item types.

    Raises:
        ValueError: an owner or a neighbour has no row.
    """
    src: list[int] = []
    dst: list[int] = []
    weight: list[float] = []
    for owner, neighbours in adjacency.items():
        row = rows.get(owner)
        if row is None:
            raise ValueError(f"item {owner!r} has an adjacency but no row in the graph")
        for neighbour, entry in neighbours.items():
            other = rows.get(neighbour)
            if other is None:
                raise ValueError(f"item {owner!r} lists neighbour {neighbour!r}, which has no row in the graph")
            src.append(other)
            dst.append(row)
            weight.append(entry[1])
    return TypedGraph.build(np.asarray(item_type, dtype=np.int64), type_names, np.array(src, dtype=np.int64),
                            np.array(dst, dtype=np.int64), np.array(weight, dtype=np.float32))


def user_tower_features(states: Sequence[UserState], rows: Mapping[str, int], item_type: np.ndarray,
                        type_names: Sequence[str], per_item: np.ndarray, history: int, last_item: bool
                        ) -> np.ndarray:
    """The user tower's input for user states.

    A state's items are read newest last in the order of :func:`~models.graph.recent_items` (latest consumption
    time, ties by item id), each once; items without a row or of an unknown type (code < 0) are skipped. Per type
    ``t``: the mean ``per_item`` row of the last ``history`` items of type ``t``; then the last item's row (when
    ``last_item``); then per type ``log(1 + n_t)`` with ``n_t`` the state's count of distinct items of type ``t``
    consumed.

    Args:
        states: user states.
        rows: item id -> row of ``per_item`` and ``item_type``.
        item_type: per row, its type index (< 0: unknown to the model).
        type_names: the model's types; ``state["counts"]`` is keyed by these names.
        per_item: what the tower reads of each item (``models.twotower.user_item_features``).
        history: items per type averaged.
        last_item: append the last item's row.

    Returns:
        ``(len(states), T * E + (E if last_item else 0) + T)`` float32, ``T`` types, ``E`` ``per_item`` columns.
    """
    num_types, dim = len(type_names), per_item.shape[1]
    width = num_types * dim + (dim if last_item else 0)
    out = np.zeros((len(states), width + num_types), dtype=np.float32)
    for u, state in enumerate(states):
        known = [rows[i] for i, _, _ in reversed(recent_items(state)) if i in rows]
        known = [r for r in known if item_type[r] >= 0]
        if known:
            codes = item_type[known]
            for t in range(num_types):
                of_type = [r for r, c in zip(known, codes, strict=True) if c == t][-history:]
                if of_type:
                    out[u, t * dim : (t + 1) * dim] = per_item[of_type].mean(0)
            if last_item:
                out[u, num_types * dim : width] = per_item[known[-1]]
        counts = state["counts"]
        for t, name in enumerate(type_names):
            out[u, width + t] = np.log1p(counts.get(name, 0))
    return out


def has_history(states: Sequence[UserState], rows: Mapping[str, int], item_type: np.ndarray) -> np.ndarray:
    """Per state, whether it holds an item the user tower can read (otherwise the user has no vector)."""
    return np.array([any(i in rows and item_type[rows[i]] >= 0 for i, _, _ in recent_items(s)) for s in states],
                    dtype=bool)


@dataclass(frozen=True)
class Histories:
    """Users' consumption sequences over a catalogue, read by the user tower as the stream's states.

    Attributes:
        users: user ids.
        items: per user, the rows of the items consumed, oldest first (repeat plays included).
        ts: per user, the event times.
        ids: row -> item id.
        item_type: row -> type index.
        type_names: the type names (what the stream's states are keyed by).
        graph: the stream's bounds (``history_per_type``, ``max_consumed``).
    """

    users: list[str]
    items: list[np.ndarray]
    ts: list[np.ndarray]
    ids: Sequence[str]
    item_type: np.ndarray
    type_names: list[str]
    graph: GraphConfig

    @classmethod
    def of_events(cls, events: Sequence[tuple[str, int, float]], ids: Sequence[str], item_type: np.ndarray,
                  type_names: list[str], graph: GraphConfig) -> Histories:
        """From ``(user, row, ts)`` events in time order; users in order of their first event."""
        items: dict[str, list[int]] = {}
        times: dict[str, list[float]] = {}
        for user, row, ts in events:
            items.setdefault(user, []).append(row)
            times.setdefault(user, []).append(ts)
        return cls(list(items), [np.array(v, dtype=np.int64) for v in items.values()],
                   [np.array(v, dtype=np.float64) for v in times.values()], ids, item_type, type_names, graph)

    def __len__(self) -> int:
        return len(self.users)

    @cached_property
    def rows(self) -> dict[str, int]:
        """Item id -> row."""
        return {item_id: row for row, item_id in enumerate(self.ids)}

    def states(self, user: int, positions: Sequence[int]) -> Iterator[UserState]:
        """The state of user number ``user`` after each prefix ``items[:k]``, ``k`` in ``positions`` (ascending),
        folded by :func:`~models.graph.apply_consumption` as the stream does. Each state yielded is a snapshot
        of what the user tower reads (``recent`` and ``counts``)."""
        state = new_user_state()
        items, times = self.items[user], self.ts[user]
        config = replace(self.graph, window=0)  # the window shapes the pairs only: a state without them is 4x faster
        done = 0
        for k in positions:
            for n in range(done, k):
                row = int(items[n])
                apply_consumption(state, str(n), self.ids[row], self.type_names[self.item_type[row]],
                                  float(times[n]), config)
            done = k
            yield {"recent": {t: list(r) for t, r in state["recent"].items()}, "counts": dict(state["counts"])}

    @cached_property
    def final_states(self) -> list[UserState]:
        """Every user's state after all their events (computed once)."""
        return [next(self.states(u, [len(self.items[u])])) for u in range(len(self))]
