"""The degree-capped merge in C against its Python definition, on a dataset's events.

    python bench/merge_bench.py --data ../shared/data/movielens-1m --limit 300000

Builds the co-interaction graph of the first ``limit`` events twice with :func:`models.graph.build_graph`, once with
the C merge (:data:`models.graph.merge_neighbours`, what the stream and training run) and once with
:func:`models.graph.merge_neighbours_reference`, and checks that every adjacency is the same, in the same order.
Records the process CPU seconds of each build (garbage collection tuned as in the stream worker) and writes
``bench/results/merge-<dataset>.json`` (or ``--out``).
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

import models.graph as graph  # noqa: E402
from workers.kafka_io import dataset_events  # noqa: E402
from workers.services import tune_gc  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/movielens-1m")
    parser.add_argument("--limit", type=int, default=300_000)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    rows = [(e.event_id, e.user_id, e.item_id, e.item_type, e.ts)
            for e in dataset_events(args.data, args.limit)[0] if e is not None]
    tune_gc()
    built, cpu = {}, {}
    for name, merge in (("c", graph.merge_neighbours), ("python_reference", graph.merge_neighbours_reference)):
        graph.merge_neighbours = merge  # build_graph's merge_neighbour calls it through the module
        started = time.process_time()
        built[name] = graph.build_graph(rows)
        cpu[name] = round(time.process_time() - started, 2)
    c, reference = built["c"].adjacency, built["python_reference"].adjacency
    identical = c.keys() == reference.keys() and all(list(c[i].items()) == list(reference[i].items()) for i in c)
    result = {
        "dataset": args.data.resolve().name,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": "python " + " ".join(sys.argv),
        "events": len(rows),
        "build_graph_cpu_s": cpu,
        "identical_adjacency_and_order": identical,
        "items": len(c),
    }
    print(json.dumps(result, indent=2))
    out = args.out or ROOT / "bench" / "results" / f"merge-{result['dataset']}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    if not identical:
        raise SystemExit("the C merge built another graph than its Python definition")


if __name__ == "__main__":
    main()
