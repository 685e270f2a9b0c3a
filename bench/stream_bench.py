"""Stream benchmark: agent throughput on a dataset's events, and event -> fresh user vector latency.

    python bench/stream_bench.py --data ../shared/data/movielens-1m [--limit N] [--rate R] [--seconds S]

Phase 1 (throughput): the events are produced into a fresh tansu broker first, then the Faust worker starts
and we time how fast its agents drain them (metrics scraped from the worker every 0.25 s). Phase 2
(latency): worker and refresher (embedded Qdrant, in this process as in ``gfm worker api``) run, serving the
trained 2T-HGNN of ``--model-dir`` (text propagation without it); the catalogue is embedded; events are replayed at
a fixed rate. Timed, each from the produce time of the earliest event of a user's (or item's) stream micro-batch
(its Kafka timestamp):

* *user state written*: until the refresher has upserted the user's state that includes the event; split into
  the stream worker's share (until the user-update request was produced: its Kafka timestamp) and the time from
  that request's production to the refresher reading it;
* *fresh user vector* (with ``--query-every``): until the first answer computed from that state is complete: for
  one user in ``N`` (by a hash of the id), a query thread asks, as soon as the state is written, what the API's
  recommend route computes (the stored state read, the user's vector composed from their items' stored inputs,
  a filtered top-10 search of the type of the user's latest item, consumed items excluded);
* *item vectors upserted*: until the vector of every item the event's adjacency change affects is upserted (the
  item, and the frontier it reaches, drained over later batches); split into the time until the refresher reads
  the item's update (the edges window, the edges worker, the broker, the refresher's poll:
  ``of_which_event_to_item_update_read_s``, per item update read) and what follows in the refresher.

Results go to ``bench/results/stream-<dataset>.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import queue
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import zlib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from prometheus_client import CollectorRegistry  # noqa: E402

from models.datasets import load_items  # noqa: E402
from monitoring.metrics import RefresherMetrics  # noqa: E402
from streams.records import ListenEvent  # noqa: E402
from tests.conftest import make_settings  # noqa: E402
from workers.kafka_io import (  # noqa: E402
    EventSink,
    ReplaySummary,
    dataset_events,
    ensure_topics,
    make_producer,
    publish_catalog,
    replay,
)
from workers.refresher import Refresher, RefresherLoop  # noqa: E402
from workers.services import build_encoder, build_model, build_store, tune_gc  # noqa: E402
from workers.settings import Settings  # noqa: E402
from workers.stack import edges_worker, settings_env, start_broker  # noqa: E402
from workers.statecheck import (  # noqa: E402
    TopicMirror,
    changelog_topics,
    compare,
    fold_pairs_topic,
    reference,
    stream_levels,
    stream_state,
)


def scrape(port: int) -> dict[str, float]:
    """The worker's metrics as ``{sample line name with labels: value}``."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("gfm_") and " " in line:
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def events_seen(metrics: dict[str, float]) -> float:
    return sum(v for k, v in metrics.items() if k.startswith("gfm_stream_events_total{"))


def start_worker(settings: Settings) -> subprocess.Popen[bytes]:
    settings.var_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **settings_env(settings)}
    log = (settings.var_dir / f"streams-{settings.streams.role}.log").open("ab")
    return subprocess.Popen([sys.executable, "-m", "workers.cli", "worker", "streams"], env=env,
                            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)


def worker_settings(settings: Settings) -> list[Settings]:
    """The stream workers of the deployment: one, or the events and the edges worker when split."""
    return [settings, edges_worker(settings)] if settings.streams.split else [settings]


