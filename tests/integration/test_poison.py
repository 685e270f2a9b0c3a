"""Poison on real parts: 10,000 hostile messages interleaved with valid events through the running stream worker
and refresher. Zero restarts, every bad one dead-lettered with its reason, the valid ones applied exactly."""

import json
import random
import time

import pytest

from models.graph import build_graph
from streams.testing import hostile_messages, item_levels
from tests.conftest import make_settings
from tests.integration.test_faults import synthetic_events
from workers.kafka_io import EventSink, make_producer, publish_catalog
from workers.stack import RestartPolicy, Stack, http_json
from workers.statecheck import (
    TopicMirror,
    changelog_topics,
    compare,
    fold_pairs_topic,
    stream_levels,
    stream_state,
    uncapped_config,
)

pytestmark = pytest.mark.integration


def _dead_letters(mirror: TopicMirror) -> list[dict]:
    mirror.refresh(idle_s=1.0)
    return [json.loads(v) for values in mirror.log.values() for v in values]


def test_ten_thousand_hostile_messages_change_nothing_but_the_dead_letter_topic(tmp_path):
    from models.synthetic import generate

    settings = make_settings(tmp_path, max_degree=10)
    stack = Stack(settings, policy=RestartPolicy(max_restarts=0))  # any restart fails the test
    stack.start()
    try:
        pids = {name: p.pid for name, p in stack.processes.items()}
        producer = make_producer(settings.kafka)
        publish_catalog(producer, settings.kafka, generate(users=150, items_per_type=60, seed=13).items)
        valid = synthetic_events()
        hostile = hostile_messages(10_000, seed=1)
        sink = EventSink(producer, settings.kafka, pack_size=50)
        rng = random.Random(2)
        cursor = 0
        for start in range(0, len(hostile), 500):  # interleave: some valid events, then some poison, ...
            chunk = valid[cursor : cursor + len(valid) * 500 // len(hostile) + 1]
            cursor += len(chunk)
            sink.send(chunk, wait=False)
            for topic, value in hostile[start : start + 500]:
                producer.send(settings.kafka.topic(topic), key=b"poison", value=value, partition=rng.randrange(2))
        sink.send(valid[cursor:], wait=False)
        producer.flush()
        producer.close()

        rows = [(e.event_id, e.user_id, e.item_id, e.item_type, e.ts) for e in valid]
        config = settings.streams.graph_config()
        expected, uncapped = build_graph(rows, config), build_graph(rows, uncapped_config(config))
        expected_levels = item_levels(rows)
        mirror = TopicMirror(settings.kafka.bootstrap, [*changelog_topics(settings.streams.app_id),
                                                        settings.kafka.topic("pairs")],
                             keep_log=[settings.kafka.topic("pairs")])
        dead = TopicMirror(settings.kafka.bootstrap, [settings.kafka.topic("dead-letter")],
                           keep_log=[settings.kafka.topic("dead-letter")])
        deadline = time.monotonic() + 240
        while True:
            stack.check()
            mirror.refresh(idle_s=1.0)
            letters = _dead_letters(dead)
            users, adjacency = stream_state(mirror, settings.streams.app_id)
            result = compare(users, adjacency, expected, uncapped,
                             fold_pairs_topic(mirror, settings.kafka.topic("pairs"), config.max_degree),
                             stream_levels(mirror, settings.streams.app_id), expected_levels)
            if (result.exact and len(letters) >= len(hostile)) or time.monotonic() > deadline:
                break
        mirror.close()
        dead.close()
        assert result.exact, result.as_dict()
        assert len(letters) == len(hostile)
        assert all(letter["reason"] and letter["field"] for letter in letters)
        by_topic = {t: sum(1 for letter in letters if letter["topic"] == settings.kafka.topic(t))
                    for t in {t for t, _ in hostile}}
        assert by_topic == {t: sum(1 for h, _ in hostile if h == t) for t in by_topic}
        huge = [letter for letter in letters if letter["size"] > 1_000_000]
        assert len(huge) == 4 and all(len(letter["original"]) == 64 * 1024 for letter in huge)
        assert {name: p.pid for name, p in stack.processes.items()} == pids and not stack.restarts
        status, health = http_json(f"{stack.api_url}/healthz")
        assert status == 200 and health["refresher"]["alive"], health
    finally:
        stack.stop()
