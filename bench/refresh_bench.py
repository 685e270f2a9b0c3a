"""Refresh cost per micro-batch with the trained 2T-HGNN served: incremental (per layer, where inputs changed)
against a full-graph HGNN recompute per micro-batch, on the same stream, at several graph sizes.

For each size S (a prefix of the dataset's events), the graph and user states after the first S events are built
with the stream's own functions (``models.graph.build_graph``) and loaded into a refresher in one batch (the
catch-up a restarted refresher does: one pass over the graph, timed). Then the next ``--stream`` events are folded
in micro-batches of ``--batch`` events; each micro-batch's refresh requests (the adjacencies of the items it
touched, the states of its users: what the stream agents publish) go to two refreshers on the same graph, one
serving the model with :class:`~models.incremental.IncrementalHGNN`, one recomputing the full-graph forward on
every change (what ``TrainedModel`` did before). A refresh upserts the item vectors (with what the user tower reads
of each item) and the users' states; user vectors are composed at query time (``vectorstore/compose.py``), so no
user is refreshed. Reported per size: items, edges, seconds per micro-batch (median, p95) for both, the HGNN's
share, how many items each layer recomputed, and the speedup; at the end both refreshers' stored item vectors, and
every user's vector composed from each store, are compared (they must agree within 1e-5).

Usage (2 shared cores; wrap in the bench lock)::

    flock /tmp/gfm-bench.lock .venv/bin/python bench/refresh_bench.py --data ../shared/data/movielens-1m

writes ``bench/results/refresh-<dataset>.json``. The model is trained on the first ``--train`` events with the
default model shape and one epoch each (the weights do not change the cost), text from a 384-dimension hashing
encoder (MiniLM's width, without its encoding time, which is not part of a refresh of item updates).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from prometheus_client import CollectorRegistry

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models.datasets import iter_events, load_items  # noqa: E402
from models.embedding import LiveGraph  # noqa: E402
from models.evaluate import Split  # noqa: E402
from models.features import graph_tensors  # noqa: E402
from models.graph import CoGraph, GraphConfig, build_graph  # noqa: E402
from models.hgnn import HGNNConfig, embed  # noqa: E402
from models.serving import TrainedModel, train_for_serving  # noqa: E402
from models.text import HashingEncoder  # noqa: E402
from models.train import TrainConfig  # noqa: E402
from models.twotower import TwoTowerConfig  # noqa: E402
from monitoring.metrics import RefresherMetrics  # noqa: E402
from streams.records import CatalogItem, ItemUpdate, UserUpdate  # noqa: E402
from vectorstore.compose import ComposedUsers  # noqa: E402
from vectorstore.server import ServerStore  # noqa: E402
from workers.refresher import Changes, Refresher  # noqa: E402
from workers.settings import RefresherSettings  # noqa: E402

log = logging.getLogger("refresh_bench")


class FullRecompute(TrainedModel):
    """The same trained model, with the HGNN re-run over the whole live graph whenever it changed."""

    def __init__(self, directory: Path, encoder_name: str) -> None:
        super().__init__(directory, encoder_name)
        self._stamp: tuple[int, int] = (-1, -1)
        self._z = np.zeros((0, 0), dtype=np.float32)
        self._degree = np.zeros(0, dtype=np.float32)
        self._codes = np.zeros(0, dtype=np.int64)
        self.hgnn_seconds: list[float] = []

    def _update(self, graph: LiveGraph) -> None:
        if self._stamp == (id(graph), graph.version) and len(self._codes) == len(graph):
            return
        started = time.perf_counter()
        known = {t: k for k, t in enumerate(self.type_names)}
        self._codes = np.array([known.get(t, -1) for t in graph.types], dtype=np.int64)
        typed = graph_tensors(graph.adjacency, graph.rows, np.maximum(self._codes, 0), self.type_names)
        self._z = embed(self.hgnn, typed, graph.text_matrix(), self.device)
        self._degree = typed.weighted_degree(len(graph))
        self._stamp = (id(graph), graph.version)
        self.hgnn_seconds.append(time.perf_counter() - started)

    def _type_codes(self, graph: LiveGraph) -> np.ndarray:
        self._update(graph)
        return self._codes

    def hgnn_embeddings(self, graph: LiveGraph) -> np.ndarray:
        self._update(graph)
        return self._z

    def degrees(self, graph: LiveGraph) -> np.ndarray:
        self._update(graph)
        return self._degree


def _quantiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {"median": round(statistics.median(ordered), 4),
            "p95": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 4),
            "mean": round(statistics.fmean(ordered), 4), "batches": len(ordered)}


def _adjacency(graph: CoGraph, item_id: str) -> dict[str, list[object]]:
    return {k: list(v) for k, v in graph.adjacency.get(item_id, {}).items()}


def _state(graph: CoGraph, user_id: str) -> dict[str, object]:
    return json.loads(json.dumps(graph.users[user_id]))


def run_size(size: int, rows: list[tuple[str, str, str, str, float]], items: list[CatalogItem], directory: Path,
             encoder: HashingEncoder, args: argparse.Namespace) -> dict[str, object]:
    """Warm both refreshers on the first ``size`` events, then time the stream that follows."""
    config = GraphConfig()
    started = time.perf_counter()
    cograph = build_graph(rows[:size], config)
    build_seconds = time.perf_counter() - started
    settings = RefresherSettings(dependents_per_batch=args.dependents)
    incremental_model = TrainedModel(directory, encoder.name)
    full_model = FullRecompute(directory, encoder.name)
    refreshers = {
        "incremental": Refresher(ServerStore(":memory:"), incremental_model, encoder,
                                 RefresherMetrics.create(CollectorRegistry()), settings),
        "full": Refresher(ServerStore(":memory:"), full_model, encoder, RefresherMetrics.create(CollectorRegistry()),
                          settings),
    }
    warm = Changes(catalog={i.item_id: i for i in items},
                   items={k: ItemUpdate(item_id=k, item_type=cograph.item_types[k], adjacency=_adjacency(cograph, k))
                          for k in cograph.adjacency},
                   users={u: UserUpdate(user_id=u, state=_state(cograph, u), event_ts=0.0) for u in cograph.users})
    catch_up: dict[str, float] = {}
    for name, refresher in refreshers.items():
        started = time.perf_counter()
        refresher.apply(warm)
        while not refresher.idle:
            refresher.apply(Changes())
        catch_up[name] = round(time.perf_counter() - started, 2)
    catch_up["incremental_hgnn_first_pass"] = round(incremental_model.layers.last.seconds, 2)
    edges = sum(len(a) for a in cograph.adjacency.values())
    log.info("size %d: %d items, %d edges, %d users; graph built in %.1f s, catch-up %s", size, len(cograph.item_types),
             edges, len(cograph.users), build_seconds, catch_up)

    seconds: dict[str, list[float]] = {name: [] for name in refreshers}
    layer1, layer2, hgnn_incremental = [], [], []
    full_model.hgnn_seconds.clear()
    stream = rows[size : size + args.stream]
    for start in range(0, len(stream), args.batch):
        touched_items: set[str] = set()
        touched_users: set[str] = set()
        for event_id, user_id, item_id, item_type, ts in stream[start : start + args.batch]:
            for src, *_ in cograph.consume(event_id, user_id, item_id, item_type, ts):
                touched_items.add(src)
            touched_users.add(user_id)
        changes = Changes(
            items={k: ItemUpdate(item_id=k, item_type=cograph.item_types[k], adjacency=_adjacency(cograph, k))
                   for k in touched_items},
            users={u: UserUpdate(user_id=u, state=_state(cograph, u), event_ts=0.0) for u in touched_users})
        for name, refresher in refreshers.items():
            begun = time.perf_counter()
            refresher.apply(changes)
            seconds[name].append(time.perf_counter() - begun)
            if name == "incremental":
                last = incremental_model.layers.last
                layer1.append(last.layer1)
                layer2.append(last.layer2)
                hgnn_incremental.append(last.seconds)
    for refresher in refreshers.values():  # drain the frontiers (not timed) so the two can be compared
        while not refresher.idle:
            refresher.apply(Changes())
    difference = 0.0
    a, b = refreshers["incremental"], refreshers["full"]
    for item_id in a.graph.ids:
        pa, pb = a.store.get_item(item_id), b.store.get_item(item_id)
        if pa is not None and pb is not None:
            difference = max(difference, float(np.abs(pa.vector - pb.vector).max()))
    users = list(cograph.users)
    composed = [ComposedUsers(r.store, r.model.composer).vectors([r.store.get_user(u) for u in users])
                for r in (a, b)]
    difference = max(difference, float(np.abs(composed[0] - composed[1]).max()))
    result = {
        "prefix_events": size, "items": len(a.graph), "edges": edges, "users": len(users),
        "catch_up_seconds": catch_up,
        "micro_batch_seconds": {name: _quantiles(v) for name, v in seconds.items()},
        "hgnn_seconds": {"incremental": _quantiles(hgnn_incremental),
                         "full": _quantiles(full_model.hgnn_seconds or [0.0])},
        "items_recomputed_per_batch": {"layer1": _quantiles([float(x) for x in layer1]),
                                       "layer2": _quantiles([float(x) for x in layer2])},
        "speedup_median": round(statistics.median(seconds["full"]) / statistics.median(seconds["incremental"]), 1),
        "speedup_total": round(sum(seconds["full"]) / sum(seconds["incremental"]), 1),
        "max_abs_difference_incremental_vs_full": difference,
    }
    log.info("size %d: %s", size, json.dumps(result))
    if difference > 1e-5:
        raise SystemExit(f"incremental and full recompute disagree by {difference} at size {size}")
    return result


def run_catch_up(rows: list[tuple[str, str, str, str, float]], items: list[CatalogItem], directory: Path,
                 encoder: HashingEncoder, args: argparse.Namespace) -> dict[str, object]:
    """A restarted refresher's catch-up on the whole stream: the catalogue, then the latest refresh request of every
    item and user (what compacted topics hold), in micro-batches of ``batch_max`` records, until the frontier is
    drained; incremental against a full-graph recompute per micro-batch."""
    started = time.perf_counter()
    cograph = build_graph(rows, GraphConfig())
    build_seconds = time.perf_counter() - started
    records: list[Changes] = []
    size = RefresherSettings().batch_max
    catalog = list(items)
    updates = [ItemUpdate(item_id=k, item_type=cograph.item_types[k], adjacency=_adjacency(cograph, k))
               for k in cograph.adjacency]
    users = [UserUpdate(user_id=u, state=_state(cograph, u), event_ts=0.0) for u in cograph.users]
    for start in range(0, len(catalog), size):
        records.append(Changes(catalog={i.item_id: i for i in catalog[start : start + size]}))
    mixed: list[ItemUpdate | UserUpdate] = [*updates, *users]
    for start in range(0, len(mixed), size):
        chunk = mixed[start : start + size]
        records.append(Changes(items={u.item_id: u for u in chunk if isinstance(u, ItemUpdate)},
                               users={u.user_id: u for u in chunk if isinstance(u, UserUpdate)}))
    out: dict[str, object] = {"events": len(rows), "items": len(cograph.item_types), "users": len(cograph.users),
                              "edges": sum(len(a) for a in cograph.adjacency.values()),
                              "micro_batches": len(records), "graph_build_seconds": round(build_seconds, 1)}
    for name, model in (("incremental", TrainedModel(directory, encoder.name)),
                        ("full", FullRecompute(directory, encoder.name))):
        refresher = Refresher(ServerStore(":memory:"), model, encoder, RefresherMetrics.create(CollectorRegistry()),
                              RefresherSettings())
        started = time.perf_counter()
        batches = 0
        for changes in records:
            refresher.apply(changes)
            batches += 1
        while not refresher.idle:
            refresher.apply(Changes())
            batches += 1
        out[name] = {"seconds": round(time.perf_counter() - started, 1), "refresh_batches": batches,
                     "items_upserted": refresher.items_refreshed, "user_states_upserted": refresher.users_refreshed}
        log.info("catch-up %s: %s", name, out[name])
    return out


def run_history(rows: list[tuple[str, str, str, str, float]], items: list[CatalogItem], directory: Path,
                encoder: HashingEncoder, args: argparse.Namespace) -> dict[str, object]:
    """A restarted refresher's catch-up on a topic that keeps every refresh request (tansu does not compact): the
    catalogue, then what the stream published for each group of ``--history-group`` events, read in micro-batches
    of ``batch_max`` records; folded batch by batch (refreshing each) against deferred (state first, one pass)."""
    cograph = CoGraph(GraphConfig())
    published: list[ItemUpdate | UserUpdate] = []
    started = time.perf_counter()
    for start in range(0, len(rows), args.history_group):
        touched_items: set[str] = set()
        touched_users: set[str] = set()
        for event_id, user_id, item_id, item_type, ts in rows[start : start + args.history_group]:
            for src, *_ in cograph.consume(event_id, user_id, item_id, item_type, ts):
                touched_items.add(src)
            touched_users.add(user_id)
        published += [ItemUpdate(item_id=k, item_type=cograph.item_types[k], adjacency=_adjacency(cograph, k))
                      for k in sorted(touched_items)]
        published += [UserUpdate(user_id=u, state=_state(cograph, u), event_ts=0.0) for u in sorted(touched_users)]
    build_seconds = time.perf_counter() - started
    size = RefresherSettings().batch_max
    batches = [Changes(catalog={i.item_id: i for i in items[start : start + size]})
               for start in range(0, len(items), size)]
    for start in range(0, len(published), size):
        chunk = published[start : start + size]
        changes = Changes()
        for update in chunk:  # later records of a key replace earlier ones, as collect() does
            if isinstance(update, ItemUpdate):
                changes.items[update.item_id] = update
            else:
                changes.users[update.user_id] = update
        batches.append(changes)
    out: dict[str, object] = {"events": len(rows), "events_per_group": args.history_group,
                              "records": len(published) + len(items), "micro_batches": len(batches),
                              "items": len(cograph.item_types), "users": len(cograph.users),
                              "history_build_seconds": round(build_seconds, 1)}
    for name, defer in (("batch_by_batch", False), ("deferred", True)):
        model = TrainedModel(directory, encoder.name)
        refresher = Refresher(ServerStore(":memory:"), model, encoder, RefresherMetrics.create(CollectorRegistry()),
                              RefresherSettings())
        started = time.perf_counter()
        count = 0
        for changes in batches:
            refresher.apply(changes, defer=defer)
            count += 1
        while not refresher.idle:
            refresher.apply(Changes())
            count += 1
        out[name] = {"seconds": round(time.perf_counter() - started, 1), "refresh_batches": count,
                     "layer2_rows_computed": model.layers.layer2_total, "items_upserted": refresher.items_refreshed,
                     "user_states_upserted": refresher.users_refreshed}
        log.info("history catch-up %s: %s", name, out[name])
    return out


def main() -> None:
    """Parse the arguments, train the model, run every size, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data/movielens-1m"))
    parser.add_argument("--sizes", default="30000,100000,300000",
                        help="graph sizes: event prefixes, comma-separated (empty: none)")
    parser.add_argument("--stream", type=int, default=2000, help="events streamed after each prefix")
    parser.add_argument("--batch", type=int, default=100, help="events per micro-batch")
    parser.add_argument("--train", type=int, default=30000, help="train the model on the first N events")
    parser.add_argument("--dependents", type=int, default=2000, help="the refresher's dependents_per_batch")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--catch-up", type=int, default=0,
                        help="also time a restarted refresher's catch-up on the first N events (0: skip)")
    parser.add_argument("--history", type=int, default=0,
                        help="also time a catch-up on an uncompacted history of the first N events (0: skip)")
    parser.add_argument("--history-group", type=int, default=1000, help="events per published group (--history)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(1)  # 2 cores shared with other work; the store and Python use the other

    sizes = [int(s) for s in args.sizes.split(",") if s]
    catalogue = load_items(args.data)
    types = {i.item_id: i.item_type for i in catalogue}
    limit = max(max(sizes, default=0) + args.stream, args.catch_up, args.history)
    events = [e for e in iter_events(args.data, limit) if e.item_id in types]
    rows = [(f"e{n}", e.user_id, e.item_id, types[e.item_id], e.ts) for n, e in enumerate(events)]
    items = [CatalogItem(item_id=i.item_id, item_type=i.item_type, title=i.title, description=i.text)
             for i in catalogue]
    encoder = HashingEncoder(384)

    type_names = sorted({i.item_type for i in catalogue})
    index = {i.item_id: n for n, i in enumerate(catalogue)}
    item_type = np.array([type_names.index(i.item_type) for i in catalogue])
    train = [(e.user_id, index[e.item_id], e.ts) for e in events[: args.train]]
    histories: dict[str, list[int]] = {}
    for user, item, _ in train:
        histories.setdefault(user, []).append(item)
    split = Split(args.data.resolve().name, catalogue, index, type_names, item_type, train, histories,
                  {t: [] for t in type_names}, "all-events")
    # trend off: the live levels are served by branch trend
    config = replace(TrainConfig(), hgnn=HGNNConfig(epochs=1), two_tower=TwoTowerConfig(epochs=1, trend=False))
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        directory = train_for_serving(split, encoder, config, Path(tmp), "bench")
        log.info("model trained in %.1f s", time.perf_counter() - started)
        results = [run_size(size, rows, items, directory, encoder, args) for size in sizes]
        catch_up = run_catch_up(rows[: args.catch_up], items, directory, encoder, args) if args.catch_up else None
        history = run_history(rows[: args.history], items, directory, encoder, args) if args.history else None
    out = args.out or Path(__file__).parent / "results" / f"refresh-{args.data.resolve().name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {"command": " ".join(sys.argv), "dataset": args.data.resolve().name, "stream_events": args.stream,
              "events_per_micro_batch": args.batch, "dependents_per_batch": args.dependents,
              "threads": torch.get_num_threads(), "model": "2T-HGNN, default shape (hidden 128, out 128, tower 128)",
              "sizes": results, "catch_up": catch_up, "history_catch_up": history}
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
