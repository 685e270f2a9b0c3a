"""Training and the paper's ablation table, for any dataset folder in the shared layout.

:func:`run_evaluation` trains every row of the table on a :class:`~models.evaluate.Split` and scores it;
:func:`train_for_serving` trains the unified 2T-HGNN on all events and writes a versioned model directory
that the refresher loads (:class:`TrainedModel`).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import pickle
import resource
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.evaluate import (
    Result,
    Scorer,
    Split,
    cooc_scorer,
    embedding_scorer,
    evaluate_scorer,
    load_split,
    popularity_scorer,
    recent_popularity_scorer,
    select_trend_tau,
)
from models.features import Histories, graph_tensors
from models.graph import GraphConfig, build_graph
from models.hgnn import HGNNConfig, TypedGraph, embed, train_hgnn
from models.text import TextEncoder, item_text
from models.twotower import (
    TwoTower,
    TwoTowerConfig,
    item_vectors,
    train_two_tower,
    user_item_features,
    user_vectors,
)

log = logging.getLogger(__name__)

MODELS = ("popularity", "popularity_recent", "cooc_knn", "cooc_knn_raw", "llm_knn", "hgnn", "2t_no_gnn",
          "2t_per_type", "2t_hgnn", "2t_hgnn_no_retrain")

PREVIOUS_HGNN: dict[str, Any] = {"edges_per_relation": 20_000, "negatives": 4, "shared_negatives": 0, "in_batch": True,
                                 "edge_power": 0.0, "direction": "owner", "whiten": False, "temperature": 0.1}
"""The HGNN training of the reports before the HGNN levers (issue 7): uniform edges of the pruned adjacency, owner
side only, 4 uniform and in-batch negatives, raw text, at most 20k edges per relation and epoch, temperature 0.1."""

ABLATIONS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "2t_hgnn+user_text": ({}, {"user_text": True}),
    "2t_hgnn-no_last_item": ({}, {"last_item": False}),
    "2t_hgnn-no_item_degree": ({}, {"item_degree": False}),
    "2t_hgnn-no_type_softmax": ({}, {"type_softmax": False}),
    "2t_hgnn-no_uniform_negatives": ({}, {"uniform_negatives": 0}),
    "2t_hgnn-no_item_bias": ({}, {"item_bias": False}),
    "2t_hgnn-no_exclude_consumed": ({}, {"exclude_consumed": False}),
    "2t_hgnn-no_time_weighted": ({}, {"time_weighted": False}),
    "2t_hgnn-no_trend": ({}, {"trend": False}),
    "2t_hgnn-30_examples": ({}, {"examples_per_user": 30}),
    "2t_hgnn+in_batch": ({"in_batch": True}, {}),
    "2t_hgnn-no_text_skip": ({"text_skip": False}, {}),
    "2t_hgnn-no_whiten": ({"whiten": False}, {}),
    "2t_hgnn+edge_weights": ({"edge_power": 1.0}, {}),
    "2t_hgnn-owner_only": ({"direction": "owner"}, {}),
    "2t_hgnn-temperature_0.1": ({"temperature": 0.1}, {}),
    "2t_hgnn-previous_hgnn": (PREVIOUS_HGNN, {}),
    "2t_hgnn-all_off": ({**PREVIOUS_HGNN, "in_batch": False, "text_skip": False},
                        {"user_text": False, "last_item": False, "item_degree": False, "type_softmax": False,
                         "uniform_negatives": 0, "item_bias": False, "exclude_consumed": False,
                         "time_weighted": False, "trend": False}),
}
"""Ablation rows: the unified 2T-HGNN with one lever off (``-no_``), one more on (``+``), or one value changed
back to its previous default (``-30_examples``): HGNN config changes, two-tower config changes."""
TREND_WEIGHTS: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)
"""The multipliers :math:`w` of the user's learned trend weight :math:`\\lambda_u` that
:func:`choose_trend_weight` chooses from, doubling from 1 (the learned weight as trained): at 64 the trend
outweighs the towers' scores for nearly every user ("decayed popularity, the towers breaking ties"), so the grid
spans both ends. reports/validation.md (*the trend weight multiplier*): on movielens validation the 2T-HGNN's mean
HR@10 over types rose from 0.249 (x1) to 0.320 (x16 to x64, a plateau)."""


def weight_row(weight: float) -> str:
    """The ablation row of the unified 2T-HGNN (seed 0) with the trend weight multiplied by ``weight``."""
    return f"2t_hgnn-trend_weight_{weight:g}"


WEIGHT_ROWS = tuple(weight_row(w) for w in TREND_WEIGHTS)
"""Rows :func:`run_evaluation` knows beside :data:`MODELS` and :data:`ABLATIONS`: the 2T-HGNN of seed 0 with the
trend weight multiplied by each :data:`TREND_WEIGHTS` (one trained model, rescaled at evaluation)."""
ABLATION_ROWS = (*ABLATIONS, weight_row(1.0))
"""What ``gfm evaluate --ablation`` adds: every lever off or on, and the learned trend weight alone (w = 1)."""
GRAPH_FORMAT = "graph-tensors-v2"
"""Part of the cache keys of graphs and HGNN embeddings: bumped when :func:`~models.features.graph_tensors`
changes what it builds (v2: messages neighbour -> owner, real item ids in the fold)."""
SEEDED = ("2t_hgnn", "2t_no_gnn")
"""Rows trained once per seed when ``seeds > 1``."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything that shapes training."""

    graph: GraphConfig = field(default_factory=GraphConfig)
    graph_cache: Path | None = None
    hgnn: HGNNConfig = field(default_factory=HGNNConfig)
    two_tower: TwoTowerConfig = field(default_factory=TwoTowerConfig)


