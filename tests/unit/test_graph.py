import copy
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.graph import (
    CoGraph,
    GraphConfig,
    apply_consumption,
    build_graph,
    merge_neighbour,
    merge_neighbours,
    merge_neighbours_reference,
    new_user_state,
    recent_items,
    recent_items_reference,
)
from models.synthetic import generate
from streams.agents import StreamConfig
from streams.testing import LogHarness


def test_first_consumption_pairs_with_recent_items_both_ways():
    state = new_user_state()
    config = GraphConfig(window=2)
    apply_consumption(state, "e1", "a", "podcast", 1.0, config)
    apply_consumption(state, "e2", "b", "audiobook", 2.0, config)
    _, pairs = apply_consumption(state, "e3", "c", "podcast", 3.0, config)
    assert sorted((p[0], p[2]) for p in pairs) == [("a", "c"), ("b", "c"), ("c", "a"), ("c", "b")]
    assert state["counts"] == {"podcast": 2, "audiobook": 1}


def test_window_limits_pairs_to_most_recent_items():
    state = new_user_state()
    config = GraphConfig(window=1)
    for n, item in enumerate("abc"):
        _, pairs = apply_consumption(state, f"e{n}", item, "t", float(n), config)
    assert {(p[0], p[2]) for p in pairs} == {("c", "b"), ("b", "c")}


def test_relistening_moves_item_to_front_but_adds_no_pairs():
    state = new_user_state()
    config = GraphConfig()
    apply_consumption(state, "e1", "a", "t", 1.0, config)
    apply_consumption(state, "e2", "b", "t", 2.0, config)
    changed, pairs = apply_consumption(state, "e3", "a", "t", 3.0, config)
    assert changed and pairs == []
    assert [row[0] for row in state["recent"]["t"]] == ["b", "a"]


def test_redelivered_event_changes_nothing():
    state = new_user_state()
    apply_consumption(state, "e1", "a", "t", 1.0, GraphConfig())
    before = json.dumps(state)
    assert apply_consumption(state, "e1", "a", "t", 1.0, GraphConfig()) == (False, [])
    assert json.dumps(state) == before


def test_history_is_bounded_per_type():
    state = new_user_state()
    config = GraphConfig(history_per_type=3, max_consumed=4)
    for n in range(10):
        apply_consumption(state, f"e{n}", f"i{n}", "t", float(n), config)
    apply_consumption(state, "x", "j", "u", 99.0, config)
    assert [row[0] for row in state["recent"]["t"]] == ["i7", "i8", "i9"]
    assert state["recent"]["u"] == [["j", 99.0]]
    assert list(state["consumed"]) == ["i7", "i8", "i9", "j"]


def test_degree_cap_keeps_heaviest_then_most_recent_edges():
    adjacency: dict = {}
    merge_neighbour(adjacency, "a", "t", 1.0, 2)
    merge_neighbour(adjacency, "a", "t", 2.0, 2)  # a: weight 2
    merge_neighbour(adjacency, "b", "t", 3.0, 2)  # b: weight 1, older than d
    merge_neighbour(adjacency, "c", "t", 0.5, 2)  # c: weight 1, oldest
    assert set(adjacency) == {"a", "b", "c"}  # below 2 * max_degree nothing is pruned
    merge_neighbour(adjacency, "d", "t", 4.0, 2)
    assert set(adjacency) == {"a", "d"}
    assert adjacency["a"][1] == 2


def test_degree_never_exceeds_twice_the_cap():
    adjacency: dict = {}
    for n in range(1000):
        merge_neighbour(adjacency, f"n{n % 97}", "t", float(n), 10)
        assert len(adjacency) < 20


def test_edge_weight_counts_users_not_plays():
    rows = [("1", "u1", "a", "t", 1.0), ("2", "u1", "b", "t", 2.0), ("3", "u1", "a", "t", 3.0),
            ("4", "u1", "b", "t", 4.0), ("5", "u2", "a", "t", 5.0), ("6", "u2", "b", "t", 6.0)]
    graph = build_graph(rows)
    assert graph.adjacency["a"]["b"][1] == 2
    assert graph.adjacency["b"]["a"][1] == 2


@pytest.mark.parametrize("max_degree", [3, 100])
def test_stream_folds_build_the_same_graph_as_the_batch_builder(max_degree):
    """Micro-batched stream processing (events -> pairs -> adjacency) equals the batch build."""
    data = generate(users=40, items_per_type=15, events_per_user=12, seed=3)
    types = {i.item_id: i.item_type for i in data.items}
    rows = [(f"e{n}", e.user_id, e.item_id, types[e.item_id], e.ts) for n, e in enumerate(data.events)]
    batch = build_graph(rows, GraphConfig(max_degree=max_degree))

    harness = LogHarness(StreamConfig(partitions=3, graph=GraphConfig(max_degree=max_degree)), per_message=5)
    harness.produce(rows, pack=37)
    harness.drain(max_messages=2)
    assert harness.users() == batch.users
    # each item's pairs arrive in order on its one partition; across events partitions the order is the log's
    assert harness.adjacency() == harness.fold_pairs_log()
    if max_degree == 100:  # nothing pruned: arrival order cannot matter
        assert harness.adjacency() == batch.adjacency


