"""The stream's state is exactly the fold of the log: crashes at any point, redelivered messages, duplicated events
and misrouted events change nothing (the pure agents, run by the list-backed harness). That state includes each
item's trend levels: they equal ``models.trend.levels`` over the same consumptions (repeat plays and users' first
events included), for every time constant, within 1e-9 in float64."""

import contextlib
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models import trend
from models.graph import GraphConfig, build_graph
from models.synthetic import generate
from streams.agents import StreamConfig, decode_pairs, partition_for
from streams.errors import InvalidRecord
from streams.records import (
    decode_pack,
    load_json,
    validate_catalog_item,
    validate_event,
    validate_item_update,
    validate_user_update,
)
from streams.testing import LogHarness, item_levels

PARTITIONS = 3


def _rows(seed: int = 11, users: int = 25):
    data = generate(users=users, items_per_type=12, events_per_user=10, seed=seed)
    types = {i.item_id: i.item_type for i in data.items}
    return [(f"e{n}", e.user_id, e.item_id, types[e.item_id], e.ts) for n, e in enumerate(data.events)]


ROWS = _rows()
LEVELS = item_levels(ROWS)


def assert_levels(got: dict, want: dict) -> None:
    """Every item's levels, for every time constant, within 1e-9 (float64; the fold is order-free up to rounding)."""
    assert got.keys() == want.keys()
    for item_id, levels in want.items():
        assert np.allclose(got[item_id], levels, rtol=0, atol=1e-9), (item_id, got[item_id], levels)


def test_the_reference_counts_every_consumption():
    """A user's first event (no pair) and repeat plays (no new pair) count; an event id sent twice counts once."""
    rows = [("1", "u", "a", "t", 10.0), ("2", "u", "a", "t", 20.0), ("3", "v", "b", "t", 30.0),
            ("3", "v", "b", "t", 30.0)]
    levels = item_levels(rows)
    assert levels["a"][trend.TAUS.index(None)] == pytest.approx(np.log(2 + trend.EPSILON))
    assert levels["b"][trend.TAUS.index(None)] == pytest.approx(np.log(1 + trend.EPSILON))
    harness = LogHarness(StreamConfig(partitions=PARTITIONS))
    harness.produce(rows)
    harness.drain()
    assert harness.adjacency() == {"a": {}, "b": {}}  # no pair at all, yet both items hold their consumptions
    assert_levels(harness.levels(), levels)

step = st.tuples(st.sampled_from(["events", "pairs", "events", "pairs", "move"]), st.integers(0, PARTITIONS - 1),
                 st.integers(1, 4), st.sampled_from([None, None, "before_state", "before_changelog", "before_commit"]))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(schedule=st.lists(step, max_size=80), max_degree=st.sampled_from([3, 1000]))
def test_crashes_anywhere_leave_exactly_the_fold_of_the_log(schedule, max_degree):
    """Any interleaving of batches, each possibly crashing before its state or before its commit, then a clean
    drain: user states equal the batch build, and adjacencies equal the fold of the pairs log (and the batch
    build where the degree cap never pruned), and trend levels equal ``trend.levels`` over the events, in the local
    tables and in their changelogs, with partitions moving to another worker (restored from the changelogs) at any
    point. Users remember only 3 event ids here, so replays are recognised by their offsets, not by event ids."""
    graph = GraphConfig(max_degree=max_degree, max_event_ids=3)
    harness = LogHarness(StreamConfig(partitions=PARTITIONS, graph=graph), per_message=4)
    harness.produce(ROWS)
    for topic, partition, size, crash in schedule:
        if topic == "move":
            harness.move()
            continue
        run = harness.events_batch if topic == "events" else harness.pairs_batch
        run(partition, size, crash)
    harness.drain()
    expected = build_graph(ROWS, graph)
    for changelog in (False, True):  # the local tables, and what another worker would restore
        assert harness.users(changelog) == expected.users
        assert harness.adjacency(changelog) == harness.fold_pairs_log()
        assert_levels(harness.levels(changelog), LEVELS)
        if max_degree == 1000:
            assert harness.adjacency(changelog) == expected.adjacency


