"""The refresher refreshes exactly what a change reaches: whatever the micro-batches, once the frontier is drained
every stored item vector, and every user vector the API composes from the store, equals a full recompute on the
final graph and states; bad records become dead letters; a failing vector store is retried and reported, never
skipped."""

import json
import random

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

import workers.refresher as refresher_module
from models.embedding import LiveGraph, TextPropagationModel
from models.graph import GraphConfig
from models.synthetic import generate
from models.text import HashingEncoder
from models.trend import TAUS
from monitoring.metrics import RefresherMetrics
from streams.agents import StreamConfig
from streams.records import CatalogItem
from streams.testing import refresh_records
from vectorstore.compose import ComposedUsers
from vectorstore.server import ServerStore
from workers.refresher import Changes, Refresher, collect
from workers.settings import KafkaSettings, RefresherSettings

KAFKA = KafkaSettings()
ENCODER = HashingEncoder(32)


def _records(seed: int = 3):
    """A catalogue and the refresh requests that the stream agents publish for a generated stream, as
    ``(topic, value, partition, offset)`` records in a plausible interleaving."""
    data = generate(users=40, items_per_type=25, events_per_user=15, seed=seed)
    # some texts arrive after the items' edges and users: their followers must follow
    config = StreamConfig(partitions=2, graph=GraphConfig(max_degree=8))
    return refresh_records(data, config, KAFKA.topic, seed, late_every=7)


def _refresher(model=None, store=None, per_batch: int = 50):
    store = store or ServerStore(":memory:")
    model = model or TextPropagationModel(ENCODER.name, ENCODER.dim)
    settings = RefresherSettings(dependents_per_batch=per_batch, retry_initial_s=0.01, retry_max_s=0.02)
    return Refresher(store, model, ENCODER, RefresherMetrics.create(CollectorRegistry()), settings)


def _feed(refresher, records, sizes):
    position = 0
    rng = random.Random(sum(sizes))
    while position < len(records):
        size = rng.choice(sizes)
        refresher.apply(collect(records[position : position + size], KAFKA))
        position += size
    while not refresher.idle:
        refresher.apply(Changes())


def _vectors(refresher, records):
    """Every stored item vector, and every user's vector as the API composes it from the store."""
    items = {i: refresher.store.get_item(i) for i in refresher.graph.ids}
    users = list(collect(records, KAFKA).users)
    points = [refresher.store.get_user(u) for u in users]
    assert all(p is not None for p in points)
    composed = ComposedUsers(refresher.store, refresher.model.composer).vectors(points)
    return ({i: p.vector for i, p in items.items() if p is not None}, dict(zip(users, composed, strict=True)))


def _full_recompute(model, records):
    """Item vectors and user vectors computed in one pass over the final graph and states."""
    full = _refresher(model, per_batch=10**6)
    _feed(full, records, [len(records)])
    states = collect(records, KAFKA).users
    users = model.user_vectors([u.state for u in states.values()], full.graph)
    return _vectors(full, records)[0], dict(zip(states, users, strict=True))


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_allclose(a[key], b[key], atol=1e-5, err_msg=key)


def _trained_model(tmp_path_factory, with_trend: bool = False):
    from models.evaluate import load_split
    from models.hgnn import HGNNConfig
    from models.serving import TrainedModel, train_for_serving
    from models.synthetic import write_dataset
    from models.train import TrainConfig
    from models.twotower import TwoTowerConfig

    folder = write_dataset(generate(users=40, items_per_type=25, events_per_user=15, seed=3),
                           tmp_path_factory.mktemp("refresher-model"))
    config = TrainConfig(hgnn=HGNNConfig(hidden=16, out=8, epochs=1, batch_edges=128),
                         two_tower=TwoTowerConfig(dim=8, hidden=16, epochs=1, batch=64, examples_per_user=5,
                                                  trend=with_trend))
    directory = train_for_serving(load_split(folder, everything=True), ENCODER, config,
                                  tmp_path_factory.mktemp("models"), "test", 3 * 86400.0 if with_trend else None)
    return TrainedModel(directory, ENCODER.name)


@pytest.fixture(scope="module", params=["text-propagation", "2t-hgnn", "2t-hgnn-trend"])
def model(request, tmp_path_factory):
    """The fallback, the 2T-HGNN, and the 2T-HGNN with the trend (every consumption moves its item's vector)."""
    if request.param == "text-propagation":
        return TextPropagationModel(ENCODER.name, ENCODER.dim)
    return _trained_model(tmp_path_factory, with_trend=request.param.endswith("trend"))


