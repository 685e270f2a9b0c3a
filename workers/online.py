"""``gfm online-eval``: the served 2T-HGNN evaluated online, fresh versus frozen versus periodic.

1. Train (or reuse from ``<var_dir>/models``) the unified 2T-HGNN on the events before the time split's cut.
2. Start the embedded stack (tansu, the Faust worker, the API with the refresher and the embedded store) serving
   it, publish the catalogue, and replay every event before the cut through Kafka as fast as the stack takes
   them; wait until the stream and the refresher have applied all of it (consumer lag 0, frontier empty).
   That is the cut state: the stored vectors equal a full recompute on the pre-cut graph.
3. ``frozen``: ask the API for every target's top 10 now (the vectors frozen at the cut serve the same answer at
   any later time).
4. Replay the test period at a fixed rate. Right before producing a target event (every earlier event having
   been produced and acknowledged by the broker), ask the API, as a user would, for the user's top 10 of the
   target's type: ``live``. Every ``every`` events, stop producing, wait until the stack has applied everything
   (its vectors are then a full recompute on the graph so far), and ask for the targets of the next ``every``
   events: ``periodic`` (checkpoint 0 is the cut, so those answers are the frozen ones).
5. Score the answers with the evaluator's metrics, beside the offline evaluator on the same users (the model
   as trained, ranking with what was known at the cut), and write ``reports/online-<dataset>.json`` and ``.md``.

Everything goes through the stack's HTTP API and its topics; nothing here reads the refresher's internals.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from models.datasets import load_items
from models.evaluate import K_HIT, Split, load_split
from models.online import (
    MODES,
    Answers,
    Target,
    agreement,
    checkpoint_of,
    offline_answers,
    rank_in_list,
    score_answers,
    target_events,
)
from monitoring.lag import KafkaLag, pipeline_sources
from streams.records import ListenEvent
from workers.kafka_io import EventSink, dataset_events, make_producer, publish_catalog, replay
from workers.settings import Settings
from workers.stack import Stack, http_json
from workers.statecheck import stream_metric

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OnlineOptions:
    """What part of the test period is replayed, and how.

    Attributes:
        rate: test events produced per second (the live mode's load).
        limit_events: replay only the first N test events (None: the whole test period).
        every: the periodic mode's recompute period, in test events.
        settle_timeout_s: longest wait for the stack to apply everything (the cut state, each checkpoint).
        partitions: Kafka partitions of the stack's topics (None: the settings'). With one, the pairs topic
            holds every co-interaction pair in event order, so the served graph is ``build_graph``'s exactly;
            with more, each item's pairs arrive in the order of the partitions' interleaving, and the degree
            rule's prune can keep other neighbours (see the report's parity note).
    """

    rate: float = 100.0
    limit_events: int | None = 20_000
    every: int = 5_000
    settle_timeout_s: float = 1800.0
    partitions: int | None = None

    def __post_init__(self) -> None:
        if self.rate <= 0:
            raise ValueError(f"rate={self.rate}: test events per second must be positive")
        if self.limit_events is not None and self.limit_events < 1:
            raise ValueError(f"limit_events={self.limit_events}: replay at least one test event")
        if self.every < 1:
            raise ValueError(f"every={self.every}: a recompute period must be at least one event")
        if self.partitions is not None and self.partitions < 1:
            raise ValueError(f"partitions={self.partitions}: a topic needs at least one partition")


@dataclass
class Answer:
    """One answered question."""

    items: list[str]
    asked_at: float
    """Wall clock (unix seconds) of the query."""
    seconds: float
    """HTTP round trip."""
    updated_at: float | None
    """The answer's ``updated_at`` (when the user's point was last written)."""
    since_last_event_s: float | None = None
    """Live: seconds since the user's previous event was produced (None when it was before the test replay)."""
    written_after_last_event: bool | None = None
    """Live: whether the user's point was written after their previous event was produced."""


@dataclass
class Run:
    """What the online run measured (the raw material of the report)."""

    targets: list[Target]
    answers: dict[str, dict[tuple[str, str], Answer]] = field(default_factory=lambda: {m: {} for m in MODES})
    failures: dict[str, list[str]] = field(default_factory=lambda: {m: [] for m in MODES})
    timings: dict[str, float] = field(default_factory=dict)
    settles: list[dict[str, float]] = field(default_factory=list)
    lag_samples: list[dict[str, float]] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)


