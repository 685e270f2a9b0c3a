"""The evaluation protocols of ``../shared/data/README.md`` and the metrics, for any folder in that layout.

* **time split** (no ``holdout.tsv``): cut at the 90th percentile of ``ts``; train on events before it; a test
  user of type T has an event before the cut and, after it, a type-T event on an item they had not consumed
  before; the target is the first such item.
* **user holdout** (``holdout.tsv`` present): train on all of ``events.tsv``; the targets are the ``test``
  rows (``valid`` rows are for model selection).
* **validation** (``split="valid"``): the holdout's ``valid`` rows; for a time split, the same protocol applied
  to the events before the test cut (a second cut at their 90th percentile), so selection never sees the test
  period.

Every model ranks the full catalogue of the target's type, minus what the user consumed in training; ties are
broken by popularity. Metrics: HR@10, MRR (over the top 100), NDCG@10, coverage@100.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from models import trend
from models.datasets import Item, iter_events, load_items

K_HIT = 10
K_LIST = 100


@dataclass
class Split:
    """A dataset cut into training events and per-type test targets.

    Attributes:
        items: the catalogue; an item's index is its position here.
        type_names: item type names; ``item_type[i]`` indexes into it.
        train: training events as ``(user, item index, ts)`` in time order.
        histories: each user's training items in time order.
        targets: per type name, ``(user, target item index)`` pairs.
        protocol: ``time-split`` or ``user-holdout``.
        cut: the time split's cut (None for the holdout protocol).
    """

    name: str
    items: list[Item]
    index: dict[str, int]
    type_names: list[str]
    item_type: np.ndarray
    train: list[tuple[str, int, float]]
    histories: dict[str, list[int]]
    targets: dict[str, list[tuple[str, int]]]
    protocol: str
    cut: float | None = None
    popularity: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.popularity = np.bincount([i for _, i, _ in self.train], minlength=len(self.items)).astype(np.float64)

    def items_of(self, type_name: str) -> np.ndarray:
        """Indices of the items of one type."""
        return np.flatnonzero(self.item_type == self.type_names.index(type_name))

    @property
    def now(self) -> float:
        """The time the targets are predicted at: the time split's cut, else the last training event's time
        (the holdout's targets have no time)."""
        if self.cut is not None:
            return self.cut
        return max((ts for _, _, ts in self.train), default=0.0)

    def levels(self, tau: float | None) -> np.ndarray:
        """Every item's trend level at :attr:`now` from the training events (:func:`models.trend.levels`, epoch
        :attr:`now`): what a server at that time holds."""
        items = np.fromiter((i for _, i, _ in self.train), dtype=np.int64, count=len(self.train))
        ts = np.fromiter((t for _, _, t in self.train), dtype=np.float64, count=len(self.train))
        return trend.levels(items, ts, len(self.items), tau, self.now)


def load_split(folder: Path, split: str = "test", everything: bool = False) -> Split:
    """Load ``folder`` and cut it by its protocol.

    Args:
        folder: a dataset in the shared layout.
        split: ``test``, or ``valid`` for model selection: the holdout's ``valid`` rows, or for the time split
            a second cut at the 90th percentile of the events before the test cut (the test period unseen).
        everything: train on every event and hold nothing out (for a model to serve).
    """
    items = load_items(folder)
    index = {item.item_id: n for n, item in enumerate(items)}
    type_names = sorted({item.item_type for item in items})
    item_type = np.array([type_names.index(item.item_type) for item in items])
    events = [(e.user_id, index[e.item_id], e.ts) for e in iter_events(folder) if e.item_id in index]
    holdout = folder / "holdout.tsv"
    targets: dict[str, list[tuple[str, int]]] = {t: [] for t in type_names}
    if everything:
        return Split(folder.resolve().name, items, index, type_names, item_type, events, _histories(events),
                     targets, "all-events")
    if holdout.exists():
        train = events
        histories = _histories(train)
        with holdout.open(newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle, delimiter="\t"):
                if row["split"] == split and row["item_id"] in index:
                    target = index[row["item_id"]]
                    targets[type_names[item_type[target]]].append((row["user_id"], target))
        return Split(folder.resolve().name, items, index, type_names, item_type, train, histories, targets,
                     "user-holdout")
    cut = float(np.percentile([ts for _, _, ts in events], 90))
    if split == "valid":  # the same protocol inside the training period: selection never sees the test period
        events = [e for e in events if e[2] < cut]
        cut = float(np.percentile([ts for _, _, ts in events], 90))
    train = [e for e in events if e[2] < cut]
    histories = _histories(train)
    consumed = {u: set(h) for u, h in histories.items()}
    found: dict[tuple[str, str], int] = {}
    for user, item, ts in events:
        if ts < cut or user not in consumed or item in consumed[user]:
            continue
        key = (user, type_names[item_type[item]])
        found.setdefault(key, item)
    for (user, type_name), item in found.items():
        targets[type_name].append((user, item))
    return Split(folder.resolve().name, items, index, type_names, item_type, train, histories, targets,
                 "time-split", cut)


def _histories(events: list[tuple[str, int, float]]) -> dict[str, list[int]]:
    histories: dict[str, list[int]] = {}
    for user, item, _ in events:
        histories.setdefault(user, []).append(item)
    return histories


Scorer = Callable[[list[str], np.ndarray], np.ndarray]
"""``scorer(users, candidates)`` -> scores of shape ``(len(users), len(candidates))``, higher is better."""


@dataclass(frozen=True)
class Result:
    """One row of the evaluation table."""

    dataset: str
    model: str
    item_type: str
    users: int
    hr10: float
    mrr: float
    ndcg10: float
    cov100: float

    def row(self) -> dict[str, object]:
        """The JSON row."""
        return {"dataset": self.dataset, "model": self.model, "item_type": self.item_type, "users": self.users,
                "hr10": round(self.hr10, 4), "mrr": round(self.mrr, 4), "ndcg10": round(self.ndcg10, 4),
                "cov100": round(self.cov100, 4)}


def ranks_of_targets(
    scores: np.ndarray, targets: np.ndarray, exclude: list[np.ndarray], popularity: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Rank of each target among the candidates (0 = first) and each user's top 100 (padded with -1 when
    fewer candidates remain).

    Args:
        scores: ``(U, C)`` scores of the candidates.
        targets: ``(U,)`` column of each user's target.
        exclude: per user, columns to drop (consumed in training).
        popularity: ``(C,)`` training counts, the tie-breaker.
    """
    order_pop = np.argsort(np.argsort(-popularity, kind="stable"), kind="stable")  # 0 = most popular
    ranks = np.empty(len(targets), dtype=np.int64)
    tops = np.empty((len(targets), min(K_LIST, scores.shape[1])), dtype=np.int64)
    for u in range(len(targets)):
        s = scores[u].astype(np.float64).copy()
        s[exclude[u]] = -np.inf
        target_score = s[targets[u]]
        better = (s > target_score) | ((s == target_score) & (order_pop < order_pop[targets[u]]))
        ranks[u] = int(better.sum())
        k = tops.shape[1]
        candidates = np.argpartition(-s, k - 1)[:k] if k < len(s) else np.arange(len(s))
        key = np.lexsort((order_pop[candidates], -s[candidates]))
        ranked = candidates[key][:k]
        ranked = ranked[np.isfinite(s[ranked])]
        tops[u] = -1
        tops[u, : len(ranked)] = ranked
    return ranks, tops


def rank_users(split: Split, scorer: Scorer, type_name: str, pairs: list[tuple[str, int]], batch: int = 512
               ) -> tuple[np.ndarray, np.ndarray]:
    """Rank each ``(user, target item index)`` pair's target among the items of ``type_name``, what the user
    consumed in training excluded; returns the ranks (0 = first) and each user's top 100 as columns of
    ``split.items_of(type_name)`` (-1 past the candidates)."""
    candidates = split.items_of(type_name)
    column = {item: c for c, item in enumerate(candidates)}
    ranks_all, tops_all = [], []
    for start in range(0, len(pairs), batch):
        chunk = pairs[start : start + batch]
        users = [u for u, _ in chunk]
        scores = scorer(users, candidates)
        exclude = [np.array([column[i] for i in set(split.histories.get(u, ())) if i in column], dtype=np.int64)
                   for u in users]
        ranks, tops = ranks_of_targets(scores, np.array([column[t] for _, t in chunk]), exclude,
                                       split.popularity[candidates])
        ranks_all.append(ranks)
        tops_all.append(tops)
    width = min(K_LIST, len(candidates))
    return (np.concatenate(ranks_all) if ranks_all else np.zeros(0, dtype=np.int64),
            np.concatenate(tops_all) if tops_all else np.zeros((0, width), dtype=np.int64))


def rank_metrics(ranks: np.ndarray) -> dict[str, float]:
    """HR@10, MRR (over the top 100) and NDCG@10 of the targets' 0-based ranks (0 when there are none)."""
    n = max(len(ranks), 1)
    return {"hr10": float((ranks < K_HIT).sum() / n),
            "mrr": float(np.where(ranks < K_LIST, 1.0 / (ranks + 1), 0.0).sum() / n),
            "ndcg10": float(np.where(ranks < K_HIT, 1.0 / np.log2(ranks + 2), 0.0).sum() / n)}


def evaluate_scorer(split: Split, model: str, scorer: Scorer, type_name: str, batch: int = 512) -> Result:
    """Run one scorer on one item type's test users."""
    candidates = split.items_of(type_name)
    pairs = [(u, t) for u, t in split.targets[type_name] if u in split.histories]
    ranks, tops = rank_users(split, scorer, type_name, pairs, batch)
    metrics = rank_metrics(ranks)
    return Result(
        dataset=split.name, model=model, item_type=type_name, users=len(ranks),
        hr10=metrics["hr10"], mrr=metrics["mrr"], ndcg10=metrics["ndcg10"],
        cov100=len(set(tops[tops >= 0].ravel().tolist())) / max(len(candidates), 1),
    )


def popularity_scorer(split: Split) -> Scorer:
    """Everyone gets the most consumed items."""
    return lambda users, candidates: np.tile(split.popularity[candidates], (len(users), 1))


def recent_popularity_scorer(split: Split, tau: float | None) -> Scorer:
    """Everyone gets the most trending items: the decayed consumption count at :attr:`Split.now`
    (:func:`models.trend.levels`, time constant ``tau``; None: all-time popularity)."""
    levels = split.levels(tau)
    return lambda users, candidates: np.tile(levels[candidates], (len(users), 1))


def trend_tau_scores(split: Split) -> dict[float | None, float]:
    """Per time constant of :data:`models.trend.TAUS`, the decayed-popularity scorer's HR@10 on ``split``'s
    targets, averaged over the item types that have targets."""
    types = [t for t in split.type_names if split.targets[t]]
    if not types:
        raise ValueError(f"{split.name}: no targets to choose the trend's time constant on")
    return {tau: float(np.mean([evaluate_scorer(split, "popularity_recent", recent_popularity_scorer(split, tau),
                                                t).hr10 for t in types]))
            for tau in trend.TAUS}


def select_trend_tau(valid: Split) -> tuple[float | None, dict[float | None, float]]:
    """The trend's time constant, chosen on validation data (``load_split(folder, "valid")``, never the test
    targets): the one of :data:`models.trend.TAUS` whose decayed popularity has the best mean HR@10 over the item
    types; ties go to the slower decay (None, no decay, slowest of all). Returns it and every constant's score."""
    scores = trend_tau_scores(valid)
    best = max(scores, key=lambda tau: (scores[tau], np.inf if tau is None else tau))
    return best, scores


def cooc_scorer(split: Split, normalise: bool = True) -> Scorer:
    """Item co-occurrence kNN, the reference definition of ``../shared/data/README.md``:

    .. math:: s(i) = \\frac{\\sum_{j \\in H_u} c(i, j)}{\\sqrt{p(i)}}

    with :math:`c(i, j)` the number of training users who consumed both, :math:`H_u` the user's distinct
    training items and :math:`p(i)` the item's training count (popularity breaks ties, in the evaluator).
    ``normalise=False`` drops the division: the raw co-count sum (the ``cooc_knn_raw`` row).
    """
    from scipy import sparse

    users = {u: n for n, u in enumerate(split.histories)}
    rows = [users[u] for u, h in split.histories.items() for _ in set(h)]
    cols = [i for h in split.histories.values() for i in set(h)]
    ui = sparse.csr_matrix((np.ones(len(rows), dtype=np.float64), (rows, cols)),
                           shape=(len(users), len(split.items)))
    cooc = (ui.T @ ui).tocsr()
    cooc.setdiag(0)
    cooc.eliminate_zeros()
    scale = 1.0 / np.sqrt(np.maximum(split.popularity, 1.0)) if normalise else np.ones(len(split.items))

    def score(batch_users: list[str], candidates: np.ndarray) -> np.ndarray:
        history = ui[[users[u] for u in batch_users]]
        return np.asarray((history @ cooc[:, candidates]).todense()) * scale[candidates][None, :]

    return score


def embedding_scorer(split: Split, item_vectors: np.ndarray, history: int | None = None) -> Scorer:
    """A user is the mean of their (last ``history``) training items' vectors; items score by dot product."""

    def score(users: list[str], candidates: np.ndarray) -> np.ndarray:
        profile = np.stack([item_vectors[split.histories[u][-history if history else 0 :]].mean(0) for u in users])
        return profile @ item_vectors[candidates].T

    return score