def test_a_crash_between_outputs_and_state_loses_no_pairs_and_counts_none_twice():
    """The gap of the old design: state written, pairs not sent (now impossible: outputs go first), and pairs
    sent twice after a crash before the state (now recognised by their origin)."""
    harness = LogHarness(StreamConfig(partitions=PARTITIONS, graph=GraphConfig(max_degree=1000)))
    harness.produce(ROWS)
    for partition in range(PARTITIONS):
        harness.events_batch(partition, 5, crash="before_state")  # pairs out, state lost: replayed below
        harness.events_batch(partition, 5, crash="before_commit")  # state written, offsets not committed
    for partition in range(PARTITIONS):
        harness.pairs_batch(partition, 100, crash="before_commit")  # merged, then merged again after "restart"
    harness.drain()
    expected = build_graph(ROWS, GraphConfig(max_degree=1000))
    assert harness.users() == expected.users
    assert harness.adjacency() == expected.adjacency
    assert_levels(harness.levels(), LEVELS)


def test_replayed_messages_are_recognised_by_offset_beyond_the_event_id_window():
    graph = GraphConfig(max_degree=1000, max_event_ids=1)  # event ids alone cannot catch these replays
    harness = LogHarness(StreamConfig(partitions=PARTITIONS, graph=graph))
    harness.produce(ROWS)
    for partition in range(PARTITIONS):
        harness.events_batch(partition, 1000, crash="before_commit")
    harness.drain()
    assert harness.users() == build_graph(ROWS, graph).users
    assert_levels(harness.levels(), LEVELS)


def test_duplicated_events_and_redelivered_pair_messages_change_nothing():
    clean = LogHarness(StreamConfig(partitions=PARTITIONS))
    clean.produce(ROWS)
    clean.drain()

    noisy = LogHarness(StreamConfig(partitions=PARTITIONS))
    duplicated = [row for n, row in enumerate(ROWS) for _ in range(2 if n % 10 == 0 else 1)]  # 10% twice
    noisy.produce(duplicated)
    noisy.drain()
    for log in list(noisy.pairs.values()):  # every pair message delivered a second time
        log.extend(list(log))
    noisy.drain()
    assert noisy.users() == clean.users()
    assert noisy.adjacency() == clean.adjacency()
    assert_levels(noisy.levels(), clean.levels())
    assert_levels(noisy.levels(), LEVELS)


def test_misrouted_events_are_forwarded_to_their_users_partition():
    harness = LogHarness(StreamConfig(partitions=PARTITIONS, graph=GraphConfig(max_degree=1000)))
    harness.produce(ROWS, partition=0)  # a foreign producer that ignores the partitioner
    harness.drain()
    expected = build_graph(ROWS, GraphConfig(max_degree=1000))
    assert harness.users() == expected.users
    assert harness.adjacency() == expected.adjacency
    assert_levels(harness.levels(), LEVELS)
    assert any(partition_for(u, PARTITIONS) != 0 for u in expected.users)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(partitions=st.integers(1, 5), pack=st.integers(1, 40), per_message=st.integers(1, 60),
       max_messages=st.integers(1, 6))
def test_levels_do_not_depend_on_partitioning_or_batching(partitions, pack, per_message, max_messages):
    harness = LogHarness(StreamConfig(partitions=partitions), per_message=per_message)
    harness.produce(ROWS, pack=pack)
    harness.drain(max_messages=max_messages)
    assert_levels(harness.levels(), LEVELS)
    assert_levels(harness.levels(changelog=True), LEVELS)