def stack_settings(settings: Settings, root: Path, model_dir: Path, ports: Callable[[], int],
                   partitions: int | None = None) -> Settings:
    """The settings of the evaluation's own stack: under ``root``, on free loopback ports, serving ``model_dir``,
    with exact vector search (so that the served ranking can be compared with the evaluator's), on ``partitions``
    Kafka partitions when given."""
    kafka = {"bootstrap": f"127.0.0.1:{ports()}", "embedded_broker": True}
    if partitions is not None:
        kafka["partitions"] = partitions
    return settings.model_copy(update={
        "var_dir": root,
        "kafka": settings.kafka.model_copy(update=kafka),
        "api": settings.api.model_copy(update={"host": "127.0.0.1", "port": ports()}),
        "streams": settings.streams.model_copy(update={"metrics_port": ports(), "edges_metrics_port": ports(),
                                                       "datadir": None}),
        "qdrant": settings.qdrant.model_copy(update={"url": None, "path": root / "qdrant", "hnsw_ef": None}),
        "model": settings.model.model_copy(update={"kind": "gfm", "dir": model_dir}),
    })


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Pipeline:
    """The stack seen from outside: its API, its stream worker's metrics and its consumer groups' lag."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        settings = stack.settings
        self.lag = KafkaLag(settings.kafka.bootstrap, pipeline_sources(
            settings.kafka.topic_prefix, settings.streams.app_id, settings.streams.edges_group), cache_s=0.0)

    def health(self) -> dict[str, Any]:
        """The API's ``/healthz`` body (empty when it does not answer)."""
        try:
            return http_json(f"{self.stack.api_url}/healthz", timeout=10)[1] or {}
        except OSError:
            return {}

    def position(self, produced: int) -> dict[str, float]:
        """How far behind the stack is: events not yet read by the stream worker, records not yet read per
        consumer group (from Kafka offsets), and the refresher's pending frontier."""
        consumed = stream_metric(self.stack.settings.streams.metrics_port, "gfm_stream_events_total")
        if consumed == 0 and produced > 0:  # stream_metric's answer when the worker's metrics did not answer
            raise LookupError("the stream worker's metrics did not answer")
        rows = self.lag.measure()
        refresher = self.health().get("refresher", {})
        return {
            "events_lag": max(0.0, produced - consumed),
            "streams_lag": float(sum(r.lag for r in rows if r.consumer == "streams")),
            "refresher_lag": float(sum(r.lag for r in rows if r.consumer == "refresher")),
            "pending_items": float(refresher.get("pending_items", 0) or 0),
            "pending_users": float(refresher.get("pending_users", 0) or 0),
        }

    def settle(self, produced: int, timeout_s: float) -> dict[str, float]:
        """Wait until everything produced is applied: every event read, every consumer group's lag 0, the
        frontier empty, twice in a row one second apart. Returns the wait and what the stack was behind by."""
        started = time.monotonic()
        first = None
        calm = 0
        while True:
            self.stack.check()
            try:
                position = self.position(produced)
            except LookupError:
                time.sleep(1.0)
                continue
            first = first or position
            idle = position["events_lag"] <= 0 and all(
                position[k] == 0 for k in ("streams_lag", "refresher_lag", "pending_items", "pending_users"))
            calm = calm + 1 if idle else 0
            if calm >= 2:
                return {"seconds": round(time.monotonic() - started, 2),
                        **{f"behind_{k}": v for k, v in first.items()}}
            if time.monotonic() - started > timeout_s:
                raise TimeoutError(f"the stack did not apply {produced} events within {timeout_s:.0f} s: {position}")
            time.sleep(1.0)

    def ask(self, user_id: str, item_type: str, k: int = 10) -> Answer:
        """The user's top ``k`` of ``item_type`` from the API, as a user would ask."""
        url = f"{self.stack.api_url}/users/{quote(user_id, safe='')}/recommendations?type={quote(item_type)}&k={k}"
        asked = time.time()
        started = time.perf_counter()
        status, body = http_json(url, timeout=30)
        seconds = time.perf_counter() - started
        if status != 200:
            raise LookupError(f"GET {url} answered {status}: {body}")
        return Answer([i["item_id"] for i in body["items"]], asked, seconds, body.get("updated_at"))


