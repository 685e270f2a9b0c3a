"""The refresher hands a trend model each item's level from the stream, for the model's time constant and rebased to
its epoch; an item whose level moved is rewritten (and nothing else); the store ranks such a model by the dot
product on vectors one coordinate wider. A model without the trend ignores the levels, as before."""

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from models import trend
from models.embedding import LiveGraph, ServedTrend, TextPropagationModel
from models.graph import GraphConfig
from models.synthetic import generate
from models.text import HashingEncoder
from monitoring.metrics import RefresherMetrics
from streams.agents import StreamConfig
from streams.records import CatalogItem, ItemUpdate
from streams.testing import LogHarness, item_levels
from vectorstore.server import ServerStore
from workers.refresher import Changes, Refresher, collect
from workers.settings import KafkaSettings, RefresherSettings

KAFKA = KafkaSettings()
ENCODER = HashingEncoder(32)
DATA = generate(users=30, items_per_type=20, events_per_user=14, seed=8)
TYPES = {i.item_id: i.item_type for i in DATA.items}
ROWS = [(f"e{n}", e.user_id, e.item_id, TYPES[e.item_id], e.ts) for n, e in enumerate(DATA.events)]
TAU = 3 * trend.DAY
EPOCH = max(e.ts for e in DATA.events) - 2 * trend.DAY


class TrendTextModel(TextPropagationModel):
    """Text propagation with the trend coordinate appended (the contract of ``item_vectors(..., levels=...)``),
    remembering the levels it was handed per item."""

    distance = "dot"

    def __init__(self, tau: float | None = TAU, epoch: float = EPOCH) -> None:
        super().__init__(ENCODER.name, ENCODER.dim)
        self.trend = ServedTrend(tau, epoch)
        self.dim = ENCODER.dim + 1
        self.handed: dict[str, float] = {}
        self.calls: list[list[str]] = []

    def item_vectors(self, rows, graph: LiveGraph, levels=None):
        assert levels is not None and len(levels) == len(rows)
        self.calls.append([graph.ids[r] for r in rows])
        self.handed.update({graph.ids[r]: float(level) for r, level in zip(rows, levels, strict=True)})
        base = super().item_vectors(rows, graph)
        return np.concatenate([base, np.asarray(levels, dtype=np.float32)[:, None]], axis=1)


def _refresher(model, store=None):
    settings = RefresherSettings(dependents_per_batch=10**6)
    return Refresher(store or ServerStore(":memory:"), model, ENCODER, RefresherMetrics.create(CollectorRegistry()),
                     settings)


def _records(partitions: int = 2):
    """The catalogue, then the refresh requests the stream agents publish for the events, in their order (as a
    topic's partition delivers an item's updates), some texts last."""
    harness = LogHarness(StreamConfig(partitions=partitions, graph=GraphConfig(max_degree=6)))
    harness.produce(ROWS)
    harness.drain(max_messages=2)
    catalog = [(KAFKA.topic("catalog"), CatalogItem(item_id=i.item_id, item_type=i.item_type, title=i.title,
                                                    description=i.text).dumps(), 0, n)
               for n, i in enumerate(DATA.items)]
    updates = [(KAFKA.topic("item-updates"), v, 0, n) for n, v in enumerate(harness.item_updates)]
    updates += [(KAFKA.topic("user-updates"), v, 0, n) for n, v in enumerate(harness.user_updates)]
    return catalog[1::2] + updates + catalog[::2]


def _feed(refresher, records, size):
    for start in range(0, len(records), size):
        refresher.apply(collect(records[start : start + size], KAFKA))
    while not refresher.idle:
        refresher.apply(Changes())


@pytest.mark.parametrize("tau", [None, trend.DAY, TAU, 90 * trend.DAY])
def test_the_refresher_hands_the_stream_level_rebased_to_the_models_epoch(tau):
    model = TrendTextModel(tau)
    refresher = _refresher(model)
    _feed(refresher, _records(), 37)
    column = trend.TAUS.index(tau)
    # the reference: the model's own levels, computed from the events at its epoch (what training computes)
    ids = sorted(item_levels(ROWS))
    index = {item_id: k for k, item_id in enumerate(ids)}
    direct = trend.levels(np.array([index[r[2]] for r in ROWS]), np.array([r[4] for r in ROWS]), len(ids), tau, EPOCH)
    assert set(model.handed) == set(ids)
    got = np.array([model.handed[i] for i in ids])
    np.testing.assert_allclose(got, direct, rtol=0, atol=1e-6)  # rebase drops only the decayed epsilon at 0
    at_zero = np.array([item_levels(ROWS)[i][column] for i in ids])
    np.testing.assert_allclose(got, trend.rebase(at_zero, tau, EPOCH), rtol=0, atol=1e-9)
    stored = np.array([refresher.store.get_item(i).vector[-1] for i in ids])
    np.testing.assert_allclose(stored, direct, rtol=0, atol=1e-5)  # the stored vector's last coordinate
    assert len(set(np.round(got, 6))) > 5  # the levels differ between items: the test tells them apart