def pick_device() -> torch.device:
    """CUDA when present, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def peak_rss_mib() -> float:
    """This process's peak resident memory so far."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def text_embeddings(split: Split, encoder: TextEncoder) -> np.ndarray:
    """Text embedding of every item (title, description and type)."""
    return encoder.encode([item_text(i.item_type, i.title, i.text) for i in split.items])


def graph_of(split: Split, events: list[tuple[str, int, float]], config: GraphConfig,
             cache: Path | None = None) -> TypedGraph:
    """The co-interaction graph of ``events``, built by the stream's own update functions (about 10k events/s
    in pure Python, so it is cached under ``cache`` when given, keyed by the events and the config)."""
    path = None
    if cache is not None:
        digest = hashlib.sha1(repr((GRAPH_FORMAT, split.name, len(events), events[:3], events[-3:], config)).encode())
        path = cache / f"graph-{split.name}-{digest.hexdigest()[:16]}.pkl"
        if path.exists():
            with path.open("rb") as handle:
                cached: TypedGraph = pickle.load(handle)
            return cached
    graph = _build_typed_graph(split, events, config)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as handle:
            pickle.dump(graph, handle)
    return graph


def _build_typed_graph(split: Split, events: list[tuple[str, int, float]], config: GraphConfig) -> TypedGraph:
    graph = build_graph(((str(n), u, split.items[i].item_id, split.items[i].item_type, ts)
                         for n, (u, i, ts) in enumerate(events)), config)
    return graph_tensors(graph.adjacency, split.index, split.item_type, split.type_names)


def histories_list(split: Split, config: GraphConfig) -> Histories:
    """Training histories (every user's training events, in order of first event), read by the user tower as the
    stream's states under ``config``."""
    return Histories.of_events(split.train, [i.item_id for i in split.items], split.item_type, split.type_names,
                               config)


def two_tower_scorer(split: Split, histories: Histories, model: TwoTower, embedding: np.ndarray, text: np.ndarray,
                     config: TwoTowerConfig, device: torch.device, degree: np.ndarray | None = None,
                     trend_tau: float | None = None) -> Scorer:
    """Score candidates with a trained two-tower model (the computation :class:`TrainedModel` serves): users are
    read as their stream state at the end of ``histories``; with the trend, items carry their level at
    :attr:`Split.now` from the training events (time constant ``trend_tau``), and the score is the dot product."""
    levels = split.levels(trend_tau) if model.trend else None
    items = item_vectors(model, embedding, text, split.item_type, device, degree, levels)
    states = dict(zip(histories.users, histories.final_states, strict=True))
    rows = histories.rows
    per_item = user_item_features(embedding, text, config)

    def score(users: list[str], candidates: np.ndarray) -> np.ndarray:
        u = user_vectors(model, [states[x] for x in users], rows, split.item_type, split.type_names, per_item,
                         config, device)
        return u @ items[candidates].T

    return score