class LagSampler(threading.Thread):
    """Samples :meth:`Pipeline.position` every ``every_s`` while the test period is replayed."""

    def __init__(self, pipeline: Pipeline, produced: Callable[[], int], every_s: float = 2.0) -> None:
        super().__init__(daemon=True, name="online-lag")
        self.pipeline, self.produced, self.every_s = pipeline, produced, every_s
        self.samples: list[dict[str, float]] = []
        self.paused = threading.Event()
        self.done = threading.Event()
        self.started_at = time.monotonic()

    def run(self) -> None:
        while not self.done.wait(self.every_s):
            if self.paused.is_set():
                continue
            try:
                sample = self.pipeline.position(self.produced())
            except Exception as error:  # a sample lost is reported by its absence, not a failed run
                log.debug("lag sample failed: %s", error)
                continue
            self.samples.append({"t_s": round(time.monotonic() - self.started_at, 1), **sample})


def run_online_eval(settings: Settings, data: Path, options: OnlineOptions, command: str, out_dir: Path,
                    model_dir: Callable[[Any], Path], ports: Callable[[], int] = free_port) -> Path:
    """Run the online evaluation of ``data`` (see the module docstring); returns the JSON report's path.

    Args:
        settings: the entry point's settings (encoder, text cache, stream and refresher bounds, ``var_dir``).
        data: a dataset folder with the time-split protocol.
        options: what to replay and how.
        command: the command line, for the report.
        out_dir: where ``online-<dataset>.json|md`` go.
        model_dir: given the split, the trained model directory to serve (trained on ``split.train``).
        ports: where free loopback ports come from.
    """
    split = load_split(data)
    if split.protocol != "time-split" or split.cut is None:
        raise ValueError(f"{data}: the online evaluation needs the global time split (a dataset without "
                         f"holdout.tsv); this one uses the {split.protocol} protocol")
    started = time.perf_counter()
    directory = model_dir(split)
    model_seconds = time.perf_counter() - started
    events, _ = dataset_events(data)
    before: list[ListenEvent] = []
    after: list[ListenEvent] = []
    for event in events:
        if event is not None:
            (before if event.ts < split.cut else after).append(event)
    all_targets = target_events(split, [(e.user_id, e.item_id) for e in after])
    replayed = after if options.limit_events is None else after[: options.limit_events]
    targets = [t for t in all_targets if t.position < len(replayed)]
    run = Run(targets)
    run.facts.update(model_dir=str(directory), model_seconds=round(model_seconds, 1), events_before_cut=len(before),
                     test_events=len(after), replayed_events=len(replayed), all_targets=len(all_targets),
                     first_ts=replayed[0].ts if replayed else None, last_ts=replayed[-1].ts if replayed else None)
    root = settings.var_dir / "online" / split.name
    shutil.rmtree(root, ignore_errors=True)  # a stale store would hold another run's vectors
    stack = Stack(stack_settings(settings, root, directory, ports, options.partitions))
    run.facts["partitions"] = stack.settings.kafka.partitions
    stack.start(timeout_s=300)
    try:
        _drive(stack, data, before, replayed, targets, options, run)
    finally:
        stack.stop()
    report = build_report(split, run, options, settings, command, offline=_offline(split, directory, settings))
    return write_report(report, out_dir)


def _drive(stack: Stack, data: Path, before: list[ListenEvent], replayed: list[ListenEvent], targets: list[Target],
           options: OnlineOptions, run: Run) -> None:
    settings = stack.settings
    pipeline = Pipeline(stack)
    producer = make_producer(settings.kafka)
    sink = EventSink(producer, settings.kafka)
    try:
        t0 = time.perf_counter()
        items = publish_catalog(producer, settings.kafka, load_items(data))
        stack.wait_until(lambda: (pipeline.health().get("items") or 0) >= items, options.settle_timeout_s,
                         f"the {items} catalogue items to be stored", interval_s=1.0)
        run.timings["catalogue_s"] = round(time.perf_counter() - t0, 1)
        t0 = time.perf_counter()
        summary = replay(iter(before), sink, len(before), rate=None, progress=False)
        if summary.failed:
            raise RuntimeError(f"{summary.failed} events before the cut were not accepted by the broker")
        run.timings["prefill_produce_s"] = round(time.perf_counter() - t0, 1)
        settled = pipeline.settle(len(before), options.settle_timeout_s)
        run.timings["prefill_applied_s"] = round(time.perf_counter() - t0, 1)
        run.settles.append({"checkpoint": 0, **settled})
        log.info("cut state reached: %d events in %.0f s; asking %d questions (frozen)", len(before),
                 run.timings["prefill_applied_s"], len(targets))
        for target in targets:  # frozen: the cut state's answers; periodic before its first recompute: the same
            _ask(pipeline, target, "frozen", run)
        for target in targets:
            if checkpoint_of(target.position, options.every) == 0 and (key := _key(target)) in run.answers["frozen"]:
                run.answers["periodic"][key] = run.answers["frozen"][key]
        _replay_test(stack, pipeline, sink, len(before), replayed, targets, options, run)
    finally:
        producer.close()


