"""The graph foundation model on small generated graphs: shapes, inductive embedding, learning, metrics."""

import numpy as np
import pytest
import torch

from models.evaluate import ranks_of_targets
from models.features import Histories
from models.graph import GraphConfig
from models.hgnn import HGNN, HGNNConfig, TypedGraph, embed, train_hgnn
from models.twotower import TwoTowerConfig, train_two_tower

TYPES = ["podcast", "audiobook"]


def random_graph(n: int = 60, edges: int = 400, seed: int = 0, dim: int = 16):
    """Items of two types in 4 clusters; edges mostly inside a cluster; text = cluster centre + noise."""
    rng = np.random.default_rng(seed)
    item_type = rng.integers(0, 2, n)
    cluster = rng.integers(0, 4, n)
    centres = rng.normal(size=(4, dim))
    text = (centres[cluster] + 0.8 * rng.normal(size=(n, dim))).astype(np.float32)
    src = rng.integers(0, n, edges)
    dst = np.array([rng.choice(np.flatnonzero(cluster == cluster[s])) for s in src])
    keep = src != dst
    src, dst = src[keep], dst[keep]
    both_src, both_dst = np.concatenate([src, dst]), np.concatenate([dst, src])
    graph = TypedGraph.build(item_type, TYPES, both_src, both_dst, np.ones(len(both_src)))
    return graph, text, item_type, cluster


@pytest.fixture(params=["cpu", "cuda"])
def device(request):
    if request.param == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    return torch.device(request.param)


@pytest.mark.parametrize("text_skip", [False, True])
def test_hgnn_shapes_and_unit_norm(device, text_skip):
    graph, text, _, _ = random_graph()
    model = HGNN(16, 32, 8, graph.edges, text_skip).to(device)
    x = {t: v.to(device) for t, v in graph.features(text).items()}
    out = model(x, {k: v.to(device) for k, v in graph.adjacency().items()})
    assert {t: tuple(v.shape) for t, v in out.items()} == {t: (len(graph.members[t]), 8) for t in TYPES}
    for v in out.values():
        torch.testing.assert_close(v.norm(dim=-1), torch.ones(len(v), device=device))


def test_hgnn_loss_falls_and_learns_the_clusters(device):
    graph, text, _, cluster = random_graph()
    model, losses = train_hgnn(graph, text, HGNNConfig(hidden=32, out=16, epochs=15, batch_edges=64, lr=1e-2),
                               device)
    assert losses[-1] < losses[0] * 0.8
    z = embed(model, graph, text, device)
    same = cluster[:, None] == cluster[None, :]
    similarity = z @ z.T
    assert similarity[same].mean() > similarity[~same].mean() + 0.2


def test_unseen_item_is_embedded_from_text_and_edges(device):
    graph, text, item_type, cluster = random_graph(seed=1)
    model, _ = train_hgnn(graph, text, HGNNConfig(hidden=32, out=16, epochs=10, batch_edges=64, lr=1e-2), device)
    # a new item of cluster 0, linked to three cluster-0 items: present in neither training nor features
    new = len(text)
    anchors = np.flatnonzero(cluster == 0)[:3]
    text2 = np.vstack([text, text[anchors].mean(0, keepdims=True)]).astype(np.float32)
    types2 = np.append(item_type, 0)
    s, d, w = [], [], []
    for (ta, _, tb), (ls, ld, lw) in graph.edges.items():
        s.append(graph.members[ta][ls])
        d.append(graph.members[tb][ld])
        w.append(lw)
    src = np.concatenate([*s, anchors, np.full(3, new)])
    dst = np.concatenate([*d, np.full(3, new), anchors])
    bigger = TypedGraph.build(types2, TYPES, src, dst, np.ones(len(src)))
    z = embed(model, bigger, text2, device)
    assert z.shape == (new + 1, 16)
    assert np.isclose(np.linalg.norm(z[new]), 1.0, atol=1e-5)
    inside = z[np.flatnonzero(cluster == 0)] @ z[new]
    outside = z[np.flatnonzero(cluster != 0)] @ z[new]
    assert inside.mean() > outside.mean()