def choose_trend_tau(valid: Split) -> tuple[float | None, dict[str, Any]]:
    """The trend's time constant chosen on validation data (``valid = load_split(folder, "valid")``, never the
    test targets; :func:`~models.evaluate.select_trend_tau`), logged; returns it and the record for the report
    (``tau``, ``valid_hr10``: each constant's decayed-popularity HR@10, mean over types)."""
    tau, scores = select_trend_tau(valid)
    log.info("trend time constant %s chosen on %s validation targets (decayed popularity HR@10 per tau: %s)",
             _tau_label(tau), valid.name, {_tau_label(k): round(v, 4) for k, v in scores.items()})
    return tau, {"tau": tau, "valid_hr10": [[k, round(v, 4)] for k, v in scores.items()]}


def serving_trend_tau(folder: Path, config: TwoTowerConfig) -> float | None:
    """The time constant a model trained with ``config`` on ``folder`` reads: chosen on the folder's validation
    data (:func:`choose_trend_tau`), None when its towers do not read the trend."""
    return choose_trend_tau(load_split(folder, "valid"))[0] if config.trend else None


def select_trend_weight(scores: Mapping[float, float]) -> float:
    """The multiplier with the best score (mean HR@10 over types on validation); ties go to the smaller one."""
    if not scores:
        raise ValueError("no trend weights to choose from")
    return max(scores, key=lambda w: (scores[w], -w))


def choose_trend_weight(valid: Split, encoder: TextEncoder, config: TrainConfig, trend_tau: float | None,
                        weights: tuple[float, ...] = TREND_WEIGHTS) -> tuple[float, dict[str, Any]]:
    """The multiplier :math:`w` of the users' trend weight, chosen on validation data (``valid =
    load_split(folder, "valid")``, never the test targets): the unified 2T-HGNN of seed 0 is trained on ``valid``
    once, by :func:`run_evaluation` (the rows :func:`weight_row`), and scored with its trend weight multiplied by
    each of ``weights``; the best mean HR@10 over types wins (:func:`select_trend_weight`). Without the trend: 1.

    Returns:
        ``w`` and the record for the report (``weight``, ``weight_valid_hr10``: each multiplier's mean HR@10 over
        types, ``weight_seconds``: the time the choice took).
    """
    if not config.two_tower.trend:
        return 1.0, {}
    started = time.perf_counter()
    rows = run_evaluation(valid, encoder, config, tuple(weight_row(w) for w in weights), trend_tau=trend_tau)
    scores = {w: float(np.mean([r.hr10 for r in row.results])) for w, row in zip(weights, rows, strict=True)}
    weight = select_trend_weight(scores)
    seconds = time.perf_counter() - started
    log.info("trend weight x%g chosen on %s validation targets in %.0f s (2T-HGNN mean HR@10 per multiplier: %s)",
             weight, valid.name, seconds, {f"x{w:g}": round(v, 4) for w, v in scores.items()})
    return weight, {"weight": weight, "weight_valid_hr10": [[w, round(v, 4)] for w, v in scores.items()],
                    "weight_seconds": round(seconds, 1)}


def serving_trend_weight(folder: Path, encoder: TextEncoder, config: TrainConfig, trend_tau: float | None) -> float:
    """The trend weight multiplier a model trained with ``config`` on ``folder`` serves with: chosen on the folder's
    validation data (:func:`choose_trend_weight`); 1 when its towers do not read the trend."""
    if not config.two_tower.trend:
        return 1.0
    return choose_trend_weight(load_split(folder, "valid"), encoder, config, trend_tau)[0]


@dataclass
class Row:
    """One model's results with its cost; with several seeds, ``results`` are the means and ``per_seed`` the
    runs."""

    model: str
    results: list[Result]
    train_seconds: float
    peak_rss_mib: float
    notes: dict[str, Any] = field(default_factory=dict)
    per_seed: list[list[Result]] = field(default_factory=list)


