"""The refresher's item path, CPU per edges window: what an item's freshness waits for once its update is published.

    .venv/bin/python bench/item_path_bench.py --data ../shared/data/movielens-1m --model-dir var/models/2t-hgnn-...

The stream's own functions (``streams.agents.fold_events`` and ``fold_pairs``, as the events and edges agents run
them) fold the dataset's first ``--warm`` events, then the next ``--events`` in windows of ``--window`` events: one
window is one edges micro-batch (500 events: half a second at 1,000 events/s with the 0.5 s edges window), and its
item updates (each touched item once, with its whole adjacency and trend levels) are what the refresher reads in
one poll. A refresher serving the trained 2T-HGNN of ``--model-dir`` on the embedded Qdrant engine (a temporary
directory) loads the catalogue and the warm graph (not timed), then, one thread, times per window
``collect`` (decoding and checking the records) and ``Refresher.apply`` (the adjacency applied, the 2-hop set
recomputed and upserted), and the process CPU by part: ``set_adjacency``, ``LiveGraph.affected``, the HGNN layers
(``IncrementalHGNN.update``), the upsert. Users are not part of it (their thread writes states with no model call).

``--code DIR`` imports the project from another checkout (a ``git worktree`` of an earlier commit) for a
before/after on the same machine; run the two alternately, since this machine's speed drifts by 2x within hours.
Results go to ``bench/results/item-path-<dataset>.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _project(code: Path) -> None:
    sys.path.insert(0, str(code))


def _timed(acc: dict[str, float], cls: Any, name: str, label: str) -> None:
    """Wrap ``cls.name`` to add its process CPU seconds to ``acc[label]``."""
    inner: Callable[..., Any] = getattr(cls, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.process_time()
        try:
            return inner(*args, **kwargs)
        finally:
            acc[label] = acc.get(label, 0.0) + time.process_time() - started

    setattr(cls, name, wrapper)


def windows(data: Path, warm: int, events: int, window: int, graph: Any) -> tuple[list[bytes], list[list[bytes]]]:
    """The item updates of the first ``warm`` events (folded 5,000 at a time), then those of each window after them
    (one events and one pairs micro-batch per window, so each touched item once), folded by the stream's own
    functions through :class:`streams.testing.LogHarness` (one partition)."""
    from streams.agents import PAIRS_PER_MESSAGE, StreamConfig
    from streams.testing import LogHarness
    from workers.kafka_io import dataset_events

    read = [e for e in dataset_events(data, warm + events)[0] if e is not None]
    if any(e.kind != "stream" or e.ms_played is not None for e in read):
        raise SystemExit(f"{data}: events other than whole streams; LogHarness produces (kind stream, no ms_played)")
    rows = [(e.event_id, e.user_id, e.item_id, e.item_type, e.ts) for e in read]
    log = LogHarness(StreamConfig(partitions=1, graph=graph), per_message=PAIRS_PER_MESSAGE)

    def fold(chunk: list[tuple[str, str, str, str, float]]) -> list[bytes]:
        published = len(log.item_updates)
        log.produce(chunk, pack=100)
        log.events_batch(0, max_messages=len(chunk))
        log.pairs_batch(0, max_messages=10**9)
        return log.item_updates[published:]

    warmed = [update for s in range(0, warm, 5000) for update in fold(rows[s : min(s + 5000, warm)])]
    timed = [fold(rows[s : s + window]) for s in range(warm, warm + events, window)]
    return warmed, timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/movielens-1m")
    parser.add_argument("--model-dir", type=Path, required=True, help="a trained 2T-HGNN (`gfm train`)")
    parser.add_argument("--warm", type=int, default=100_000, help="events folded before the timed windows")
    parser.add_argument("--events", type=int, default=10_000, help="events in the timed windows")
    parser.add_argument("--window", type=int, default=500, help="events per edges window")
    parser.add_argument("--code", type=Path, default=ROOT, help="import the project from this checkout")
    parser.add_argument("--text-cache", type=Path, default=ROOT / "var" / "text-cache")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    _project(args.code.resolve())

    import torch
    from prometheus_client import CollectorRegistry

    import models.embedding as embedding
    import models.incremental as incremental
    import vectorstore.edge as edge
    from models.datasets import load_items
    from monitoring.metrics import RefresherMetrics
    from streams.records import CatalogItem
    from workers.refresher import Changes, Refresher, collect
    from workers.services import build_encoder, build_model
    from workers.settings import ModelSettings, Settings

    torch.set_num_threads(1)
    settings = Settings(model=ModelSettings(dir=args.model_dir, text_cache=args.text_cache))
    topic = settings.kafka.topic
    warm, timed = windows(args.data, args.warm, args.events, args.window, settings.streams.graph_config())
    catalog = [(topic("catalog"), CatalogItem(item_id=i.item_id, item_type=i.item_type, title=i.title or i.item_id,
                                              description=i.text).dumps(), 0, n)
               for n, i in enumerate(load_items(args.data))]
    encoder = build_encoder(settings)
    model = build_model(settings, encoder)
    with tempfile.TemporaryDirectory(prefix="gfm-item-path-") as tmp:
        store = edge.EdgeStore(Path(tmp))
        refresher = Refresher(store, model, encoder, RefresherMetrics.create(CollectorRegistry()), settings.refresher)
        for s in range(0, len(catalog), 1000):
            refresher.apply(collect(catalog[s : s + 1000], settings.kafka), defer=True)
        refresher.apply(collect([(topic("item-updates"), v, 0, n) for n, v in enumerate(warm)], settings.kafka),
                        defer=True)
        while not refresher.idle:
            refresher.apply(Changes())
        parts: dict[str, float] = {}
        _timed(parts, embedding.LiveGraph, "set_adjacency", "set_adjacency")
        _timed(parts, embedding.LiveGraph, "affected", "affected")
        _timed(parts, incremental.IncrementalHGNN, "update", "hgnn")
        _timed(parts, edge.EdgeStore, "upsert_items", "upsert")
        before = refresher.items_refreshed
        collect_s, apply_s, wall = [], [], []
        cpu = time.process_time()
        for n, window in enumerate(timed):
            records = [(topic("item-updates"), v, 0, n * 10_000 + k) for k, v in enumerate(window)]
            started = time.perf_counter()
            changes = collect(records, settings.kafka)
            collected = time.perf_counter()
            refresher.apply(changes)
            while not refresher.idle:  # the frontier too: an item is fresh when all it reaches is upserted
                refresher.apply(Changes())
            done = time.perf_counter()
            collect_s.append(collected - started)
            apply_s.append(done - collected)
            wall.append(done - started)
        cpu = time.process_time() - cpu
        store.close()
    count = len(timed)
    result = {
        "dataset": args.data.resolve().name,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": "python " + " ".join(sys.argv),
        "code": str(args.code),
        "model": model.version,
        "windows": count,
        "events_per_window": args.window,
        "item_updates_per_window": round(sum(map(len, timed)) / count, 1),
        "items_upserted_per_window": round((refresher.items_refreshed - before) / count, 1),
        "cpu_s_per_window": round(cpu / count, 4),
        "cpu_s_per_window_by_part": {k: round(v / count, 4) for k, v in sorted(parts.items())},
        "wall_s_per_window": {"collect": round(sum(collect_s) / count, 4), "apply": round(sum(apply_s) / count, 4),
                              "max": round(max(wall), 4)},
    }
    print(json.dumps(result, indent=2))
    out = args.out or ROOT / "bench" / "results" / f"item-path-{result['dataset']}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