def test_incremental_refresh_equals_a_full_recompute_and_survives_a_restart(model):
    records = _records()
    expected_items, expected_users = _full_recompute(model, records)
    assert len(expected_items) > 40 and len(expected_users) == 40
    if model.trend is None:  # unit vectors for a cosine store; with the trend, [scale * u / temperature, lambda_u]
        assert all(np.isclose(np.linalg.norm(v), 1.0, atol=1e-5) for v in expected_users.values())
    else:
        assert all(v[-1] > 0 and np.linalg.norm(v) > 1.0 for v in expected_users.values())

    incremental = _refresher(model, per_batch=7)  # a tiny budget: the frontier spans many batches
    _feed(incremental, records, [1, 3, 17, 60])
    _assert_same(_vectors(incremental, records)[0], expected_items)
    _assert_same(_vectors(incremental, records)[1], expected_users)

    # a restart mid-stream: the new refresher re-reads every record from the beginning into the same store
    crashed = _refresher(model, per_batch=5)
    _feed(crashed, records[: len(records) // 2], [9, 2])
    restarted = _refresher(model, store=crashed.store, per_batch=5)
    _feed(restarted, records, [40, 4])
    _assert_same(_vectors(restarted, records)[0], expected_items)
    _assert_same(_vectors(restarted, records)[1], expected_users)


def test_a_user_vector_is_composed_from_the_latest_state_and_the_latest_item_inputs(model):
    """Mid-stream, with items still in the frontier: the composed vector reads the user's stored state and the
    stored items' inputs as they are at that moment, nothing older."""
    records = _records()
    refresher = _refresher(model, per_batch=3)
    for start in range(0, len(records), 25):
        refresher.apply(collect(records[start : start + 25], KAFKA))
    assert not refresher.idle  # items wait in the frontier: their stored inputs are older than the graph
    users = collect(records, KAFKA).users
    points = [refresher.store.get_user(u) for u in users]
    assert [p.recent for p in points] == [u.state["recent"] for u in users.values()]
    composer = model.composer
    stored = refresher.store.item_inputs(refresher.graph.ids, composer.reads_features)
    from models.embedding import ItemInputs

    width = next(iter(stored.values()))[1].shape[0]
    want = composer.compose([u.state for u in users.values()], ItemInputs.of(stored, width))
    got = ComposedUsers(refresher.store, composer).vectors(points)
    np.testing.assert_allclose(got, want, atol=1e-6)  # it fetched every item the composer reads
    while not refresher.idle:
        refresher.apply(Changes())
    _assert_same(_vectors(refresher, records)[1], _full_recompute(model, records)[1])


def test_a_changed_text_reaches_followers_within_the_models_hops():
    graph = LiveGraph(text_dim=2, vector_dim=2)
    # c lists b, b lists a: a's text reaches b (1 hop) and c (2 hops); a's adjacency reaches only b at 2 hops
    graph.set_adjacency("b", "t", {"a": ["t", 1, 1.0]})
    graph.set_adjacency("c", "t", {"b": ["t", 1, 1.0]})
    graph.set_adjacency("a", "t", {"z": ["t", 1, 1.0]})
    assert graph.affected(set(), {"a"}, hops=1) == {"a", "b"}
    assert graph.affected(set(), {"a"}, hops=2) == {"a", "b", "c"}
    assert graph.affected({"a"}, set(), hops=1) == {"a"}
    assert graph.affected({"a"}, set(), hops=2) == {"a", "b"}
    graph.set_adjacency("c", "t", {})  # c no longer reads b
    assert graph.affected(set(), {"a"}, hops=2) == {"a", "b"}


def test_bad_records_become_dead_letters_and_the_rest_is_applied():
    good = CatalogItem(item_id="x", item_type="podcast", title="Space", description="").dumps()
    records = [
        (KAFKA.topic("catalog"), None, 0, 1),
        (KAFKA.topic("catalog"), b"[" * 50_000, 0, 2),
        (KAFKA.topic("catalog"), b'{"item_id": "y", "item_type": "podcast", "title": {"a": 1}}', 0, 3),
        (KAFKA.topic("item-updates"), b'{"item_id": "x", "item_type": "podcast", "adjacency": {"q": [1, 2]}}', 1, 4),
        (KAFKA.topic("user-updates"), b'{"user_id": "u", "event_ts": 1, "state": {"recent": 3}}', 2, 5),
        (KAFKA.topic("catalog"), good, 0, 6),
    ]
    changes = collect(records, KAFKA)
    assert list(changes.catalog) == ["x"]
    assert [(d.topic, d.field, d.offset) for d in changes.dead] == [
        ("gfm-catalog", "<message>", 1), ("gfm-catalog", "<message>", 2), ("gfm-catalog", "title", 3),
        ("gfm-item-updates", "adjacency", 4), ("gfm-user-updates", "recent", 5)]


def _keys(records):
    """Each record's Kafka key as the stream agents set it: an update's item or user id (None for the catalogue)."""
    keys = []
    for topic, value, _, _ in records:
        data = json.loads(value) if topic != KAFKA.topic("catalog") else {}
        keys.append(str(data.get("item_id", data.get("user_id"))).encode() if data else None)
    return keys


def test_with_keys_each_key_is_decoded_once_and_the_changes_are_the_same(monkeypatch):
    records = _records()
    keys = _keys(records)
    plain = collect(records, KAFKA)
    decoded = []
    monkeypatch.setattr(refresher_module, "load_json", lambda raw: decoded.append(raw) or json.loads(raw))
    keyed = collect(records, KAFKA, keys)
    assert keyed.items == plain.items and keyed.users == plain.users and keyed.catalog == plain.catalog
    assert len(decoded) == len({k for k in keys if k is not None}) < sum(k is not None for k in keys)
    refresher, full = _refresher(), _refresher(per_batch=10**6)
    for start in range(0, len(records), 60):  # fed in micro-batches with keys: still exactly a full recompute
        refresher.apply(collect(records[start : start + 60], KAFKA, keys[start : start + 60]))
    while not refresher.idle:
        refresher.apply(Changes())
    _feed(full, records, [len(records)])
    _assert_same(_vectors(refresher, records)[0], _vectors(full, records)[0])


def test_with_keys_the_latest_valid_update_counts_and_an_invalid_latest_one_is_a_dead_letter():
    topic = KAFKA.topic("item-updates")

    def update(weight):
        return json.dumps({"item_id": "x", "item_type": "podcast", "adjacency": {"y": ["podcast", weight, 1.0]},
                           "levels": [0.0] * len(TAUS)}).encode()

    records = [(topic, b"{", 0, 1), (topic, update(2), 0, 2), (topic, update(3), 0, 3), (topic, b"[", 0, 4)]
    keyed = collect(records, KAFKA, [b"x"] * len(records))
    assert keyed.items["x"].adjacency == {"y": ["podcast", 3, 1.0]}  # the latest valid one, before the bad one
    assert [d.offset for d in keyed.dead] == [4]  # the superseded bad record at 1 is never read (compaction)
    plain = collect(records, KAFKA)
    assert plain.items == keyed.items and [d.offset for d in plain.dead] == [1, 4]
    with pytest.raises(ValueError, match="3 keys for 4 records"):
        collect(records, KAFKA, [b"x"] * 3)


class FlakyStore(ServerStore):
    """Raises on upserts while ``failures`` lasts (a vector store outage)."""

    def __init__(self, failures: int) -> None:
        super().__init__(":memory:")
        self.failures = failures

    def upsert_items(self, points):
        if self.failures > 0:
            self.failures -= 1
            raise ConnectionError("store down")
        super().upsert_items(points)


def test_a_failing_store_is_retried_and_reported_then_every_vector_is_current():
    records = _records()
    store = FlakyStore(failures=4)
    refresher = _refresher(store=store)
    seen = []
    refresher.metrics.store_errors.labels("upsert").inc(0)
    original_wait = refresher.stop.wait
    refresher.stop.wait = lambda delay: seen.append(refresher.degraded) or original_wait(0)  # type: ignore
    _feed(refresher, records, [25])
    assert len(seen) == 4 and all("store down" in s for s in seen)
    assert refresher.degraded is None
    expected_items, expected_users = _full_recompute(refresher.model, records)
    _assert_same(_vectors(refresher, records)[0], expected_items)
    _assert_same(_vectors(refresher, records)[1], expected_users)


def test_event_to_item_latency_covers_the_frontier_the_event_reached():
    """An item update carrying its event time, with a new text for the item: the item and every follower its text
    moves (refreshed over later batches, one per batch here) are each observed once, from that event time."""
    records = _records()
    refresher = _refresher(per_batch=10**6)
    _feed(refresher, records, [len(records)])
    observed: list[float] = []
    refresher.metrics.item_freshness_seconds = type("Recorder", (), {"observe": lambda _, v: observed.append(v)})()
    refresher.batch = RefresherSettings(dependents_per_batch=1)
    hub = max(refresher.graph.followers, key=lambda i: len(refresher.graph.followers[i]))
    followers = refresher.graph.followers[hub]
    assert len(followers) >= 3
    changes = collect(records, KAFKA)
    text = CatalogItem(item_id=hub, item_type=refresher.graph.types[refresher.graph.rows[hub]], title="new title",
                       description="")
    refresher.apply(Changes(catalog={hub: text}, items={hub: changes.items[hub]}, origins={hub: 1_000.0}))
    assert len(observed) == 2  # the item itself and one follower (a budget of 1 per batch)
    while not refresher.idle:
        refresher.apply(Changes())
    assert len(observed) == 1 + len(followers)
    assert min(observed) > 0 and max(observed) - min(observed) < 60  # each from the event time, not from its batch
