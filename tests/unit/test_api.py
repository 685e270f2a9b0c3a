import asyncio
import json
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from qdrant_client import models

from vectorstore.api import ApiLimits, BodyLimit, create_api
from vectorstore.base import ItemPoint, UserPoint
from vectorstore.server import ServerStore
from workers.services import build_api


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


# --- limits and hostile input (issue 8) ---

GOOD = {"user_id": "u9", "item_id": "p1", "item_type": "podcast"}


def _client(store, sink=None, **limits):
    return TestClient(create_api(store, sink or ListSink(), CollectorRegistry(), limits=ApiLimits(**limits)))


def test_a_declared_oversized_body_is_refused_before_reading_it():
    """The middleware answers 413 from the headers alone: it never calls ``receive``."""
    sent = []

    async def receive():
        raise AssertionError("the body was read")

    async def send(message):
        sent.append(message)

    async def app(scope, receive, send):
        raise AssertionError("the app was called")

    scope = {"type": "http", "method": "POST", "path": "/events",
             "headers": [(b"content-length", str(10 * 2**30).encode())]}
    asyncio.run(BodyLimit(app, max_bytes=1000)(scope, receive, send))
    assert sent[0]["status"] == 413
    assert "declared 10737418240 bytes" in json.loads(sent[1]["body"])["detail"]


def test_body_and_batch_limits_are_413_with_a_message(store, sink):
    client = _client(store, sink, max_body_bytes=10_000, max_batch=5)
    response = client.post("/events", content=b"[" + b" " * 20_000 + b"]")
    assert response.status_code == 413 and "limit is 10000 bytes" in response.json()["detail"]
    chunked = client.post("/events", content=iter([b"[", b" " * 20_000, b"]"]))  # no Content-Length
    assert chunked.status_code == 413
    response = client.post("/events", json=[GOOD] * 6)
    assert response.status_code == 413 and response.json()["detail"] == "batch of 6 events; at most 5 per request"
    assert client.post("/events", json=[GOOD] * 5).status_code == 202
    assert len(sink.events) == 5


def test_unknown_fields_are_rejected_by_name(client, sink):
    response = client.post("/events", json=[GOOD, {**GOOD, "rating": 5, "userid": "x"}])
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert "event 1: unknown fields 'rating', 'userid'" in detail and "user_id" in detail
    assert sink.events == []


def test_ts_must_lie_in_the_live_window(client, sink):
    now = time.time()
    for ts in (946_684_799.0, now + 86_400 + 60, 1e300, 1e18):
        response = client.post("/events", json={**GOOD, "ts": ts})
        assert response.status_code == 422, ts
        assert "ts=" in response.json()["detail"] and "2000-01-01T00:00:00Z" in response.json()["detail"]
    assert client.post("/events", json={**GOOD, "ts": now + 3600}).status_code == 202
    assert client.post("/events", json={**GOOD, "ts": 946_684_800.0}).status_code == 202
    assert len(sink.events) == 2


def test_errors_never_echo_a_huge_value(store, sink):
    client = _client(store, sink, max_body_bytes=20 * 2**20)
    huge = "x" * 5_000_000
    for bad in ({**GOOD, "item_type": huge}, {**GOOD, "user_id": huge}, {**GOOD, "kind": huge},
                {**GOOD, huge: 1}, [GOOD, huge]):
        response = client.post("/events", json=bad)
        assert response.status_code == 422 and len(response.content) < 2000, len(response.content)
    response = client.get(f"/users/{'y' * 50_000}/recommendations")
    assert response.status_code == 404 and len(response.content) < 500
    response = client.get("/users/u1/recommendations", params={"k": "9" * 50_000})
    assert response.status_code == 422 and len(response.content) < 2000


@pytest.mark.parametrize("body", [
    b"{not json", b"", b"null", b"5", b'"a string"', b"[]", b"[[]]", b"\xff\xfe\x00", b'{"user_id": "\xed\xa0\x80"}',
    b'{"user_id": "\\ud800", "item_id": "p1", "item_type": "podcast"}',
    b'{"user_id": "u", "item_id": "\\udfff\\ud800", "item_type": "podcast", "event_id": "\\ud83d"}',
    b'{"user_id": "u", "item_id": "p1", "item_type": "podcast", "ts": NaN}',
    b'{"user_id": "u", "item_id": "p1", "item_type": "podcast", "ts": Infinity}',
    b'{"user_id": "u", "item_id": "p1", "item_type": "podcast", "ts": 1e999}',
    b'{"user_id": "u", "item_id": "p1", "item_type": "podcast", "ms_played": 1e999}',
    b'{"user_id": "u", "item_id": "p1", "item_type": "podcast", "ms_played": ' + b"9" * 5000 + b"}",
    b'{"user_id": "u", "item_id": "p1", "item_type": "podcast", "ms_played": true}',
    b'{"user_id": "u", "item_id": "p1", "item_type": "podcast", "ms_played": 30000.0}',
    b'{"user_id": "u", "item_id": "p1", "item_type": "podcast", "ts": "1700000000"}',
    b'{"user_id": "u", "item_id": "p1", "item_type": "podcast", "ts": true}',
    b"[" * 100_000 + b"]" * 100_000,
    b'{"user_id": {"nested": [1, 2]}, "item_id": true, "item_type": null}',
])
def test_invalid_json_of_any_kind_is_a_4xx(client, sink, body):
    response = client.post("/events", content=body, headers={"content-type": "application/json"})
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:300])
    assert response.json()["detail"]
    assert sink.events == []


