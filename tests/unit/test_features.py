"""One graph and one set of user features for training and serving: the functions of ``models/features.py``, and a
model trained on generated events serving, through the stream's agents and the refresher, exactly the vectors that
training computed (degree pruning active, repeat plays and tied timestamps in the events)."""

import copy
import json

import numpy as np
import pytest
import torch
from prometheus_client import CollectorRegistry

from models import trend
from models.evaluate import load_split
from models.features import Histories, graph_tensors, user_tower_features
from models.graph import GraphConfig, build_graph
from models.hgnn import HGNNConfig, embed
from models.serving import TrainedModel, UserTower, train_for_serving
from models.synthetic import generate, write_dataset
from models.text import HashingEncoder
from models.train import TrainConfig, graph_of, histories_list, text_embeddings
from models.twotower import TwoTowerConfig, item_vectors, user_item_features, user_vectors
from monitoring.metrics import RefresherMetrics
from streams.agents import StreamConfig
from streams.records import CatalogItem
from streams.testing import LogHarness
from vectorstore.compose import ComposedUsers
from vectorstore.server import ServerStore
from workers.refresher import Changes, Refresher, collect
from workers.settings import KafkaSettings, RefresherSettings

TYPES = ["audiobook", "podcast"]


def test_an_item_aggregates_the_neighbours_it_keeps():
    # a keeps b (weight 3) and c (1); b keeps only a: c was pruned from b, so c -> b is no edge
    adjacency = {"a": {"b": ["podcast", 3, 1.0], "c": ["audiobook", 1, 1.0]}, "b": {"a": ["podcast", 3, 1.0]}}
    rows = {"a": 0, "b": 1, "c": 2}
    typed = graph_tensors(adjacency, rows, np.array([1, 1, 0]), TYPES)
    adj = {et: a.to_dense().numpy() for et, a in typed.adjacency().items()}
    # podcast rows (a, b) read podcast neighbours: a reads b fully (its only podcast neighbour), b reads a
    np.testing.assert_allclose(adj[("podcast", "co", "podcast")], [[0, 1], [1, 0]])
    np.testing.assert_allclose(adj[("audiobook", "co", "podcast")], [[1], [0]])  # a reads c; b does not
    np.testing.assert_allclose(adj[("podcast", "co", "audiobook")], [[0, 0]])  # c keeps nothing
    np.testing.assert_allclose(typed.weighted_degree(3), [4, 3, 0])  # the sum of an item's own adjacency
    with pytest.raises(ValueError, match="neighbour 'c'"):
        graph_tensors(adjacency, {"a": 0, "b": 1}, np.array([1, 1]), TYPES)


def test_user_features_read_the_stream_state_each_item_once():
    per_item = np.eye(4, dtype=np.float32)
    rows = {"p0": 0, "p1": 1, "a0": 2, "a1": 3}
    item_type = np.array([1, 1, 0, 0])  # p* podcasts, a* audiobooks
    events = [("u", 0, 1.0), ("u", 2, 2.0), ("u", 1, 3.0), ("u", 0, 4.0), ("u", 3, 4.0)]  # p0 replayed
    histories = Histories.of_events(events, list(rows), item_type, TYPES, GraphConfig(history_per_type=2))
    states = list(histories.states(0, [0, 3, 5]))
    features = user_tower_features(states, rows, item_type, TYPES, per_item, history=1, last_item=True)
    assert features.shape == (3, 2 * 4 + 4 + 2)
    np.testing.assert_allclose(features[0], 0)
    np.testing.assert_allclose(features[1, :4], per_item[2])  # audiobooks: a0
    np.testing.assert_allclose(features[1, 4:8], per_item[1])  # podcasts: the last one, p1
    np.testing.assert_allclose(features[1, 8:12], per_item[1])  # last item p1
    np.testing.assert_allclose(features[1, 12:], np.log1p([1, 2]))
    np.testing.assert_allclose(features[2, :4], per_item[3])
    np.testing.assert_allclose(features[2, 4:8], per_item[0])  # the replay made p0 the newest podcast
    # p0 and a1 share ts 4: the newer is the larger id (p0), as the stream's recent_items orders them
    np.testing.assert_allclose(features[2, 8:12], per_item[0])
    np.testing.assert_allclose(features[2, 12:], np.log1p([2, 2]))  # distinct items: the replay counts once
    wide = user_tower_features(states[2:], rows, item_type, TYPES, per_item, history=2, last_item=False)
    np.testing.assert_allclose(wide[0, 4:8], (per_item[1] + per_item[0]) / 2)


