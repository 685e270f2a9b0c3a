"""The HGNN's training levers on small generated graphs: input whitening, the first layer computed once from fixed
neighbour means, edges drawn by co-count, negatives drawn by degree, shared negatives that never contrast an edge
with its own destination, and both directions of an edge."""

from dataclasses import replace

import numpy as np
import torch

from models.hgnn import HGNN, HGNNConfig, TypedGraph, _link_loss, balanced_edges, embed, negative_weights, train_hgnn

TYPES = ["podcast", "audiobook"]


def _graph(seed: int = 0, n: int = 40, dim: int = 12) -> tuple[TypedGraph, np.ndarray]:
    rng = np.random.default_rng(seed)
    item_type = rng.integers(0, 2, n)
    src, dst = rng.integers(0, n, 300), rng.integers(0, n, 300)
    keep = src != dst
    weight = rng.integers(1, 5, keep.sum()).astype(np.float32)
    graph = TypedGraph.build(item_type, TYPES, src[keep], dst[keep], weight)
    # a shared common direction and very unequal variances, as text embeddings have
    text = (rng.normal(size=(n, dim)) * np.geomspace(1.0, 0.01, dim) + 3.0).astype(np.float32)
    return graph, text


def test_whitening_gives_identity_covariance_over_the_fitted_text():
    _, text = _graph()
    model = HGNN(text.shape[1], 8, 4, [("podcast", "co", "podcast")])
    model.fit_inputs(text, eps=0.0)
    x = model.inputs(torch.from_numpy(text)).double().numpy()
    np.testing.assert_allclose(x.mean(0), 0.0, atol=1e-4)
    np.testing.assert_allclose(x.T @ x / len(x), np.eye(text.shape[1]) / text.shape[1], atol=1e-4)


def test_unfitted_inputs_are_the_text_and_old_weights_load_as_identity():
    graph, text = _graph()
    old = HGNN(text.shape[1], 8, 4, graph.edges, text_skip=True)
    state = {k: v for k, v in old.state_dict().items() if not k.startswith("input_")}  # a model saved before
    fresh = HGNN(text.shape[1], 8, 4, graph.edges, text_skip=True)
    fresh.fit_inputs(text, eps=1e-2)
    fresh.load_state_dict(state)
    features = torch.from_numpy(text)
    assert torch.equal(fresh.inputs(features), features)
    assert torch.equal(old.inputs(features), features)


def test_first_layer_from_fixed_means_equals_the_full_forward():
    graph, text = _graph(1)
    model = HGNN(text.shape[1], 8, 4, graph.edges, text_skip=True)
    model.fit_inputs(text, eps=1e-2)
    adj = graph.adjacency()
    with torch.no_grad():
        raw = model(graph.features(text), adj)
        x = {t: model.inputs(v) for t, v in graph.features(text).items()}
        cached = model(x, adj, prepared=True, aggregated=model.aggregate(x, adj))
    for t in raw:
        torch.testing.assert_close(cached[t], raw[t], atol=1e-5, rtol=1e-5)


def test_edges_are_drawn_in_proportion_to_their_co_count():
    # podcasts 0-2: two edges of weights 9 and 1; audiobooks 3-102: 10,000 edges of weight 1, so that every
    # relation is drawn 10,000 times (the largest relation's size)
    rng = np.random.default_rng(0)
    item_type = np.array([0, 0, 0] + [1] * 100)
    big_src, big_dst = rng.integers(3, 103, 10_000), rng.integers(3, 103, 10_000)
    graph = TypedGraph.build(item_type, TYPES, np.concatenate([[0, 0], big_src]), np.concatenate([[1, 2], big_dst]),
                             np.concatenate([[9.0, 1.0], np.ones(10_000)]).astype(np.float32))
    small = ("podcast", "co", "podcast")
    picked = balanced_edges(graph, 50_000, np.random.default_rng(0), power=1.0)
    assert {et: len(p) for et, p in picked.items()} == {small: 10_000, ("audiobook", "co", "audiobook"): 10_000}
    assert abs(float(np.mean(picked[small] == 0)) - 0.9) < 0.015
    square_root = balanced_edges(graph, 50_000, np.random.default_rng(0), power=0.5)[small]
    assert abs(float(np.mean(square_root == 0)) - 0.75) < 0.015
    assert len(balanced_edges(graph, 4_000, np.random.default_rng(0), power=1.0)[small]) == 4_000  # the cap
    # power 0: the balanced sample without replacement, as before (the smallest relation's size)
    assert sorted(balanced_edges(graph, 50_000, np.random.default_rng(0))[small]) == [0, 1]