@given(st.recursive(st.none() | st.booleans() | st.floats() | st.integers() | st.text(),
                    lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=12), inner, max_size=6),
                    max_leaves=20))
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_any_json_value_is_accepted_or_a_4xx_never_a_5xx(client, value):
    body = json.dumps(value).encode()  # json.dumps writes surrogates as \\u escapes, NaN as NaN
    assert client.post("/events", content=body).status_code in (202, 400, 413, 422)


def test_unknown_item_type_is_404_listing_the_known_ones(client):
    for path in ("/users/u1/recommendations", "/items/p1/similar"):
        response = client.get(path, params={"type": "film"})
        assert response.status_code == 404
        assert response.json()["detail"] == "unknown item type 'film'; the store holds: audiobook, podcast"
        assert client.get(path, params={"type": "audiobook"}).status_code == 200


def test_a_type_written_by_another_process_is_found_after_the_refresh_interval(store):
    store.item_types()
    store.client.upsert(store.items, [models.PointStruct(id=str(uuid.uuid4()), vector=[0, 0, 1],
                                                         payload={"item_id": "f1", "item_type": "film"})])
    store.types_refresh_s = 3600.0
    assert not store.has_item_type("film")  # a miss does not re-read the store more than once per interval
    store.types_refresh_s = 0.0
    assert store.has_item_type("film") and "film" in store.item_types()


def test_ingestion_beyond_its_bound_is_503_and_leaves_queries_alone(store):
    """Posts whose Kafka send hangs hold the ingest pool only: one more is 503 at once, queries still answer."""
    release = threading.Event()
    entered = threading.Semaphore(0)

    class HangingSink(ListSink):
        def send(self, events, wait=True):
            entered.release()
            release.wait(10)
            super().send(events)

    sink = HangingSink()
    client = _client(store, sink, ingest_threads=2, ingest_in_flight=2)
    with ThreadPoolExecutor(4) as pool:
        posts = [pool.submit(client.post, "/events", json=GOOD) for _ in range(2)]
        assert entered.acquire(timeout=5) and entered.acquire(timeout=5)
        busy = client.post("/events", json=GOOD)
        assert busy.status_code == 503 and busy.headers["retry-after"] == "1" and "busy" in busy.json()["detail"]
        started = time.perf_counter()
        for _ in range(20):
            assert client.get("/users/u1/recommendations").status_code == 200
        assert time.perf_counter() - started < 2
        release.set()
        assert [p.result().status_code for p in posts] == [202, 202]
    assert len(sink.events) == 2


def test_limits_are_checked_and_come_from_the_settings():
    with pytest.raises(ValueError, match="max_batch must be at least 1"):
        ApiLimits(max_batch=0)
    from workers.settings import Settings

    settings = Settings(api={"max_batch": 7, "max_body_bytes": 2048})
    app = build_api(settings, ServerStore(":memory:"), ListSink(), CollectorRegistry())
    client = TestClient(app)
    assert "at most 7 per request" in client.post("/events", json=[GOOD] * 8).json()["detail"]
    assert client.post("/events", content=b" " * 4096).status_code == 413


def test_healthz_says_degraded_when_the_store_is_down(store, sink):
    class DownStore(type(store)):
        def count_items(self):
            raise ConnectionError("store unreachable")

    down = DownStore.__new__(DownStore)
    down.__dict__.update(store.__dict__)
    response = TestClient(create_api(down, sink, CollectorRegistry())).get("/healthz")
    assert response.status_code == 503
    assert response.json()["status"] == "degraded" and "store unreachable" in response.json()["store_error"]


def test_recommendations_compose_the_users_vector_from_their_latest_state(store, sink):
    """With a composer (what the live stack passes), the answer follows the user's stored state: after a new
    consumption the next answer is ranked by a vector that reads it, and names the composing model."""
    from models.embedding import TextPropagationModel
    from vectorstore.compose import ComposedUsers

    composer = TextPropagationModel("test", 3)  # a user is the mean of their recent items' vectors
    client = TestClient(create_api(store, sink, CollectorRegistry(), users=ComposedUsers(store, composer)))
    now = time.time()
    # the stored vector points at space shows, but the state says the user consumed the cooking show
    store.upsert_users([UserPoint("u2", _vec(1, 0, 0), "v1", now, now, ["p3"], {"podcast": 1},
                                  recent={"podcast": [["p3", 1.0]]})])
    body = client.get("/users/u2/recommendations", params={"k": 1}).json()
    assert body["model_version"] == composer.version
    assert body["items"][0]["item_id"] == "p2"  # nearest the cooking show, not the space show of the stored vector
    assert body["items"][0]["score"] == pytest.approx(float(_vec(0.9, 0.1, 0)[1]), abs=1e-5)
    store.upsert_users([UserPoint("u2", _vec(1, 0, 0), "v1", now, now, ["p3", "a1"], {"podcast": 1, "audiobook": 1},
                                  recent={"podcast": [["p3", 1.0]], "audiobook": [["a1", 2.0]]})])
    want = _vec(*(_vec(0, 1, 0) + _vec(0.95, 0.05, 0)) / 2)
    body = client.get("/users/u2/recommendations", params={"type": "podcast", "k": 2}).json()
    assert [(i["item_id"], round(i["score"], 5)) for i in body["items"]] == [
        ("p2", round(float(want @ _vec(0.9, 0.1, 0)), 5)), ("p1", round(float(want @ _vec(1, 0, 0)), 5))]
    # a state none of whose items is embedded yet: no vector, a 404 that says so
    store.upsert_users([UserPoint("u3", np.zeros(3, dtype=np.float32), "v1", now, now, ["new"], {"podcast": 1},
                                  recent={"podcast": [["new", 1.0]]})])
    response = client.get("/users/u3/recommendations")
    assert response.status_code == 404 and "none of their items is embedded" in response.json()["detail"]