def _train(tmp_path_factory, trend_tau: float | None = None, with_trend: bool = False, trend_weight: float = 1.0):
    """A small model trained on generated events with ties in time (3-minute clock) and a degree cap of 4."""
    data = generate(users=60, items_per_type=30, events_per_user=20, seed=13)
    folder = write_dataset(data, tmp_path_factory.mktemp("parity"))
    lines = (folder / "events.tsv").read_text().splitlines()
    ticked = [lines[0]] + [f"{u}\t{i}\t{int(float(ts)) // 180 * 180}" for u, i, ts in
                           (line.split("\t") for line in lines[1:])]
    (folder / "events.tsv").write_text("\n".join(ticked) + "\n")
    config = TrainConfig(graph=GraphConfig(max_degree=4),
                         hgnn=HGNNConfig(hidden=16, out=16, epochs=2, batch_edges=256),
                         two_tower=TwoTowerConfig(dim=16, hidden=32, epochs=2, batch=64, examples_per_user=8,
                                                  trend=with_trend))
    encoder = HashingEncoder(32)
    split = load_split(folder, everything=True)
    directory = train_for_serving(split, encoder, config, tmp_path_factory.mktemp("models"), "parity", trend_tau,
                                  trend_weight)
    return split, config, encoder, TrainedModel(directory, encoder.name), directory


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return _train(tmp_path_factory)


@pytest.fixture(scope="module")
def trained_trend(tmp_path_factory):
    """The same with the trend (a time constant of one day: the generated events span about two), served with the
    users' trend weight multiplied by 3."""
    return _train(tmp_path_factory, trend_tau=trend.DAY, with_trend=True, trend_weight=3.0)


def _serve(split, config, encoder, model):
    """The training events through the stream's agents, their refresh requests through the refresher (catalogue
    last, items in another row order) into a store. One partition: the degree rule prunes by the weights an item
    has when it reaches the cap, so a pruned adjacency depends on the order its pairs arrive in, and with several
    partitions that order is not the events' order."""
    ids = [i.item_id for i in split.items]
    kafka = KafkaSettings()
    harness = LogHarness(StreamConfig(partitions=1, graph=config.graph))
    harness.produce((f"e{n}", u, ids[i], split.items[i].item_type, ts) for n, (u, i, ts) in enumerate(split.train))
    harness.drain(max_messages=2)
    records = [(kafka.topic("user-updates"), v, 0, n) for n, v in enumerate(harness.user_updates)]
    records += [(kafka.topic("item-updates"), v, 0, n) for n, v in enumerate(harness.item_updates)]
    records += [(kafka.topic("catalog"), CatalogItem(item_id=i.item_id, item_type=i.item_type, title=i.title,
                                                     description=i.text).dumps(), 0, n)
                for n, i in enumerate(reversed(split.items))]
    store = ServerStore(":memory:")
    refresher = Refresher(store, model, encoder, RefresherMetrics.create(CollectorRegistry()),
                          RefresherSettings(dependents_per_batch=10**6))
    for start in range(0, len(records), 200):
        refresher.apply(collect(records[start : start + 200], kafka))
    while not refresher.idle:
        refresher.apply(Changes())
    return harness, store


def test_served_vectors_equal_the_training_time_vectors(trained):
    split, config, encoder, model, directory = trained
    device = torch.device("cpu")
    ids = [i.item_id for i in split.items]

    # what training computed: the HGNN over the training graph, the towers over the training histories
    text = text_embeddings(split, encoder)
    typed = graph_of(split, split.train, config.graph)
    embedding = embed(model.hgnn, typed, text, device)
    trained_items = item_vectors(model.towers, embedding, text, split.item_type, device,
                                 typed.weighted_degree(len(ids)))
    histories = histories_list(split, config.graph)
    trained_users = user_vectors(model.towers, histories.final_states, histories.rows, split.item_type,
                                 split.type_names, user_item_features(embedding, text, model.tt_config),
                                 model.tt_config, device)

    # the events have what the two old paths disagreed on: pruned (asymmetric) edges, replays, tied times
    cograph = build_graph(((str(n), u, ids[i], split.items[i].item_type, ts) for n, (u, i, ts) in
                           enumerate(split.train)), config.graph)
    assert any(len(a) >= config.graph.max_degree for a in cograph.adjacency.values())
    assert sum(1 for s, d, _ in cograph.edges() if s not in cograph.adjacency.get(d, {})) > 20
    assert any(len(set(h)) < len(h) for h in split.histories.values())
    assert len({(u, ts) for u, _, ts in split.train}) < len(split.train)

    # what serving computes: the same events through the stream's agents and the refresher, read from the store
    harness, store = _serve(split, config, encoder, model)
    assert harness.adjacency() == cograph.adjacency

    served_items = np.stack([store.get_item(i).vector for i in ids])
    assert np.abs(served_items - trained_items).max() <= 1e-5
    # users as the query API composes them (the user tower loaded alone from the model directory, reading the
    # users' stored states and their items' stored features)
    composed = ComposedUsers(store, UserTower.load(directory))
    served_users = composed.vectors([store.get_user(u) for u in histories.users])
    assert len(served_users) == 60 and composed.version == model.version
    assert np.abs(served_users - trained_users).max() <= 1e-5


