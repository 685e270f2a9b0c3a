"""Faust's aiokafka transport with a short consumer fetch wait and true end offsets. Registered as ``gfm-kafka://``.

Faust builds its worker's consumer with ``fetch_max_wait_ms=1500``, a constant. A broker should answer a waiting
fetch as soon as records arrive, but tansu (the embedded broker) holds it for most of its maximum wait: records
produced every 10 ms reached an aiokafka consumer at p50 0.39 s / p95 0.72 s with 1,500 ms, 0.026 / 0.048 s with
100 ms (a one-off measurement, 2026-11-24). The wait bounds every event's latency through the stream, so the
worker's consumer waits at most :data:`FETCH_MAX_WAIT_MS`; on Kafka, which answers at once, it changes nothing
but the rate of empty fetches on an idle topic.

**End offsets.** A table restored from its changelog is read up to the changelog's end offsets, which Faust asks
for with ListOffsets(latest). tansu answers the base offset of the last record *batch* plus one
(:mod:`monitoring.lag`), so with batches of more than one record the restore stopped short and lost the last
updates: the worker's producer had to send one record per batch, a round trip per changelog record. The consumer
here takes the true end of each partition (:func:`monitoring.lag.true_end_offsets`: a fetch of the last batch,
right on both brokers), so the changelog is batched like any output (``producer_max_batch_size``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, cast

import aiokafka
from faust.transport.drivers import TRANSPORTS
from faust.transport.drivers import aiokafka as driver
from faust.types import TP
from kafka import KafkaConsumer
from kafka import TopicPartition as KafkaTP

from monitoring.lag import true_end_offsets

FETCH_MAX_WAIT_MS = 100


class _ConsumerThread(driver.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS  # read by start(), which builds the fetcher
        return consumer

    async def _highwaters(self, partitions: list[TP]) -> Mapping[TP, int]:
        if self.consumer.in_transaction:  # pragma: no cover  (no transactions here: tansu refuses them)
            return await super()._highwaters(partitions)
        transport = cast(driver.Transport, self.transport)
        bootstrap = driver.server_list(transport.url, transport.default_port)
        return await asyncio.to_thread(_true_ends, bootstrap, partitions)


def _true_ends(bootstrap: list[str], partitions: list[TP]) -> dict[TP, int]:
    """The offset after each partition's last record (blocking: a short-lived consumer of no group)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, client_id="gfm-streams-ends", enable_auto_commit=False)
    try:
        ends = true_end_offsets(consumer, [KafkaTP(tp.topic, tp.partition) for tp in partitions], timeout_s=10.0,
                                strict=True)
    finally:
        consumer.close()
    return {TP(tp.topic, tp.partition): end for tp, end in ends.items()}


class _Consumer(driver.Consumer):
    def _new_consumer_thread(self) -> driver.AIOKafkaConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class Transport(driver.Transport):
    """The aiokafka transport whose worker consumer waits at most ``FETCH_MAX_WAIT_MS`` per fetch and restores
    tables to the true end offsets."""

    Consumer = _Consumer


TRANSPORTS.aliases["gfm-kafka"] = f"{__name__}:Transport"