def _key(target: Target) -> tuple[str, str]:
    return target.user_id, target.item_type


def _ask(pipeline: Pipeline, target: Target, mode: str, run: Run) -> Answer | None:
    try:
        answer = pipeline.ask(target.user_id, target.item_type)
    except (LookupError, OSError) as error:
        run.failures[mode].append(f"{target.user_id}/{target.item_type}: {error}")
        return None
    run.answers[mode][_key(target)] = answer
    return answer


def _replay_test(stack: Stack, pipeline: Pipeline, sink: EventSink, produced_before: int,
                 replayed: list[ListenEvent], targets: list[Target], options: OnlineOptions, run: Run) -> None:
    at = {t.position: t for t in targets}
    by_checkpoint: dict[int, list[Target]] = {}
    for target in targets:
        by_checkpoint.setdefault(checkpoint_of(target.position, options.every), []).append(target)
    last_produced: dict[str, float] = {}
    produced = produced_before
    buffer: list[ListenEvent] = []
    tick = max(1, int(options.rate * 0.05))
    sampler = LagSampler(pipeline, lambda: produced, every_s=1.0)
    sampler.start()
    paused_s = 0.0
    started = time.monotonic()

    def flush() -> None:
        nonlocal produced
        if buffer:
            sink.send(buffer, wait=True)
            now = time.time()
            for event in buffer:
                last_produced[event.user_id] = now
            produced += len(buffer)
            buffer.clear()

    try:
        for position, event in enumerate(replayed):
            if position and position % options.every == 0:
                flush()
                sampler.paused.set()
                pause = time.monotonic()
                settled = pipeline.settle(produced, options.settle_timeout_s)
                run.settles.append({"checkpoint": position, **settled})
                for target in by_checkpoint.get(position, []):
                    _ask(pipeline, target, "periodic", run)
                paused_s += time.monotonic() - pause
                sampler.paused.clear()
            question = at.get(position)
            if question is not None:
                flush()
                answer = _ask(pipeline, question, "live", run)
                previous = last_produced.get(question.user_id)
                if answer is not None and previous is not None:
                    answer.since_last_event_s = answer.asked_at - previous
                    answer.written_after_last_event = answer.updated_at is not None and answer.updated_at >= previous
            buffer.append(event)
            if len(buffer) >= tick:
                flush()
            ahead = (position + 1) / options.rate - (time.monotonic() - started - paused_s)
            if ahead > 0:
                time.sleep(ahead)
            if position % 1000 == 0:
                stack.check()
        flush()
        run.timings["test_replay_s"] = round(time.monotonic() - started, 1)
        run.timings["test_replay_paused_s"] = round(paused_s, 1)
        run.timings["test_rate_achieved"] = round(len(replayed) / max(time.monotonic() - started - paused_s, 1e-9), 1)
    finally:
        sampler.done.set()
        sampler.join(10)
        run.lag_samples = sampler.samples


def _offline(split: Split, directory: Path, settings: Settings) -> Callable[[Sequence[Target]], Answers]:
    """The offline evaluator's answers for given targets, from the served model directory."""

    def answers(targets: Sequence[Target]) -> Answers:
        from models.online import served_scorer
        from workers.services import build_encoder

        scorer = served_scorer(split, directory, build_encoder(settings))
        return offline_answers(split, scorer, targets)

    return answers


def _quantiles(values: Sequence[float]) -> dict[str, float] | None:
    if not values:
        return None
    array = np.asarray(values, dtype=np.float64)
    return {"p50": round(float(np.percentile(array, 50)), 3), "p95": round(float(np.percentile(array, 95)), 3),
            "max": round(float(array.max()), 3), "mean": round(float(array.mean()), 3)}


