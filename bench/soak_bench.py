"""Soak benchmark: the embedded stack under a steady stream for minutes; memory and lag sampled throughout.

    python bench/soak_bench.py --data ../shared/data/movielens-1m --rate 2000 --minutes 10

Starts the stack as ``gfm up`` does (tansu, the Faust worker, the API with the refresher and the embedded Qdrant
engine; MiniLM text), loads the dataset's catalogue, then replays its events at ``--rate`` for ``--minutes``
(from the start again, with new event ids, if the dataset runs out: the same users and items, so the state stops
growing once they are all known). Every ``--every`` seconds it records each process's RSS, the stream's lag
(events produced minus events the worker has read; pairs published minus pairs merged or recognised as
redelivered) and the refresher's pending frontier. Results: ``bench/results/soak-<dataset>.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.datasets import load_items  # noqa: E402
from streams.records import ListenEvent  # noqa: E402
from tests.conftest import make_settings  # noqa: E402
from workers.kafka_io import EventSink, dataset_events, make_producer, publish_catalog  # noqa: E402
from workers.stack import Stack, http_json  # noqa: E402
from workers.statecheck import stream_metric  # noqa: E402


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def endless(data: Path) -> itertools.chain[ListenEvent]:
    def rounds():
        for n in itertools.count():
            events, _ = dataset_events(data)
            for e in events:
                if e is not None:
                    yield e if n == 0 else dataclasses.replace(e, event_id=f"{e.event_id}#r{n}")

    return itertools.chain(rounds())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/movielens-1m")
    parser.add_argument("--rate", type=float, default=2000.0)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--every", type=float, default=15.0)
    parser.add_argument("--encoder", default="minilm", choices=["minilm", "hashing"])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    samples: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="gfm-soak-") as tmp:
        settings = make_settings(Path(tmp), encoder=args.encoder)
        stack = Stack(settings)
        stack.start()
        try:
            producer = make_producer(settings.kafka)
            items = publish_catalog(producer, settings.kafka, load_items(args.data))
            while True:  # the catalogue embedded before the clock starts
                _, health = http_json(f"{stack.api_url}/healthz")
                if health.get("items", 0) >= items * 0.95:
                    break
                time.sleep(1)
            sink = EventSink(producer, settings.kafka)
            events = endless(args.data)
            chunk = int(args.rate / 10)
            started = time.monotonic()
            produced = 0
            next_sample = started
            while time.monotonic() - started < args.minutes * 60:
                batch = list(itertools.islice(events, chunk))
                sink.send(batch, wait=False)
                produced += len(batch)
                stack.check()
                now = time.monotonic()
                if now >= next_sample:
                    port = settings.streams.metrics_port
                    worker = {name: stream_metric(port, name) for name in (
                        "gfm_stream_events_total", "gfm_graph_pairs_published_total", "gfm_graph_pairs_total",
                        "gfm_graph_pairs_redelivered_total")}
                    _, health = http_json(f"{stack.api_url}/healthz")
                    refresher = health.get("refresher", {})
                    sample = {
                        "t_s": round(now - started, 1),
                        "produced": produced,
                        "events_lag": produced - worker.get("gfm_stream_events_total", 0),
                        "pairs_lag": worker.get("gfm_graph_pairs_published_total", 0)
                        - worker.get("gfm_graph_pairs_total", 0) - worker.get("gfm_graph_pairs_redelivered_total", 0),
                        "pending_items": refresher.get("pending_items"),
                        "pending_users": refresher.get("pending_users"),
                        "rss_mib": {name: round(rss_mib(p.pid)) for name, p in stack.processes.items()},
                    }
                    samples.append(sample)
                    print(json.dumps(sample), flush=True)
                    next_sample += args.every
                ahead = produced / args.rate - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)
            producer.flush()
            producer.close()
        finally:
            restarts = dict(stack.restarts)
            stack.stop()
    half = [s for s in samples if float(s["t_s"]) >= args.minutes * 30]  # type: ignore[arg-type]
    summary = {
        name: {"rss_mib_at_half": half[0]["rss_mib"][name], "rss_mib_at_end": samples[-1]["rss_mib"][name]}  # type: ignore[index]
        for name in samples[-1]["rss_mib"]  # type: ignore[attr-defined]
    } if half else {}
    results = {
        "dataset": args.data.resolve().name,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": "python " + " ".join(sys.argv),
        "rate": args.rate,
        "minutes": args.minutes,
        "encoder": args.encoder,
        "restarts": restarts,
        "max_events_lag": max(float(s["events_lag"]) for s in samples),  # type: ignore[arg-type]
        "max_pairs_lag": max(float(s["pairs_lag"]) for s in samples),  # type: ignore[arg-type]
        "rss_second_half": summary,
        "samples": samples,
    }
    out = args.out or ROOT / "bench" / "results" / f"soak-{results['dataset']}.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
