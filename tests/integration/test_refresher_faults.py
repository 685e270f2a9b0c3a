"""The refresher on real parts: killed mid-stream it converges to the vectors of a clean run (item vectors, and the
user vectors composed from the stored states and item vectors); a vector store outage is retried, reported by
/healthz, and every vector is current afterwards."""

import signal
import threading
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from models.embedding import TextPropagationModel
from models.synthetic import generate
from monitoring.metrics import RefresherMetrics
from tests.conftest import make_settings
from tests.integration.test_faults import synthetic_events
from vectorstore.api import create_api
from vectorstore.compose import ComposedUsers
from vectorstore.edge import EdgeStore
from vectorstore.server import ServerStore
from workers.kafka_io import EventSink, make_producer, publish_catalog
from workers.refresher import Refresher, RefresherLoop
from workers.services import build_encoder
from workers.stack import RestartPolicy, Stack, http_json

pytestmark = pytest.mark.integration

CATALOG = generate(users=150, items_per_type=60, seed=13).items


USERS = sorted({e.user_id for e in synthetic_events()})


def _model(settings) -> TextPropagationModel:
    encoder = build_encoder(settings)
    return TextPropagationModel(encoder.name, encoder.dim)


def _loop(settings, store) -> RefresherLoop:
    encoder = build_encoder(settings)
    model = _model(settings)
    refresher = Refresher(store, model, encoder, RefresherMetrics.create(CollectorRegistry()), settings.refresher)
    return RefresherLoop(refresher, settings.kafka).start()


def _settle(progress, timeout_s: float = 120.0, quiet_s: float = 3.0) -> None:
    """Wait until ``progress()`` (a tuple of counters) stops changing for ``quiet_s``."""
    deadline = time.monotonic() + timeout_s
    last, since = progress(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = progress()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return
    raise AssertionError(f"no quiet period within {timeout_s} s")


def _clean_run(settings) -> tuple[dict, dict]:
    """A fresh refresher reading every topic from the beginning into an in-memory store: the reference."""
    loop = _loop(settings, ServerStore(":memory:"))
    try:
        _settle(lambda: (loop.caught_up.is_set(), loop.refresher.idle, loop.refresher.items_refreshed,
                         loop.refresher.users_refreshed))
        return _vectors(loop.refresher.store, loop.refresher.graph.ids, USERS, loop.refresher.model.composer)
    finally:
        loop.stop()


def _vectors(store, item_ids, user_ids, composer):
    """Stored item vectors, and user vectors as the API composes them from the stored states."""
    items = {i: p.vector for i in item_ids if (p := store.get_item(i)) is not None}
    compose = ComposedUsers(store, composer)
    users = {u: compose(p).vector for u in user_ids if (p := store.get_user(u)) is not None}
    return items, users


def _assert_same(got, want):
    assert got.keys() == want.keys()
    for key in want:
        np.testing.assert_allclose(got[key], want[key], atol=1e-5, err_msg=key)


def _stream(settings, events, rate: float, during=None) -> None:
    producer = make_producer(settings.kafka)
    publish_catalog(producer, settings.kafka, CATALOG)
    sink = EventSink(producer, settings.kafka)
    chunk = int(rate / 10)
    for start in range(0, len(events), chunk):
        sink.send(events[start : start + chunk], wait=False)
        if during is not None:
            during(start / len(events))
        time.sleep(0.1)
    producer.flush()
    producer.close()


def test_refresher_killed_mid_stream_ends_with_the_vectors_of_a_clean_run(tmp_path):
    settings = make_settings(tmp_path)
    stack = Stack(settings, policy=RestartPolicy(backoff_s=0.2))
    stack.start()
    try:
        events = synthetic_events()
        killed = []

        def kill_once(progress: float) -> None:
            stack.check()
            if progress >= 0.5 and not killed:
                stack.kill("api", signal.SIGKILL)  # the refresher runs in the API process
                killed.append(progress)

        _stream(settings, events, rate=1000, during=kill_once)

        def progress():
            stack.check()
            try:
                status, body = http_json(f"{stack.api_url}/healthz")
            except OSError:  # the restarted API is not listening yet: not settled
                return time.monotonic()
            refresher = body.get("refresher", {}) if status == 200 else {}
            return status, refresher.get("items_refreshed"), refresher.get("users_refreshed"), \
                refresher.get("pending_items")

        _settle(progress, quiet_s=4.0)
        assert killed and stack.restarts["api"]
        want_items, want_users = _clean_run(settings)
        stack.processes["api"].terminate()  # release the embedded shards to read them here
        stack.processes["api"].wait(30)
        store = EdgeStore(settings.qdrant.path)
        store.ensure(want_items[next(iter(want_items))].shape[0])
        got_items, got_users = _vectors(store, want_items, want_users, _model(settings).composer)
        store.close()
        assert len(want_users) == 150
        _assert_same(got_items, want_items)
        _assert_same(got_users, want_users)
    finally:
        stack.stop()


class FailingStore(EdgeStore):
    """The embedded engine, raising on every write while :attr:`down` is set (an outage)."""

    def __init__(self, path) -> None:
        super().__init__(path)
        self.down = threading.Event()

    def upsert_items(self, points):
        if self.down.is_set():
            raise ConnectionError("vector store unreachable")
        super().upsert_items(points)

    def upsert_users(self, points):
        if self.down.is_set():
            raise ConnectionError("vector store unreachable")
        super().upsert_users(points)


@pytest.mark.parametrize("outage_s", [pytest.param(4.0, id="4s"), pytest.param(30.0, id="30s", marks=pytest.mark.slow)])
def test_vector_store_outage_is_retried_reported_and_leaves_every_vector_current(tmp_path, outage_s):
    settings = make_settings(tmp_path)
    stack = Stack(settings, services=("streams",))
    stack.start()
    store = FailingStore(settings.qdrant.path)
    loop = _loop(settings, store)
    api = TestClient(create_api(store, None, CollectorRegistry(), health=loop.health))
    seen = []
    try:
        outage = {}

        def during(progress: float) -> None:
            stack.check()
            if progress >= 0.3 and "start" not in outage:
                store.down.set()
                outage["start"] = time.monotonic()
            if "start" in outage and store.down.is_set():
                response = api.get("/healthz")
                seen.append((response.status_code, response.json().get("status")))
                if time.monotonic() - outage["start"] >= outage_s:
                    store.down.clear()

        _stream(settings, synthetic_events(), rate=300, during=during)
        while store.down.is_set():  # the replay may end before the outage does
            during(1.0)
            time.sleep(0.2)
        _settle(lambda: (loop.refresher.idle, loop.refresher.items_refreshed, loop.refresher.users_refreshed,
                         loop.refresher.degraded))
        assert (503, "degraded") in seen
        assert api.get("/healthz").json()["status"] == "ok"
        assert loop.alive and loop.error is None
        errors = loop.refresher.metrics.store_errors.labels("upsert")._value.get()
        assert errors >= 3  # retried with backoff, not once per batch and not in a tight loop
        got = _vectors(store, loop.refresher.graph.ids, USERS, loop.refresher.model.composer)
        want = _clean_run(settings)
        _assert_same(got[0], want[0])
        _assert_same(got[1], want[1])
    finally:
        loop.stop()
        store.close()
        stack.stop()
