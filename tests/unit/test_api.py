import time

import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from vectorstore.api import create_api
from vectorstore.base import ItemPoint, UserPoint
from vectorstore.server import ServerStore


class ListSink:
    """Records what the API would produce; ``fail`` makes it refuse like a broker that is down."""

    def __init__(self, fail: bool = False) -> None:
        self.events: list = []
        self.fail = fail

    def send(self, events, wait=True):
        if self.fail:
            raise ConnectionError("broker down")
        self.events.extend(events)


def _vec(*xs: float) -> np.ndarray:
    v = np.array(xs, dtype=np.float32)
    return v / np.linalg.norm(v)


@pytest.fixture
def store():
    s = ServerStore(":memory:")
    s.ensure(3)
    now = time.time()
    s.upsert_items([
        ItemPoint("p1", "podcast", "Space Show", _vec(1, 0, 0), "v1", now),
        ItemPoint("p2", "podcast", "Orbit Talk", _vec(0.9, 0.1, 0), "v1", now),
        ItemPoint("p3", "podcast", "Cooking", _vec(0, 1, 0), "v1", now),
        ItemPoint("a1", "audiobook", "Rocket Book", _vec(0.95, 0.05, 0), "v1", now),
    ])
    s.upsert_users([UserPoint("u1", _vec(1, 0, 0), "v1", now, now, ["p1"], {"podcast": 1})])
    yield s
    s.close()


@pytest.fixture
def sink():
    return ListSink()


@pytest.fixture
def client(store, sink):
    return TestClient(create_api(store, sink, CollectorRegistry()))


def test_recommendations_filter_by_type_and_exclude_consumed(client):
    body = client.get("/users/u1/recommendations", params={"type": "podcast", "k": 5}).json()
    assert [i["item_id"] for i in body["items"]] == ["p2", "p3"]
    assert body["items"][0]["title"] == "Orbit Talk"
    assert body["items"][0]["score"] > body["items"][1]["score"]


def test_recommendations_of_all_types(client):
    body = client.get("/users/u1/recommendations", params={"k": 2}).json()
    assert [i["item_id"] for i in body["items"]] == ["a1", "p2"]


def test_unknown_user_and_item_are_404_with_a_message(client):
    response = client.get("/users/nobody/recommendations")
    assert response.status_code == 404 and "nobody" in response.json()["detail"]
    response = client.get("/items/nothing/similar")
    assert response.status_code == 404 and "nothing" in response.json()["detail"]


def test_similar_items_exclude_the_item_itself(client):
    body = client.get("/items/p1/similar", params={"type": "podcast", "k": 2}).json()
    assert [i["item_id"] for i in body["items"]] == ["p2", "p3"]


def test_k_out_of_range_is_rejected(client):
    assert client.get("/users/u1/recommendations", params={"k": 0}).status_code == 422
    assert client.get("/users/u1/recommendations", params={"k": 10_000}).status_code == 422


def test_post_one_event_and_a_batch(client, sink):
    one = {"user_id": "u9", "item_id": "p1", "item_type": "podcast"}
    response = client.post("/events", json=one)
    assert response.status_code == 202 and response.json()["accepted"] == 1
    response = client.post("/events", json=[one, {**one, "item_id": "p2", "ts": 1.7e9, "event_id": "x"}])
    assert response.json()["accepted"] == 2
    assert [e.item_id for e in sink.events] == ["p1", "p1", "p2"]
    assert sink.events[2].event_id == "x" and sink.events[2].ts == 1.7e9
    assert sink.events[0].ts > 1.7e9  # defaulted to now


def test_bad_event_is_rejected_whole_naming_the_field(client, sink):
    good = {"user_id": "u9", "item_id": "p1", "item_type": "podcast"}
    response = client.post("/events", json=[good, {**good, "kind": "skip"}])
    assert response.status_code == 422
    assert "kind" in response.text
    response = client.post("/events", json={**good, "item_type": "Bad Type"})
    assert response.status_code == 422 and "item_type" in response.text
    assert sink.events == []


def test_events_the_broker_refuses_are_not_reported_accepted(store):
    client = TestClient(create_api(store, ListSink(fail=True), CollectorRegistry()))
    response = client.post("/events", json={"user_id": "u", "item_id": "p1", "item_type": "podcast"})
    assert response.status_code == 503 and "broker down" in response.json()["detail"]


def test_health_metrics_and_openapi(client):
    assert client.get("/healthz").json() == {"ok": True, "items": 4}
    client.get("/users/u1/recommendations")
    metrics = client.get("/metrics").text
    assert 'gfm_api_requests_total{route="/users/{user_id}/recommendations",status="200"} 1.0' in metrics
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/users/{user_id}/recommendations", "/items/{item_id}/similar", "/events", "/healthz"} <= set(paths)


def test_unhealthy_refresher_makes_healthz_503(store, sink):
    client = TestClient(create_api(store, sink, CollectorRegistry(), health=lambda: {"ok": False}))
    assert client.get("/healthz").status_code == 503
