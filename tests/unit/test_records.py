import json
import re
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.agents import StreamConfig, counts_as_consumption, fold_events, partition_for
from streams.errors import InvalidRecord
from streams.records import ListenEvent, decode_pack, event_to_dict, validate_catalog_item, validate_event

GOOD = {"event_id": "e1", "user_id": "u1", "item_id": "i1", "item_type": "podcast", "ts": 1.7e9}


def test_valid_event_round_trips():
    event = validate_event(GOOD)
    assert (event.user_id, event.item_type, event.kind, event.ms_played) == ("u1", "podcast", "stream", None)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"ts": -1}, "ts"),
        ({"ts": "yesterday"}, "ts"),
        ({"user_id": ""}, "user_id"),
        ({"item_id": None}, "item_id"),
        ({"item_type": "Pod Cast"}, "item_type"),
        ({"kind": "skip"}, "kind"),
        ({"ms_played": -5}, "ms_played"),
        ({"event_id": True}, "event_id"),
    ],
)
def test_invalid_event_names_the_field(change, field):
    with pytest.raises(InvalidRecord) as caught:
        validate_event({**GOOD, **change})
    assert caught.value.field == field
    assert field in str(caught.value)


def test_catalog_item_needs_a_title():
    with pytest.raises(InvalidRecord, match="title"):
        validate_catalog_item({"item_id": "x", "item_type": "podcast", "title": "  "})


def test_pack_keeps_valid_events_and_reports_bad_ones():
    raw = json.dumps([GOOD, {**GOOD, "ts": 0}, {**GOOD, "event_id": "e2"}]).encode()
    valid, rejected = decode_pack(raw, validate_event)
    assert [e.event_id for e in valid] == ["e1", "e2"]
    assert [error.field for _, error in rejected] == ["ts"]


def test_unreadable_message_is_rejected_whole():
    with pytest.raises(InvalidRecord) as caught:
        decode_pack(b"\xff not json", validate_event)
    assert caught.value.field == "<message>"


def test_short_streams_and_previews_are_not_consumptions():
    base = ListenEvent(event_id="e", user_id="u", item_id="i", item_type="t", ts=1.0)
    assert counts_as_consumption(base, 30_000)
    assert not counts_as_consumption(ListenEvent(**{**event_to_dict(base), "ms_played": 1000}), 30_000)
    assert not counts_as_consumption(ListenEvent(**{**event_to_dict(base), "kind": "preview"}), 30_000)
    assert counts_as_consumption(ListenEvent(**{**event_to_dict(base), "kind": "follow", "ms_played": 0}), 30_000)


def test_fold_events_sorts_outcomes_and_dead_letters():
    home = partition_for("u1", 2)
    messages = [
        (b"garbage", 1.0, home, 0),
        (json.dumps([GOOD, {**GOOD, "event_id": "e2", "item_id": "i2"}, {"user_id": "u"}]).encode(), 2.0, home, 1),
        (json.dumps({**GOOD, "event_id": "e3", "kind": "preview"}).encode(), 3.0, home, 2),
        (json.dumps(GOOD).encode(), 4.0, home, 3),
    ]
    batch = fold_events(messages, lambda _: None, StreamConfig(partitions=2))
    assert dict(batch.outcomes) == {"invalid": 2, "consumed": 2, "not_consumption": 1, "duplicate": 1}
    assert [error.field for _, error, _, _ in batch.dead] == ["<message>", "ts"]
    assert [offset for _, _, _, offset in batch.dead] == [0, 1]
    assert batch.users["u1"].offsets == {str(home): 1}
    assert batch.sent_at == {"u1": 2.0}
    groups = {key: group for part in batch.pairs.values() for key, group in part.items()}
    # i1's first consumption made no pair, i2's paired it with i1; each group carries its item's consumption times
    assert {key: group[4:] for key, group in groups.items()} == {
        ("i1", home, 1): [[GOOD["ts"]], "i2", "podcast", GOOD["ts"]],
        ("i2", home, 1): [[GOOD["ts"]], "i1", "podcast", GOOD["ts"]]}
    assert batch.pair_count == 2 and batch.consumptions == 2
    for partition, part in batch.pairs.items():
        assert all(partition_for(src, 2) == partition for src, _, _ in part)