def scrape_all(settings: Settings) -> dict[str, float]:
    """Every stream worker's metrics, summed."""
    total: dict[str, float] = {}
    for each in worker_settings(settings):
        for name, value in scrape(each.streams.own_metrics_port).items():
            total[name] = total.get(name, 0.0) + value
    return total


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a running process (``/proc/<pid>/stat``): a figure the other processes on a
    shared machine do not inflate, unlike wall-clock time."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def throughput(data: Path, limit: int | None, root: Path, live: bool, check: bool, rate: float | None = None,
               **streams: Any) -> dict[str, Any]:
    """Time the agents on ``limit`` events.

    Preloaded (``live=False``): the events are in Kafka before the worker starts; times run from the first event
    the worker reads. Live: the worker is up and idle first (a warm-up preview event went through), then the
    events are produced as fast as the producer can; times run from the first event produced, so the figure is
    end to end, production included. With ``check``, the state the worker built (its changelogs) is compared with
    ``build_graph`` on the same events (see :mod:`workers.statecheck`).
    """
    settings = make_settings(root / "throughput", **streams)
    broker = start_broker(settings.kafka.bootstrap, root / "broker1.log")
    workers: list[subprocess.Popen[bytes]] = []
    try:
        ensure_topics(settings.kafka)
        producer = make_producer(settings.kafka)
        sink = EventSink(producer, settings.kafka, pack_size=200)
        events = [e for e in dataset_events(data, limit)[0] if e is not None]
        produced: list[ReplaySummary] = []

        def produce() -> None:
            produced.append(replay(iter(events), sink, len(events), rate=rate, progress=False))

        if live:
            workers = [start_worker(s) for s in worker_settings(settings)]
            warm_up(sink, settings.streams.metrics_port, workers,
                    settings.streams.edges_metrics_port if settings.streams.split else None)
        else:
            produce()
        started = time.monotonic()
        cpu_before = [cpu_seconds(w.pid) for w in workers]
        if live:
            producer_thread = threading.Thread(target=produce, daemon=True)
            producer_thread.start()
        else:
            workers = [start_worker(s) for s in worker_settings(settings)]
        warm_ups = 2 if settings.streams.split else 1
        first = last = None
        seen = 0.0
        pairs_last_change = pairs = 0.0
        deadline = time.monotonic() + 1800
        while time.monotonic() < deadline:
            time.sleep(0.25)
            if any(w.poll() is not None for w in workers):
                raise RuntimeError(f"a stream worker exited; see {settings.var_dir}/streams-*.log")
            try:
                metrics = scrape_all(settings)
            except OSError:
                continue
            now = time.monotonic()
            count = events_seen(metrics) - (warm_ups if live else 0)
            if count > 0 and first is None:
                first = (now, count)
                if not live:
                    cpu_before = [cpu_seconds(w.pid) for w in workers]
            if count > seen:
                seen, last = count, now
            new_pairs = metrics.get("gfm_graph_pairs_total", 0.0) + metrics.get("gfm_trend_consumptions_total", 0.0)
            if new_pairs > pairs:
                pairs, pairs_last_change = new_pairs, now
            # done when every published pair is merged and every consumption folded into its item's levels
            published = (metrics.get("gfm_graph_pairs_published_total", 0)
                         + metrics.get('gfm_stream_events_total{outcome="consumed"}', 0))
            if produced and seen >= produced[0].sent and pairs >= published:
                break
            if first is not None and now - max(last or 0, pairs_last_change) > 60:
                raise RuntimeError(f"no progress for 60 s at {seen} events; see {settings.var_dir}")
        assert first is not None and last is not None
        cpu_each = [cpu_seconds(w.pid) - before for w, before in zip(workers, cpu_before, strict=True)]
        cpu = sum(cpu_each)
        origin = started if live else first[0]
        done = max(last, pairs_last_change) - origin
        result: dict[str, Any] = {
            "mode": "live" if live else "preloaded",
            "produce_rate": rate,
            "settings": streams,
            "events": seen,
            "produced_events_per_s": round(produced[0].events_per_s),
            "events_applied_s": round(last - origin, 2),
            "graph_done_s": round(done, 2),
            "events_per_s_end_to_end": round(seen / done),
            "pairs_merged": metrics.get("gfm_graph_pairs_total", 0.0),
            "consumptions_folded": metrics.get("gfm_trend_consumptions_total", 0.0),
            "worker_peak_rss_mib": round(max(peak_rss_mib(w.pid) for w in workers)),
            "broker_peak_rss_mib": round(peak_rss_mib(broker.pid)),
            "worker_cpu_s": round(cpu, 2),
            "events_per_worker_cpu_s": round(seen / cpu),
        }
        if len(workers) > 1:  # split: the events and the edges worker
            result["per_worker"] = {s.streams.role: {"cpu_s": round(c, 2), "peak_rss_mib": round(peak_rss_mib(w.pid))}
                                    for s, w, c in zip(worker_settings(settings), workers, cpu_each, strict=True)}
        if check:
            check_started = time.monotonic()
            result["state_check"] = check_state(settings, [WARM_UP_CONSUMPTION, *events] if live and warm_ups == 2
                                                else events)
            result["state_check"]["check_s"] = round(time.monotonic() - check_started, 1)
        return result
    finally:
        for w in workers:
            w.terminate()
        for w in workers:
            w.wait(20)
        broker.terminate()
        broker.wait(10)


