"""Events flowing into a running embedded stack for the dashboard and Prometheus tests: a catalogue, then
synthetic listening events at a fixed rate from a background thread (bounded in count and time)."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field

from models.synthetic import generate
from streams.agents import partition_for
from streams.records import ListenEvent, event_to_dict
from workers.kafka_io import EventSink, make_producer, publish_catalog
from workers.stack import Stack


@dataclass
class Flow:
    """Publishes the synthetic catalogue, then sends events until stopped or ``max_events`` were sent."""

    stack: Stack
    rate: float = 200.0
    max_events: int = 200_000
    max_seconds: float = 600.0
    sent: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __post_init__(self) -> None:
        self.data = generate(users=400, items_per_type=120, events_per_user=60)
        self.types = {item.item_id: item.item_type for item in self.data.items}
        self.producer = make_producer(self.stack.settings.kafka)
        self.sink = EventSink(self.producer, self.stack.settings.kafka)
        publish_catalog(self.producer, self.stack.settings.kafka, self.data.items)

    def events(self, n: int, tag: str) -> list[ListenEvent]:
        """``n`` events of the synthetic data (cycled), with fresh ids and the current time."""
        now = time.time()
        out = []
        for k in range(n):
            e = self.data.events[(self.sent + k) % len(self.data.events)]
            out.append(ListenEvent(event_id=f"{tag}:{self.sent + k}", user_id=e.user_id, item_id=e.item_id,
                                   item_type=self.types[e.item_id], ts=now, kind="stream", ms_played=None))
        return out

    def send(self, n: int, tag: str = "burst", pack_size: int | None = None) -> None:
        """Send ``n`` events now (a burst), waiting for the broker; ``pack_size`` events per message (the sink's
        200 when None)."""
        sink = self.sink if pack_size is None else EventSink(self.producer, self.stack.settings.kafka, pack_size)
        sink.send(self.events(n, tag))
        self.sent += n

    def send_late(self, n: int, seconds: float) -> None:
        """Send ``n`` events whose Kafka timestamps are ``seconds`` old, as if they had waited upstream."""
        topic = self.stack.settings.kafka.topic("events")
        stamp = int((time.time() - seconds) * 1000)
        futures = [self.producer.send(topic, value=json.dumps([event_to_dict(e)]).encode(), timestamp_ms=stamp,
                                      partition=partition_for(e.user_id, self.stack.settings.kafka.partitions))
                   for e in self.events(n, "late")]
        self.sent += n
        for future in futures:
            future.get(10)

    def send_bad(self) -> None:
        """One unreadable message and one event with a negative timestamp: two dead letters."""
        topic = self.stack.settings.kafka.topic("events")
        self.producer.send(topic, value=b"{not json", partition=0).get(10)
        bad = [{"event_id": f"bad-{time.time()}", "user_id": "u1", "item_id": "x", "item_type": "podcast", "ts": -1}]
        self.producer.send(topic, value=json.dumps(bad).encode(), partition=0).get(10)

    def _run(self) -> None:
        started = time.monotonic()
        tick = 0.1
        while not self._stop.is_set() and self.sent < self.max_events and time.monotonic() - started < self.max_seconds:
            self.send(max(1, int(self.rate * tick)), "flow")
            self._stop.wait(tick)

    def start(self) -> Flow:
        """Send at :attr:`rate` in a background thread."""
        self._thread = threading.Thread(target=self._run, name="flow", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the background thread (bursts can still be sent)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def close(self) -> None:
        """Stop sending and close the producer."""
        self.stop()
        self.producer.close()
