"""Scale-out benchmark: the same events drained end to end by one stream worker and by two in one consumer group.

    flock /tmp/gfm-bench.lock python bench/scale_bench.py --data ../shared/data/movielens-1m --limit 100000

For each worker count: a fresh tansu broker; the first ``--limit`` events of the dataset are produced first;
then the workers start together (``gfm worker streams`` processes, each with its own RocksDB directory and
metrics port) and we time, from the first event any worker counts, until the events are drained and every
published pair is merged (the whole graph built). The state the workers leave in their changelogs is then
checked against ``build_graph`` on the same events (:mod:`workers.statecheck`: every user, every item below the
degree cap; past the cap, the fold of the pairs topic). Results go to ``bench/results/scale-<dataset>.json``.

On a machine with fewer cores than workers plus broker, a second worker adds a rebalance and contention, not
capacity: the figure says what one machine does, not what two would.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.conftest import free_port, make_settings  # noqa: E402
from workers.kafka_io import EventSink, dataset_events, make_producer, replay  # noqa: E402
from workers.settings import Settings  # noqa: E402
from workers.stack import RestartPolicy, Stack  # noqa: E402
from workers.statecheck import reference, stream_metric, wait_for_the_fold  # noqa: E402


def peak_rss_mib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024)
    return -1


def worker_settings(settings: Settings, root: Path, n: int) -> Settings:
    """The ``n``-th worker's settings: its own metrics port and RocksDB directory."""
    streams = settings.streams.model_copy(update={"metrics_port": free_port(), "datadir": root / f"faust-{n}"})
    return settings.model_copy(update={"streams": streams})


def run(data: Path, limit: int, workers: int, partitions: int, root: Path) -> dict[str, object]:
    base = make_settings(root, split=False)  # N workers that each run both agents, in one group
    settings = base.model_copy(update={"kafka": base.kafka.model_copy(update={"partitions": partitions})})
    stack = Stack(settings, services=(), policy=RestartPolicy(backoff_s=0.5))
    stack.start()  # the broker and the topics only
    try:
        producer = make_producer(settings.kafka)
        events, _ = dataset_events(data, limit)
        kept = [e for e in events if e is not None]
        produced = replay(iter(kept), EventSink(producer, settings.kafka), len(kept), progress=False)
        producer.close()
        print(f"{workers} worker(s): preloaded {produced.sent} events ({produced.events_per_s:.0f} events/s)",
              flush=True)
        for n in range(workers):
            stack.add_worker(f"streams-{n + 1}", "streams", worker_settings(settings, root, n + 1))
        ports = stack.stream_metrics_ports()

        def total_of(name: str) -> float:
            return sum(stream_metric(port, name) for port in ports)

        first = last_event = last_pair = None
        seen = merged = 0.0
        deadline = time.monotonic() + 1800
        while time.monotonic() < deadline:
            stack.check()
            time.sleep(0.25)
            now = time.monotonic()
            count = total_of("gfm_stream_events_total")
            if count > 0 and first is None:
                first = now
            if count > seen:
                seen, last_event = count, now
            done = total_of("gfm_graph_pairs_total") + total_of("gfm_graph_pairs_redelivered_total")
            if done > merged:
                merged, last_pair = done, now
            if seen >= produced.sent and merged >= total_of("gfm_graph_pairs_published_total") > 0:
                break
            if first is not None and now - max(last_event or 0, last_pair or 0) > 60:
                raise RuntimeError(f"no progress for 60 s at {seen} events; see {root / 'logs'}")
        else:
            raise TimeoutError("the workers did not drain the events within 30 minutes")
        assert first is not None and last_event is not None and last_pair is not None
        per_worker = {name: {"events": stream_metric(s.streams.metrics_port, "gfm_stream_events_total"),
                             "pairs_merged": stream_metric(s.streams.metrics_port, "gfm_graph_pairs_total"),
                             "peak_rss_mib": peak_rss_mib(stack.processes[name].pid)}
                      for name, (_, s) in stack.extra.items()}
        graph_s = last_pair - first
        drained_s = max(last_event - first, 0.25)  # the scrape interval: a tiny run drains between two scrapes
        comparison, _ = wait_for_the_fold(stack, reference(kept, settings.streams.graph_config()), limit_s=300)
        return {
            "workers": workers,
            "partitions": partitions,
            "events": produced.sent,
            "events_drained_s": round(drained_s, 2),
            "agent_events_per_s": round(produced.sent / drained_s),
            "graph_done_s": round(graph_s, 2),
            "end_to_end_events_per_s": round(produced.sent / graph_s),
            "pairs_merged": total_of("gfm_graph_pairs_total"),
            "restarts": {name: len(times) for name, times in stack.restarts.items()},
            "per_worker": per_worker,
            "state_vs_build_graph": comparison.as_dict(),
        }
    finally:
        stack.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/movielens-1m")
    parser.add_argument("--limit", type=int, default=100_000, help="events (the dataset's first N)")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts to run")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    counts = [int(w) for w in args.workers.split(",")]
    if not all(1 <= w <= args.partitions for w in counts):
        parser.error(f"--workers {args.workers}: each count must be between 1 and --partitions ({args.partitions})")
    results: dict[str, object] = {
        "dataset": args.data.resolve().name,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": " ".join(["python", *sys.argv]),
        "runs": [],
    }
    runs: list[dict[str, object]] = []
    for workers in counts:
        root = Path(tempfile.mkdtemp(prefix=f"gfm-scale-{workers}-"))  # kept when a run fails, for its logs
        runs.append(run(args.data, args.limit, workers, args.partitions, root))
        shutil.rmtree(root, ignore_errors=True)
        print(json.dumps(runs[-1], indent=2), flush=True)
    results["runs"] = runs
    out = args.out or ROOT / "bench" / "results" / f"scale-{results['dataset']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