WARM_UP_CONSUMPTION = ListenEvent(event_id="bench:warm-up-2", user_id="bench:warm-up", item_id="bench:warm-up",
                                  item_type="bench", ts=1.0)
"""Sent after the preview when the edges agent runs apart, so that its worker has joined too before the clock
starts; a real consumption (its item's trend levels), so the state check folds it with the events."""


def warm_up(sink: EventSink, metrics_port: int, workers: list[subprocess.Popen[bytes]],
            edges_port: int | None = None) -> None:
    """Wait until the idle worker has processed one event (a preview: no state change), so that start-up and
    the consumer group's join are not timed; with ``edges_port`` (split), then until the edges worker has folded
    :data:`WARM_UP_CONSUMPTION`."""
    sink.send([ListenEvent(event_id="bench:warm-up", user_id="bench:warm-up", item_id="bench:warm-up",
                           item_type="bench", ts=1.0, kind="preview")])
    wait_for(lambda: events_seen(scrape(metrics_port)) >= 1, workers, "the worker to process the warm-up event")
    if edges_port is not None:
        sink.send([WARM_UP_CONSUMPTION])
        wait_for(lambda: scrape(edges_port).get("gfm_trend_consumptions_total", 0.0) >= 1, workers,
                 "the edges worker to fold the warm-up consumption")


def wait_for(done: Any, workers: list[subprocess.Popen[bytes]], what: str) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if any(w.poll() is not None for w in workers):
            raise RuntimeError(f"a stream worker exited while waiting for {what}")
        try:
            if done():
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"timed out after 120 s waiting for {what}")


def check_state(settings: Settings, events: list[ListenEvent]) -> dict[str, Any]:
    """The worker's state (its changelogs) against ``build_graph`` on the same events."""
    pairs_topic = settings.kafka.topic("pairs")
    mirror = TopicMirror(settings.kafka.bootstrap, [*changelog_topics(settings.streams.app_id), pairs_topic],
                         keep_log=[pairs_topic])
    try:
        mirror.refresh(idle_s=2.0, limit_s=600.0)
        users, adjacency = stream_state(mirror, settings.streams.app_id)
        levels = stream_levels(mirror, settings.streams.app_id)
        pairs_fold = fold_pairs_topic(mirror, pairs_topic, settings.streams.graph_config().max_degree)
    finally:
        mirror.close()
    expected = reference(events, settings.streams.graph_config())
    return compare(users, adjacency, expected.graph, expected.uncapped, pairs_fold, levels, expected.levels).as_dict()


class Recorder:
    """Stands in for the freshness histogram and keeps every observation."""

    def __init__(self) -> None:
        self.values: list[float] = []

    def observe(self, value: float) -> None:
        self.values.append(value)


