"""The served HGNN is refreshed layer by layer where inputs changed, and stays exact: after every micro-batch each
item's embedding equals the full-graph forward over the live graph, and once the frontier is drained every stored
item vector, and every user vector composed from the store, equals a full recompute on the final graph, also after
a refresher restart; a micro-batch recomputes a small part of the graph."""

import random

import numpy as np
import pytest
import torch
from prometheus_client import CollectorRegistry

from models.embedding import LiveGraph
from models.evaluate import load_split
from models.features import graph_tensors
from models.graph import GraphConfig
from models.hgnn import HGNNConfig, embed
from models.serving import TrainedModel, train_for_serving
from models.synthetic import generate, write_dataset
from models.text import HashingEncoder
from models.train import TrainConfig
from models.twotower import TwoTowerConfig, user_item_features, user_vectors
from monitoring.metrics import RefresherMetrics
from streams.agents import StreamConfig
from streams.testing import refresh_records
from vectorstore.compose import ComposedUsers
from vectorstore.server import ServerStore
from workers.refresher import Changes, Refresher, collect
from workers.settings import KafkaSettings, RefresherSettings

KAFKA = KafkaSettings()
ENCODER = HashingEncoder(32)
GRAPH = GraphConfig(max_degree=6)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    data = generate(users=50, items_per_type=40, events_per_user=16, seed=21)
    folder = write_dataset(data, tmp_path_factory.mktemp("incremental"))
    config = TrainConfig(graph=GRAPH, hgnn=HGNNConfig(hidden=16, out=16, epochs=1, batch_edges=128),
                         two_tower=TwoTowerConfig(dim=16, hidden=32, epochs=1, batch=64, examples_per_user=5,
                                                  trend=False))  # the HGNN's layers do not read the trend
    directory = train_for_serving(load_split(folder, everything=True), ENCODER, config,
                                  tmp_path_factory.mktemp("models"), "incremental")
    return directory


def _records(seed: int = 4):
    """A different generated stream than the training data, through the agents on two partitions (so pruned
    adjacencies change under the refresher), the catalogue partly before and partly after the updates."""
    data = generate(users=70, items_per_type=40, events_per_user=18, seed=seed)
    return refresh_records(data, StreamConfig(partitions=2, graph=GRAPH), KAFKA.topic, seed, late_every=5)


def _full(model: TrainedModel, graph: LiveGraph) -> tuple[np.ndarray, np.ndarray]:
    """The full-graph forward on the live graph, as training computes it: embeddings and weighted degrees."""
    codes = np.array([max(model.type_names.index(t) if t in model.type_names else 0, 0) for t in graph.types])
    typed = graph_tensors(graph.adjacency, graph.rows, codes, model.type_names)
    return embed(model.hgnn, typed, graph.text_matrix(), torch.device("cpu")), typed.weighted_degree(len(graph))


def _refresher(model, store=None, per_batch=9):
    settings = RefresherSettings(dependents_per_batch=per_batch)
    return Refresher(store or ServerStore(":memory:"), model, ENCODER, RefresherMetrics.create(CollectorRegistry()),
                     settings)


def _feed(refresher, records, sizes, check=None, defer=False):
    rng, position = random.Random(len(sizes)), 0
    while position < len(records):
        size = rng.choice(sizes)
        refresher.apply(collect(records[position : position + size], KAFKA), defer=defer)
        position += size
        if check is not None:
            check(refresher)
    while not refresher.idle:
        refresher.apply(Changes())


def _assert_equals_full_recompute(refresher, records):
    model: TrainedModel = refresher.model
    graph = refresher.graph
    embedding, degree = _full(model, graph)
    np.testing.assert_allclose(model.hgnn_embeddings(graph), embedding, atol=1e-5)
    np.testing.assert_allclose(model.degrees(graph), degree)
    with torch.no_grad():
        items = model.towers.items(torch.from_numpy(embedding), torch.from_numpy(graph.text_matrix()),
                                   torch.from_numpy(np.maximum(model.layers.codes[: len(graph)], 0)),
                                   torch.from_numpy(degree)).numpy()
    stored = 0
    for row, item_id in enumerate(graph.ids):
        point = refresher.store.get_item(item_id)
        if graph.has_text([row])[0]:
            assert point is not None, item_id
            np.testing.assert_allclose(point.vector, items[row], atol=1e-5, err_msg=item_id)
            stored += 1
    final = collect(records, KAFKA).users
    states = [u.state for u in final.values()]
    users = user_vectors(model.towers, states, graph.rows, model.layers.codes[: len(graph)], model.type_names,
                         user_item_features(embedding, graph.text_matrix(), model.tt_config), model.tt_config,
                         torch.device("cpu"))
    composed = ComposedUsers(refresher.store, model.composer).vectors([refresher.store.get_user(u) for u in final])
    for user_id, got, vector in zip(final, composed, users, strict=True):
        np.testing.assert_allclose(got, vector, atol=1e-5, err_msg=user_id)
    return stored, len(states)


def test_every_micro_batch_keeps_the_layers_exact_and_recomputes_little(model):
    served = TrainedModel(model, ENCODER.name)
    records = _records()
    sizes: list[tuple[int, int]] = []

    def check(refresher):
        last = served.layers.last
        sizes.append((last.layer2, last.rows))
        embedding, _ = _full(served, refresher.graph)
        np.testing.assert_allclose(served.hgnn_embeddings(refresher.graph), embedding, atol=1e-5)

    refresher = _refresher(served)
    _feed(refresher, records, [1, 2, 5, 40], check)
    items, users = _assert_equals_full_recompute(refresher, records)
    assert items == 80 and users == 70
    # once every item exists, a small micro-batch recomputes a fraction of the graph
    steady = [layer2 / rows for layer2, rows in sizes[len(sizes) // 2 :] if rows == 80]
    assert len(steady) > 50 and np.median(steady) < 0.5, sizes


@pytest.mark.parametrize("defer", [False, True], ids=["batch-by-batch", "deferred"])
def test_a_restarted_refresher_converges_to_the_full_recompute(model, defer):
    records = _records(seed=6)
    crashed = _refresher(TrainedModel(model, ENCODER.name), per_batch=4)
    _feed(crashed, records[: len(records) // 2], [3, 30])
    # the restarted process: a new model object, the same store, every record read again in other batches; with
    # defer (what RefresherLoop does until caught up) the history only builds the state, then the frontier drains
    served = TrainedModel(model, ENCODER.name)
    restarted = _refresher(served, store=crashed.store, per_batch=4 if not defer else 30)
    _feed(restarted, records, [7, 60, 200], defer=defer)
    assert _assert_equals_full_recompute(restarted, records) == (80, 70)
    if defer:  # the history cost one pass over the graph's 80 items, not one per historical micro-batch
        assert served.layers.layer2_total == 80
    else:
        assert served.layers.layer2_total > 5 * 80