def test_two_tower_trains_on_repeat_plays_with_consumed_items_excluded(device):
    """A repeat play's target was consumed before it: excluding consumed items from the softmax must not mask the
    target itself (the loss went to ~1e9, then NaN, on the demo data)."""
    rng = np.random.default_rng(0)
    n, dim = 12, 8
    embedding = rng.normal(size=(n, dim)).astype(np.float32)
    item_type = np.arange(n) % 2
    events = [(f"u{u}", int(i), float(k)) for u in range(30) for k, i in enumerate(rng.integers(0, n, 10))]
    histories = Histories.of_events(events, [f"i{i}" for i in range(n)], item_type, ["a", "b"], GraphConfig())
    assert any(len(set(seq.tolist())) < len(seq) for seq in histories.items)  # repeats are there
    config = TwoTowerConfig(dim=8, hidden=16, history=2, examples_per_user=9, epochs=3, batch=64,
                            exclude_consumed=True)
    _, losses = train_two_tower(histories, embedding, embedding, item_type, 2, config, device)
    assert all(np.isfinite(losses)) and max(losses) < 100


def test_two_tower_loss_falls_and_ranks_the_next_item(device):
    rng = np.random.default_rng(0)
    n, dim = 40, 8
    embedding = rng.normal(size=(n, dim)).astype(np.float32)
    item_type = np.arange(n) % 2
    # every user walks i -> i+1 (mod n): the next item is fully determined by the last one
    walks = [((start + k) % n for k in range(12)) for start in rng.integers(0, n, 120)]
    events = [(f"u{u}", int(i), float(k)) for u, walk in enumerate(walks) for k, i in enumerate(walk)]
    histories = Histories.of_events(events, [f"i{i}" for i in range(n)], item_type, ["a", "b"], GraphConfig())
    config = TwoTowerConfig(dim=16, hidden=64, history=1, examples_per_user=11, epochs=20, batch=128, lr=3e-3,
                            temperature=0.1)
    model, losses = train_two_tower(histories, embedding, embedding, item_type, 2, config, device)
    assert losses[-1] < losses[0] * 0.7


def test_ranks_count_better_items_and_break_ties_by_popularity():
    scores = np.array([[0.9, 0.5, 0.5, 0.1, 0.7]])
    popularity = np.array([1.0, 5.0, 3.0, 9.0, 2.0])
    # target 2 (score .5): beaten by 0 (.9), 4 (.7) and by 1 (same score, more popular); item 0 excluded
    ranks, tops = ranks_of_targets(scores, np.array([2]), [np.array([0])], popularity)
    assert ranks.tolist() == [2]
    assert tops[0].tolist() == [4, 1, 2, 3, -1]


def test_metrics_on_a_hand_computed_case():
    from models.evaluate import K_HIT

    ranks = np.array([0, 4, 9, 10, 150])
    hr = (ranks < K_HIT).mean()
    mrr = np.where(ranks < 100, 1 / (ranks + 1), 0).mean()
    assert hr == pytest.approx(3 / 5)
    assert mrr == pytest.approx((1 + 1 / 5 + 1 / 10 + 1 / 11) / 5)


def _split(n_items: int, histories: dict[str, list[int]], targets: list[tuple[str, int]],
           types: list[str] | None = None):
    """A hand-made :class:`Split` of ``n_items`` items (one type ``a`` unless ``types``)."""
    from models.datasets import Item
    from models.evaluate import Split

    types = types or ["a"] * n_items
    type_names = sorted(set(types))
    items = [Item(f"i{n}", t, f"item {n}", "") for n, t in enumerate(types)]
    train = [(u, i, float(k)) for u, h in histories.items() for k, i in enumerate(h)]
    by_type: dict[str, list[tuple[str, int]]] = {t: [] for t in type_names}
    for user, item in targets:
        by_type[types[item]].append((user, item))
    return Split("toy", items, {it.item_id: n for n, it in enumerate(items)}, type_names,
                 np.array([type_names.index(t) for t in types]), train, histories, by_type, "user-holdout")