def test_partition_matches_kafka_default_partitioner():
    from aiokafka.partitioner import DefaultPartitioner

    partitioner = DefaultPartitioner()
    for key in ["u1", "user-42", "B00GTW0O86", "6139"]:
        assert partition_for(key, 4) == partitioner(key.encode(), [0, 1, 2, 3], [0, 1, 2, 3])


@pytest.mark.parametrize("group, field", [
    (["a", "podcast", 0, 1, "b", "podcast", 1.0], "<group>"),  # the old layout: no consumption list
    (["a", "podcast", 0, 1, 2.0, "b", "podcast", 1.0], "consumed"),
    (["a", "podcast", 0, 1, [1.0, "x"]], "consumed"),
    (["a", "podcast", 0, 1, [True]], "consumed"),
    (["a", "podcast", 0, 1, [1.0], "b", "podcast"], "<group>"),
])
def test_a_pair_group_without_a_list_of_consumption_times_is_refused(group, field):
    from streams.agents import decode_pairs

    with pytest.raises(InvalidRecord) as caught:
        decode_pairs(json.dumps([group]).encode())
    assert caught.value.field == field
    assert decode_pairs(json.dumps([["a", "podcast", 0, 1, [1.0, 2]]]).encode())[0][4] == [1.0, 2]


def test_an_item_update_carries_one_level_per_time_constant():
    from models.trend import TAUS
    from streams.records import validate_item_update

    update = {"item_id": "a", "item_type": "podcast", "adjacency": {}, "levels": [1.5] * len(TAUS)}
    assert validate_item_update(update).levels == [1.5] * len(TAUS)
    for levels in (None, [1.0], ["x"] * len(TAUS), [1.0] * (len(TAUS) + 1)):
        with pytest.raises(InvalidRecord) as caught:
            validate_item_update({**update, "levels": levels})
        assert caught.value.field == "levels"


def test_an_item_value_from_before_the_levels_is_refused_by_name():
    from streams.agents import StaleState, decode_item

    with pytest.raises(StaleState, match="no trend levels"):
        decode_item(b'{"type": "podcast", "offsets": {"0": 3}, "adj": {}}')


_JSONISH = st.one_of(st.text(max_size=3), st.integers(-3, 3), st.floats(allow_nan=False), st.booleans(), st.none(),
                     st.lists(st.integers(), max_size=2))


@settings(max_examples=500, deadline=None)
@given(flat=st.lists(_JSONISH, max_size=14), start=st.integers(0, 6))
def test_the_pair_triples_check_in_c_is_its_python_definition(flat, start):
    from models._graphc import well_typed_triples

    # the definition: a column at a time, exact types, no empty string
    dst, dst_type, ts = flat[start::3], flat[start + 1 :: 3], flat[start + 2 :: 3]
    expected = (set(map(type, dst)) <= {str} and set(map(type, dst_type)) <= {str} and "" not in dst
                and "" not in dst_type and set(map(type, ts)) <= {int, float})
    assert well_typed_triples(flat, start) is expected


_IDS = st.sampled_from(["a", "b", "é", "item-1", "x" * 40])
_GROUP = st.tuples(_IDS, st.sampled_from(["film", "family"]), st.integers(0, 7), st.integers(0, 2**63 - 1),
                   st.lists(st.floats(1, 4e9), max_size=3),
                   st.lists(st.tuples(_IDS, st.sampled_from(["film", "podcast"]), st.floats(1, 4e9)), max_size=6))


