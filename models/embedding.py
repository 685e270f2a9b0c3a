"""What the refresher and the query API ask a model for: item vectors and user vectors in one shared space.

:class:`LiveGraph` is the refresher's mirror of the world: the catalogue with text embeddings, the item
adjacencies the stream agents publish, and the latest vector of every item. A :class:`VectorModel` reads it and
computes item vectors, and what a user vector reads of each item (:meth:`VectorModel.user_features`). User vectors
are composed at query time (:class:`UserComposer`) from a user's state and those per-item inputs as the store
holds them: a moved item then moves no stored user vector, and the refresher's work per micro-batch is the items
a change reaches. Two models fill the interfaces: :class:`TextPropagationModel` (no training: an item's text
embedding plus the weighted mean of its neighbours' text embeddings; a user is the mean of their recent items'
vectors) and the trained graph foundation model (``models/serving.py``), so swapping one for the other touches no
stream or store code.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np

from models import trend
from models.graph import Adjacency, UserState, recent_items

Distance = Literal["cosine", "dot"]
"""How the vector store ranks a model's vectors: cosine for unit vectors, the plain dot product for a model with
the trend coordinate (an item's level and a user's weight for it, which no normalisation may touch)."""


@dataclass(frozen=True)
class ServedTrend:
    """The trend coordinate a served model reads (``models/trend.py``): its time constant, one of
    :data:`models.trend.TAUS`, and the epoch its levels are relative to.

    The stream keeps every item's level for every time constant relative to the epoch 0; :meth:`levels` picks the
    model's and moves it to the model's epoch (:func:`models.trend.rebase`), where float32 vectors keep it exact.
    """

    tau: float | None
    epoch: float

    def __post_init__(self) -> None:
        if self.tau not in trend.TAUS:
            raise ValueError(f"trend time constant {self.tau!r} is not one the stream keeps ({trend.TAUS})")

    def levels(self, graph: LiveGraph, rows: Sequence[int]) -> np.ndarray:
        """The levels of the items at ``rows``, for this time constant, rebased to this epoch (float64)."""
        return np.asarray(trend.rebase(graph.levels(rows, self.tau), self.tau, self.epoch), dtype=np.float64)


def normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero)."""
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