def test_negative_weights_follow_the_weighted_degree():
    item_type = np.zeros(4, dtype=np.int64)
    graph = TypedGraph.build(item_type, ["podcast"], np.array([0, 1, 2]), np.array([1, 2, 1]),
                             np.array([3.0, 1.0, 1.0], dtype=np.float32))
    p = negative_weights(graph, 1.0)["podcast"]
    # degrees 0, 4, 1, 0: items with no edge weigh as the lightest item with one
    np.testing.assert_allclose(p, np.array([1, 4, 1, 1]) / 7)
    np.testing.assert_allclose(negative_weights(graph, 0.0)["podcast"], np.full(4, 0.25))


def test_a_shared_negative_equal_to_the_destination_is_masked():
    # one destination item only: every shared negative is the positive itself, so the loss is exactly 0
    z = {"a": torch.nn.functional.normalize(torch.randn(5, 4), dim=-1),
         "b": torch.nn.functional.normalize(torch.randn(1, 4), dim=-1)}
    config = HGNNConfig(in_batch=False, negatives=0, shared_negatives=16)
    loss = _link_loss(z, "a", np.arange(5), "b", np.zeros(5, dtype=np.int64), config, torch.device("cpu"))
    assert float(loss) == 0.0
    # with two destinations the other one is a real negative
    z["b"] = torch.nn.functional.normalize(torch.randn(2, 4), dim=-1)
    assert float(_link_loss(z, "a", np.arange(5), "b", np.zeros(5, dtype=np.int64), config,
                            torch.device("cpu"))) > 0.0


def test_trained_with_the_defaults_co_occurring_items_score_above_the_rest():
    """Items in 4 clusters of co-occurrence whose text carries no trace of the cluster: only the graph tells."""
    rng = np.random.default_rng(3)
    n = 80
    item_type = rng.integers(0, 2, n)
    cluster = rng.integers(0, 4, n)
    src = rng.integers(0, n, 1500)
    dst = np.array([rng.choice(np.flatnonzero(cluster == cluster[s])) for s in src])
    keep = src != dst
    both_src, both_dst = np.concatenate([src[keep], dst[keep]]), np.concatenate([dst[keep], src[keep]])
    graph = TypedGraph.build(item_type, TYPES, both_src, both_dst, np.ones(len(both_src), dtype=np.float32))
    text = rng.normal(size=(n, 16)).astype(np.float32)
    config = HGNNConfig(hidden=32, out=16, edges_per_relation=2048, batch_edges=256)
    same = (cluster[:, None] == cluster[None, :]) & ~np.eye(n, dtype=bool)
    different = cluster[:, None] != cluster[None, :]

    def gap(epochs: int) -> float:
        model, losses = train_hgnn(graph, text, replace(config, epochs=epochs), torch.device("cpu"))
        if epochs:
            assert losses[-1] < losses[0]
        z = embed(model, graph, text, torch.device("cpu"))
        similarity = z @ z.T
        return float(similarity[same].mean() - similarity[different].mean())

    untrained, trained = gap(0), gap(config.epochs)
    assert abs(untrained) < 0.05  # the text says nothing of the clusters
    assert trained > 0.15
