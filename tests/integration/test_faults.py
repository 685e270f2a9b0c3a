"""Faults on real parts (tansu, the Faust worker with its RocksDB store, supervised by the stack): the stream's
state stays exactly the fold of the log."""

import signal

import pytest

from models.synthetic import generate
from streams.records import ListenEvent
from tests.conftest import make_settings
from workers.stack import RestartPolicy, Stack
from workers.statecheck import Fault, run_fault_scenario

pytestmark = pytest.mark.integration


def synthetic_events(users: int = 150, per_user: int = 30) -> list[ListenEvent]:
    data = generate(users=users, items_per_type=60, events_per_user=per_user, seed=13)
    types = {i.item_id: i.item_type for i in data.items}
    return [ListenEvent(event_id=f"f{n}", user_id=e.user_id, item_id=e.item_id, item_type=types[e.item_id],
                        ts=e.ts) for n, e in enumerate(data.events)]


@pytest.fixture
def streams_only(tmp_path):
    stack = Stack(make_settings(tmp_path, max_degree=10), services=("streams",),
                  policy=RestartPolicy(backoff_s=0.2))
    stack.start()
    yield stack
    stack.stop()


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_worker_killed_twice_mid_replay_ends_exactly_at_the_fold_of_the_log(streams_only, sig):
    """Every user state equals build_graph; every adjacency too (items past the degree cap: the fold of the
    pairs topic in its order). max_degree=10 makes the cap bite."""
    result = run_fault_scenario(streams_only, synthetic_events(), [Fault(0.3, sig), Fault(0.65, sig)], rate=600,
                                catch_up_limit_s=120)
    assert len(result["faults"]) == 2 and result["restarts"]["streams"] == 2
    comparison = result["comparison"]
    assert comparison["items_capped"] > 0
    assert comparison["exact"], comparison