def test_evaluator_metrics_on_hand_computed_rankings():
    from models.evaluate import evaluate_scorer

    # 120 items; every user scores item n as -n, so the ranking is 0, 1, 2, ... minus the user's history
    histories = {"u0": [119], "u1": [2, 119], "u2": [119], "u3": [0, 1], "u4": [119]}
    targets = [("u0", 0), ("u1", 4), ("u2", 10), ("u3", 9), ("u4", 110)]
    split = _split(120, histories, targets)
    result = evaluate_scorer(split, "fixed", lambda users, cand: np.tile(-cand.astype(float), (len(users), 1)),
                             "a", batch=2)
    ranks = [0, 3, 10, 7, 110]  # u1 loses item 2 to its history, u3 loses items 0 and 1
    assert result.users == 5
    assert result.hr10 == pytest.approx(3 / 5)
    assert result.mrr == pytest.approx((1 + 1 / 4 + 1 / 11 + 1 / 8 + 0) / 5)  # rank 110 is past the top 100
    assert result.ndcg10 == pytest.approx((1 + 1 / np.log2(5) + 1 / np.log2(9)) / 5)
    assert ranks[2] >= 10 and ranks[4] >= 100
    # top 100s: items 0..99 (u0, u2, u4), 0..100 without 2 (u1), 2..101 (u3): items 0..101 are covered
    assert result.cov100 == pytest.approx(102 / 120)


def test_evaluator_breaks_ties_by_popularity():
    from models.evaluate import evaluate_scorer, popularity_scorer

    # popularity: item 3 > item 1 > item 0 > item 2 (training counts 4, 3, 2, 1)
    histories = {"a": [3, 3, 1, 0], "b": [3, 1, 0, 2], "c": [3, 1], "d": [4]}
    split = _split(12, histories, [("d", 1), ("d", 2)])
    zero = evaluate_scorer(split, "zero", lambda users, cand: np.zeros((len(users), len(cand))), "a")
    pop = evaluate_scorer(split, "popularity", popularity_scorer(split), "a")
    # target 1 ranks second (after 3), target 2 fourth (after 3, 1, 0), for both scorers; d's item 4 excluded
    for result in (zero, pop):
        assert result.mrr == pytest.approx((1 / 2 + 1 / 4) / 2)
        assert result.ndcg10 == pytest.approx((1 / np.log2(3) + 1 / np.log2(5)) / 2)


def test_cooc_knn_is_the_reference_formula_on_a_toy_matrix():
    from models.evaluate import cooc_scorer

    histories = {"u1": [0, 1, 2], "u2": [0, 1], "u3": [1, 2, 3], "u4": [3, 4, 4], "q": [0, 3]}
    split = _split(5, histories, [])
    # distinct user x item matrix, co-counts c(i, j) = users who consumed both, zero diagonal
    ui = np.array([[1 if i in set(h) else 0 for i in range(5)] for h in histories.values()], dtype=float)
    cooc = ui.T @ ui
    np.fill_diagonal(cooc, 0)
    popularity = np.array([3.0, 3, 2, 3, 2])  # training counts, repeats included (u4 plays item 4 twice)
    np.testing.assert_array_equal(split.popularity, popularity)
    candidates = np.arange(5)
    expected = (cooc[0] + cooc[3]) / np.sqrt(popularity)  # user q consumed items 0 and 3
    np.testing.assert_allclose(cooc_scorer(split)(["q"], candidates)[0], expected)
    np.testing.assert_allclose(cooc_scorer(split, normalise=False)(["q"], candidates)[0], cooc[0] + cooc[3])
    # by hand: c(1, 0) = 2 (u1, u2), c(1, 3) = 1 (u3), p(1) = 3: s(1) = 3 / sqrt(3);
    # c(4, 0) = 0, c(4, 3) = 1 (u4), p(4) = 2: s(4) = 1 / sqrt(2); c(2, 0) = 1, c(2, 3) = 1, p(2) = 2
    assert cooc_scorer(split)(["q"], candidates)[0] == pytest.approx(
        [1 / np.sqrt(3), 3 / np.sqrt(3), 2 / np.sqrt(2), 1 / np.sqrt(3), 1 / np.sqrt(2)])


def test_consumed_before_marks_only_items_seen_before_the_position():
    from models.twotower import ConsumedBefore

    histories = [[3, 1, 4], [2, 0]]
    consumed = ConsumedBefore(histories, 5, torch.device("cpu"))
    users = torch.tensor([0, 0, 1, 1])
    positions = torch.tensor([0, 2, 1, 2])
    mask = consumed(users, positions, torch.arange(5)).numpy()
    expected = np.zeros((4, 5), dtype=bool)
    expected[1, [3, 1]] = True  # user 0 before position 2: items 3 and 1, not 4
    expected[2, 2] = True
    expected[3, [2, 0]] = True
    np.testing.assert_array_equal(mask, expected)


