"""The API behind a real uvicorn server on loopback, over a real embedded store: what only a socket shows."""

import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from tests.conftest import serve_in_thread as serve
from vectorstore.api import ApiLimits, create_api
from vectorstore.base import ItemPoint, UserPoint
from vectorstore.edge import EdgeStore

pytestmark = pytest.mark.integration

EVENT = {"user_id": "u1", "item_id": "i1", "item_type": "podcast"}


class HangingSink:
    """A broker that does not answer until released."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.waiting = threading.Semaphore(0)
        self.events: list = []

    def send(self, events, wait=True):
        self.waiting.release()
        self.release.wait(20)
        self.events.extend(events)


@pytest.fixture
def store(tmp_path):
    store = EdgeStore(tmp_path / "store")
    store.ensure(8)
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(200, 8)).astype(np.float32)
    now = time.time()
    store.upsert_items([ItemPoint(f"i{k}", ("podcast", "audiobook")[k % 2], f"t{k}", vectors[k], "v1", now)
                        for k in range(200)])
    store.upsert_users([UserPoint("u1", vectors[0], "v1", now, now, [f"i{k}" for k in range(50)], {})])
    yield store
    store.close()


def test_a_declared_10_gb_body_is_refused_at_once_and_the_connection_closed(store):
    with serve(create_api(store, HangingSink(), CollectorRegistry())) as url:
        host, port = url.removeprefix("http://").split(":")
        started = time.perf_counter()
        with socket.create_connection((host, int(port)), timeout=5) as s:
            s.sendall(b"POST /events HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 10737418240\r\n\r\n")
            reply = b""
            while chunk := s.recv(65536):  # ends when the server hangs up
                reply += chunk
        assert time.perf_counter() - started < 2
        assert reply.startswith(b"HTTP/1.1 413") and b"limit is 1048576 bytes" in reply
        assert httpx.get(f"{url}/healthz").status_code == 200  # and the server is fine


def test_stuck_ingestion_does_not_hold_up_queries(store):
    """Posts whose Kafka send hangs fill the ingest pool; a further post is refused at once with 503, and 100
    queries from 10 clients are served meanwhile (a route on the shared thread pool would have held it)."""
    sink = HangingSink()
    app = create_api(store, sink, CollectorRegistry(), limits=ApiLimits(ingest_threads=2, ingest_in_flight=2))
    with serve(app) as url, ThreadPoolExecutor(16) as pool:
        posts = [pool.submit(httpx.post, f"{url}/events", json=EVENT, timeout=30) for _ in range(2)]
        assert sink.waiting.acquire(timeout=5) and sink.waiting.acquire(timeout=5)  # both ingest threads stuck
        started = time.perf_counter()
        busy = httpx.post(f"{url}/events", json=EVENT, timeout=5)
        assert busy.status_code == 503 and busy.json()["detail"].startswith("ingestion busy")
        assert time.perf_counter() - started < 1

        def queries(n: int) -> list[int]:
            with httpx.Client(base_url=url, timeout=5) as http:
                return [http.get("/users/u1/recommendations", params={"type": "podcast"}).status_code
                        for _ in range(n)]

        started = time.perf_counter()
        answers = [pool.submit(queries, 10) for _ in range(10)]
        assert all(code == 200 for a in answers for code in a.result(timeout=10))
        assert time.perf_counter() - started < 5
        sink.release.set()
        assert [p.result(timeout=10).status_code for p in posts] == [202] * 2
    assert len(sink.events) == 2
