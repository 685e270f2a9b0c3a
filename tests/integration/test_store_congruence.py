"""The same calls on the embedded engine (qdrant-edge) and on qdrant-client (the server's stand-in here)
give the same answers."""

import time

import numpy as np
import pytest

from vectorstore.base import ItemPoint, UserPoint
from vectorstore.edge import EdgeStore
from vectorstore.errors import DimensionMismatch, DistanceMismatch
from vectorstore.server import ServerStore

pytestmark = pytest.mark.integration


@pytest.fixture
def stores(tmp_path):
    edge, server = EdgeStore(tmp_path / "edge"), ServerStore(":memory:")
    yield edge, server
    edge.close()
    server.close()


def _points(rng, n=300, dim=16):
    vectors = rng.normal(size=(n, dim)).astype(np.float32)
    return [ItemPoint(f"i{k}", ("podcast", "audiobook", "show")[k % 3], f"title {k}", vectors[k], "v1", time.time())
            for k in range(n)]


def test_same_calls_same_results(stores):
    rng = np.random.default_rng(0)
    points = _points(rng)
    user = UserPoint("u1", points[0].vector, "v1", 1.0, 2.0, [f"i{k}" for k in range(0, 60, 2)], {"podcast": 30})
    queries = rng.normal(size=(10, 16)).astype(np.float32)
    answers = []
    for store in stores:
        store.ensure(16)
        store.upsert_items(points)
        store.upsert_items([ItemPoint("i5", "podcast", "renamed", points[5].vector, "v2", 9.0)])  # an update
        store.upsert_users([user])
        got = store.get_user("u1")
        run = {
            "count": store.count_items(),
            "user": (got.user_id, got.consumed, got.counts, got.event_ts),
            "item": (store.get_item("i5").title, store.get_item("i5").model_version, store.get_item("zz")),
            "types": (store.item_types(), store.has_item_type("show"), store.has_item_type("film")),
            "searches": [],
        }
        for query in [got.vector, *queries]:
            for item_type in (None, "podcast", "audiobook"):
                hits = store.search(query, 10, item_type=item_type, exclude=got.consumed)
                run["searches"].append([(h.item_id, h.item_type, round(h.score, 4)) for h in hits])
        answers.append(run)
    edge, server = answers
    assert edge["count"] == server["count"] == 300
    assert edge["user"] == server["user"]
    assert edge["item"] == server["item"] == ("renamed", "v2", None)
    assert edge["types"] == server["types"] == (frozenset({"podcast", "audiobook", "show"}), True, False)
    assert edge["searches"] == server["searches"]
    consumed = set(user.consumed)
    for hits in edge["searches"]:
        assert not consumed & {h[0] for h in hits}


def test_excluding_many_items_gives_the_same_answers(stores):
    """Past 64 excluded ids the embedded store drops them from a widened result instead of filtering; a user
    who consumed the 150 items nearest their vector gets what the server's filter gives."""
    rng = np.random.default_rng(4)
    points = _points(rng)
    query = points[7].vector
    nearest = sorted(points, key=lambda p: -float(p.vector @ query / np.linalg.norm(p.vector)))
    consumed = [p.item_id for p in nearest[:150]]
    answers = []
    for store in stores:
        store.ensure(16)
        store.upsert_items(points)
        store.upsert_users([UserPoint("u", query, "v1", 1.0, 2.0, consumed, {})])
        user = store.get_user("u")
        answers.append([[(h.item_id, round(h.score, 4)) for h in store.search(query, k, item_type=t,
                                                                              exclude_points=user.excluded_points())]
                        for k in (1, 10, 200) for t in (None, "podcast")])
    assert answers[0] == answers[1]
    assert len(answers[0][4]) == 150  # k=200 of all types: everything not consumed
    assert not set(consumed) & {item for hits in answers[0] for item, _ in hits}


def test_types_filter_and_exclusion_happen_inside_the_query(stores):
    """Excluding 9 of the 10 podcasts still returns the 10th, ranked among podcasts only: a post-filter over
    a global top-k would return nothing."""
    rng = np.random.default_rng(2)
    points = _points(rng, n=30)
    podcasts = [p.item_id for p in points if p.item_type == "podcast"]
    for store in stores:
        store.ensure(16)
        store.upsert_items(points)
        hits = store.search(points[1].vector, 1, item_type="podcast", exclude=podcasts[:-1])
        assert [h.item_id for h in hits] == [podcasts[-1]]


