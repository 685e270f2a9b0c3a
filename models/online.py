"""The pure parts of the online evaluation (``gfm online-eval``): which test events are targets, when each mode
asks for them, and the metrics of the answers, through the project's evaluator.

The protocol is the global time split of ``../shared/data/README.md`` as :func:`~models.evaluate.load_split`
implements it: a test user of type T has an event before the cut and, after it, a type-T event on an item they
had not consumed before; the target is the first such item. Online, the *target event* is the first event after
the cut of that user on that item (the event that reveals it); the question is asked right before it is produced.

Three modes answer the same questions:

* ``live``: the stack refreshes vectors as events arrive; the question is asked, over HTTP, right before the
  target event is produced, every earlier event having been produced.
* ``frozen``: the vectors as they were at the cut (the model never refreshed after it).
* ``periodic``: the vectors of a full recompute at the last checkpoint (every ``N`` test events): a target at
  test position ``p`` is answered by the checkpoint ``N * floor(p / N)``.

Nothing here does I/O; ``workers/online.py`` drives the live stack.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.evaluate import K_HIT, Scorer, Split, rank_metrics, rank_users
from models.graph import GraphConfig
from models.text import TextEncoder

MODES = ("live", "frozen", "periodic")
Answers = dict[tuple[str, str], list[str]]
"""Per ``(user_id, item_type)``, the answered item ids, best first."""


@dataclass(frozen=True)
class Target:
    """One question of the online evaluation.

    Attributes:
        user_id: the test user.
        item_type: the type asked for (the target's type).
        item_id: the target item.
        position: index of the target event among the test period's events (0 = the first event at or after the
            cut, in the dataset's time order).
    """

    user_id: str
    item_type: str
    item_id: str
    position: int


def target_events(split: Split, test_events: Iterable[tuple[str, str]]) -> list[Target]:
    """The targets of ``split`` (its next-item targets) placed on the test period's events.

    Args:
        split: a time split (:func:`~models.evaluate.load_split`); its ``targets`` define who is asked what.
        test_events: ``(user_id, item_id)`` of every event at or after the cut, in time order.

    Returns:
        One :class:`Target` per ``(user, type)`` target, at the first test event of that user on that item, in
        order of position.

    Raises:
        ValueError: a target never occurs in ``test_events`` (they are not the split's test period).
    """
    if split.protocol != "time-split":
        raise ValueError(f"the online evaluation needs a time split; {split.name} uses the {split.protocol} protocol")
    wanted: dict[tuple[str, str], str] = {}
    for type_name, pairs in split.targets.items():
        for user, item in pairs:
            wanted[(user, split.items[item].item_id)] = type_name
    found: list[Target] = []
    for position, (user, item_id) in enumerate(test_events):
        type_name = wanted.pop((user, item_id), "")
        if type_name:
            found.append(Target(user, type_name, item_id, position))
    if wanted:
        missing = ", ".join(f"{u}/{i}" for u, i in list(wanted)[:5])
        raise ValueError(f"{len(wanted)} target(s) of {split.name} never occur in the test events given "
                         f"(first: {missing}); pass every event at or after the cut, in time order")
    return found


def checkpoint_of(position: int, every: int) -> int:
    """The last full recompute before test position ``position`` with a recompute every ``every`` events
    (checkpoint 0 is the cut itself)."""
    if every < 1:
        raise ValueError(f"every={every}: a recompute period must be at least one event")
    return (position // every) * every


def rank_in_list(answer: Sequence[str], target: str) -> int:
    """The target's 0-based rank in a returned top list, or ``len(answer)`` past its end when absent (a miss at
    any cutoff up to the list's length)."""
    try:
        return list(answer).index(target)
    except ValueError:
        return max(len(answer), K_HIT)


@dataclass(frozen=True)
class Score:
    """HR@10 and NDCG@10 of one mode on one item type."""

    item_type: str
    users: int
    hr10: float
    ndcg10: float

    def row(self) -> dict[str, object]:
        """The JSON row."""
        return {"item_type": self.item_type, "users": self.users, "hr10": round(self.hr10, 4),
                "ndcg10": round(self.ndcg10, 4)}


def score_answers(targets: Sequence[Target], answers: Answers) -> list[Score]:
    """Per item type, HR@10 and NDCG@10 of the answered targets (the evaluator's metrics on their ranks).

    Args:
        targets: the questions.
        answers: per ``(user_id, item_type)``, the returned item ids, best first; a target without an answer is
            left out (the report counts the users).
    """
    out = []
    for type_name in sorted({t.item_type for t in targets}):
        ranks = np.array([rank_in_list(answers[(t.user_id, t.item_type)][:K_HIT], t.item_id)
                          for t in targets if t.item_type == type_name and (t.user_id, t.item_type) in answers],
                         dtype=np.int64)
        metrics = rank_metrics(ranks)
        out.append(Score(type_name, len(ranks), metrics["hr10"], metrics["ndcg10"]))
    return out


def offline_answers(split: Split, scorer: Scorer, targets: Sequence[Target]) -> Answers:
    """What the offline evaluator ranks first for each target's user (top 10 of the target's type, what the user
    consumed before the cut excluded, ties broken by popularity): the answers of the model at the cut."""
    answers: Answers = {}
    for type_name in sorted({t.item_type for t in targets}):
        of_type = [t for t in targets if t.item_type == type_name]
        candidates = split.items_of(type_name)
        pairs = [(t.user_id, split.index[t.item_id]) for t in of_type]
        _, tops = rank_users(split, scorer, type_name, pairs)
        for target, top in zip(of_type, tops, strict=True):
            answers[(target.user_id, type_name)] = [split.items[candidates[c]].item_id for c in top[:K_HIT] if c >= 0]
    return answers


def agreement(a: Answers, b: Answers) -> dict[str, float]:
    """How alike two sets of answers are on the questions both answered: the share of identical top-10 lists
    (same items, same order) and the mean share of common items."""
    keys = sorted(set(a) & set(b))
    if not keys:
        return {"questions": 0, "identical": 0.0, "overlap": 0.0}
    same = sum(a[k][:K_HIT] == b[k][:K_HIT] for k in keys)
    overlap = [len(set(a[k][:K_HIT]) & set(b[k][:K_HIT])) / max(len(b[k][:K_HIT]), 1) for k in keys]
    return {"questions": len(keys), "identical": same / len(keys), "overlap": float(np.mean(overlap))}


def served_scorer(split: Split, directory: Path, encoder: TextEncoder) -> Scorer:
    """The offline evaluator's scorer for a served model directory: its HGNN over the graph of ``split.train``
    and its towers over the users' states at the cut, with the items' trend levels at the cut for the time
    constant the model was saved with, built by the functions training and serving share
    (:func:`~models.train.two_tower_scorer`). The model must have been trained on ``split.train``."""
    from models.hgnn import embed
    from models.serving import TrainedModel
    from models.train import graph_of, histories_list, text_embeddings, two_tower_scorer

    model = TrainedModel(directory, encoder.name)
    meta = json.loads((directory / "config.json").read_text())
    if meta["metrics"].get("events") != len(split.train):
        raise ValueError(f"{directory} was trained on {meta['metrics'].get('events')} events, but the split's "
                         f"training period has {len(split.train)}")
    graph_config = GraphConfig(**meta["config"]["graph"])
    cache = meta["config"].get("graph_cache")
    text = text_embeddings(split, encoder)
    graph = graph_of(split, split.train, graph_config, Path(cache) if cache else None)
    embedding = embed(model.hgnn, graph, text, model.device)
    degree = graph.weighted_degree(len(split.items)) if model.tt_config.item_degree else None
    return two_tower_scorer(split, histories_list(split, graph_config), model.towers, embedding, text,
                            model.tt_config, model.device, degree, trend_tau=meta.get("trend_tau"))