@settings(max_examples=300, deadline=None)
@given(groups=st.lists(_GROUP, max_size=6), per_message=st.integers(1, 8))
def test_binary_pair_messages_decode_to_the_groups_packed(groups, per_message):
    from streams.agents import PAIRS_MAGIC, decode_pairs, pack_pairs

    flat = {k: [src, src_type, p, o, consumed, *[x for pair in pairs for x in pair]]
            for k, (src, src_type, p, o, consumed, pairs) in enumerate(groups)}
    messages = list(pack_pairs(flat, per_message))
    assert all(m.startswith(PAIRS_MAGIC) for m in messages)
    decoded = [group for m in messages for group in decode_pairs(m)]
    assert decoded == list(flat.values())
    pairs = zip(decoded, flat.values(), strict=True)
    assert all(type(a) is type(b) for d, f in pairs for a, b in zip(d, f, strict=True))


@settings(max_examples=500, deadline=None)
@given(groups=st.lists(_GROUP, min_size=1, max_size=4), cut=st.integers(0, 10_000), flips=st.lists(
    st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=4))
def test_a_corrupt_binary_pairs_message_is_refused_by_name(groups, cut, flips):
    """Truncated or with bytes changed, a binary message decodes to well-formed groups or raises InvalidRecord."""
    from streams.agents import GROUP_HEAD, decode_pairs, encode_pairs

    raw = bytearray(encode_pairs([[src, t, p, o, c, *[x for pair in pairs for x in pair]]
                                  for src, t, p, o, c, pairs in groups]))
    for at, value in flips:
        raw[at % len(raw)] = value
    raw = bytes(raw[: max(cut, 4)] if cut < len(raw) else raw)
    try:
        decoded = decode_pairs(raw)
    except InvalidRecord:
        return
    for group in decoded:  # what is accepted is as well typed as a JSON group
        assert isinstance(group[0], str) and group[0] and isinstance(group[1], str) and group[1]
        assert (len(group) - GROUP_HEAD) % 3 == 0
        assert all(isinstance(x, str) and x for k in range(GROUP_HEAD, len(group), 3) for x in group[k : k + 2])
        assert all(type(group[k]) is float and group[k] == group[k] for k in range(GROUP_HEAD + 2, len(group), 3))


def test_a_binary_pairs_message_names_what_is_wrong():
    from streams.agents import PAIRS_MAGIC, decode_pairs

    def message(strings, meta, body=b""):
        header = json.dumps([strings, meta]).encode()
        return PAIRS_MAGIC + len(header).to_bytes(4, "little") + header + body

    record = (0).to_bytes(4, "little") + (5).to_bytes(4, "little") + struct.pack("<d", 1.0)
    for raw, says in [
        (PAIRS_MAGIC + b"\xff\x00\x00\x00{}", "with a header of 255"),
        (message(["a", ""], []), "strings[1] is not a non-empty string"),
        (message(["a", "film"], [[0, 2, 0, 1, [], 0]]), "must index the 2 strings"),
        (message(["a", "film"], [[0, 1, 0, 1, [], 2]], record), "2 pairs, but 1 records are left"),
        (message(["a", "film"], [[0, 1, 0, 1, [], 1]], record), "pair 0: dst and dst_type must index"),
        (message(["a", "film"], [[0, 1, 0, 1, [], 0]], record), "1 pair records belong to no group"),
        (message(["a", "film"], [[0, 1, 0, 1, [], 0]], b"x"), "not a multiple of 16"),
    ]:
        with pytest.raises(InvalidRecord, match=re.escape(says)):
            decode_pairs(raw)
    with pytest.raises(InvalidRecord) as caught:
        decode_pairs(message(["a", "film"], [[0, 1, -1, 1, [], 0]]))
    assert caught.value.field == "partition"
    nan = (0).to_bytes(4, "little") + (1).to_bytes(4, "little") + struct.pack("<d", float("nan"))
    with pytest.raises(InvalidRecord, match="finite"):
        decode_pairs(message(["a", "film"], [[0, 1, 0, 1, [], 1]], nan))


