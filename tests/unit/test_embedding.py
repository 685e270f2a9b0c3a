import numpy as np

from models.embedding import LiveGraph, TextPropagationModel
from models.graph import GraphConfig, apply_consumption, new_user_state
from models.text import CachedEncoder, HashingEncoder, item_text


def _graph(texts: dict[str, np.ndarray]) -> LiveGraph:
    graph = LiveGraph(text_dim=4, vector_dim=4)
    for item_id, vector in texts.items():
        graph.set_text(item_id, "t", item_id.upper(), vector)
    return graph


def test_co_consumed_items_move_closer():
    e = np.eye(4, dtype=np.float32)
    graph = _graph({"a": e[0], "b": e[1], "c": e[2]})
    model = TextPropagationModel("test", 4)
    rows = [graph.rows[i] for i in "abc"]
    before = model.item_vectors(rows, graph)
    graph.adjacency["a"] = {"b": ["t", 3, 1.0]}
    graph.adjacency["b"] = {"a": ["t", 3, 1.0]}
    after = model.item_vectors(rows, graph)
    assert before[0] @ before[1] == 0
    assert after[0] @ after[1] > 0.9
    assert after[0] @ after[2] == 0
    np.testing.assert_allclose(np.linalg.norm(after, axis=1), 1, rtol=1e-6)


def test_neighbour_without_text_is_ignored():
    e = np.eye(4, dtype=np.float32)
    graph = _graph({"a": e[0]})
    graph.adjacency["a"] = {"ghost": ["t", 5, 1.0]}
    vector = TextPropagationModel("test", 4).item_vectors([graph.rows["a"]], graph)
    np.testing.assert_allclose(vector[0], e[0])


def test_user_vector_is_mean_of_recent_item_vectors():
    e = np.eye(4, dtype=np.float32)
    graph = _graph({"a": e[0], "b": e[1]})
    model = TextPropagationModel("test", 4)
    rows = [graph.rows["a"], graph.rows["b"]]
    graph.set_vectors(rows, model.item_vectors(rows, graph))
    state = new_user_state()
    for n, item in enumerate(["a", "b", "unknown"]):
        apply_consumption(state, str(n), item, "t", float(n), GraphConfig())
    user, empty = model.user_vectors([state, new_user_state()], graph)
    np.testing.assert_allclose(user, (e[0] + e[1]) / np.sqrt(2), rtol=1e-6)
    assert not empty.any()


def test_cache_makes_the_second_run_encode_nothing(tmp_path):
    texts = [item_text("podcast", f"Show {n}", "about things") for n in range(50)]
    first = CachedEncoder(HashingEncoder(), tmp_path)
    vectors = first.encode(texts)
    assert first.encoded == 50
    second = CachedEncoder(HashingEncoder(), tmp_path)
    np.testing.assert_array_equal(second.encode(texts + texts[:3]), np.concatenate([vectors, vectors[:3]]))
    assert second.encoded == 0


def test_minilm_gives_similar_titles_similar_vectors():
    from models.text import MiniLMEncoder

    encoder = MiniLMEncoder()
    a, b, c = encoder.encode(["podcast: Deep space exploration", "audiobook: Journey to the stars",
                              "podcast: Sourdough bread baking"])
    assert a.shape == (384,)
    assert abs(float(a @ a) - 1) < 1e-5
    assert a @ b > a @ c
