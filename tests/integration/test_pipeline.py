"""The whole data path on real parts: tansu broker, Faust worker, refresher, embedded Qdrant engine, API."""

import json
import time
import urllib.request

import numpy as np
import pytest

from models.datasets import Item
from models.text import HashingEncoder, item_text
from streams.records import ListenEvent
from workers.kafka_io import EventSink, make_producer, publish_catalog
from workers.stack import Stack, http_json
from workers.statecheck import TopicMirror

pytestmark = pytest.mark.integration

ANCHOR = Item("A", "podcast", "Deep Space Orbit Rockets", "")
TARGET = Item("B", "audiobook", "Medieval Sourdough Bread Recipes", "")
LOOKALIKES = [Item(f"L{n}", "audiobook", f"Deep Space Orbit Rockets volume {n}", "") for n in range(30)]
OTHERS = [Item(f"O{n}", "audiobook", f"Gardening Roses Tulips {n}", "") for n in range(30)]
CATALOG = [ANCHOR, TARGET, *LOOKALIKES, *OTHERS]


def _event(n: int, user: str, item: Item) -> ListenEvent:
    return ListenEvent(event_id=f"t{n}-{user}-{item.item_id}", user_id=user, item_id=item.item_id,
                       item_type=item.item_type, ts=time.time())




@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    from tests.conftest import make_settings

    stack = Stack(make_settings(tmp_path_factory.mktemp("stack")))
    stack.start()
    yield stack
    stack.stop()


def test_text_alone_would_not_recommend_the_target():
    """Guards the test below: without the co-interaction graph, B is nowhere near A's top 10."""
    encoder = HashingEncoder()
    vectors = encoder.encode([item_text(i.item_type, i.title) for i in CATALOG])
    audiobooks = [k for k, i in enumerate(CATALOG) if i.item_type == "audiobook"]
    ranked = sorted(audiobooks, key=lambda k: -float(vectors[0] @ vectors[k]))
    assert ranked.index(1) >= 10


def test_event_changes_recommendations_within_seconds_and_bad_input_is_dead_lettered(stack):
    settings = stack.settings
    producer = make_producer(settings.kafka)
    sink = EventSink(producer, settings.kafka)
    publish_catalog(producer, settings.kafka, CATALOG)
    background = []
    for u in range(8):
        background += [_event(0, f"fan{u}", ANCHOR), _event(1, f"fan{u}", TARGET)]
        background += [_event(2, f"fan{u}", OTHERS[u])]
    sink.send(background)

    def anchor_neighbours():
        status, body = http_json(f"{stack.api_url}/items/A/similar?type=audiobook&k=10")
        return status == 200 and "B" in {i["item_id"] for i in body["items"]}

    stack.wait_until(anchor_neighbours, 60, "the co-interaction graph to reach the item vectors", interval_s=0.05)

    # bad input: an unreadable message and a pack with one bad event, before the new user's events
    producer.send(settings.kafka.topic("events"), value=b"{not json", partition=0).get(10)
    bad_pack = [{"event_id": "bad-1", "user_id": "newbie", "item_id": "A", "item_type": "podcast", "ts": -3}]
    producer.send(settings.kafka.topic("events"), value=json.dumps(bad_pack).encode(), partition=1).get(10)

    started = time.monotonic()
    sink.send([_event(0, "newbie", ANCHOR)])

    def newbie_gets_target():
        status, body = http_json(f"{stack.api_url}/users/newbie/recommendations?type=audiobook&k=10")
        return status == 200 and body if any(i["item_id"] == "B" for i in body.get("items", [])) else None

    body = stack.wait_until(newbie_gets_target, 5.0, "the new user's recommendations to include B", interval_s=0.05)
    elapsed = time.monotonic() - started
    assert elapsed < 5.0
    assert all(i["item_type"] == "audiobook" for i in body["items"])
    assert "A" not in {i["item_id"] for i in body["items"]}

    dlq = settings.kafka.topic("dead-letter")
    mirror = TopicMirror(settings.kafka.bootstrap, [dlq], keep_log=[dlq])
    mirror.refresh(idle_s=3.0)
    mirror.close()
    letters = [json.loads(v) for values in mirror.log.values() for v in values]
    reasons = {(letter["field"], letter["original"][:9]) for letter in letters}
    assert ("<message>", "{not json") in reasons
    ts_letters = [letter for letter in letters if letter["field"] == "ts"]
    assert ts_letters and "positive number" in ts_letters[0]["reason"]
    assert json.loads(ts_letters[0]["original"])["event_id"] == "bad-1"

    metrics_url = f"http://127.0.0.1:{settings.streams.metrics_port}/metrics"
    metrics = urllib.request.urlopen(metrics_url, timeout=5).read().decode()
    assert 'gfm_dead_letters_total{field="<message>",topic="' in metrics
    assert np.isclose(
        float(next(line.split()[-1] for line in metrics.splitlines()
                   if line.startswith('gfm_stream_events_total{outcome="consumed"}'))),
        len(background) + 1,
    )
    producer.close()


def test_post_events_reach_the_user(stack):
    status, body = http_json(
        f"{stack.api_url}/events", "POST",
        [{"user_id": "poster", "item_id": "O3", "item_type": "audiobook"},
         {"user_id": "poster", "item_id": "O4", "item_type": "audiobook"}],
    )
    assert status == 202 and body["accepted"] == 2

    def recommended():
        status, body = http_json(f"{stack.api_url}/users/poster/recommendations?type=audiobook&k=5")
        return status == 200 and body["items"]

    items = stack.wait_until(recommended, 10, "recommendations for the posting user", interval_s=0.05)
    assert not {"O3", "O4"} & {i["item_id"] for i in items}
    status, body = http_json(f"{stack.api_url}/events", "POST", {"user_id": "poster", "item_id": "x",
                                                                  "item_type": "audiobook", "ts": "soon"})
    assert status == 422 and "ts" in json.dumps(body)