@pytest.mark.parametrize("entry,field", [
    (["podcast", 1], "adjacency"),
    (["Podcast", 1, 1.0], "adjacency"),
    ([1, 1, 1.0], "adjacency"),
    (["podcast", True, 1.0], "adjacency"),
    (["podcast", 0, 1.0], "adjacency"),
    (["podcast", 1.5, 1.0], "adjacency"),
    ("podcast", "adjacency"),
    (["podcast", 1, "x"], "adjacency.ts"),
    (["podcast", 1, None], "adjacency.ts"),
    (["podcast", 1, float("nan")], "adjacency.ts"),
])
def test_a_bad_adjacency_entry_among_good_ones_is_named(entry, field):
    """The bulk check of a valid adjacency (the common case) and the entry-by-entry one that names what is wrong
    agree: one bad entry among many good ones is refused by name, whatever kind of wrong it is."""
    from models.trend import TAUS
    from streams.records import validate_item_update

    good = {f"n{i}": ["podcast" if i % 2 else "audiobook", i + 1, float(i) if i % 3 else i] for i in range(60)}
    update = {"item_id": "a", "item_type": "podcast", "levels": [0.0] * len(TAUS)}
    assert validate_item_update({**update, "adjacency": good}).adjacency == good
    with pytest.raises(InvalidRecord) as caught:
        validate_item_update({**update, "adjacency": {**good, "bad": entry}})
    assert caught.value.field == field


def test_an_item_update_carries_its_adjacency_in_columns_and_reads_back_the_same():
    """The agents write a refresh request's adjacency as four parallel arrays (decoded about four times faster than
    one array per neighbour); the refresher reads back exactly the table's adjacency, and still reads the older
    form."""
    from models.trend import TAUS
    from streams.agents import ItemEntry, encode_item
    from streams.records import load_json, validate_item_update

    adjacency = {f"n{i}": ["podcast" if i % 2 else "audiobook", i + 1, 1.5 * i if i % 3 else i] for i in range(40)}
    entry = ItemEntry("podcast", adjacency, {"0": 3}, [0.25] * len(TAUS))
    table, update = encode_item("a", entry)
    read = validate_item_update(load_json(update))
    assert b'"neighbours":' in update and b'"adjacency"' not in update
    assert {k: list(v) for k, v in read.adjacency.items()} == adjacency == load_json(table)["adj"]
    assert list(read.adjacency) == list(adjacency) and read.levels == entry.levels
    assert validate_item_update(load_json(encode_item("b", ItemEntry("podcast", {}, {}, entry.levels))[1])).adjacency \
        == {}
    older = {"item_id": "a", "item_type": "podcast", "levels": entry.levels, "adjacency": adjacency}
    assert validate_item_update(older).adjacency == adjacency


@pytest.mark.parametrize("change,field", [
    ({"neighbours": ["n0", "n0"]}, "adjacency.neighbours"),
    ({"neighbours": [["n0"], "n1"]}, "adjacency.neighbours"),
    ({"neighbours": ["", "n1"]}, "adjacency.neighbours"),
    ({"types": ["podcast"]}, "adjacency"),
    ({"weights": None}, "adjacency"),
    ({"weights": [1, 0]}, "adjacency"),
    ({"weights": [1, True]}, "adjacency"),
    ({"types": ["podcast", "Bad type"]}, "adjacency"),
    ({"ts": [1.0, "x"]}, "adjacency.ts"),
])
def test_a_bad_adjacency_column_is_refused_by_name(change, field):
    from models.trend import TAUS
    from streams.records import validate_item_update

    update = {"item_id": "a", "item_type": "podcast", "levels": [0.0] * len(TAUS), "neighbours": ["n0", "n1"],
              "types": ["podcast", "podcast"], "weights": [1, 2], "ts": [1.0, 2]}
    assert validate_item_update(update).adjacency == {"n0": ("podcast", 1, 1.0), "n1": ("podcast", 2, 2)}
    with pytest.raises(InvalidRecord) as caught:
        validate_item_update({**update, **change})
    assert caught.value.field == field
