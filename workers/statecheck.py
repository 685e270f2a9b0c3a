"""Reading the stream's state back from Kafka and checking it against the fold of the log.

The stream worker's tables are changelogged to Kafka (``<app_id>-users-changelog``,
``<app_id>-adjacency-changelog``): the latest record per key is the state any worker restores. The fault tests
and ``bench/faults_bench.py`` read it with a :class:`TopicMirror` and compare it with :func:`compare`:

* every user state must equal :func:`models.graph.build_graph` on the same events;
* every item below the degree cap must equal ``build_graph``'s adjacency; an item that reached the cap depends on
  the order in which pairs from different events partitions arrived, so it is compared with the fold of the
  pairs topic in its own order (:func:`fold_pairs_topic`), which also contains every redelivered group;
* every item's trend levels must equal ``models.trend.levels`` over the same consumptions, for every time
  constant, within 1e-9 (:func:`streams.testing.item_levels`; the fold is order-free up to float rounding).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
from kafka import KafkaConsumer, TopicPartition

from models.graph import Adjacency, CoGraph, GraphConfig, UserState
from streams.agents import decode_item, decode_user, fold_pairs_log
from streams.testing import item_levels

LEVELS_ATOL = 1e-9
"""How far a stream's float64 trend level may be from the reference (the rounding of folds in another order)."""


class TopicMirror:
    """The records of some topics, read from the beginning and kept up to date on :meth:`refresh`."""

    def __init__(self, bootstrap: str, topics: Iterable[str], keep_log: Iterable[str] = ()) -> None:
        self.consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                      fetch_max_bytes=64 * 1024 * 1024, client_id="gfm-statecheck")
        partitions = []
        for topic in topics:
            found = self.consumer.partitions_for_topic(topic) or set()
            partitions += [TopicPartition(topic, p) for p in sorted(found)]
        self.consumer.assign(partitions)
        self.consumer.seek_to_beginning(*partitions)
        self.latest: dict[str, dict[bytes, bytes]] = {t.topic: {} for t in partitions}
        """Per topic, the latest value per key."""
        self.log: dict[TopicPartition, list[bytes]] = {tp: [] for tp in partitions if tp.topic in set(keep_log)}
        """Every value in order, per partition of the ``keep_log`` topics."""

    def refresh(self, idle_s: float = 1.0, limit_s: float = 120.0) -> int:
        """Read until nothing new arrives for ``idle_s`` (tansu's end offsets cannot be trusted to say when the
        end is reached); returns how many records were read."""
        read = 0
        deadline = time.monotonic() + limit_s
        quiet_since = time.monotonic()
        while time.monotonic() < deadline and time.monotonic() - quiet_since < idle_s:
            polled = self.consumer.poll(timeout_ms=200, max_records=50_000)
            for tp, records in polled.items():
                log = self.log.get(tp)
                for record in records:
                    if log is not None:
                        log.append(record.value)
                    if record.key is not None:
                        self.latest[tp.topic][record.key] = record.value
                read += len(records)
            if polled:
                quiet_since = time.monotonic()
        return read

    def close(self) -> None:
        """Close the consumer."""
        self.consumer.close()


def changelog_topics(app_id: str) -> tuple[str, str]:
    """The users and adjacency changelog topics of the Faust app ``app_id``."""
    return f"{app_id}-users-changelog", f"{app_id}-adjacency-changelog"


def stream_state(mirror: TopicMirror, app_id: str) -> tuple[dict[str, UserState], dict[str, Adjacency]]:
    """User states and adjacencies as the changelogs hold them."""
    users_topic, adjacency_topic = changelog_topics(app_id)
    users = {k.decode(): decode_user(v).state for k, v in mirror.latest.get(users_topic, {}).items()}
    adjacency = {k.decode(): decode_item(v).adjacency for k, v in mirror.latest.get(adjacency_topic, {}).items()}
    return users, adjacency


def stream_levels(mirror: TopicMirror, app_id: str) -> dict[str, list[float]]:
    """Every item's trend levels as the adjacency changelog holds them."""
    _, adjacency_topic = changelog_topics(app_id)
    return {k.decode(): decode_item(v).levels for k, v in mirror.latest.get(adjacency_topic, {}).items()}


def fold_pairs_topic(mirror: TopicMirror, pairs_topic: str, max_degree: int) -> dict[str, Adjacency]:
    """The adjacency that folding each partition of the pairs topic once, in its order, gives."""
    return fold_pairs_log(((tp.partition, values) for tp, values in mirror.log.items() if tp.topic == pairs_topic),
                          max_degree)


