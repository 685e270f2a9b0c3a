"""Faults on real parts (tansu, the Faust worker with its RocksDB store, supervised by the stack): the stream's
state stays exactly the fold of the log."""

import signal
import time
from pathlib import Path

import pytest

from models.synthetic import generate
from streams.records import ListenEvent
from tests.conftest import make_settings
from workers.stack import RestartPolicy, Stack
from workers.statecheck import Fault, reference, run_fault_scenario, stream_metric, wait_for_the_fold

pytestmark = pytest.mark.integration


def synthetic_events(users: int = 150, per_user: int = 30) -> list[ListenEvent]:
    data = generate(users=users, items_per_type=60, events_per_user=per_user, seed=13)
    types = {i.item_id: i.item_type for i in data.items}
    return [ListenEvent(event_id=f"f{n}", user_id=e.user_id, item_id=e.item_id, item_type=types[e.item_id],
                        ts=e.ts) for n, e in enumerate(data.events)]


@pytest.fixture
def streams_only(tmp_path):
    stack = Stack(make_settings(tmp_path, max_degree=10, stall_s=10.0), services=("streams",),
                  policy=RestartPolicy(backoff_s=0.2))
    stack.start()
    yield stack
    stack.stop()


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_worker_killed_twice_mid_replay_ends_exactly_at_the_fold_of_the_log(streams_only, sig):
    """Every user state equals build_graph; every adjacency too (items past the degree cap: the fold of the
    pairs topic in its order). max_degree=10 makes the cap bite. The default shape is split: the events worker
    is killed first, then the edges worker."""
    assert streams_only.settings.streams.split and {"streams", "streams-edges"} <= set(streams_only.processes)
    faults = [Fault(0.3, sig, "streams"), Fault(0.65, sig, "streams-edges")]
    result = run_fault_scenario(streams_only, synthetic_events(), faults, rate=600, catch_up_limit_s=120)
    assert [f["target"] for f in result["faults"]] == ["streams", "streams-edges"]
    # Any restart beyond each worker's kill must be the offset-hole rule (tansu skipped a message; the worker
    # stopped before applying anything after the hole) or the stall watch (Faust dropped fetched messages; the
    # worker stopped so as to fetch them again) at work, never another crash.
    for name in ("streams", "streams-edges"):
        log = (streams_only.settings.var_dir / "logs" / f"{name}.log").read_text()
        expected = 1 + log.count("stream agent crashed: OffsetGap") + log.count("stream agent stalled")
        assert result["restarts"].get(name, 0) == expected, (name, log[-2000:])
    comparison = result["comparison"]
    assert comparison["items_capped"] > 0
    assert comparison["exact"], (comparison, log[-2000:])


def test_supervisor_restarts_a_failing_child_with_backoff_then_gives_up_loudly(tmp_path, caplog):
    from workers.stack import GaveUp

    stack = Stack(make_settings(tmp_path), services=("no-such-service",),
                  policy=RestartPolicy(backoff_s=0.1, max_restarts=3))
    stack.start()
    try:
        started = time.monotonic()
        with pytest.raises(GaveUp, match="no-such-service exited with code 2 after 3 restarts"):
            while time.monotonic() - started < 30:
                stack.check()
                time.sleep(0.05)
        assert len(stack.restarts["no-such-service"]) == 3
        delays = [r.getMessage().split("restarting it in ")[1].split(" s")[0] for r in caplog.records
                  if "restarting it in" in r.getMessage()]
        assert delays == ["0.1", "0.2", "0.4"]  # backoff doubles
    finally:
        stack.stop()


def test_duplicated_events_and_redelivered_pair_messages_change_nothing(streams_only):
    """10% of events delivered twice (same event_id), then every pair message produced a second time: the
    state stays the fold of the log without them."""
    from kafka import TopicPartition

    from workers.kafka_io import make_producer
    from workers.statecheck import TopicMirror

    settings = streams_only.settings
    events = synthetic_events(users=80)
    doubled = [e for n, e in enumerate(events) for _ in range(2 if n % 10 == 0 else 1)]
    result = run_fault_scenario(streams_only, doubled, [], rate=1500, catch_up_limit_s=120)
    assert result["comparison"]["exact"], result
    pairs = settings.kafka.topic("pairs")
    mirror = TopicMirror(settings.kafka.bootstrap, [pairs], keep_log=[pairs])
    mirror.refresh(idle_s=1.0)
    mirror.close()
    producer = make_producer(settings.kafka)
    resent = 0
    for tp, values in mirror.log.items():
        assert isinstance(tp, TopicPartition)
        for value in values:
            producer.send(pairs, value=value, partition=tp.partition)
            resent += 1
    producer.flush()
    producer.close()
    assert resent > 0
    again, _ = wait_for_the_fold(streams_only, reference(doubled, settings.streams.graph_config()), limit_s=120)
    assert again.exact, again.as_dict()
    assert stream_metric(settings.streams.edges_metrics_port, "gfm_graph_pairs_redelivered_total") > 0  # split


MOVIELENS = Path(__file__).resolve().parents[3] / "shared" / "data" / "movielens-1m"


@pytest.mark.slow
@pytest.mark.skipif(not MOVIELENS.exists(), reason="needs ../shared/data/movielens-1m")
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_movielens_100k_events_three_faults_end_exactly_at_the_fold_of_the_log(tmp_path, sig):
    """The long form of the test above (bench/faults_bench.py records its figures)."""
    from workers.kafka_io import dataset_events

    events = [e for e in dataset_events(MOVIELENS, 100_000)[0] if e is not None]
    stack = Stack(make_settings(tmp_path), services=("streams",), policy=RestartPolicy(backoff_s=0.5))
    stack.start()
    try:
        faults = [Fault(a, sig, target) for a, target in ((0.25, "streams"), (0.5, "streams-edges"), (0.75, "streams"))]
        result = run_fault_scenario(stack, events, faults, rate=2000)
    finally:
        stack.stop()
    assert len(result["faults"]) == 3
    assert result["comparison"]["exact"], result