def build_report(split: Split, run: Run, options: OnlineOptions, settings: Settings, command: str,
                 offline: Callable[[Sequence[Target]], Answers]) -> dict[str, Any]:
    """The JSON report: per mode and item type, HR@10 and NDCG@10 online and offline on the same users, the
    agreement of the answers, the lag and what was replayed."""
    offline_all = offline(run.targets)
    modes: dict[str, Any] = {}
    for mode in MODES:
        answered = {k: a.items for k, a in run.answers[mode].items()}
        asked = [t for t in run.targets if _key(t) in answered]
        online_rows = {s.item_type: s for s in score_answers(asked, answered)}
        offline_rows = {s.item_type: s for s in score_answers(asked, offline_all)}
        modes[mode] = {
            "rows": [{**online_rows[t].row(), "offline_hr10": offline_rows[t].row()["hr10"],
                      "offline_ndcg10": offline_rows[t].row()["ndcg10"]} for t in sorted(online_rows)],
            "questions": len(asked),
            "failures": run.failures[mode][:20],
            "failed": len(run.failures[mode]),
            "agreement_with_offline": agreement(answered, offline_all),
            "query_seconds": _quantiles([a.seconds for a in run.answers[mode].values()]),
        }
    questions = [{"user_id": t.user_id, "item_type": t.item_type, "item_id": t.item_id, "position": t.position,
                  **{f"rank_{m}": (rank_in_list(run.answers[m][_key(t)].items[:K_HIT], t.item_id)
                                   if _key(t) in run.answers[m] else None) for m in MODES},
                  "rank_offline": rank_in_list(offline_all[_key(t)][:K_HIT], t.item_id)} for t in run.targets]
    live = list(run.answers["live"].values())
    fresh_known = [a for a in live if a.written_after_last_event is not None]
    lag_keys = ("events_lag", "streams_lag", "refresher_lag", "pending_items", "pending_users")
    return {
        "name": f"online-{split.name}" + (f"-partitions-{options.partitions}" if options.partitions else "")
                + ("-whole-period" if options.limit_events is None else ""),
        "dataset": split.name,
        "protocol": "time-split, next-item targets (../shared/data/README.md)",
        "cut": split.cut,
        "command": command,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "when": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "options": asdict(options),
        "encoder": settings.model.encoder,
        "settings": {"var_dir": str(settings.var_dir), "text_cache": str(settings.model.text_cache)},
        "facts": run.facts,
        "timings": run.timings,
        "modes": modes,
        "questions": questions,
        "live_vs_frozen": agreement({k: a.items for k, a in run.answers["live"].items()},
                                    {k: a.items for k, a in run.answers["frozen"].items()}),
        "freshness": {
            "live_questions_with_an_earlier_test_event": len(fresh_known),
            "user_point_written_after_last_event": round(
                sum(bool(a.written_after_last_event) for a in fresh_known) / max(len(fresh_known), 1), 4),
            "seconds_since_last_event": _quantiles([a.since_last_event_s for a in fresh_known
                                                    if a.since_last_event_s is not None]),
            "lag_during_replay": {k: _quantiles([s[k] for s in run.lag_samples]) for k in lag_keys},
            "lag_samples": len(run.lag_samples),
            "sample_every_s": 1.0,
            "settles": run.settles,
        },
    }