@dataclass
class LiveGraph:
    """Catalogue, adjacency and item vectors, indexed by item row.

    Attributes:
        text_dim: size of the text embeddings.
        vector_dim: size of the model's output vectors.
    """

    text_dim: int
    vector_dim: int
    rows: dict[str, int] = field(default_factory=dict)
    ids: list[str] = field(default_factory=list)
    types: list[str] = field(default_factory=list)
    titles: list[str] = field(default_factory=list)
    adjacency: dict[str, Adjacency] = field(default_factory=dict)
    followers: dict[str, set[str]] = field(default_factory=dict)
    """Reverse adjacency: per item, the items that list it as a neighbour (whose vectors read it)."""
    version: int = 0
    """Bumped by every change of text or adjacency, so models can cache what they derive from the graph."""
    _text: np.ndarray = field(init=False)
    _has_text: np.ndarray = field(init=False)
    _vectors: np.ndarray = field(init=False)
    _has_vector: np.ndarray = field(init=False)
    _text_version: np.ndarray = field(init=False)
    """Per row, the :attr:`version` of its last text change (0: none)."""
    _adjacency_version: np.ndarray = field(init=False)
    """Per row, the :attr:`version` of its last adjacency change (0: none)."""
    _levels: np.ndarray = field(init=False)
    """Per row, the trend levels the stream keeps (one per :data:`models.trend.TAUS`, epoch 0, float64)."""

    def __post_init__(self) -> None:
        self._text = np.zeros((1024, self.text_dim), dtype=np.float32)
        self._has_text = np.zeros(1024, dtype=bool)
        self._vectors = np.zeros((1024, self.vector_dim), dtype=np.float32)
        self._has_vector = np.zeros(1024, dtype=bool)
        self._text_version = np.zeros(1024, dtype=np.int64)
        self._adjacency_version = np.zeros(1024, dtype=np.int64)
        self._levels = np.full((1024, len(trend.TAUS)), trend.EMPTY_LEVEL)

    def __len__(self) -> int:
        return len(self.ids)

    def row(self, item_id: str, item_type: str) -> int:
        """The row of ``item_id``, adding an item without text when it is new."""
        found = self.rows.get(item_id)
        if found is not None:
            return found
        index = len(self.ids)
        if index == len(self._text):
            grow = len(self._text)
            self._text = np.concatenate([self._text, np.zeros_like(self._text[:grow])])
            self._has_text = np.concatenate([self._has_text, np.zeros(grow, dtype=bool)])
            self._vectors = np.concatenate([self._vectors, np.zeros_like(self._vectors[:grow])])
            self._has_vector = np.concatenate([self._has_vector, np.zeros(grow, dtype=bool)])
            self._text_version = np.concatenate([self._text_version, np.zeros(grow, dtype=np.int64)])
            self._adjacency_version = np.concatenate([self._adjacency_version, np.zeros(grow, dtype=np.int64)])
            self._levels = np.concatenate([self._levels, np.full((grow, len(trend.TAUS)), trend.EMPTY_LEVEL)])
        self.rows[item_id] = index
        self.ids.append(item_id)
        self.types.append(item_type)
        self.titles.append("")
        return index

    def set_text(self, item_id: str, item_type: str, title: str, embedding: np.ndarray) -> None:
        """Record an item's catalogue entry and text embedding."""
        index = self.row(item_id, item_type)
        self.types[index] = item_type
        self.titles[index] = title
        self._text[index] = embedding
        self._has_text[index] = True
        self.version += 1
        self._text_version[index] = self.version

    def set_adjacency(self, item_id: str, item_type: str, adjacency: Adjacency) -> int:
        """Replace an item's adjacency; returns its row."""
        old = self.adjacency.get(item_id, {})
        for gone in old.keys() - adjacency.keys():
            self.followers.get(gone, set()).discard(item_id)
        for new in adjacency.keys() - old.keys():
            self.followers.setdefault(new, set()).add(item_id)
        self.adjacency[item_id] = adjacency
        self.version += 1
        rows = self.rows
        for neighbour in [n for n in adjacency if n not in rows]:  # every item a model reads has a row (maybe
            self.row(neighbour, adjacency[neighbour][0])            # without text yet)
        index = self.row(item_id, item_type)
        self._adjacency_version[index] = self.version
        return index

    def same_adjacency(self, item_id: str, adjacency: Adjacency) -> bool:
        """Whether ``item_id`` is known with exactly this adjacency (an update that only moved its levels)."""
        return self.adjacency.get(item_id) == adjacency

    def set_levels(self, item_id: str, item_type: str, levels: Sequence[float]) -> bool:
        """Record an item's trend levels (one per :data:`models.trend.TAUS`); returns whether they changed. Levels
        are not an input of the HGNN: they do not bump :attr:`version`."""
        index = self.row(item_id, item_type)
        new = np.asarray(levels, dtype=np.float64)
        if np.array_equal(self._levels[index], new):
            return False
        self._levels[index] = new
        return True

    def levels(self, rows: Sequence[int] | np.ndarray, tau: float | None) -> np.ndarray:
        """The trend levels of ``rows`` for the time constant ``tau`` (epoch 0, float64)."""
        return self._levels[np.asarray(rows, dtype=np.int64), trend.TAUS.index(tau)]

    def changed_since(self, version: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows whose text, and rows whose adjacency, changed after :attr:`version` was ``version``."""
        n = len(self.ids)
        return (np.flatnonzero(self._text_version[:n] > version),
                np.flatnonzero(self._adjacency_version[:n] > version))

    def text_matrix(self) -> np.ndarray:
        """Every row's text embedding, ``(len(self), text_dim)``: a view, not a copy."""
        return self._text[: len(self.ids)]

    def affected(self, adjacency_changed: set[str], text_changed: set[str], hops: int) -> set[str]:
        """The items whose vectors a change can move, for a model that reads ``hops`` hops of neighbours.

        An item's vector reads the texts up to ``hops`` hops away and the adjacencies (edges and weights) up to
        ``hops - 1`` hops away, following each item's own adjacency. So a changed text moves its item and every
        item up to ``hops`` steps back along the reverse adjacency (:attr:`followers`); a changed adjacency moves
        its item and every item up to ``hops - 1`` steps back.
        """
        out: set[str] = set()
        for start, depth in ((adjacency_changed, hops - 1), (text_changed, hops)):
            reached = frontier = set(start)
            for _ in range(depth):
                frontier = set[str]().union(*(self.followers.get(item, ()) for item in frontier)) - reached
                reached = reached | frontier
            out |= reached
        return out

    def text(self, rows: Sequence[int] | np.ndarray) -> np.ndarray:
        """Text embeddings of ``rows``: shape ``(len(rows), text_dim)``; zeros where text is unknown."""
        return self._text[np.asarray(rows, dtype=np.int64)]

    def has_text(self, rows: Sequence[int] | np.ndarray) -> np.ndarray:
        """Whether each of ``rows`` has a text embedding."""
        return self._has_text[np.asarray(rows, dtype=np.int64)]

    def set_vectors(self, rows: Sequence[int], vectors: np.ndarray) -> None:
        """Store the latest vectors of ``rows``."""
        index = np.asarray(rows, dtype=np.int64)
        self._vectors[index] = vectors
        self._has_vector[index] = True

    def vectors(self, rows: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Latest vectors of ``rows`` and a mask of which ones exist."""
        index = np.asarray(rows, dtype=np.int64)
        return self._vectors[index], self._has_vector[index]


@dataclass(frozen=True)
class ItemInputs:
    """What user vectors read of some items: per item id, its type and one row of :attr:`matrix` (the item's
    vector, or its user-tower features; see :attr:`UserComposer.reads_features`).

    Attributes:
        rows: item id -> row of :attr:`matrix` and :attr:`types`.
        types: per row, the item's type.
        matrix: ``(len(rows), E)`` float32.
    """

    rows: Mapping[str, int]
    types: Sequence[str]
    matrix: np.ndarray

    @classmethod
    def of(cls, found: Mapping[str, tuple[str, np.ndarray]], width: int) -> ItemInputs:
        """From ``{item_id: (item_type, row)}`` (what :meth:`vectorstore.base.VectorStore.item_inputs` returns)."""
        ids = list(found)
        matrix = (np.stack([found[i][1] for i in ids]).astype(np.float32, copy=False) if ids
                  else np.zeros((0, width), dtype=np.float32))
        return cls({item_id: row for row, item_id in enumerate(ids)}, [found[i][0] for i in ids], matrix)


class UserComposer(Protocol):
    """Composes user vectors from user states and what they read of items (at query time, from the store)."""

    version: str
    dim: int
    distance: Distance
    """How the store must rank this model's vectors (the collection is created with it)."""
    reads_features: bool
    """True: it reads each item's user-tower features (:meth:`VectorModel.user_features`, stored beside the item's
    vector); False: the item's vector."""

    def history(self, state: UserState) -> list[str]:
        """The ids of the items of ``state`` that a user vector may read: what to fetch, no more."""
        ...

    def compose(self, states: Sequence[UserState], items: ItemInputs) -> np.ndarray:
        """User vectors ``(len(states), dim)`` from states and their items' inputs (items missing from ``items``
        are not read); zero rows for states with no readable item."""
        ...


class VectorModel(Protocol):
    """Computes item vectors, and what user vectors read of items, in one space from a :class:`LiveGraph`."""

    version: str
    dim: int
    """The size of the vectors, the trend coordinate included."""
    hops: int
    """How many hops of neighbours an item vector reads (see :meth:`LiveGraph.affected`)."""
    trend: ServedTrend | None
    """The trend the item vectors read (their last coordinate is the item's level), or None."""
    distance: Distance

    @property
    def composer(self) -> UserComposer:
        """The query-time user side of this model."""
        ...

    def item_vectors(self, rows: Sequence[int], graph: LiveGraph, levels: np.ndarray | None = None) -> np.ndarray:
        """Vectors of the items at ``rows``: shape ``(len(rows), dim)``; unit norm without the trend. ``levels``:
        the items' levels as :meth:`ServedTrend.levels` gives them (required when :attr:`trend` is set, ignored
        otherwise)."""
        ...

    def user_features(self, rows: Sequence[int], graph: LiveGraph) -> np.ndarray | None:
        """What a user vector reads of the items at ``rows`` besides their vectors (stored with them), or None when
        the composer reads the item vectors themselves."""
        ...

    def user_vectors(self, states: Sequence[UserState], graph: LiveGraph) -> np.ndarray:
        """Users' vectors recomputed from the live graph: :attr:`composer` over every item with a vector (what the
        store holds once the refresher is idle). For checks and benchmarks; serving composes from the store."""
        ...


def graph_inputs(model: VectorModel, graph: LiveGraph) -> ItemInputs:
    """What user vectors read of every item of ``graph`` that has a vector (as the store would hold them)."""
    present = np.flatnonzero(graph.vectors(np.arange(len(graph)))[1])
    features = model.user_features(present.tolist(), graph)
    matrix = graph.vectors(present)[0] if features is None else features
    return ItemInputs({graph.ids[r]: k for k, r in enumerate(present)}, [graph.types[r] for r in present],
                      np.asarray(matrix, dtype=np.float32))


class TextPropagationModel:
    """No training: ``v_i = norm(t_i + beta * sum_j w_ij t_j / sum_j w_ij)``; users are the mean of their
    recent items' vectors.

    One hop of weighted neighbour averaging over the co-interaction graph makes co-consumed items close even
    when their texts are unrelated; it is the stand-in that the trained HGNN + two-tower model replaces.
    """

    hops = 1
    trend: ServedTrend | None = None
    distance: Distance = "cosine"

    def __init__(self, encoder_name: str, dim: int, beta: float = 1.0, history: int = 50) -> None:
        self.dim = dim
        self.beta = beta
        self.history_size = history
        self.version = f"textprop-{encoder_name}-b{beta:g}"

    def item_vectors(self, rows: Sequence[int], graph: LiveGraph, levels: np.ndarray | None = None) -> np.ndarray:
        out = graph.text(rows).copy()  # (N, D)
        for k, row in enumerate(rows):
            adjacency = graph.adjacency.get(graph.ids[row])
            if not adjacency:
                continue
            nbr_rows = [graph.row(nbr, entry[0]) for nbr, entry in adjacency.items()]
            weights = np.array([entry[1] for entry in adjacency.values()], dtype=np.float32)
            weights *= graph.has_text(nbr_rows)
            if weights.sum() > 0:
                out[k] += self.beta * (weights @ graph.text(nbr_rows)) / weights.sum()
        return normalise(out)

    reads_features = False

    @property
    def composer(self) -> TextPropagationModel:
        return self

    def user_features(self, rows: Sequence[int], graph: LiveGraph) -> None:
        return None

    def history(self, state: UserState) -> list[str]:
        return [item_id for item_id, _, _ in recent_items(state, self.history_size)]

    def compose(self, states: Sequence[UserState], items: ItemInputs) -> np.ndarray:
        out = np.zeros((len(states), self.dim), dtype=np.float32)
        for k, state in enumerate(states):
            rows = [items.rows[i] for i in self.history(state) if i in items.rows]
            if rows:
                out[k] = items.matrix[rows].mean(0)
        return normalise(out)

    def user_vectors(self, states: Sequence[UserState], graph: LiveGraph) -> np.ndarray:
        return self.compose(states, graph_inputs(self, graph))