def test_item_bias_vectors_are_unit_and_cosine_ranks_as_the_training_score():
    from models.twotower import TwoTower

    torch.manual_seed(0)
    model = TwoTower(8, 8, 2, 16, 10, last_item=True, item_degree=True, item_bias=True)
    with torch.no_grad():  # a large bias weight, so that the bias decides much of the ranking
        model.user_tower[2].bias[-1] = 3.0
    n = 50
    items = model.items(torch.randn(n, 8), torch.randn(n, 8), torch.arange(n) % 2, torch.rand(n) * 100)
    features = torch.randn(6, 2 * 9 + 8)
    raw = model.user_scores_vectors(features)
    users = model.users(features)
    assert items.shape == (n, 10) and users.shape == (6, 10)
    np.testing.assert_allclose(items.norm(dim=-1).detach().numpy(), 1.0, atol=1e-5)
    np.testing.assert_allclose(users.norm(dim=-1).detach().numpy(), 1.0, atol=1e-5)
    # the training score: <u, v> + gamma * b over the unit directions u, v, the bias b and the user's weight
    direction, bias = items[:, :8] * np.sqrt(2), items[:, 8] * np.sqrt(2)
    score = raw[:, :8] @ direction.T + raw[:, 8:9] * bias[None, :]
    np.testing.assert_allclose(direction.norm(dim=-1).detach().numpy(), 1.0, atol=1e-5)
    assert bias.abs().max() < 1 and bias.std() > 0.01
    np.testing.assert_allclose((model.scale * raw @ items.T).detach().numpy(), score.detach().numpy(), atol=1e-5)
    cosine = users @ items.T
    for u in range(6):
        np.testing.assert_array_equal(torch.argsort(cosine[u], descending=True).numpy(),
                                      torch.argsort(score[u], descending=True).numpy())



def test_time_weighted_examples_pick_the_item_after_the_long_gap():
    from models.features import Histories
    from models.graph import GraphConfig
    from models.twotower import training_examples

    times = [0.0, 1.0, 2.0, 10_000.0, 10_001.0, 10_002.0]  # item 3 comes after the one long gap
    histories = Histories.of_events([("u", row, ts) for row, ts in enumerate(times)], [f"i{n}" for n in range(6)],
                                    np.zeros(6, dtype=np.int64), ["t"], GraphConfig())
    per_item = np.eye(6, dtype=np.float32)
    item_type = np.zeros(6, dtype=np.int64)
    picked, plain = [], []
    for seed in range(30):
        weighted = TwoTowerConfig(examples_per_user=1, time_weighted=True)
        _, targets, owners, positions = training_examples(histories, per_item, item_type, weighted,
                                                          np.random.default_rng(seed))
        assert owners.tolist() == [0] and targets.tolist() == [positions[0]]  # row n is the n-th event
        picked.append(int(targets[0]))
        _, targets, _, _ = training_examples(histories, per_item, item_type,
                                             TwoTowerConfig(examples_per_user=1, time_weighted=False),
                                             np.random.default_rng(seed))
        plain.append(int(targets[0]))
    assert picked.count(3) >= 29
    assert plain.count(3) < 15  # without the weighting, positions are uniform


def test_trend_tau_is_the_best_on_validation_and_ties_go_to_the_slower_decay(monkeypatch):
    import models.evaluate as evaluate
    from models.trend import DAY

    scores = {None: 0.2, DAY: 0.3, 3 * DAY: 0.5, 7 * DAY: 0.5, 14 * DAY: 0.1, 30 * DAY: 0.1, 90 * DAY: 0.1}
    monkeypatch.setattr(evaluate, "trend_tau_scores", lambda split: scores)
    assert evaluate.select_trend_tau(None)[0] == 7 * DAY  # type: ignore[arg-type]
    scores[None] = 0.5
    assert evaluate.select_trend_tau(None)[0] is None  # type: ignore[arg-type]