class QueryProbe:
    """Asks for a sample of users' recommendations as soon as the refresher writes their state, as the API's
    recommend route computes them, and records event -> answer latency and the query's own cost."""

    def __init__(self, store: Any, users: Any, every: int) -> None:
        self.store = store
        self.users = users
        self.every = every
        self.asked: queue.Queue[tuple[str, float] | None] = queue.Queue()
        self.latency: list[float] = []
        self.query_s: list[float] = []
        self.thread = threading.Thread(target=self.run, name="query-probe", daemon=True)

    def written(self, points: Any) -> None:
        for point in points:
            if point.event_ts > 0 and zlib.crc32(point.user_id.encode()) % self.every == 0:
                self.asked.put((point.user_id, point.event_ts))

    def run(self) -> None:
        from models.graph import recent_items

        while (asked := self.asked.get()) is not None:
            user_id, event_ts = asked
            started = time.perf_counter()
            user = self.users(self.store.get_user(user_id))
            latest = recent_items(user.state(), 1)
            if user.vector.any():
                self.store.search(user.vector, 10, item_type=latest[0][1] if latest else None,
                                  exclude_points=user.excluded_points())
            self.query_s.append(time.perf_counter() - started)
            self.latency.append(time.time() - event_ts)


def _quantiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    q = statistics.quantiles(ordered, n=100) if len(ordered) > 1 else [float("nan")] * 99
    return {"n": len(ordered), "p50": round(q[49], 4), "p95": round(q[94], 4), "p99": round(q[98], 4),
            "max": round(ordered[-1], 4) if ordered else float("nan")}


