"""Soak benchmark: the embedded stack under a steady stream for minutes; memory and lag sampled throughout.

    python bench/soak_bench.py --data ../shared/data/movielens-1m --rate 2000 --minutes 10

Starts the stack as ``gfm up`` does (tansu, the Faust worker, the API with the refresher and the embedded Qdrant
engine; MiniLM text), loads the dataset's catalogue, then replays its events at ``--rate`` for ``--minutes``
(from the start again, with new event ids, if the dataset runs out: the same users and items, so the state stops
growing once they are all known). Every ``--every`` seconds it records each process's RSS, the stream's lag
(events produced minus events the worker has read; pairs published minus pairs merged or recognised as
redelivered), the stream worker's RocksDB memtables and block caches, the refresher's pending frontier, how many
users and items the replay has named so far and the embedded vector store's size on disk. Results:
``bench/results/soak-<dataset>.json``, with per process its RSS at the end of the warm-up (the first sample once the
replay has named every user and item it will name: the state stops growing there), at half time and at the end, and
its RSS slope (MiB per minute, least squares) after the warm-up and over the second half: "flat" is a slope near 0.
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
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.datasets import load_items  # noqa: E402
from streams.records import ListenEvent  # noqa: E402
from tests.conftest import make_settings  # noqa: E402
from workers.kafka_io import EventSink, dataset_events, make_producer, publish_catalog  # noqa: E402
from workers.stack import Stack, http_json  # noqa: E402


def rss_mib(pid: int, field: str = "VmRSS") -> float:
    """A process's resident memory from /proc (``VmRSS``; ``RssFile``: the part that maps files)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """A process's CPU time so far (user + system, all its threads) from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def worker_counters(port: int, names: Sequence[str], timeout_s: float = 5.0) -> dict[str, float] | None:
    """The stream worker's counters ``names`` (summed over their labels) from one scrape of its metrics; None
    when the scrape fails or times out."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout_s) as response:
            text = response.read().decode()
    except OSError:
        return None
    totals = dict.fromkeys(names, 0.0)
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in totals:
            totals[name] += float(line.rsplit(" ", 1)[1])
    return totals


def disk_mib(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / (1 << 20) if path.exists() else 0.0


@dataclasses.dataclass
class Seen:
    """The users and items the replay has named so far."""

    users: set[str] = dataclasses.field(default_factory=set)
    items: set[str] = dataclasses.field(default_factory=set)


def endless(data: Path, seen: Seen, limit: int | None = None) -> Iterator[ListenEvent]:
    """The dataset's events again and again (the first ``limit`` of them when set), with new event ids from the
    second round on."""
    for n in itertools.count():
        events, _ = dataset_events(data)
        for e in itertools.islice((e for e in events if e is not None), limit):
            seen.users.add(e.user_id)
            seen.items.add(e.item_id)
            yield e if n == 0 else dataclasses.replace(e, event_id=f"{e.event_id}#r{n}")


def slope_per_minute(points: Sequence[tuple[float, float]]) -> float | None:
    """The least-squares slope of ``(seconds, value)`` points, per minute; None with fewer than 3 points or no
    spread in time."""
    if len(points) < 3:
        return None
    ts = [t for t, _ in points]
    mean_t = sum(ts) / len(ts)
    mean_v = sum(v for _, v in points) / len(points)
    spread = sum((t - mean_t) ** 2 for t in ts)
    if spread == 0:
        return None
    return 60.0 * sum((t - mean_t) * (v - mean_v) for t, v in points) / spread


def summarise(samples: Sequence[dict[str, Any]], half_s: float) -> dict[str, Any]:
    """Per process: RSS at the warm-up's end (the first sample at which the replay's users and items stopped
    growing for good: the last sample's counts), at ``half_s`` and at the end, the RSS slope in MiB per minute
    after the warm-up and over the second half, and (for samples with ``cpu_s``) its CPU seconds per 1,000 events
    produced after the warm-up.

    Raises:
        ValueError: when there are no samples.
    """
    if not samples:
        raise ValueError("no samples to summarise")
    last = samples[-1]
    warm = next(s for s in samples if (s["users_seen"], s["items_seen"]) == (last["users_seen"], last["items_seen"]))
    half = next((s for s in samples if s["t_s"] >= half_s), last)
    out: dict[str, Any] = {"warmup_end_s": warm["t_s"], "half_s": half["t_s"], "end_s": last["t_s"]}
    for name in last["rss_mib"]:
        after_warm = [(s["t_s"], s["rss_mib"][name]) for s in samples if s["t_s"] >= warm["t_s"]]
        second_half = [(s["t_s"], s["rss_mib"][name]) for s in samples if s["t_s"] >= half["t_s"]]
        slopes = (slope_per_minute(after_warm), slope_per_minute(second_half))
        out[name] = {
            "rss_mib_at_warmup_end": warm["rss_mib"][name],
            "rss_mib_at_half": half["rss_mib"][name],
            "rss_mib_at_end": last["rss_mib"][name],
            "slope_mib_per_min_after_warmup": None if slopes[0] is None else round(slopes[0], 1),
            "slope_mib_per_min_second_half": None if slopes[1] is None else round(slopes[1], 1),
        }
        if "cpu_s" in last and last["produced"] > warm["produced"]:
            out[name]["cpu_s_per_1k_events_after_warmup"] = round(
                1000 * (last["cpu_s"][name] - warm["cpu_s"][name]) / (last["produced"] - warm["produced"]), 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/movielens-1m")
    parser.add_argument("--rate", type=float, default=2000.0)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--every", type=float, default=15.0)
    parser.add_argument("--encoder", default="minilm", choices=["minilm", "hashing"])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--store-flush-interval-s", type=float, default=None,
                        help="the embedded store's qdrant.flush_interval_s (default: the setting's default)")
    parser.add_argument("--rocksdb-write-buffer-mib", type=int, default=None,
                        help="the stream worker's streams.rocksdb_write_buffer_mib (default: the setting's default)")
    parser.add_argument("--limit", type=int, default=None,
                        help="replay only the first LIMIT events of the dataset, round after round (a shorter warm-up)")
    args = parser.parse_args()
    samples: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="gfm-soak-") as tmp:
        settings = make_settings(Path(tmp), encoder=args.encoder, split=False)  # the shape its results measured
        if args.store_flush_interval_s is not None:
            qdrant = settings.qdrant.model_copy(update={"flush_interval_s": args.store_flush_interval_s})
            settings = settings.model_copy(update={"qdrant": qdrant})
        if args.rocksdb_write_buffer_mib is not None:
            streams = settings.streams.model_copy(update={"rocksdb_write_buffer_mib": args.rocksdb_write_buffer_mib})
            settings = settings.model_copy(update={"streams": streams})
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
            seen = Seen()
            events = endless(args.data, seen, args.limit)
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
                    worker = worker_counters(port, (
                        "gfm_stream_events_total", "gfm_graph_pairs_published_total", "gfm_graph_pairs_total",
                        "gfm_graph_pairs_redelivered_total", "gfm_rocksdb_memtable_bytes",
                        "gfm_rocksdb_block_cache_bytes"))
                    _, health = http_json(f"{stack.api_url}/healthz")
                    refresher = health.get("refresher", {})
                    sample = {
                        "t_s": round(now - started, 1),
                        "produced": produced,
                        # None when the worker's metrics did not answer in time (a busy worker), not a lag
                        "events_lag": None if worker is None else produced - worker["gfm_stream_events_total"],
                        "pairs_lag": None if worker is None else worker["gfm_graph_pairs_published_total"]
                        - worker["gfm_graph_pairs_total"] - worker["gfm_graph_pairs_redelivered_total"],
                        "pending_items": refresher.get("pending_items"),
                        "pending_users": refresher.get("pending_users"),
                        "users_seen": len(seen.users),
                        "items_seen": len(seen.items),
                        "store_disk_mib": round(disk_mib(settings.qdrant.path)),
                        "rss_mib": {name: round(rss_mib(p.pid)) for name, p in stack.processes.items()},
                        "rss_file_mib": {name: round(rss_mib(p.pid, "RssFile"))
                                         for name, p in stack.processes.items()},
                        "cpu_s": {name: round(cpu_seconds(p.pid), 1) for name, p in stack.processes.items()},
                        # the stream worker's RocksDB memtables and block caches, all tables and partitions
                        "rocksdb_memtables_mib": None if worker is None
                        else round(worker["gfm_rocksdb_memtable_bytes"] / (1 << 20), 1),
                        "rocksdb_block_cache_mib": None if worker is None
                        else round(worker["gfm_rocksdb_block_cache_bytes"] / (1 << 20), 1),
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
    summary = summarise(samples, half_s=args.minutes * 30)
    results = {
        "dataset": args.data.resolve().name,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": "python " + " ".join(sys.argv),
        "rate": args.rate,
        "minutes": args.minutes,
        "encoder": args.encoder,
        "limit": args.limit,
        "store_flush_interval_s": settings.qdrant.flush_interval_s,
        "rocksdb_write_buffer_mib": settings.streams.rocksdb_write_buffer_mib,
        "restarts": restarts,
        "max_events_lag": max((s["events_lag"] for s in samples if s["events_lag"] is not None), default=None),
        "max_pairs_lag": max((s["pairs_lag"] for s in samples if s["pairs_lag"] is not None), default=None),
        "metrics_unanswered": sum(s["events_lag"] is None for s in samples),
        "max_rocksdb_memtables_mib": max((s["rocksdb_memtables_mib"] for s in samples
                                          if s["rocksdb_memtables_mib"] is not None), default=None),
        "max_pending_users": max((s["pending_users"] or 0) for s in samples),
        "max_pending_items": max((s["pending_items"] or 0) for s in samples),
        "rss": summary,
        "samples": samples,
    }
    out = args.out or ROOT / "bench" / "results" / f"soak-{results['dataset']}.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