@dataclass
class Comparison:
    """How a stream's state differs from the fold of its log (all zero when exact)."""

    users: int = 0
    users_missing: int = 0
    users_different: int = 0
    consumptions_lost: int = 0
    items: int = 0
    items_capped: int = 0
    items_missing: int = 0
    items_different: int = 0
    edges_missing: int = 0
    extra_co_counts: int = 0
    items_levels_different: int = 0
    """Items whose trend levels are missing or further than :data:`LEVELS_ATOL` from the reference."""
    examples: list[str] = field(default_factory=list)

    @property
    def exact(self) -> bool:
        """Zero lost, zero double counted, nothing different."""
        return not (self.users_missing or self.users_different or self.items_missing or self.items_different
                    or self.items_levels_different)

    def as_dict(self) -> dict[str, Any]:
        """The JSON form."""
        return {k: v for k, v in self.__dict__.items()} | {"exact": self.exact}


def compare(users: dict[str, UserState], adjacency: dict[str, Adjacency], expected: CoGraph,
            uncapped: CoGraph, pairs_fold: dict[str, Adjacency] | None,
            levels: dict[str, list[float]] | None = None,
            expected_levels: dict[str, list[float]] | None = None) -> Comparison:
    """Compare a stream's state with ``expected`` (``build_graph`` on the same events) and, for items whose
    neighbours in ``uncapped`` (``build_graph`` without pruning) reach the cap, with ``pairs_fold``; and, when
    given, its items' trend ``levels`` with ``expected_levels`` (:func:`streams.testing.item_levels`)."""
    out = Comparison(users=len(expected.users), items=len(expected.adjacency))
    if levels is not None and expected_levels is not None:
        for item_id, want_levels in expected_levels.items():
            got_levels = levels.get(item_id)
            if got_levels is None or not np.allclose(got_levels, want_levels, rtol=0, atol=LEVELS_ATOL):
                out.items_levels_different += 1
                if len(out.examples) < 5:
                    out.examples.append(f"item {item_id} levels {got_levels} != {want_levels}")
    for user_id, state in expected.users.items():
        got = users.get(user_id)
        if got is None:
            out.users_missing += 1
            out.consumptions_lost += len(state["consumed"])
        elif got != state:
            out.users_different += 1
            out.consumptions_lost += max(0, len(state["consumed"]) - len(got["consumed"]))
            if len(out.examples) < 5:
                out.examples.append(f"user {user_id} differs")
    cap = 2 * expected.config.max_degree
    for item_id, want in expected.adjacency.items():
        capped = len(uncapped.adjacency.get(item_id, {})) >= cap
        if capped:
            out.items_capped += 1
            if pairs_fold is None:
                continue
            want = pairs_fold.get(item_id, {})
        got = adjacency.get(item_id)
        if got is None:
            out.items_missing += 1
            out.edges_missing += len(want)
            continue
        if got != want:
            out.items_different += 1
            out.edges_missing += len(want.keys() - got.keys())
            out.extra_co_counts += sum(max(0, got[k][1] - want[k][1]) for k in got.keys() & want.keys())
            if len(out.examples) < 5:
                out.examples.append(f"item {item_id} differs")
    return out


def uncapped_config(config: GraphConfig) -> GraphConfig:
    """``config`` without pruning (to find the items whose neighbours reach the cap)."""
    return GraphConfig(config.window, config.history_per_type, config.max_consumed, config.max_event_ids, 10**9)


@dataclass(frozen=True)
class Fault:
    """Send ``signal`` to the stream worker ``target`` once ``at`` (a fraction) of the events are produced."""

    at: float
    signal: int
    target: str = "streams"
    """``streams`` (the events worker, or the one worker when not split) or ``streams-edges`` (split)."""


def reading(settings: Any, target: str) -> float:
    """What ``target`` has read since its last start: the events worker's (or one worker's) events, the edges
    worker's pairs merged."""
    if target == "streams-edges":
        return stream_metric(settings.streams.edges_metrics_port, "gfm_graph_pairs_total")
    return stream_metric(settings.streams.metrics_port, "gfm_stream_events_total")


def stream_metric(metrics_port: int, name: str) -> float:
    """A counter of the stream worker since it started, summed over its labels (0 when its metrics do not
    answer yet)."""
    import urllib.request

    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=2).read().decode()
    except OSError:
        return 0.0
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith((f"{name}{{", f"{name} ")))