def test_a_trend_model_serves_the_training_time_levels_and_vectors(trained_trend):
    """With the trend: the stream folds every consumption into its item's levels (epoch 0, every time constant),
    the refresher rebases the model's to the model's epoch and the served item vector's last coordinate is the
    level training computed (``Split.levels``); user vectors end with the user's weight for it; the store ranks
    by the plain dot product on vectors one coordinate wider."""
    split, config, encoder, model, directory = trained_trend
    device = torch.device("cpu")
    ids = [i.item_id for i in split.items]
    meta = json.loads((directory / "config.json").read_text())
    assert meta["trend_tau"] == trend.DAY and meta["trend_epoch"] == split.now and meta["trend_weight"] == 3.0
    assert model.trend is not None and model.dim == config.two_tower.dim + 1 and model.distance == "dot"

    text = text_embeddings(split, encoder)
    typed = graph_of(split, split.train, config.graph)
    embedding = embed(model.hgnn, typed, text, device)
    levels = split.levels(trend.DAY)
    assert np.ptp(levels) > 1.0  # the levels differ between items: the test tells them apart
    trained_items = item_vectors(model.towers, embedding, text, split.item_type, device,
                                 typed.weighted_degree(len(ids)), levels=levels)
    histories = histories_list(split, config.graph)
    trained_users = user_vectors(model.towers, histories.final_states, histories.rows, split.item_type,
                                 split.type_names, user_item_features(embedding, text, model.tt_config),
                                 model.tt_config, device)
    assert trained_items.shape[1] == trained_users.shape[1] == model.dim

    _, store = _serve(split, config, encoder, model)
    params = store.client.get_collection(store.items).config.params.vectors
    assert (params.size, params.distance.value.lower()) == (model.dim, "dot")
    served_items = np.stack([store.get_item(i).vector for i in ids])
    assert np.abs(served_items[:, -1] - levels).max() <= 1e-5  # the training-time level, from the stream's
    assert np.abs(served_items - trained_items).max() <= 1e-5
    composed = ComposedUsers(store, UserTower.load(directory))
    served_users = composed.vectors([store.get_user(u) for u in histories.users])
    assert np.abs(served_users - trained_users).max() <= 1e-5
    # the online evaluation's offline column (``served_scorer``) ranks by the same scores the store serves
    # (it once read the levels without the model's time constant, and no list matched the served ones)
    from models.online import served_scorer

    scores = served_scorer(split, directory, encoder)(list(histories.users), np.arange(len(ids)))
    assert np.abs(scores - served_users @ served_items.T).max() <= 1e-4
    assert (served_users[:, -1] > 0).all()  # w * lambda_u, the user's weight for the trend (softplus)
    learned = copy.deepcopy(model.towers)
    learned.trend_weight = 1.0
    unscaled = user_vectors(learned, histories.final_states, histories.rows, split.item_type, split.type_names,
                            user_item_features(embedding, text, model.tt_config), model.tt_config, device)
    np.testing.assert_allclose(served_users[:, -1], 3.0 * unscaled[:, -1], rtol=1e-5)  # served: w = 3 times it
    np.testing.assert_allclose(served_users[:, :-1], unscaled[:, :-1], atol=1e-5)


def test_gfm_up_trains_the_demo_model_once_and_reuses_it(tmp_path):
    from tests.conftest import make_settings
    from workers.services import build_model
    from workers.stack import ensure_model

    settings = make_settings(tmp_path, model="gfm")
    with pytest.raises(ValueError, match="GFM_MODEL__DIR"):
        build_model(settings, HashingEncoder())
    first, said = ensure_model(settings)
    assert first.model.dir is not None and "trained in" in said
    from models.train import TREND_WEIGHTS  # chosen on the demo data's validation split, saved with the model

    assert json.loads((first.model.dir / "config.json").read_text())["trend_weight"] in TREND_WEIGHTS
    again, said = ensure_model(settings)
    assert again.model.dir == first.model.dir and "cached" in said
    served = build_model(again, HashingEncoder())
    assert isinstance(served, TrainedModel) and served.version == first.model.dir.name
    wider = settings.model_copy(update={"streams": settings.streams.model_copy(update={"max_degree": 50})})
    assert ensure_model(wider)[0].model.dir != first.model.dir  # another graph: another model
    fallback = make_settings(tmp_path)
    assert ensure_model(fallback)[0] is fallback and build_model(fallback, HashingEncoder()).version.startswith(
        "textprop")