def test_reopening_the_edge_store_keeps_points_and_checks_dimensions(tmp_path):
    store = EdgeStore(tmp_path)
    store.ensure(16)
    store.upsert_items(_points(np.random.default_rng(3), n=5))
    store.close()
    again = EdgeStore(tmp_path)
    again.ensure(16)
    assert again.count_items() == 5
    assert again.item_types() == {"podcast", "audiobook", "show"}  # read back from the shard, not remembered
    again.close()
    with pytest.raises(DimensionMismatch, match="16-dim"):
        EdgeStore(tmp_path).ensure(32)


def test_item_inputs_and_user_states_round_trip_exactly_on_both_backends(stores):
    """What query-time composition reads: a user's state, and per item its type and its user-tower features
    (exact float32, only for the items asked for and stored with them) or its vector."""
    rng = np.random.default_rng(1)
    features = rng.normal(size=(5, 7)).astype(np.float32)
    points = [ItemPoint(p.item_id, p.item_type, p.title, p.vector, p.model_version, p.updated_at,
                        features[k] if k < 4 else None) for k, p in enumerate(_points(rng, n=5))]
    recent = {"podcast": [["i0", 1.0], ["i3", 2.5]], "show": [["i2", 2.0]]}
    user = UserPoint("u1", np.zeros(16, dtype=np.float32), "v1", 1.0, 2.0, ["i0", "i2", "i3"],
                     {"podcast": 2, "show": 1}, recent=recent)
    for store in stores:
        store.ensure(16)
        store.upsert_items(points)
        store.upsert_users([user])
        got = store.get_user("u1")
        assert got.recent == recent and got.state() == {"recent": recent, "counts": {"podcast": 2, "show": 1}}
        assert not got.vector.any()
        inputs = store.item_inputs(["i3", "i0", "i4", "missing"], features=True)
        assert set(inputs) == {"i0", "i3"}  # i4 has no features, "missing" is not stored
        assert inputs["i3"][0] == "podcast" and inputs["i0"][0] == "podcast"
        np.testing.assert_array_equal(inputs["i3"][1], features[3])
        np.testing.assert_array_equal(store.get_item("i1").user_features, features[1])
        vectors = store.item_inputs(["i4", "i1"], features=False)
        assert {k: v[0] for k, v in vectors.items()} == {"i4": "audiobook", "i1": "audiobook"}
        expected = points[4].vector / np.linalg.norm(points[4].vector)  # a cosine store keeps unit vectors
        np.testing.assert_allclose(vectors["i4"][1], expected, atol=1e-6)
        assert store.item_inputs([], features=True) == {}


def test_a_dot_store_ranks_by_the_plain_dot_product_on_both_backends(tmp_path):
    """A model with the trend coordinate (an item's level last, a user's weight for it last) needs the plain dot
    product: vectors are stored as given (not normalised) and a long vector beats a better angle."""
    rng = np.random.default_rng(5)
    dim = 9  # a 8-dim model plus the trend coordinate
    vectors = rng.normal(size=(40, dim)).astype(np.float32)
    vectors[:, -1] = rng.uniform(-3, 6, size=40)  # levels: far from unit norm
    points = [ItemPoint(f"i{k}", "podcast", f"t{k}", vectors[k], "v1", 1.0) for k in range(40)]
    user = rng.normal(size=dim).astype(np.float32)
    user[-1] = 0.8
    want = [f"i{k}" for k in np.argsort(-(vectors @ user))[:10]]
    cosine = [f"i{k}" for k in np.argsort(-(vectors @ user) / np.linalg.norm(vectors, axis=1))[:10]]
    assert want != cosine  # the test tells the two apart
    edge, server = EdgeStore(tmp_path / "edge", hnsw_ef=None), ServerStore(":memory:")
    for store in (edge, server):
        store.ensure(dim, "dot")
        store.upsert_items(points)
        hits = store.search(user, 10)
        assert [h.item_id for h in hits] == want
        np.testing.assert_allclose([h.score for h in hits], np.sort(vectors @ user)[::-1][:10], rtol=1e-5)
        np.testing.assert_array_equal(store.get_item("i3").vector, vectors[3])  # stored exactly as given
    server.close()
    edge.close()
    with pytest.raises(DistanceMismatch, match="dot"):
        EdgeStore(tmp_path / "edge").ensure(dim)  # a cosine model on a dot store
    again = EdgeStore(tmp_path / "edge")
    again.ensure(dim, "dot")
    assert again.count_items() == 40
    again.close()
    cosine_store = ServerStore(":memory:")
    cosine_store.ensure(dim)
    with pytest.raises(DistanceMismatch, match="cosine"):
        cosine_store.ensure(dim, "dot")
    cosine_store.close()