def run_fault_scenario(stack: Any, events: list[Any], faults: list[Fault], rate: float,
                       catch_up_limit_s: float = 600.0) -> dict[str, Any]:
    """Replay ``events`` (:class:`~streams.records.ListenEvent`) into a running stack at ``rate`` events/s,
    signalling the fault's stream worker at each fault (once that worker has read since its last start: killing
    a worker that is still joining its group tests little); the stack's supervisor restarts it. Then wait until
    the changelogs equal the fold of the log, or the limit.

    Returns:
        Timings, restarts and the final :class:`Comparison` (as a dict, ``exact`` among its keys).
    """
    import signal as signals

    from workers.kafka_io import EventSink, make_producer

    settings = stack.settings
    expected = reference(events, settings.streams.graph_config())
    producer = make_producer(settings.kafka)
    sink = EventSink(producer, settings.kafka)
    pending = sorted(faults, key=lambda f: f.at)
    signalled: list[dict[str, Any]] = []
    started = time.monotonic()
    chunk = max(1, int(rate / 10))
    paused = 0.0
    for start in range(0, len(events), chunk):
        sink.send(events[start : start + chunk], wait=False)
        while pending and start >= pending[0].at * len(events):
            # the replay waits for a restarted worker to be reading again before the next fault
            if reading(settings, pending[0].target) == 0:
                waited = time.monotonic()
                stack.check()
                time.sleep(0.2)
                paused += time.monotonic() - waited
                continue
            fault = pending.pop(0)
            stack.kill(fault.target, fault.signal)
            signalled.append({"at_event": start, "signal": signals.Signals(fault.signal).name,
                              "target": fault.target, "t_s": round(time.monotonic() - started, 2)})
        stack.check()
        ahead = (start + chunk) / rate - (time.monotonic() - started - paused)
        if ahead > 0:
            time.sleep(ahead)
    producer.flush()
    producer.close()
    replayed_s = time.monotonic() - started
    result, caught_up_s = wait_for_the_fold(stack, expected, catch_up_limit_s)
    return {
        "events": len(events),
        "rate": rate,
        "faults": signalled,
        "restarts": {name: len(times) for name, times in stack.restarts.items()},
        "replay_s": round(replayed_s, 2),
        "caught_up_after_replay_s": round(caught_up_s, 2),
        "comparison": result.as_dict(),
    }


class Reference(NamedTuple):
    """What a stream's state must be after some events (:func:`reference`)."""

    graph: CoGraph
    """``build_graph`` on the events."""
    uncapped: CoGraph
    """The same without the degree cap (to find the items that reached it)."""
    levels: dict[str, list[float]]
    """Every consumed item's trend levels (:func:`streams.testing.item_levels`)."""


def reference(events: list[Any], config: GraphConfig) -> Reference:
    """``build_graph`` on ``events`` (:class:`~streams.records.ListenEvent`), with and without the degree cap, and
    the items' trend levels over them."""
    from models.graph import build_graph

    rows = [(e.event_id, e.user_id, e.item_id, e.item_type, e.ts) for e in events]
    return Reference(build_graph(rows, config), build_graph(rows, uncapped_config(config)), item_levels(rows))


def wait_for_the_fold(stack: Any, expected: Reference, limit_s: float) -> tuple[Comparison, float]:
    """Wait until the stack's changelogs equal ``expected`` (:func:`reference`), or ``limit_s``; returns the
    last comparison and the seconds waited."""
    settings = stack.settings
    config = settings.streams.graph_config()
    started = time.monotonic()
    settled_at = wait_until_idle(stack, started + limit_s)
    users_topic, adjacency_topic = changelog_topics(settings.streams.app_id)
    pairs_topic = settings.kafka.topic("pairs")
    mirror = TopicMirror(settings.kafka.bootstrap, [users_topic, adjacency_topic, pairs_topic], keep_log=[pairs_topic])
    try:
        while True:
            stack.check()
            mirror.refresh(idle_s=1.5)
            users, adjacency = stream_state(mirror, settings.streams.app_id)
            result = compare(users, adjacency, expected.graph, expected.uncapped,
                             fold_pairs_topic(mirror, pairs_topic, config.max_degree),
                             stream_levels(mirror, settings.streams.app_id), expected.levels)
            if result.exact or time.monotonic() - started > limit_s:
                break
            settled_at = wait_until_idle(stack, started + limit_s)
    finally:
        mirror.close()
    return result, settled_at - started


def wait_until_idle(stack: Any, deadline: float, quiet_s: float = 2.0) -> float:
    """Wait until the stream workers' counters stop moving for ``quiet_s`` (cheap, unlike reading the state
    back); returns when they last moved (monotonic seconds)."""
    ports = stack.stream_metrics_ports()
    names = ("gfm_stream_events_total", "gfm_graph_pairs_total", "gfm_graph_pairs_redelivered_total",
             "gfm_trend_consumptions_total")
    last, moved = None, time.monotonic()
    while time.monotonic() < deadline:
        stack.check()
        now = tuple(stream_metric(port, name) for port in ports for name in names)
        if now != last:
            last, moved = now, time.monotonic()
        elif time.monotonic() - moved >= (quiet_s if sum(now) > 0 else 10 * quiet_s):
            break
        time.sleep(0.2)
    return moved
