"""Scale-out on real parts: two stream workers in one consumer group build the same state as one (the fold of
the log), and two refresher replicas write the same vectors as one refresher."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from streams.records import ListenEvent
from tests.conftest import free_port, make_settings
from tests.integration.test_faults import synthetic_events
from workers.kafka_io import EventSink, make_producer
from workers.settings import Settings
from workers.stack import RestartPolicy, Stack
from workers.statecheck import reference, stream_metric, wait_for_the_fold

pytestmark = pytest.mark.integration


def second_worker(settings: Settings, root: Path) -> Settings:
    """The settings of another stream worker in the same group: its own metrics port and RocksDB directory."""
    streams = settings.streams.model_copy(update={"metrics_port": free_port(), "datadir": root / "faust-2"})
    return settings.model_copy(update={"streams": streams})


def assert_restarts_explained(stack: Stack, names: tuple[str, ...], killed: str | None) -> None:
    """Any restart beyond the test's kill of ``killed`` must be the offset-hole rule at work (as in
    test_faults.py), never a crash."""
    for name in names:
        log = (stack.settings.var_dir / "logs" / f"{name}.log").read_text()
        kills = int(name == killed)
        assert len(stack.restarts.get(name, [])) == kills + log.count("stream agent crashed: OffsetGap"), log[-2000:]


def events_seen(port: int) -> float:
    return stream_metric(port, "gfm_stream_events_total")


def replay_while_a_second_worker_joins(stack: Stack, second: Settings, events: list[ListenEvent], rate: float,
                                       join_timeout_s: float = 120.0, wait_for_the_first: bool = True) -> None:
    """Replay ``events`` at ``rate``: the first third to the first worker alone (``wait_for_the_first``: the join
    waits until it has read some, so that its partitions are handed over mid-stream; else the second worker may
    join while the first is still starting, before the group committed anything), then start the second worker
    and trickle events (a few a second) until it reads some (its partitions handed over by a rebalance, their
    state restored from the changelogs), then the rest at ``rate``.

    Raises:
        AssertionError: when a worker reads nothing within ``join_timeout_s``.
    """
    producer = make_producer(stack.settings.kafka)
    sink = EventSink(producer, stack.settings.kafka)
    chunk = max(1, int(rate / 10))
    started = time.monotonic()
    joining_until: float | None = None
    position = 0
    first_port = stack.settings.streams.metrics_port
    while position < len(events):
        stack.check()
        if position >= len(events) // 3 and "streams-2" not in stack.processes:
            if wait_for_the_first and events_seen(first_port) == 0:  # the first worker is still starting
                assert time.monotonic() - started < join_timeout_s, f"no event read within {join_timeout_s} s"
                time.sleep(0.2)
                continue
            stack.add_worker("streams-2", "streams", second)
            joining_until = time.monotonic() + join_timeout_s
        if joining_until is not None and events_seen(second.streams.metrics_port) > 0:
            joining_until = None
        if joining_until is not None:
            assert time.monotonic() < joining_until, f"the second worker read no event within {join_timeout_s} s"
            sink.send(events[position : position + 5])
            position += 5
            time.sleep(0.5)
            continue
        sink.send(events[position : position + chunk], wait=False)
        position += chunk
        time.sleep(chunk / rate)
    producer.flush()
    producer.close()


@pytest.mark.parametrize(("fault", "wait_for_the_first"), [(None, True), (None, False), (signal.SIGKILL, True)],
                         ids=["steady", "join-during-start", "kill-9-first-worker"])
def test_two_stream_workers_build_exactly_what_one_builds(tmp_path, fault, wait_for_the_first):
    """Two `gfm worker streams` in one group (the second joining mid-replay, or while the first is still starting,
    before the group committed anything; in the third case the first one then killed with SIGKILL, its partitions
    failing over to the second and back after the restart): every user state equals build_graph on the same
    events, every item adjacency too (past the degree cap: the fold of the pairs topic in its order), and both
    workers did part of the work.

    A join during the start lost the messages of a hole at the rebalance, 1 run in 10 (a worker handed a
    partition nobody had committed began it mid-log; the offset-hole rule now checks a partition's first batch
    after a rebalance, *Delivery guarantee* rule 4); in 16 runs with the check it fired in 2, and both ended
    exact."""
    settings = make_settings(tmp_path, max_degree=10, split=False)  # workers that each run both agents
    stack = Stack(settings, services=("streams",), policy=RestartPolicy(backoff_s=0.2))
    stack.start()
    try:
        second = second_worker(settings, tmp_path)
        same_dir = second.model_copy(update={"streams": second.streams.model_copy(update={"datadir": None})})
        with pytest.raises(ValueError, match="each worker needs its own RocksDB directory"):
            stack.add_worker("streams-2", "streams", same_dir)  # a shared one hangs the second worker
        events = synthetic_events()
        if fault is None:
            replay_while_a_second_worker_joins(stack, second, events, rate=600, wait_for_the_first=wait_for_the_first)
        else:
            cut = 2 * len(events) // 3
            replay_while_a_second_worker_joins(stack, second, events[:cut], rate=600)
            stack.kill("streams", fault)  # the supervisor restarts it; meanwhile the second worker takes over
            stack.check()
            sink = EventSink(make_producer(settings.kafka), settings.kafka)
            sink.send(events[cut:])
            sink.producer.close()
        first_port = settings.streams.metrics_port
        result, _ = wait_for_the_fold(stack, reference(events, settings.streams.graph_config()), limit_s=180)
        assert result.items_capped > 0
        assert result.exact, result.as_dict()
        # both did part of the work (read from counters since each one's last start: the killed worker's
        # counters restart from zero, so it is checked only when it ran throughout)
        worked = {name: (events_seen(port), stream_metric(port, "gfm_graph_pairs_total"))
                  for name, port in (("streams", first_port), ("streams-2", second.streams.metrics_port))}
        for name, counts in worked.items():
            assert name in stack.restarts or all(counts), worked
        assert_restarts_explained(stack, ("streams", "streams-2"), "streams" if fault is not None else None)
    finally:
        stack.stop()


def test_two_refresher_replicas_write_the_vectors_of_one_refresher(tmp_path):
    """Replicas 0 and 1 of 2 (threads here, `gfm worker refresher` with GFM_REFRESHER__REPLICA in compose) read
    the real topics while events stream and write into one vector store: each reads only its own partitions of
    user-updates and upserts only its own users and items, and the store ends with the vectors that one refresher
    computes from the same topics (within 1e-5)."""
    from prometheus_client import CollectorRegistry

    from streams.agents import partition_for
    from tests.integration.test_refresher_faults import USERS, _assert_same, _model, _settle, _stream, _vectors
    from tests.unit.test_refresher_replicas import RecordingStore
    from vectorstore.edge import EdgeStore
    from vectorstore.server import ServerStore
    from workers.services import start_refresher

    settings = make_settings(tmp_path)
    stack = Stack(settings, services=("streams",))
    stack.start()
    store = EdgeStore(tmp_path / "shared-store")
    clients = [RecordingStore(store) for _ in range(2)]  # one client per replica, all on the one store
    replicas = [start_refresher(settings.model_copy(update={"refresher": settings.refresher.model_copy(
        update={"replicas": 2, "replica": r})}), clients[r], CollectorRegistry()) for r in range(2)]
    alone = None
    try:
        _stream(settings, synthetic_events(), rate=1000, during=lambda _: stack.check())
        _settle(lambda: tuple((loop.caught_up.is_set(), loop.refresher.idle, loop.refresher.items_refreshed,
                               loop.refresher.users_refreshed, loop.error is None) for loop in replicas))
        alone = start_refresher(settings, ServerStore(":memory:"), CollectorRegistry())
        _settle(lambda: (alone.caught_up.is_set(), alone.refresher.idle, alone.refresher.items_refreshed,
                         alone.refresher.users_refreshed))
        composer = _model(settings).composer
        want_items, want_users = _vectors(alone.refresher.store, alone.refresher.graph.ids, USERS, composer)
        assert len(want_users) == 150 and len(want_items) > 100
        for replica, (loop, client) in enumerate(zip(replicas, clients, strict=True)):
            assert loop.alive and loop.error is None
            owned = client.users
            assert owned and all(partition_for(u, settings.kafka.partitions) % 2 == replica for u in owned)
            assert all(partition_for(i, settings.kafka.partitions) % 2 == replica for i in client.items)
            assert loop.refresher.items_refreshed > 0 and loop.refresher.users_refreshed > 0
            assert len(loop.refresher.graph) == len(alone.refresher.graph)  # each reads the whole graph
        assert not clients[0].users & clients[1].users and clients[0].users | clients[1].users == set(want_users)
        got_items, got_users = _vectors(store, want_items, want_users, composer)
        _assert_same(got_items, want_items)
        _assert_same(got_users, want_users)
    finally:
        for loop in [*replicas, *([alone] if alone else [])]:
            loop.stop()
        store.close()
        stack.stop()


@pytest.mark.parametrize("fault", [None, signal.SIGKILL], ids=["steady", "kill-9-edges-worker"])
def test_split_edges_worker_builds_exactly_what_one_worker_builds(tmp_path, fault):
    """`GFM_STREAMS__SPLIT`: `gfm up` runs the events agent and the edges agent in two stream workers, each in its
    own consumer group, the edges worker's table on the same changelog topic as an unsplit worker's. Every user
    state and adjacency equals build_graph on the same events (past the degree cap: the fold of the pairs topic),
    also when the edges worker is killed with SIGKILL mid-replay and restarted by the supervisor; each worker ran
    only its own agent."""
    settings = make_settings(tmp_path, max_degree=10, split=True)
    stack = Stack(settings, services=("streams",), policy=RestartPolicy(backoff_s=0.2))
    stack.start()
    try:
        assert {"streams", "streams-edges"} <= set(stack.processes)
        events = synthetic_events()
        cut = 2 * len(events) // 3
        sink = EventSink(make_producer(settings.kafka), settings.kafka)
        killed = False
        for start in range(0, len(events), 60):
            if start >= cut and fault is not None and not killed:
                stack.kill("streams-edges", fault)
                killed = True
            stack.check()
            sink.send(events[start : start + 60])
            time.sleep(0.1)
        sink.producer.close()
        result, _ = wait_for_the_fold(stack, reference(events, settings.streams.graph_config()), limit_s=180)
        assert result.items_capped > 0
        assert result.exact, result.as_dict()
        events_port, edges_port = settings.streams.metrics_port, settings.streams.edges_metrics_port
        assert events_seen(events_port) > 0 and stream_metric(events_port, "gfm_graph_pairs_total") == 0
        assert stream_metric(edges_port, "gfm_graph_pairs_total") > 0 and events_seen(edges_port) == 0
        assert_restarts_explained(stack, ("streams", "streams-edges"), "streams-edges" if fault is not None else None)
    finally:
        stack.stop()