def test_an_item_whose_level_moved_is_rewritten_alone():
    model = TrendTextModel()
    refresher = _refresher(model)
    records = _records()
    _feed(refresher, records, 50)
    item = collect(records, KAFKA).items
    hub = max(item, key=lambda i: len(refresher.graph.followers.get(i, ())))
    assert len(refresher.graph.followers[hub]) >= 2
    version, before = refresher.graph.version, refresher.store.get_item(hub).vector
    update = item[hub]
    newer = trend.fold(update.levels[trend.TAUS.index(TAU)], EPOCH + trend.DAY, TAU, 0.0)
    levels = list(update.levels)
    levels[trend.TAUS.index(TAU)] = newer
    model.calls.clear()
    refresher.apply(Changes(items={hub: ItemUpdate(item_id=hub, item_type=update.item_type,
                                                   adjacency=update.adjacency, levels=levels)}))
    assert model.calls == [[hub]]  # the item alone: no follower, no adjacency change
    assert refresher.graph.version == version and refresher.idle
    after = refresher.store.get_item(hub).vector
    np.testing.assert_array_equal(after[:-1], before[:-1])
    assert after[-1] == pytest.approx(float(trend.rebase(newer, TAU, EPOCH)), abs=1e-5)
    assert after[-1] > before[-1]
    model.calls.clear()
    refresher.apply(Changes(items={hub: ItemUpdate(item_id=hub, item_type=update.item_type,
                                                   adjacency=update.adjacency, levels=levels)}))
    assert model.calls == []  # the same update again: nothing moved


def test_a_model_without_the_trend_ignores_levels_and_keeps_a_cosine_store():
    model = TextPropagationModel(ENCODER.name, ENCODER.dim)
    store = ServerStore(":memory:")
    refresher = _refresher(model, store)
    records = _records()
    _feed(refresher, records, 50)
    update = next(iter(collect(records, KAFKA).items.values()))
    levels = [level + 1.0 for level in update.levels]
    count = refresher.items_refreshed
    refresher.apply(Changes(items={update.item_id: ItemUpdate(item_id=update.item_id, item_type=update.item_type,
                                                              adjacency=update.adjacency, levels=levels)}))
    assert refresher.items_refreshed == count
    params = store.client.get_collection(store.items).config.params.vectors
    assert (params.size, params.distance.value.lower()) == (ENCODER.dim, "cosine")


def test_a_trend_model_gets_a_dot_store_one_coordinate_wider():
    store = ServerStore(":memory:")
    _refresher(TrendTextModel(), store)
    for name in (store.items, store.users):
        params = store.client.get_collection(name).config.params.vectors
        assert (params.size, params.distance.value.lower()) == (ENCODER.dim + 1, "dot")


def test_a_served_trend_names_a_time_constant_the_stream_keeps():
    with pytest.raises(ValueError, match="not one the stream keeps"):
        ServedTrend(12345.0, 0.0)


def test_a_model_directory_says_whether_it_reads_the_trend():
    from models.serving import distance_of, served_trend

    plain = {"version": "m", "config": {"two_tower": {"dim": 8}}}
    assert served_trend(plain) is None and distance_of(None) == "cosine"
    with_trend = {"version": "m", "config": {"two_tower": {"dim": 8, "trend": True}}, "trend_tau": TAU,
                  "trend_epoch": EPOCH}
    assert served_trend(with_trend) == ServedTrend(TAU, EPOCH) and distance_of(ServedTrend(TAU, EPOCH)) == "dot"
    assert served_trend({**with_trend, "trend_tau": None}) == ServedTrend(None, EPOCH)  # no decay: the count
    with pytest.raises(ValueError, match="trend_epoch"):
        served_trend({"version": "m", "config": {"two_tower": {"trend": True}}})


def test_a_restarted_refresher_reading_its_history_deferred_hands_the_final_levels():
    """What ``RefresherLoop`` does until caught up: the history only builds the state (levels included), then the
    frontier drains, each item computed once with its latest level."""
    model = TrendTextModel()
    refresher = _refresher(model)
    records = _records()
    for start in range(0, len(records), 40):
        refresher.apply(collect(records[start : start + 40], KAFKA), defer=True)
    assert model.calls == []  # nothing computed while reading the history
    while not refresher.idle:
        refresher.apply(Changes())
    column = trend.TAUS.index(TAU)
    want = {i: float(trend.rebase(levels[column], TAU, EPOCH)) for i, levels in item_levels(ROWS).items()}
    assert sum(len(c) for c in model.calls) == len(refresher.graph)  # each item once
    np.testing.assert_allclose([model.handed[i] for i in want], list(want.values()), rtol=0, atol=1e-9)
