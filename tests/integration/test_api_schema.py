"""Schemathesis over the API's OpenAPI schema, in-process on a real embedded store: whatever it generates
(valid and, in negative mode, invalid requests), the API never answers with a server error, refuses what the
schema forbids, and answers with the statuses and content types the schema documents."""

import itertools
import time

import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from prometheus_client import CollectorRegistry
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    status_code_conformance,
)

from vectorstore.api import create_api
from vectorstore.base import ItemPoint, UserPoint
from vectorstore.edge import EdgeStore

pytestmark = pytest.mark.integration


class ListSink:
    def __init__(self) -> None:
        self.events: list = []

    def send(self, events, wait=True):
        self.events.extend(events)


def _app(tmp_path_factory):
    store = EdgeStore(tmp_path_factory.mktemp("schema") / "store")
    store.ensure(8)
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(40, 8)).astype(np.float32)
    now = time.time()
    store.upsert_items([ItemPoint(f"i{k}", ("podcast", "audiobook")[k % 2], f"t{k}", vectors[k], "v1", now)
                        for k in range(40)])
    store.upsert_users([UserPoint("u1", vectors[0], "v1", now, now, ["i1", "i2"], {"podcast": 1})])
    return create_api(store, ListSink(), CollectorRegistry())


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory):
    return schemathesis.openapi.from_asgi("/openapi.json", _app(tmp_path_factory))


def _fuzz(operation, mode, statuses):
    checks = [not_a_server_error, status_code_conformance, content_type_conformance]
    if mode is GenerationMode.NEGATIVE:  # invalid input must be refused
        checks.append(negative_data_rejection)

    @given(case=operation.as_strategy(mode))
    @settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    def run(case):
        response = case.call()
        statuses.setdefault(operation.label, set()).add(response.status_code)
        case.validate_response(response, checks=checks)

    run()


def test_no_server_errors_and_documented_answers(api_schema):
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert {op.label for op in operations} >= {"GET /users/{user_id}/recommendations", "POST /events"}
    statuses: dict[str, set[int]] = {}
    for operation, mode in itertools.product(operations, GenerationMode):
        if mode is GenerationMode.NEGATIVE and operation.label in ("GET /healthz", "GET /metrics"):
            continue  # nothing to make invalid
        _fuzz(operation, mode, statuses)
    assert statuses["POST /events"] & {202} and statuses["POST /events"] & {400, 413, 422}, statuses
