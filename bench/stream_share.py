"""The stream worker's share of event -> fresh user latency, alone: tansu and one Faust worker, events of a dataset
produced at a fixed rate, and a reader of the user refresh-request topic timing each record by its Kafka timestamp
against the produce time of the earliest event it carries; plus the worker's own micro-batch times per agent.

    flock /tmp/gfm-bench.lock python bench/stream_share.py --data ../shared/data/movielens-1m --rate 1000 \\
        --seconds 20 --out bench/results/stream-share-movielens-1m-1000.json [--producer-max-batch-size N]

Both agents share the worker's one event loop, so a long edges batch delays the events agent's next batch: the
file keeps both agents' batch counts, total seconds and histogram buckets to show it.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from kafka import KafkaConsumer  # noqa: E402
from stream_bench import start_worker, warm_up  # noqa: E402

from tests.conftest import make_settings  # noqa: E402
from workers.kafka_io import EventSink, dataset_events, ensure_topics, make_producer, replay  # noqa: E402
from workers.stack import start_broker  # noqa: E402


def quantiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    if not ordered:
        return {"n": 0}
    pick = lambda q: round(ordered[int(q * (len(ordered) - 1))], 3)  # noqa: E731
    return {"n": len(ordered), "p50": pick(0.5), "p95": pick(0.95), "p99": pick(0.99), "max": ordered[-1]}


def batch_metrics(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {name: float(value) for name, value in (line.rsplit(" ", 1) for line in text.splitlines()
                                                   if line.startswith("gfm_stream_batch_seconds"))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/movielens-1m")
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--producer-max-batch-size", type=int, default=None)
    parser.add_argument("--pairs-within", type=float, default=None, help="the worker's pairs_take_within_s")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="gfm-share-"))
    extra = {name: value for name, value in (("producer_max_batch_size", args.producer_max_batch_size),
                                             ("pairs_take_within_s", args.pairs_within)) if value is not None}
    settings = make_settings(root, split=False, **extra)  # type: ignore[arg-type]  # one worker, both agents
    broker = start_broker(settings.kafka.bootstrap, root / "broker.log")
    latencies: list[float] = []
    stop = threading.Event()
    try:
        ensure_topics(settings.kafka)
        worker = start_worker(settings)
        producer = make_producer(settings.kafka)
        sink = EventSink(producer, settings.kafka)
        warm_up(sink, settings.streams.metrics_port, worker)
        started_at = time.time()

        def read() -> None:
            consumer = KafkaConsumer(settings.kafka.topic("user-updates"), group_id=None,
                                     bootstrap_servers=settings.kafka.bootstrap, auto_offset_reset="earliest")
            while not stop.is_set():
                for records in consumer.poll(200).values():
                    for record in records:
                        try:
                            sent = float(json.loads(record.value).get("event_ts") or 0.0)
                        except (ValueError, AttributeError):
                            continue
                        if sent >= started_at:  # not the warm-up
                            latencies.append(record.timestamp / 1000 - sent)
            consumer.close()

        reader = threading.Thread(target=read)
        reader.start()
        before = batch_metrics(settings.streams.metrics_port)
        events, _ = dataset_events(args.data, int(args.rate * args.seconds))
        sent = replay(events, sink, int(args.rate * args.seconds), rate=args.rate, progress=False)
        time.sleep(5)
        after = batch_metrics(settings.streams.metrics_port)
        stop.set()
        reader.join()
        worker.terminate()
        worker.wait(20)
    finally:
        stop.set()
        broker.terminate()
        broker.wait(10)
    report: dict[str, Any] = {
        "command": "python " + " ".join(sys.argv),
        "rate": args.rate, "seconds": args.seconds, "events_sent": sent.sent,
        "producer_max_batch_size": settings.streams.producer_max_batch_size,
        "pairs_take_within_s": settings.streams.pairs_take_within_s,
        "what": "seconds from the produce time of the earliest event of a user's micro-batch to the produce time of "
                "the user's refresh request (Kafka timestamps)",
        "user_update_s": quantiles(latencies),
        "worker_batches": {name: round(value - before.get(name, 0.0), 3) for name, value in after.items()
                           if "_sum" in name or "_count" in name or 'le="0.1"' in name or 'le="0.5"' in name},
    }
    print(json.dumps(report, indent=2))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
