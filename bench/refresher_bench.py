"""Refresher throughput: how many events/s of refresh requests one refresher (or one replica of several) turns
into upserted vectors, on one core.

    flock /tmp/gfm-bench.lock python bench/refresher_bench.py --data ../shared/data/movielens-1m --limit 100000

The user and item refresh requests that the stream worker writes for the dataset's first ``--limit`` events are
computed with the agents' pure functions (:func:`bench.topic_bytes.fold_outputs`) at the batch sizes of a live
stream: ``--stream-batch`` events per events micro-batch and partition (packs of 200), ``--pairs-batch`` pair
messages per pairs micro-batch. A busier stream has bigger batches and sends fewer requests per event, so these
bounds set the regime. A refresher with the served model (text propagation unless ``GFM_MODEL__DIR`` names a
trained one) and the embedded Qdrant engine (a temporary directory) first embeds the whole catalogue (not timed),
then applies the requests in micro-batches of ``--refresh-batch`` records, interleaved in the proportion the
stream writes them, and drains the frontier; that part is timed. With ``--replicas 1,2`` it runs once as a lone
refresher and once per replica of two (each replica alone on the core, as it would be on its own), so the split of
the work shows. Results go to ``bench/results/refresher-<dataset>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from prometheus_client import CollectorRegistry  # noqa: E402

from bench.topic_bytes import fold_outputs  # noqa: E402
from models.datasets import load_items  # noqa: E402
from monitoring.metrics import RefresherMetrics  # noqa: E402
from streams.records import CatalogItem  # noqa: E402
from vectorstore.edge import EdgeStore  # noqa: E402
from workers.kafka_io import dataset_events  # noqa: E402
from workers.refresher import Changes, Ownership, Record, Refresher, collect  # noqa: E402
from workers.services import build_encoder, build_model  # noqa: E402
from workers.settings import ModelSettings, Settings  # noqa: E402


def interleave(a: list[Record], b: list[Record]) -> list[Record]:
    """``a`` and ``b`` merged in proportion, each in its own order."""
    out: list[Record] = []
    i = j = 0
    while i < len(a) or j < len(b):
        if j >= len(b) or (i < len(a) and i * len(b) <= j * len(a)):
            out.append(a[i])
            i += 1
        else:
            out.append(b[j])
            j += 1
    return out


def run(settings: Settings, catalog: list[Record], requests: list[Record], ownership: Ownership,
        events: int) -> dict[str, object]:
    encoder = build_encoder(settings)
    model = build_model(settings, encoder)
    with tempfile.TemporaryDirectory(prefix="gfm-refresher-bench-") as tmp:
        store = EdgeStore(Path(tmp))
        refresher = Refresher(store, model, encoder, RefresherMetrics.create(CollectorRegistry()),
                              settings.refresher, ownership=ownership)
        size = settings.refresher.batch_max
        for s in range(0, len(catalog), size):
            refresher.apply(collect(catalog[s : s + size], settings.kafka))
        while not refresher.idle:
            refresher.apply(Changes())
        items_before, users_before = refresher.items_refreshed, refresher.users_refreshed
        batches = 0
        started = time.perf_counter()
        for s in range(0, len(requests), size):
            refresher.apply(collect(requests[s : s + size], settings.kafka))
            batches += 1
        while not refresher.idle:
            refresher.apply(Changes())
            batches += 1
        seconds = time.perf_counter() - started
        store.close()
    return {
        "replica": f"{ownership.replica} of {ownership.replicas}",
        "seconds": round(seconds, 2),
        "events_per_s": round(events / seconds),
        "batches": batches,
        "items_upserted": refresher.items_refreshed - items_before,
        "users_upserted": refresher.users_refreshed - users_before,
        "items_upserted_per_s": round((refresher.items_refreshed - items_before) / seconds),
        "users_upserted_per_s": round((refresher.users_refreshed - users_before) / seconds),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/movielens-1m")
    parser.add_argument("--limit", type=int, default=100_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--replicas", default="1,2", help="comma-separated replica counts")
    parser.add_argument("--stream-batch", type=int, default=1000, help="events per events micro-batch and partition")
    parser.add_argument("--pairs-batch", type=int, default=20, help="pair messages per pairs micro-batch")
    parser.add_argument("--refresh-batch", type=int, default=500, help="records per refresher micro-batch")
    parser.add_argument("--encoder", default="minilm", choices=["minilm", "hashing"])
    parser.add_argument("--text-cache", type=Path, default=ROOT / "var" / "text-cache")
    args = parser.parse_args()
    settings = Settings(model=ModelSettings(encoder=args.encoder, text_cache=args.text_cache))
    settings = settings.model_copy(update={
        "kafka": settings.kafka.model_copy(update={"partitions": args.partitions}),
        "refresher": settings.refresher.model_copy(update={"batch_max": args.refresh_batch})})
    events = [e for e in dataset_events(args.data, args.limit)[0] if e is not None]
    outputs = fold_outputs(events, args.partitions, max(1, args.stream_batch // 200), args.pairs_batch,
                           settings.streams.graph_config())
    topic = settings.kafka.topic
    catalog: list[Record] = [
        (topic("catalog"), CatalogItem(item_id=i.item_id, item_type=i.item_type, title=i.title or i.item_id,
                                       description=i.text).dumps(), 0, n)
        for n, i in enumerate(load_items(args.data))]
    users = [(topic("user-updates"), v, 0, n) for n, (_, v) in enumerate(outputs["user-updates"])]
    items = [(topic("item-updates"), v, 0, n) for n, (_, v) in enumerate(outputs["item-updates"])]
    requests = interleave(users, items)
    runs = []
    for replicas in (int(r) for r in args.replicas.split(",")):
        for replica in range(replicas):
            runs.append(run(settings, catalog, requests, Ownership(args.partitions, replicas, replica), len(events)))
            print(json.dumps(runs[-1]), flush=True)
    result = {
        "dataset": args.data.resolve().name,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": "python " + " ".join(sys.argv),
        "events": len(events),
        "requests": {"user_updates": len(users), "item_updates": len(items), "catalog": len(catalog)},
        "model": build_model(settings, build_encoder(settings)).version,
        "batches": {"stream_events": args.stream_batch, "pairs_messages": args.pairs_batch,
                    "refresh_records": args.refresh_batch},
        "runs": runs,
    }
    print(json.dumps(result, indent=2))
    out = ROOT / "bench" / "results" / f"refresher-{result['dataset']}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
