"""Training and the paper's ablation table, for any dataset folder in the shared layout.

:func:`run_evaluation` trains every row of the table on a :class:`~models.evaluate.Split` and scores it;
:func:`train_for_serving` trains the unified 2T-HGNN on all events and writes a versioned model directory
that the refresher loads (:class:`TrainedModel`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
import resource
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.evaluate import Result, Scorer, Split, cooc_scorer, embedding_scorer, evaluate_scorer, popularity_scorer
from models.graph import GraphConfig, build_graph
from models.hgnn import HGNNConfig, TypedGraph, embed, train_hgnn
from models.text import TextEncoder, item_text
from models.twotower import TwoTower, TwoTowerConfig, item_vectors, train_two_tower, user_vectors

log = logging.getLogger(__name__)

MODELS = ("popularity", "cooc_knn", "llm_knn", "hgnn", "2t_no_gnn", "2t_per_type", "2t_hgnn", "2t_hgnn_no_retrain")


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
        digest = hashlib.sha1(repr((split.name, len(events), events[:3], events[-3:], config)).encode())
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
    types = [split.type_names[t] for t in split.item_type]
    graph = build_graph(((str(n), u, str(i), types[i], ts) for n, (u, i, ts) in enumerate(events)), config)
    edges = np.array([(int(s), int(d), w) for s, d, w in graph.edges()], dtype=np.int64).reshape(-1, 3)
    return TypedGraph.build(split.item_type, split.type_names, edges[:, 0], edges[:, 1], edges[:, 2])


def histories_list(split: Split) -> list[list[int]]:
    """Training histories in a fixed order."""
    return list(split.histories.values())


def two_tower_scorer(split: Split, model: TwoTower, embedding: np.ndarray, text: np.ndarray,
                     config: TwoTowerConfig, device: torch.device) -> Scorer:
    """Score candidates with a trained two-tower model."""
    items = item_vectors(model, embedding, text, split.item_type, device)

    def score(users: list[str], candidates: np.ndarray) -> np.ndarray:
        u = user_vectors(model, [split.histories[x] for x in users], embedding, split.item_type, config.history,
                         device)
        return u @ items[candidates].T

    return score


@dataclass
class Row:
    """One model's results with its cost."""

    model: str
    results: list[Result]
    train_seconds: float
    peak_rss_mib: float
    notes: dict[str, Any] = field(default_factory=dict)


def run_evaluation(split: Split, encoder: TextEncoder, config: TrainConfig, models: tuple[str, ...] = MODELS
                   ) -> list[Row]:
    """Train and score every requested row of the ablation table on ``split``."""
    device = pick_device()
    rows: list[Row] = []

    def add(name: str, scorer_factory: Callable[[], Scorer], notes: dict[str, Any] | None = None) -> None:
        if name not in models:
            return
        started = time.perf_counter()
        scorer = scorer_factory()
        seconds = time.perf_counter() - started
        results = [evaluate_scorer(split, name, scorer, t) for t in split.type_names if split.targets[t]]
        rows.append(Row(name, results, seconds, peak_rss_mib(), notes or {}))
        log.info("%s: %s (%.1f s)", name, {r.item_type: round(r.hr10, 4) for r in results}, seconds)

    started = time.perf_counter()
    text = text_embeddings(split, encoder)
    text_seconds = time.perf_counter() - started
    add("popularity", lambda: popularity_scorer(split))
    add("cooc_knn", lambda: cooc_scorer(split))
    add("llm_knn", lambda: embedding_scorer(split, text, config.two_tower.history), {"text_seconds": text_seconds})

    cache: dict[str, Any] = {}

    def hgnn_embeddings() -> np.ndarray:
        if "hgnn" not in cache:
            graph = graph_of(split, split.train, config.graph, config.graph_cache)
            model, losses = train_hgnn(graph, text, config.hgnn, device)
            cache["hgnn"] = embed(model, graph, text, device)
            cache["hgnn_losses"] = losses
            cache["graph"] = graph
        return cache["hgnn"]

    add("hgnn", lambda: embedding_scorer(split, hgnn_embeddings(), config.two_tower.history))
    histories = histories_list(split)
    num_types = len(split.type_names)
    tt = config.two_tower

    def unified(embedding: np.ndarray) -> Scorer:
        model, losses = train_two_tower(histories, embedding, text, split.item_type, num_types, tt, device)
        cache.setdefault("tt_losses", losses)
        return two_tower_scorer(split, model, embedding, text, tt, device)

    add("2t_no_gnn", lambda: unified(text))

    def per_type() -> Scorer:
        embedding = hgnn_embeddings()
        scorers = {}
        for t in range(len(split.type_names)):
            model, _ = train_two_tower(histories, embedding, text, split.item_type, num_types, tt, device,
                                       target_types=np.array([t]))
            scorers[t] = two_tower_scorer(split, model, embedding, text, tt, device)

        def score(users: list[str], candidates: np.ndarray) -> np.ndarray:
            return scorers[int(split.item_type[candidates[0]])](users, candidates)

        return score

    add("2t_per_type", per_type)
    add("2t_hgnn", lambda: unified(hgnn_embeddings()))

    def no_retrain() -> Scorer:
        times = np.array([ts for _, _, ts in split.train])
        middle = float(np.median(times))
        early = [e for e in split.train if e[2] < middle]
        early_graph = graph_of(split, early, config.graph, config.graph_cache)
        model, _ = train_hgnn(early_graph, text, config.hgnn, device)
        full_graph = cache.get("graph") or graph_of(split, split.train, config.graph, config.graph_cache)
        embedding = embed(model, full_graph, text, device)  # frozen HGNN, later items and edges inductively
        return unified(embedding)

    add("2t_hgnn_no_retrain", no_retrain, {"hgnn_trained_before": "median training event time"})
    if "hgnn_losses" in cache:
        rows[0].notes["hgnn_losses"] = [round(x, 4) for x in cache["hgnn_losses"]]
    if "tt_losses" in cache:
        rows[0].notes["two_tower_losses"] = [round(x, 4) for x in cache["tt_losses"]]
    return rows