# --- every decoder: any input is a record or an InvalidRecord, never another exception ---------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
event_like = st.fixed_dictionaries(
    {},
    optional={"event_id": json_values | st.text(), "user_id": json_values | st.text(), "item_id": json_values,
              "item_type": json_values | st.sampled_from(["podcast", "Bad Type", ""]), "ts": json_values,
              "kind": json_values | st.sampled_from(["stream", "follow"]), "ms_played": json_values},
)


def _decoders():
    return [
        lambda raw: decode_pack(raw, validate_event),
        lambda raw: decode_pack(raw, validate_catalog_item),
        decode_pairs,
        lambda raw: validate_user_update(load_json(raw)),
        lambda raw: validate_item_update(load_json(raw)),
    ]


def _only_invalid_record(raw):
    for decode in _decoders():
        with contextlib.suppress(InvalidRecord):
            decode(raw)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300) | st.none())
def test_any_bytes_decode_to_a_record_or_invalid_record(raw):
    _only_invalid_record(raw)


@settings(max_examples=300, deadline=None)
@given(json_values | event_like | st.lists(event_like, max_size=3))
def test_any_json_decodes_to_a_record_or_invalid_record(value):
    _only_invalid_record(json.dumps(value).encode())


@pytest.mark.parametrize("raw", [
    b'{"kind": []}', b'{"ts": 1' + b"0" * 400 + b"}", b'{"ts": 1' + b"0" * 5000 + b"}", b"[" * 100_000, None,
    b"x" * 1_000_000, b'"\\ud800"', b'{"user_id": "\\udfff", "item_id": "i", "item_type": "t", "ts": 1, '
    b'"event_id": "e"}', b'[{"ts": NaN}]', b'{"ts": Infinity}', b"\xff\xfe",
])
def test_known_poison_pills_are_invalid_records(raw):
    with pytest.raises(InvalidRecord):
        valid, rejected = decode_pack(raw, validate_event)
        if rejected:
            raise rejected[0][1]


def test_a_hole_in_a_partitions_offsets_stops_the_batch_before_anything_is_applied():
    from streams.agents import OffsetGap, OffsetTracker

    tracker = OffsetTracker()
    tracker.check([(0, 10), (1, 3), (0, 11)])
    tracker.check([(0, 5), (0, 6)])  # a replay (after a rebalance) goes back: fine
    with pytest.raises(OffsetGap, match="partition 1: offsets 4..4 were skipped"):
        tracker.check([(0, 7), (1, 5)])


def test_a_hole_right_at_a_rebalance_is_caught_against_where_the_group_resumes():
    """After a rebalance the tracker is cleared; a partition's first batch is checked against its committed offset
    (the two-worker test lost messages this way when the second worker joined during the first's start, 1 run in
    10, before the check)."""
    from streams.agents import OffsetGap, OffsetTracker

    tracker = OffsetTracker()
    assert tracker.unseen([0, 1]) == {0, 1}
    tracker.check([(0, 40), (0, 41)], resume_at={0: 40})  # starts where the group resumes: fine
    tracker.check([(1, 7)], resume_at={1: 9})  # behind it (a message of the old generation, replayed): fine
    assert tracker.unseen([0, 1, 2]) == {2}
    tracker.check([(2, 3)], resume_at={2: None})  # unknown: not checked
    tracker.next.clear()  # the rebalance
    with pytest.raises(OffsetGap, match="partition 0: the first message after a rebalance is at offset 44 but the "
                                        "group resumes at 42: offsets 42..43 were skipped"):
        tracker.check([(0, 44), (0, 45)], resume_at={0: 42})
    tracker.next.clear()
    tracker.check([(0, 42)], resume_at={0: 42})
    with pytest.raises(OffsetGap, match="offsets 43..43"):  # and from there on, as before, without resume_at
        tracker.check([(0, 44)], resume_at={0: 0})