def test_cograph_edges_lists_every_directed_edge():
    graph = CoGraph()
    graph.consume("1", "u", "a", "t", 1.0)
    graph.consume("2", "u", "b", "t", 2.0)
    assert sorted(graph.edges()) == [("a", "b", 1), ("b", "a", 1)]


# The merge runs in C (models/_graphc.c); its definition is the Python reference. Same adjacency, same order (the
# order of an adjacency reaches the HGNN's edge lists), on streams built to hit every branch: repeated and new
# neighbours, prunes, ties on weight and on time, int and float times (and equal values of both), a NaN, weights and
# times outside the C fast path (big ints, bools), tuples as entries.
_NEIGHBOURS = st.sampled_from([f"n{k}" for k in range(12)])
_TIMES = st.one_of(st.integers(0, 5), st.sampled_from([0.0, 1.0, 2.5, -0.0, 2**60, 2**53 + 1, 1e300]),
                   st.floats(0, 5, allow_nan=False))


@settings(max_examples=400, deadline=None)
@given(triples=st.lists(st.tuples(_NEIGHBOURS, st.sampled_from(["film", "family"]), _TIMES), max_size=80),
       max_degree=st.integers(1, 5), start_weights=st.lists(st.sampled_from([1, 2, 3, 2**70, True]), max_size=6),
       split=st.integers(0, 80))
def test_c_merge_equals_the_python_reference(triples, max_degree, start_weights, split):
    start = {f"n{k}": ["film", w, float(k)] for k, w in enumerate(start_weights)}
    ours, reference = copy.deepcopy(start), copy.deepcopy(start)
    flat = [x for triple in triples for x in triple]
    head = ["src", "film", 0, 0, []]
    merge_neighbours(ours, head + flat[: 3 * split], max_degree, start=len(head))  # a group, as the agent merges it
    merge_neighbours(ours, tuple(flat[3 * split :]), max_degree)  # and a plain tuple
    merge_neighbours_reference(reference, head + flat[: 3 * split], max_degree, start=len(head))
    merge_neighbours_reference(reference, tuple(flat[3 * split :]), max_degree)
    assert list(ours.items()) == list(reference.items())
    assert all(type(a[1]) is type(b[1]) and type(a[2]) is type(b[2])
               for a, b in zip(ours.values(), reference.values(), strict=True))


def test_c_merge_matches_the_reference_on_a_nan_and_on_tuple_entries():
    for entries in ({"a": ["t", 1, float("nan")], "b": ["t", 1, 1.0]}, {"a": ("t", 1, 1.0)}):
        ours, reference = copy.deepcopy(entries), copy.deepcopy(entries)
        flat = ["c", "t", 2.0, "d", "t", float("nan"), "e", "t", 0.5, "b", "t", 3.0]
        errors = []
        for adjacency, merge in ((ours, merge_neighbours), (reference, merge_neighbours_reference)):
            try:
                merge(adjacency, flat, 2)
            except TypeError as error:  # a tuple entry cannot be reinforced, in either
                errors.append(type(error))
        assert str(ours) == str(reference) and len(errors) in (0, 2)


def test_c_merge_rejects_what_is_not_an_adjacency():
    with pytest.raises(TypeError):
        merge_neighbours([], ["a", "t", 1.0], 2)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_degree"):
        merge_neighbours({}, ["a", "t", 1.0], 0)
    with pytest.raises(TypeError, match="sequence"):
        merge_neighbours({}, 5, 2)  # type: ignore[arg-type]


_ROW_TIMES = st.one_of(st.integers(0, 4), st.sampled_from([1.0, 2.5, -0.0, 0.0, 2**53 + 1, 2**60, float("nan"), True]),
                       st.floats(0, 4, allow_nan=False))


@settings(max_examples=400, deadline=None)
@given(recent=st.dictionaries(st.sampled_from(["film", "family", "b"]),
                              st.lists(st.tuples(st.sampled_from(["a", "b", "ab", "z", ""]), _ROW_TIMES), max_size=12),
                              max_size=3),
       limit=st.one_of(st.none(), st.integers(-2, 30)), as_tuple=st.booleans())
def test_c_recent_items_equals_the_python_reference(recent, limit, as_tuple):
    """Ties in time, in item and in type, ints beside floats, values off the fast path (a NaN, a bool, an int
    beyond 2**53, a tuple row): the same list, the same objects."""
    rows = {t: [(tuple if as_tuple and k == 0 else list)(row) for k, row in enumerate(r)] for t, r in recent.items()}
    state = {"recent": rows}
    ours, reference = recent_items(state, limit), recent_items_reference(state, limit)
    assert str(ours) == str(reference)  # str: a NaN is not equal to itself
    assert [tuple(map(id, x)) for x in ours] == [tuple(map(id, x)) for x in reference]