def mean_results(runs: list[list[Result]]) -> list[Result]:
    """Per item type, the mean of each metric over runs (seeds)."""
    out = []
    for k, first in enumerate(runs[0]):
        of = [run[k] for run in runs]
        out.append(Result(first.dataset, first.model, first.item_type, first.users,
                          float(np.mean([r.hr10 for r in of])), float(np.mean([r.mrr for r in of])),
                          float(np.mean([r.ndcg10 for r in of])), float(np.mean([r.cov100 for r in of]))))
    return out


def run_evaluation(split: Split, encoder: TextEncoder, config: TrainConfig, models: tuple[str, ...] = MODELS,
                   seeds: int = 1, seed_hgnn: bool = True, on_row: Callable[[list[Row]], object] | None = None,
                   trend_tau: float | None = None, trend_weight: float = 1.0) -> list[Row]:
    """Train and score every requested row of the ablation table on ``split``, in the order of ``models``;
    the rows of :data:`SEEDED` are trained with seeds ``0..seeds-1`` (their results are the means), the HGNN
    too unless ``seed_hgnn`` is false (then it is trained once, with the configured seed). ``on_row`` is
    called with the rows so far after each row and seed (to write a partial report). ``trend_tau`` is the
    trend's time constant (None: no decay), chosen on validation data by the caller
    (:func:`~models.evaluate.select_trend_tau`): the ``popularity_recent`` row and the towers' trend use it.
    ``trend_weight`` multiplies every trend row's learned trend weight (:attr:`TwoTower.trend_weight`, chosen on
    validation by :func:`choose_trend_weight`), but for the rows of :data:`WEIGHT_ROWS`, which set their own.
    A two-tower model is trained once per embedding and configuration within a call: the 2T-HGNN of seed 0 and
    the rows of :data:`WEIGHT_ROWS` share one (their training cost is that of the first that ran)."""
    device = pick_device()
    rows: list[Row] = []
    factories: dict[str, tuple[Callable[[int], Scorer], dict[str, Any] | None]] = {}

    def add(name: str, scorer_factory: Callable[[int], Scorer], notes: dict[str, Any] | None = None) -> None:
        factories[name] = (scorer_factory, notes)

    def run(name: str) -> None:
        scorer_factory, notes = factories[name]
        runs, seconds = [], 0.0
        for seed in range(seeds if name in SEEDED else 1):
            started = time.perf_counter()
            scorer = scorer_factory(seed)
            seconds += time.perf_counter() - started
            runs.append([evaluate_scorer(split, name, scorer, t) for t in split.type_names if split.targets[t]])
            log.info("%s seed %d: %s", name, seed, {r.item_type: round(r.hr10, 4) for r in runs[-1]})
            row = Row(name, mean_results(runs), seconds / len(runs), peak_rss_mib(), notes or {},
                      runs if len(runs) > 1 else [])
            rows[len(rows) - (seed > 0):] = [row]  # the row so far replaces itself after each seed
            if on_row is not None:
                on_row(rows)

    started = time.perf_counter()
    text = text_embeddings(split, encoder)
    text_seconds = time.perf_counter() - started
    add("popularity", lambda _: popularity_scorer(split))
    add("popularity_recent", lambda _: recent_popularity_scorer(split, trend_tau), {"trend_tau": trend_tau})
    add("cooc_knn", lambda _: cooc_scorer(split))
    add("cooc_knn_raw", lambda _: cooc_scorer(split, normalise=False))
    add("llm_knn", lambda _: embedding_scorer(split, text, config.two_tower.history), {"text_seconds": text_seconds})

    cache: dict[Any, Any] = {}

    def graph() -> TypedGraph:
        if "graph" not in cache:
            cache["graph"] = graph_of(split, split.train, config.graph, config.graph_cache)
        return cache["graph"]

    def hgnn_embeddings(hgnn: HGNNConfig) -> np.ndarray:
        if hgnn not in cache:
            path = None
            if config.graph_cache is not None:  # the same training events, text and config give the same model
                digest = hashlib.sha1(repr((GRAPH_FORMAT, split.name, len(split.train), split.train[:3],
                                            split.train[-3:], config.graph, hgnn)).encode() + text.tobytes())
                path = config.graph_cache / f"hgnn-{split.name}-{digest.hexdigest()[:16]}.npy"
            if path is not None and path.exists():
                cache[hgnn] = np.load(path)
            else:
                model, losses = train_hgnn(graph(), text, hgnn, device)
                cache[hgnn] = embed(model, graph(), text, device)
                cache.setdefault("hgnn_losses", losses)
                if path is not None:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    np.save(path, cache[hgnn])
        return cache[hgnn]  # type: ignore[no-any-return]

    def seeded(seed: int) -> tuple[HGNNConfig, TwoTowerConfig]:
        return (replace(config.hgnn, seed=seed) if seed_hgnn else config.hgnn), replace(config.two_tower, seed=seed)

    add("hgnn", lambda seed: embedding_scorer(split, hgnn_embeddings(seeded(seed)[0]), config.two_tower.history))
    add("hgnn_previous", lambda seed: embedding_scorer(  # the HGNN alone as trained before its levers
        split, hgnn_embeddings(replace(seeded(seed)[0], **PREVIOUS_HGNN)), config.two_tower.history),
        {"hgnn": PREVIOUS_HGNN})
    histories = histories_list(split, config.graph)
    num_types = len(split.type_names)

    def weighted(model: TwoTower, weight: float) -> TwoTower:
        out = copy.deepcopy(model)  # the trained model stays as trained, for the rows that share it
        out.trend_weight = weight
        return out

    def unified(embedding: np.ndarray, tt: TwoTowerConfig, key: object = None, weight: float = trend_weight
                ) -> Scorer:
        """The two-tower on ``embedding``, trained once per ``key`` (the embedding's) and ``tt`` when given."""
        degree = graph().weighted_degree(len(split.items)) if tt.item_degree else None
        if key is None or ("towers", key, tt) not in cache:
            model, losses = train_two_tower(histories, embedding, text, split.item_type, num_types, tt, device,
                                            degree=degree, trend_tau=trend_tau)
            cache.setdefault("tt_losses", losses)
            if key is not None:
                cache["towers", key, tt] = model
        else:
            model = cache["towers", key, tt]
        return two_tower_scorer(split, histories, weighted(model, weight), embedding, text, tt, device, degree,
                                trend_tau)

    # the text two-tower's embedding is the text: reading it twice in the user tower would add nothing
    add("2t_no_gnn", lambda seed: unified(text, replace(seeded(seed)[1], user_text=False)))

    def per_type(seed: int) -> Scorer:
        hgnn, tt = seeded(seed)
        embedding = hgnn_embeddings(hgnn)
        degree = graph().weighted_degree(len(split.items)) if tt.item_degree else None
        scorers = {}
        for t in range(len(split.type_names)):
            model, _ = train_two_tower(histories, embedding, text, split.item_type, num_types, tt, device,
                                       target_types=np.array([t]), degree=degree, trend_tau=trend_tau)
            scorers[t] = two_tower_scorer(split, histories, weighted(model, trend_weight), embedding, text, tt,
                                          device, degree, trend_tau)

        def score(users: list[str], candidates: np.ndarray) -> np.ndarray:
            return scorers[int(split.item_type[candidates[0]])](users, candidates)

        return score

    add("2t_per_type", per_type)
    add("2t_hgnn", lambda seed: unified(hgnn_embeddings(seeded(seed)[0]), seeded(seed)[1], seeded(seed)[0]))
    for w in TREND_WEIGHTS:  # the 2T-HGNN of seed 0, its trend weight multiplied by w
        add(weight_row(w), lambda _, w=w: unified(hgnn_embeddings(seeded(0)[0]), seeded(0)[1],  # type: ignore[misc]
                                                  seeded(0)[0], weight=w), {"trend_weight": w})

    def no_retrain(seed: int) -> Scorer:
        hgnn, tt = seeded(seed)
        times = np.array([ts for _, _, ts in split.train])
        middle = float(np.median(times))
        early = [e for e in split.train if e[2] < middle]
        early_graph = graph_of(split, early, config.graph, config.graph_cache)
        model, _ = train_hgnn(early_graph, text, hgnn, device)
        embedding = embed(model, graph(), text, device)  # frozen HGNN, later items and edges inductively
        return unified(embedding, tt)

    add("2t_hgnn_no_retrain", no_retrain, {"hgnn_trained_before": "median training event time"})
    for name, (hgnn_change, tt_change) in ABLATIONS.items():
        hgnn_off, tt_off = replace(config.hgnn, **hgnn_change), replace(config.two_tower, **tt_change)
        add(name, lambda _, h=hgnn_off, t=tt_off: unified(hgnn_embeddings(h), t),  # type: ignore[misc]
            {"hgnn": hgnn_change, "two_tower": tt_change})
    unknown = [m for m in models if m not in factories]
    if unknown:
        raise ValueError(f"unknown rows {unknown}; choose from {list(factories)}")
    for name in models:
        run(name)
    if rows and "hgnn_losses" in cache:
        rows[0].notes["hgnn_losses"] = [round(x, 4) for x in cache["hgnn_losses"]]
    if rows and "tt_losses" in cache:
        rows[0].notes["two_tower_losses"] = [round(x, 4) for x in cache["tt_losses"]]
    return rows