def test_the_stall_watch_names_a_partition_whose_fetched_messages_an_idle_agent_never_applied():
    from streams.agents import Fetched, OffsetTracker, StallWatch

    tracker = OffsetTracker()  # the agent's: it knows the next offset to apply of every partition it took
    watch = StallWatch(stall_s=10, trackers={"ev": tracker}, max_gap_s=1000)
    watch.begin("ev", 0.0)
    tracker.check([(0, 4), (0, 5), (1, 2)])
    watch.end("ev")
    caught_up = {("ev", 0): Fetched(6, 3, True), ("ev", 1): Fetched(3, None, True)}
    assert watch.check(caught_up, 0.0) is None and watch.check(caught_up, 100.0) is None
    behind = {("ev", 0): Fetched(9, 3, True), ("ev", 1): Fetched(3, None, True)}
    assert watch.check(behind, 100.0) is None  # behind since 100 s
    assert watch.check(behind, 109.0) is None
    assert watch.check(behind, 110.0) == ("ev[0]: fetched up to offset 8, next to apply 6, and its agent started "
                                          "nothing for 10 s")
    watch.begin("ev", 111.0)  # a busy agent is never stalled, and a batch it starts restarts the clock
    assert watch.check(behind, 200.0) is None
    tracker.check([(0, 6)])
    watch.end("ev")
    assert watch.check(behind, 201.0) is None and watch.check(behind, 210.0) is None
    assert watch.check(behind, 211.0) is not None
    # a partition revoked (absent) forgets its clock; one whose agent took nothing since the last rebalance is
    # judged by its committed offset, else by whether the consumer handed anything to the streams at all
    assert watch.check({}, 212.0) is None
    fresh = StallWatch(stall_s=10, trackers={"ev": OffsetTracker()}, max_gap_s=1000)
    assert fresh.check({("ev", 0): Fetched(50, 50, True)}, 0.0) is None
    assert fresh.check({("ev", 0): Fetched(50, 50, True)}, 99.0) is None
    fresh.check({("ev", 0): Fetched(75, 50, True), ("ev", 1): Fetched(7, None, False)}, 100.0)
    assert "ev[0]" in fresh.check({("ev", 0): Fetched(75, 50, True), ("ev", 1): Fetched(7, None, False)}, 110.0)
    fresh = StallWatch(stall_s=10, trackers={"ev": OffsetTracker()}, max_gap_s=1000)
    fresh.check({("ev", 1): Fetched(7, None, True)}, 0.0)
    assert "next to apply unknown" in fresh.check({("ev", 1): Fetched(7, None, True)}, 10.0)
    # checks further apart than max_gap_s (the event loop was blocked, the agents with it) do not count that time
    blocked = StallWatch(stall_s=10, trackers={"ev": OffsetTracker()}, max_gap_s=5)
    behind_now = {("ev", 0): Fetched(9, 3, True)}
    assert blocked.check(behind_now, 0.0) is None
    assert blocked.check(behind_now, 40.0) is None  # 40 s without a check: the clock restarts at 40
    for t in range(41, 50):
        assert blocked.check(behind_now, float(t)) is None
    assert blocked.check(behind_now, 50.0) is not None


def test_the_state_check_on_the_real_broker_compares_levels():
    """``workers.statecheck.compare`` (what the fault, poison and scale tests on tansu use) counts an item whose
    levels are off, or missing, as a difference."""
    from workers.statecheck import compare

    expected = build_graph(ROWS, GraphConfig(max_degree=1000))
    harness = LogHarness(StreamConfig(partitions=PARTITIONS, graph=GraphConfig(max_degree=1000)))
    harness.produce(ROWS)
    harness.drain()
    levels = harness.levels()
    args = (harness.users(), harness.adjacency(), expected, expected, None)
    assert compare(*args, levels, LEVELS).exact
    item = next(iter(levels))
    off = {**levels, item: [levels[item][0] + 1e-6, *levels[item][1:]]}
    assert compare(*args, off, LEVELS).items_levels_different == 1
    missing = {k: v for k, v in levels.items() if k != item}
    assert not compare(*args, missing, LEVELS).exact