def write_report(report: dict[str, Any], out_dir: Path) -> Path:
    """Write ``<name>.json`` and ``.md`` under ``out_dir`` (``online-<dataset>``, with ``-partitions-<N>`` when
    the partitions were chosen and ``-whole-period`` when the whole test period was replayed); returns the JSON
    path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{report['name']}.json"
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    path.with_suffix(".md").write_text(render_markdown(report))
    return path


MODE_LABEL = {"live": "live incremental refresh", "frozen": "frozen at the cut",
              "periodic": "full recompute every {every} events"}


def render_markdown(report: dict[str, Any]) -> str:
    """The markdown view of an online report."""
    options, facts, timings = report["options"], report["facts"], report["timings"]
    lines = [f"# Online evaluation: {report['dataset']}", "", f"Command: `{report['command']}`", "",
             f"Settings: {json.dumps(report.get('settings', {}))}.", "",
             f"{report['when']}, {report['machine']}, text encoder {report['encoder']}. Protocol: "
             f"{report['protocol']}; cut {report['cut']:.0f}. Kafka partitions: {facts.get('partitions')}.", "",
             f"Replayed {facts['replayed_events']:,} of the {facts['test_events']:,} test events (the first ones, "
             f"ts {facts['first_ts']:.0f} to {facts['last_ts']:.0f}) at {options['rate']:g} events/s (achieved "
             f"{timings.get('test_rate_achieved', 0):g}); {sum(m['questions'] for m in report['modes'].values())} "
             f"answers over {len(report['modes'])} modes, for the targets among them "
             f"({report['modes']['frozen']['questions']} of the period's {facts['all_targets']}).", "",
             "| mode | type | users | HR@10 online | HR@10 offline | NDCG@10 online | NDCG@10 offline | "
             "top-10 lists equal to offline |", "|---|---|---|---|---|---|---|---|"]
    for mode, result in report["modes"].items():
        label = MODE_LABEL[mode].format(every=options["every"])
        same = result["agreement_with_offline"]["identical"]
        for row in result["rows"]:
            lines.append(f"| {label} | {row['item_type']} | {row['users']} | {row['hr10']:.4f} | "
                         f"{row['offline_hr10']:.4f} | {row['ndcg10']:.4f} | {row['offline_ndcg10']:.4f} | "
                         f"{same:.1%} |")
    fresh = report["freshness"]
    lag = fresh["lag_during_replay"]

    def q(name: str) -> str:
        v = lag.get(name)
        return "n/a" if not v else f"p50 {v['p50']:g}, p95 {v['p95']:g}, max {v['max']:g}"

    since = fresh["seconds_since_last_event"]
    lines += [
        "", "*Offline* is the evaluator (`models/evaluate.py`) ranking the same users' targets with the trained "
        "model and what was known at the cut; it is the same figure for every mode, on that mode's users. "
        "*Frozen* online should equal it: both rank with the cut state.", "",
        "## What \"before the target event\" means here", "",
        "Live: the question is asked over HTTP right before the target event is produced; every earlier event has "
        "been produced and acknowledged by the broker, and the answer is whatever the stack serves then (no wait "
        "for it to be applied). How far behind the stack was while the test period was replayed (sampled every "
        f"{fresh.get('sample_every_s', 1)} s, {fresh['lag_samples']} samples; events: produced but not yet read by "
        "the stream worker; records: "
        "Kafka consumer lag of each group; frontier: the refresher's pending items and users):", "",
        f"- events not yet read by the stream worker: {q('events_lag')}",
        f"- stream consumer lag (events + pairs records): {q('streams_lag')}",
        f"- refresher consumer lag (records): {q('refresher_lag')}",
        f"- refresher frontier, items: {q('pending_items')}; users: {q('pending_users')}",
        f"- live questions whose user had an earlier test event: {fresh['live_questions_with_an_earlier_test_event']}"
        f"; seconds since that event was produced: "
        + ("n/a" if not since else f"p50 {since['p50']:g}, p95 {since['p95']:g}") +
        f"; share whose user vector had been written after it: {fresh['user_point_written_after_last_event']:.1%}",
        "", "Frozen: asked once the cut state was reached (every pre-cut event applied, frontier empty) and before "
        "any test event was produced; vectors frozen at the cut give the same answer at any later time.", "",
        f"Periodic: every {options['every']:,} test events production stops until the stack has applied "
        "everything (its stored vectors then equal a full recompute on the graph so far: the refresher's "
        "exactness test), and the targets of the next period are asked then. Checkpoint 0 is the cut, so the "
        "first period's answers are the frozen ones. These pauses also let the live mode catch up once per "
        "period.", "",
        "Settling (waits for everything produced to be applied):", "",
        "| checkpoint (test events) | wait s | events behind | refresher records behind | frontier users |",
        "|---|---|---|---|---|"]
    for s in fresh["settles"]:
        lines.append(f"| {int(s['checkpoint']):,} | {s['seconds']} | {s['behind_events_lag']:.0f} | "
                     f"{s['behind_refresher_lag']:.0f} | {s['behind_pending_users']:.0f} |")
    lines += ["", f"Timings (s): {json.dumps(timings)}; model: `{facts['model_dir']}` ({facts['model_seconds']} s "
              "to train or load).", "",
              f"Live against frozen: {report['live_vs_frozen']['identical']:.1%} of the top-10 lists identical, "
              f"{report['live_vs_frozen']['overlap']:.1%} of items in common."]
    failures = {m: r["failed"] for m, r in report["modes"].items() if r["failed"]}
    if failures:
        lines += ["", f"Questions the API did not answer: {failures} (see the JSON)."]
    return "\n".join(lines) + "\n"