def write_report(split: Split, rows: list[Row], config: TrainConfig, command: str, out_dir: Path,
                 name: str | None = None, trend: dict[str, Any] | None = None) -> Path:
    """Write ``<out_dir>/<name or dataset>.json`` and ``.md``; returns the JSON path. ``trend``: how the trend's
    time constant was chosen (``tau``, and ``valid_hr10``: each constant's decayed-popularity HR@10 on
    validation) and the trend weight multiplier (``weight``, ``weight_valid_hr10``, ``weight_seconds``:
    :func:`choose_trend_weight`'s record)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    flat = [r.row() for row in rows for r in row.results]
    costs = [{"model": row.model, "train_seconds": round(row.train_seconds, 1),
              "peak_rss_mib": round(row.peak_rss_mib)} for row in rows]
    seeds = {row.model: [[r.row() for r in run] for run in row.per_seed] for row in rows if row.per_seed}
    report = {
        "dataset": split.name,
        "protocol": split.protocol,
        "targets": "valid" if name and name.endswith("valid") else "test",
        "cut": split.cut,
        "command": command,
        "device": str(pick_device()),
        "threads": torch.get_num_threads(),
        "config": asdict(config),
        "trend": trend,
        "rows": flat,
        "seeds": seeds,
        "costs": costs,
        "notes": {row.model: row.notes for row in rows if row.notes},
    }
    path = out_dir / f"{name or split.name}.json"
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    path.with_suffix(".md").write_text(render_markdown(report))
    return path


def render_markdown(report: dict[str, Any]) -> str:
    """The markdown view of a JSON report."""
    lines = [f"# {report['dataset']} ({report['protocol']}, {report.get('targets', 'test')} targets)", "",
             f"Command: `{report['command']}`", "",
             f"Device: {report['device']}, {report['threads']} threads.", ""]
    if report.get("trend"):
        chosen = report["trend"]
        grid = ", ".join(f"{_tau_label(tau)} {hr:.4f}" for tau, hr in chosen["valid_hr10"])
        lines += [f"Trend time constant (chosen on the validation targets, `load_split(folder, \"valid\")`, "
                  f"by the decayed popularity's mean HR@10 over types): **{_tau_label(chosen['tau'])}** "
                  f"({grid}).", ""]
        if chosen.get("weight") is not None:
            if chosen.get("weight_valid_hr10"):
                grid = ", ".join(f"x{w:g} {hr:.4f}" for w, hr in chosen["weight_valid_hr10"])
                how = (f"chosen on the validation targets by the 2T-HGNN's (seed 0, trained on the validation split) "
                       f"mean HR@10 over types, in {chosen.get('weight_seconds', '?')} s: ({grid})")
            else:
                how = "fixed by `--trend-weight`, not chosen"
            lines += [f"Trend weight multiplier w (every trend row's learned weight of the trend times w; "
                      f"{how}): **x{chosen['weight']:g}**.", ""]
    lines += ["| model | type | users | HR@10 | MRR | NDCG@10 | cov@100 |", "|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        lines.append(f"| {r['model']} | {r['item_type']} | {r['users']} | {r['hr10']:.4f} | {r['mrr']:.4f} | "
                     f"{r['ndcg10']:.4f} | {r['cov100']:.4f} |")
    if report.get("seeds"):
        lines += ["", "Rows trained with several seeds (the table above shows their means): mean ± standard "
                  "deviation over the seeds.", "", "| model | type | seeds | HR@10 | NDCG@10 |",
                  "|---|---|---|---|---|"]
        for model, runs in report["seeds"].items():
            for k, first in enumerate(runs[0]):
                hr = np.array([run[k]["hr10"] for run in runs])
                nd = np.array([run[k]["ndcg10"] for run in runs])
                lines.append(f"| {model} | {first['item_type']} | {len(runs)} | {hr.mean():.4f} ± {hr.std():.4f} | "
                             f"{nd.mean():.4f} ± {nd.std():.4f} |")
    lines += ["", "Training cost (each row's own training per seed, after the shared text embeddings; peak RSS of "
              "the whole evaluation process so far):", "", "| model | train s | peak RSS MiB |", "|---|---|---|"]
    lines += [f"| {c['model']} | {c['train_seconds']} | {c['peak_rss_mib']} |" for c in report["costs"]]
    rows = [r for r in report["rows"] if not str(r["model"]).startswith("2t_hgnn-")]
    lines += ["", "## Does the unified 2T-HGNN win?", "", "HR@10:", ""] + verdict(rows)
    lines += ["", "NDCG@10:", ""] + verdict(rows, metric="ndcg10")
    return "\n".join(lines) + "\n"


def _tau_label(tau: float | None) -> str:
    return "no decay" if tau is None else f"{tau / 86400:g} d"


def verdict(rows: list[dict[str, object]], product: str = "2t_hgnn", metric: str = "hr10") -> list[str]:
    """Per item type, plainly: does ``product`` have the best ``metric``, and if not, which rows beat it (and by
    how much)."""
    label = {"hr10": "HR@10", "ndcg10": "NDCG@10"}.get(metric, metric)
    lines = []
    for item_type in sorted({str(r["item_type"]) for r in rows}):
        of_type = {str(r["model"]): float(r[metric]) for r in rows if r["item_type"] == item_type}  # type: ignore[arg-type]
        if product not in of_type:
            continue
        ours = of_type[product]
        better = sorted((m for m, v in of_type.items() if v > ours), key=lambda m: -of_type[m])
        if better:
            beaten_by = ", ".join(f"{m} ({of_type[m]:.4f}, +{of_type[m] - ours:.4f})" for m in better)
            lines.append(f"- {item_type}: **no**: {product} has {label} {ours:.4f}; beaten by {beaten_by}")
        else:
            runner_up = max((v for m, v in of_type.items() if m != product), default=0.0)
            lines.append(f"- {item_type}: yes, {product} has the best {label} ({ours:.4f}; next best "
                         f"{runner_up:.4f})")
    return lines


def fingerprint(folder: Path) -> str:
    """A short hash of a dataset folder's files (size and first/last MiB), identifying the training data."""
    digest = hashlib.sha1()
    for path in sorted(folder.glob("*.tsv")):
        digest.update(path.name.encode())
        digest.update(str(path.stat().st_size).encode())
        with path.open("rb") as handle:
            digest.update(handle.read(1 << 20))
            handle.seek(max(0, path.stat().st_size - (1 << 20)))
            digest.update(handle.read())
    return digest.hexdigest()[:12]


__all__ = ["ABLATIONS", "ABLATION_ROWS", "MODELS", "TREND_WEIGHTS", "WEIGHT_ROWS", "Row", "TrainConfig",
           "choose_trend_tau", "choose_trend_weight", "fingerprint", "render_markdown", "run_evaluation",
           "select_trend_weight", "serving_trend_tau", "serving_trend_weight", "weight_row", "write_report"]