def latency(data: Path, rate: float, seconds: float, encoder: str, root: Path, model_dir: Path | None = None,
            text_cache: Path | None = None, query_every: int = 0, split: bool | None = None,
            windows: dict[str, float] | None = None) -> dict[str, Any]:
    extra: dict[str, object] = dict(windows or {})
    if split is not None:
        extra["split"] = split
    settings = make_settings(root / "latency", encoder=encoder, model="gfm" if model_dir else "textprop", **extra)
    settings = settings.model_copy(update={"model": settings.model.model_copy(update={
        "dir": model_dir, "text_cache": text_cache or settings.model.text_cache})})
    broker = start_broker(settings.kafka.bootstrap, root / "broker2.log")
    workers: list[subprocess.Popen[bytes]] = []
    loop = None
    probe = None
    try:
        ensure_topics(settings.kafka)
        workers = [start_worker(s) for s in worker_settings(settings)]
        producer = make_producer(settings.kafka)
        published = publish_catalog(producer, settings.kafka, load_items(data))
        metrics = RefresherMetrics.create(CollectorRegistry())
        recorder, item_recorder = Recorder(), Recorder()
        metrics.freshness_seconds = recorder  # type: ignore[assignment]
        metrics.item_freshness_seconds = item_recorder  # type: ignore[assignment]
        store = build_store(settings)
        encoder_ = build_encoder(settings, progress=True)
        model = build_model(settings, encoder_)
        if query_every:
            from vectorstore.compose import ComposedUsers

            probe = QueryProbe(store, ComposedUsers(store, model.composer), query_every)
            upsert_users = store.upsert_users

            def upsert_and_ask(points: Any) -> None:
                upsert_users(points)
                probe.written(points)  # type: ignore[union-attr]

            store.upsert_users = upsert_and_ask  # type: ignore[method-assign]
            probe.thread.start()
        batch_recorder = Recorder()  # every refresher micro-batch (items' thread), seconds
        metrics.batch_seconds = batch_recorder  # type: ignore[assignment]
        refresher = Refresher(store, model, encoder_, metrics, settings.refresher)
        refreshed: list[tuple[int, float]] = []  # per item refresh: items recomputed and upserted, seconds
        refresh_items = refresher._refresh_items

        def timed_refresh(item_ids: list[str], origins: dict[str, float]) -> None:
            began = time.perf_counter()
            refresh_items(item_ids, origins)
            refreshed.append((len(item_ids), time.perf_counter() - began))

        refresher._refresh_items = timed_refresh  # type: ignore[method-assign]
        tune_gc()  # as `gfm worker api` does (workers/services.py)
        loop = RefresherLoop(refresher, settings.kafka, on_caught_up=gc.freeze)
        stream_part: list[float] = []  # event produced -> its user-update produced (the stream worker's share)
        polled_part: list[float] = []  # user-update produced -> read by the refresher
        item_read_part: list[float] = []  # earliest event of an item update's edges batch -> read by the refresher
        users_topic = settings.kafka.topic("user-updates")
        items_topic = settings.kafka.topic("item-updates")
        collect_records = loop._collect

        def timed_collect(polled: Any) -> Any:
            now = time.time()
            for tp, batch in polled.items():
                if tp.topic == users_topic:
                    for record in batch:
                        found = re.search(rb'"event_ts":([0-9.eE+-]+)', record.value[:400])
                        if found and float(found.group(1)) > 0:
                            stream_part.append(record.timestamp / 1000.0 - float(found.group(1)))
                        polled_part.append(now - record.timestamp / 1000.0)
                elif tp.topic == items_topic:  # its Kafka timestamp is the earliest event time behind it
                    item_read_part.extend(now - r.timestamp / 1000.0 for r in batch if r.timestamp > 0)
            return collect_records(polled)

        loop._collect = timed_collect  # type: ignore[method-assign]
        loop.start()
        started = time.monotonic()
        while len(refresher.graph) < published or not refresher.idle:
            time.sleep(0.2)
            if loop.error:
                raise loop.error
        print(f"catalogue of {published} items embedded in {time.monotonic() - started:.1f} s", flush=True)
        time.sleep(8)  # let the worker join its group before the clock starts
        recorder.values.clear()
        item_recorder.values.clear()
        batch_recorder.values.clear()
        refreshed.clear()
        stream_part.clear()
        polled_part.clear()
        item_read_part.clear()
        batches_before = refresher.metrics.batches._value.get()
        pending: list[int] = []
        stop = threading.Event()

        def watch() -> None:
            while not stop.wait(0.5):
                pending.append(len(refresher.pending_items))

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        events, _ = dataset_events(data, int(rate * seconds))
        clock = time.monotonic()
        sent = replay(events, EventSink(producer, settings.kafka), int(rate * seconds), rate=rate, progress=False)
        drained = time.monotonic()
        while time.monotonic() - drained < 60 and (not refresher.idle or (probe and not probe.asked.empty())):
            time.sleep(0.2)
        ended = time.monotonic()
        time.sleep(5)
        stop.set()
        result: dict[str, Any] = {
            "rate": rate,
            "seconds": seconds,
            "split": settings.streams.split,
            "take_within_s": settings.streams.take_within_s,
            "pairs_take_within_s": settings.streams.pairs_take_within_s,
            "dependents_per_batch": settings.refresher.dependents_per_batch,  # GFM_REFRESHER__DEPENDENTS_PER_BATCH
            "events_sent": sent.sent,
            "achieved_rate": round(sent.events_per_s),
            "model": model.version,
            "encoder": encoder,
            "refresh_batches": refresher.metrics.batches._value.get() - batches_before,
            "user_state_written_s": _quantiles(recorder.values),
            "of_which_event_to_user_update_produced_s": _quantiles(stream_part),
            "of_which_user_update_produced_to_read_s": _quantiles(polled_part),
            "of_which_event_to_item_update_read_s": _quantiles(item_read_part),
            "item_vectors_upserted_s": _quantiles(item_recorder.values),
            "pending_items_max": max(pending, default=0),
            # the items' thread: every micro-batch (reading, graph updates, the frontier, the item refresh), and
            # the item refreshes alone (the model on the direct items and up to dependents_per_batch of the
            # frontier, then the upsert) with how many items each recomputed
            "refresh_batch_s": _quantiles(batch_recorder.values),
            "item_refresh_s": _quantiles([t for _, t in refreshed]),
            "items_per_item_refresh": _quantiles([float(n) for n, _ in refreshed]),
            "item_refresh_busy_share": round(sum(t for _, t in refreshed) / max(1e-9, ended - clock), 3),
            "pending_items_end": len(refresher.pending_items),
        }
        if probe is not None:
            probe.asked.put(None)
            probe.thread.join(30)
            result["fresh_user_vector_s"] = _quantiles(probe.latency)
            result["query_compose_and_search_s"] = _quantiles(probe.query_s)
            result["query_every"] = query_every
        return result
    finally:
        if probe is not None and probe.thread.is_alive():
            probe.asked.put(None)
        if loop is not None:
            loop.stop()
            loop.refresher.store.close()
        for w in workers:
            w.terminate()
        for w in workers:
            w.wait(20)
        broker.terminate()
        broker.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/movielens-1m")
    parser.add_argument("--limit", type=int, default=None, help="events for the throughput phase (all)")
    parser.add_argument("--rate", type=float, default=1000.0, help="events/s in the latency phase")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of the latency phase")
    parser.add_argument("--encoder", default="minilm", choices=["minilm", "hashing"])
    parser.add_argument("--skip", choices=["throughput", "latency"], default=None)
    parser.add_argument("--model-dir", type=Path, default=None,
                        help="latency phase: serve this trained 2T-HGNN (`gfm train`); text propagation without it")
    parser.add_argument("--text-cache", type=Path, default=None, help="the text encoder's cache directory")
    parser.add_argument("--query-every", type=int, default=5,
                        help="latency phase: ask for the recommendations of one user in N as their state is written "
                             "(0: none)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--producer-batch-bytes", type=int, default=None,
                        help="the worker's producer_max_batch_size (default: the settings' default, 1 for tansu)")
    parser.add_argument("--take-max", type=int, default=None, help="messages per agent micro-batch")
    parser.add_argument("--mode", choices=["live", "preloaded"], default="live",
                        help="live: events produced while the worker runs, timed from the first produced (end to "
                             "end); preloaded: timed from the first event the worker reads")
    parser.add_argument("--produce-rate", type=float, default=None,
                        help="live mode: produce at this many events/s (default: as fast as possible)")
    parser.add_argument("--pairs-within", type=float, default=None, help="the worker's pairs_take_within_s")
    parser.add_argument("--take-within", type=float, default=None,
                        help="the worker's take_within_s (the events agent's batch window)")
    parser.add_argument("--split", action=argparse.BooleanOptionalAction, default=None,
                        help="the edges agent in a stream worker of its own (GFM_STREAMS__SPLIT; default: the "
                             "settings' default, split); --no-split: one worker runs both agents")
    parser.add_argument("--no-check", action="store_true",
                        help="skip comparing the worker's state with build_graph on the same events")
    args = parser.parse_args()
    results: dict[str, object] = {
        "dataset": args.data.resolve().name,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": " ".join(sys.argv),
    }
    tmp = tempfile.mkdtemp(prefix="gfm-bench-")  # kept when a phase fails, for its logs
    windows = {k: v for k, v in {"pairs_take_within_s": args.pairs_within,
                                 "take_within_s": args.take_within}.items() if v is not None}
    if args.skip != "throughput":
        overrides = {**windows, **{k: v for k, v in {"producer_max_batch_size": args.producer_batch_bytes,
                                                     "take_max": args.take_max,
                                                     "split": args.split}.items() if v is not None}}
        results["throughput"] = throughput(args.data, args.limit, Path(tmp), args.mode == "live", not args.no_check,
                                           args.produce_rate, **overrides)
        print(json.dumps(results["throughput"], indent=2), flush=True)
    if args.skip != "latency":
        results["latency"] = latency(args.data, args.rate, args.seconds, args.encoder, Path(tmp), args.model_dir,
                                     args.text_cache, args.query_every, args.split, windows)
        print(json.dumps(results["latency"], indent=2), flush=True)
    shutil.rmtree(tmp, ignore_errors=True)
    out = args.out or ROOT / "bench" / "results" / f"stream-{results['dataset']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
