"""The stream agents' pure functions on a dataset's events, without Kafka or Faust: what Python itself allows.

    python bench/agents_bench.py --data ../shared/data/movielens-1m --limit 30000

Events are packed by partition (200 per message, as producers send them) and folded in micro-batches of 20
messages with :func:`streams.agents.fold_events`, user entries encoded and decoded as the table does; the pairs
they produce are packed and merged with :func:`streams.agents.fold_pairs` in batches of 50 messages, item entries
encoded and decoded likewise; garbage collection tuned as in the stream worker. Prints events/s and pairs/s of
each stage (wall clock, and the process's CPU time, which another process on the shared cores does not inflate)
and writes ``bench/results/agents-<dataset>.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from streams.agents import (  # noqa: E402
    StreamConfig,
    decode_item,
    decode_user,
    encode_item,
    encode_user,
    fold_events,
    fold_pairs,
    pack_pairs,
    partition_for,
)
from workers.kafka_io import dataset_events  # noqa: E402
from workers.services import tune_gc  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/movielens-1m")
    parser.add_argument("--limit", type=int, default=30_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    events = [e for e in dataset_events(args.data, args.limit)[0] if e is not None]
    by_partition: dict[int, list[dict[str, object]]] = {}
    for e in events:
        by_partition.setdefault(partition_for(e.user_id, args.partitions), []).append(
            {"event_id": e.event_id, "user_id": e.user_id, "item_id": e.item_id, "item_type": e.item_type,
             "ts": e.ts})
    messages = [(json.dumps(rows[s : s + 200]).encode(), p, n) for p, rows in by_partition.items()
                for n, s in enumerate(range(0, len(rows), 200))]
    config = StreamConfig(partitions=args.partitions)
    tune_gc()  # as the stream worker does
    users: dict[str, bytes] = {}
    items: dict[str, bytes] = {}
    pair_messages: list[tuple[bytes, int, int]] = []
    pairs = 0
    started, cpu = time.perf_counter(), time.process_time()
    for s in range(0, len(messages), 20):
        batch = fold_events([(m, 0.0, p, o) for m, p, o in messages[s : s + 20]],
                            lambda u: decode_user(users[u]) if u in users else None, config)
        for user_id, entry in batch.users.items():
            users[user_id], _ = encode_user(user_id, entry, 0.0)
        for p, groups in batch.pairs.items():
            pair_messages += [(m, p, len(pair_messages)) for m in pack_pairs(groups, 2000)]
        pairs += batch.pair_count
    events_s, events_cpu = time.perf_counter() - started, time.process_time() - cpu
    started, cpu = time.perf_counter(), time.process_time()
    for s in range(0, len(pair_messages), 50):
        merged = fold_pairs(pair_messages[s : s + 50], lambda i: decode_item(items[i]) if i in items else None,
                            config.graph.max_degree)
        for item_id, entry in merged.items.items():
            items[item_id], _ = encode_item(item_id, entry)
    pairs_s, pairs_cpu = time.perf_counter() - started, time.process_time() - cpu
    result = {
        "dataset": args.data.resolve().name,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": "python " + " ".join(sys.argv),
        "events": len(events),
        "pairs": pairs,
        "events_fold_events_per_s": round(len(events) / events_s),
        "pairs_fold_pairs_per_s": round(pairs / pairs_s),
        "pairs_fold_events_per_s": round(len(events) / pairs_s),
        "events_fold_cpu_s": round(events_cpu, 3),
        "pairs_fold_cpu_s": round(pairs_cpu, 3),
        "pairs_fold_events_per_cpu_s": round(len(events) / pairs_cpu),
    }
    print(json.dumps(result, indent=2))
    out = args.out or ROOT / "bench" / "results" / f"agents-{result['dataset']}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
