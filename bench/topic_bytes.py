"""Bytes written to Kafka per event, topic by topic, for sizing brokers (docs/scaling.md).

    python bench/topic_bytes.py --data ../shared/data/movielens-1m --limit 100000

Runs the stream agents' pure functions (:func:`streams.agents.fold_events`, :func:`~streams.agents.fold_pairs`)
over a dataset's first events exactly as the worker batches them (event packs of 200, ``take_max`` messages per
events batch and ``pairs_take_max`` per pairs batch, one partition after another) and adds up the bytes of every
message each topic receives: events, pairs, user and item refresh requests, and the two table changelogs (one
record per touched key per batch). Keys and values only; the broker's per-record and per-batch overhead comes on
top. Bigger batches (a busier worker) touch each key fewer times per event, so the state topics shrink as load
grows: by default the batches are full (the worker's bounds); ``--stream-batch`` and ``--pairs-batch`` set a live
stream's smaller ones. Writes ``bench/results/topic-bytes-<dataset>.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.graph import GraphConfig  # noqa: E402
from streams.agents import (  # noqa: E402
    PAIRS_PER_MESSAGE,
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
from streams.records import ListenEvent, event_to_dict  # noqa: E402
from workers.kafka_io import dataset_events  # noqa: E402
from workers.settings import StreamSettings  # noqa: E402

Output = list[tuple[bytes | None, bytes]]
"""A topic's messages in the order the worker writes them: ``(key, value)``."""


def fold_outputs(events: list[ListenEvent], partitions: int, take_max: int, pairs_take_max: int,
                 graph: GraphConfig) -> dict[str, Output]:
    """What the stream worker writes to each topic for ``events``, batched at the given bounds (full batches)."""
    config = StreamConfig(partitions=partitions, graph=graph)
    by_partition: dict[int, list[dict[str, object]]] = defaultdict(list)
    for e in events:
        by_partition[partition_for(e.user_id, partitions)].append(event_to_dict(e))
    out: dict[str, Output] = defaultdict(list)
    users: dict[str, bytes] = {}
    pair_log: dict[int, list[bytes]] = defaultdict(list)
    for partition, rows in sorted(by_partition.items()):
        packs = [json.dumps(rows[s : s + 200]).encode() for s in range(0, len(rows), 200)]
        out["events"] += [(None, pack) for pack in packs]
        for s in range(0, len(packs), take_max):
            batch = fold_events([(m, 0.0, partition, s + n) for n, m in enumerate(packs[s : s + take_max])],
                                lambda u: decode_user(users[u]) if u in users else None, config)
            for target, groups in batch.pairs.items():
                for message in pack_pairs(groups, PAIRS_PER_MESSAGE):
                    out["pairs"].append((None, message))
                    pair_log[target].append(message)
            for user_id, entry in batch.users.items():
                users[user_id], update = encode_user(user_id, entry, 0.0)
                out["users-changelog"].append((user_id.encode(), users[user_id]))
                out["user-updates"].append((user_id.encode(), update))
    items: dict[str, bytes] = {}
    for partition, messages in sorted(pair_log.items()):
        for s in range(0, len(messages), pairs_take_max):
            chunk = [(m, partition, s + n) for n, m in enumerate(messages[s : s + pairs_take_max])]
            merged = fold_pairs(chunk, lambda i: decode_item(items[i]) if i in items else None, graph.max_degree)
            for item_id, entry in merged.items.items():
                items[item_id], update = encode_item(item_id, entry)
                out["adjacency-changelog"].append((item_id.encode(), items[item_id]))
                out["item-updates"].append((item_id.encode(), update))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/movielens-1m")
    parser.add_argument("--limit", type=int, default=100_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--stream-batch", type=int, default=None,
                        help="events per events micro-batch and partition (default: take_max full packs of 200)")
    parser.add_argument("--pairs-batch", type=int, default=None, help="pair messages per pairs micro-batch "
                        "(default: pairs_take_max)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    defaults = StreamSettings()
    take_max = defaults.take_max if args.stream_batch is None else max(1, args.stream_batch // 200)
    pairs_take_max = args.pairs_batch or defaults.pairs_take_max
    events = [e for e in dataset_events(args.data, args.limit)[0] if e is not None]
    outputs = fold_outputs(events, args.partitions, take_max, pairs_take_max, defaults.graph_config())
    n = len(events)
    written = {topic: sum(len(k or b"") + len(v) for k, v in messages) for topic, messages in outputs.items()}
    result = {
        "dataset": args.data.resolve().name,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": "python " + " ".join(sys.argv),
        "events": n,
        "batches": {"take_max": take_max, "pairs_take_max": pairs_take_max, "events_per_pack": 200},
        "bytes_per_event": {topic: round(b / n) for topic, b in written.items()},
        "records_per_1000_events": {topic: round(1000 * len(m) / n, 1) for topic, m in outputs.items()},
        "total_bytes_per_event": round(sum(written.values()) / n),
    }
    print(json.dumps(result, indent=2))
    out = args.out or ROOT / "bench" / "results" / f"topic-bytes-{result['dataset']}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