def write_report(split: Split, rows: list[Row], config: TrainConfig, command: str, out_dir: Path) -> Path:
    """Write ``reports/<dataset>.json`` and ``.md``; returns the JSON path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    flat = [r.row() for row in rows for r in row.results]
    costs = [{"model": row.model, "train_seconds": round(row.train_seconds, 1),
              "peak_rss_mib": round(row.peak_rss_mib)} for row in rows]
    report = {
        "dataset": split.name,
        "protocol": split.protocol,
        "cut": split.cut,
        "command": command,
        "device": str(pick_device()),
        "threads": torch.get_num_threads(),
        "config": asdict(config),
        "rows": flat,
        "costs": costs,
        "notes": {row.model: row.notes for row in rows if row.notes},
    }
    path = out_dir / f"{split.name}.json"
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    (out_dir / f"{split.name}.md").write_text(render_markdown(report))
    return path


def render_markdown(report: dict[str, Any]) -> str:
    """The markdown view of a JSON report."""
    lines = [f"# {report['dataset']} ({report['protocol']})", "", f"Command: `{report['command']}`", "",
             f"Device: {report['device']}, {report['threads']} threads.", "",
             "| model | type | users | HR@10 | MRR | NDCG@10 | cov@100 |", "|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        lines.append(f"| {r['model']} | {r['item_type']} | {r['users']} | {r['hr10']:.4f} | {r['mrr']:.4f} | "
                     f"{r['ndcg10']:.4f} | {r['cov100']:.4f} |")
    lines += ["", "Training cost (each row's own training, after the shared text embeddings; peak RSS of the "
              "whole evaluation process so far):", "", "| model | train s | peak RSS MiB |", "|---|---|---|"]
    lines += [f"| {c['model']} | {c['train_seconds']} | {c['peak_rss_mib']} |" for c in report["costs"]]
    lines += ["", "## Does the unified 2T-HGNN win?", ""] + verdict(report["rows"])
    return "\n".join(lines) + "\n"


def verdict(rows: list[dict[str, object]], product: str = "2t_hgnn") -> list[str]:
    """Per item type, plainly: does ``product`` have the best HR@10, and if not, which rows beat it."""
    lines = []
    for item_type in sorted({str(r["item_type"]) for r in rows}):
        of_type = {str(r["model"]): float(r["hr10"]) for r in rows if r["item_type"] == item_type}  # type: ignore[arg-type]
        if product not in of_type:
            continue
        better = sorted((m for m, v in of_type.items() if v > of_type[product]), key=lambda m: -of_type[m])
        if better:
            beaten_by = ", ".join(f"{m} ({of_type[m]:.4f})" for m in better)
            lines.append(f"- {item_type}: **no**: {product} has HR@10 {of_type[product]:.4f}; beaten by {beaten_by}")
        else:
            lines.append(f"- {item_type}: yes, {product} has the best HR@10 ({of_type[product]:.4f})")
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


__all__ = ["MODELS", "Row", "TrainConfig", "fingerprint", "render_markdown", "run_evaluation", "write_report"]
