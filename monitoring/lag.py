"""Consumer lag, measured from Kafka's offsets by an observer outside the consumers.

Lag of a consumer group on a partition is ``end - committed``: the records written to the partition that the
group has not yet committed as processed. Two groups are watched: the Faust worker's (``streams``: its
``events`` and ``pairs`` topics) and the refresher's (``refresher``: ``catalog``, ``item-updates`` and
``user-updates``; the refresher reads from its own assignment and commits its position to its group only so
that this observer can see it).

**The end offset.** Kafka's ListOffsets(latest) is the end on Apache Kafka, but on tansu it is the *base
offset of the last record batch plus one*: produce a batch of five records at offsets 10-14 and tansu answers
11, below the offset 15 that the consumer commits once it has read them, so ``end - committed`` comes out
negative (``-4`` here) and a real lag of four records would read as zero. What holds on both brokers is what a
fetch returns: :func:`true_end_offsets` seeks to ``reported - 1``, fetches, and takes the largest of the
reported end, the last fetched record's offset plus one and the fetch response's high watermark (which tansu
gets right). On Apache Kafka the three agree; on tansu the fetch returns the whole last batch. The cost is one
small fetch per partition per measurement (the last batch only). The tests check this against a counter of
produced offsets (``tests/integration/test_lag.py``).

A group with no committed offset on a partition (the refresher before its first commit) lags by everything
from the partition's beginning.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

REFRESHER_GROUP_SUFFIX = "refresher"
"""The refresher commits its position to the group ``{topic_prefix}-refresher``."""


def refresher_group(topic_prefix: str) -> str:
    """The consumer group the refresher commits its position to."""
    return f"{topic_prefix}-{REFRESHER_GROUP_SUFFIX}"


@dataclass(frozen=True)
class LagSource:
    """One consumer to watch: a label for it, its consumer group and its topics."""

    consumer: str
    group: str
    topics: tuple[str, ...]


@dataclass(frozen=True)
class PartitionLag:
    """One row of a lag measurement."""

    consumer: str
    topic: str
    partition: int
    end: int
    committed: int | None
    lag: int


def partition_lag(end: int, committed: int | None, beginning: int) -> int:
    """``end - committed`` (``end - beginning`` when nothing is committed), never below zero.

    ``end`` must be the true end (see :func:`true_end_offsets`); the clamp only covers a commit racing the
    measurement (the end is read before the committed offsets).
    """
    start = beginning if committed is None or committed < 0 else committed
    return max(0, end - start)


def true_end_offsets(consumer: KafkaConsumer, partitions: list[TopicPartition], timeout_s: float = 2.0,
                     strict: bool = False) -> dict[TopicPartition, int]:
    """The offset after each partition's last record, right on Apache Kafka and on tansu (module docstring).

    ``consumer`` must have no group subscription; it is assigned to ``partitions`` for the measurement and
    unassigned after it (so that no high watermark of an earlier measurement is read as a fresh one).

    Raises:
        TimeoutError: with ``strict``, naming the partitions whose fetch got no answer within ``timeout_s``
            (otherwise their reported end is used: right for a lag figure, wrong for a table restore).
    """
    reported: dict[TopicPartition, int] = consumer.end_offsets(partitions)
    ends = dict(reported)
    probe = [tp for tp in partitions if reported.get(tp, 0) > 0]
    if not probe:
        return ends
    try:
        unanswered = _probe_ends(consumer, probe, reported, ends, timeout_s)
    finally:
        consumer.unsubscribe()
    if strict and unanswered:
        raise TimeoutError(f"no fetch answer within {timeout_s} s for {sorted(map(tuple, unanswered))}: their true end "
                           "offsets are unknown")
    return ends


def _probe_ends(consumer: KafkaConsumer, probe: list[TopicPartition], reported: dict[TopicPartition, int],
                ends: dict[TopicPartition, int], timeout_s: float) -> set[TopicPartition]:
    """Fill ``ends`` from a fetch of each partition's last batch; returns the partitions that got no answer."""
    consumer.assign(probe)
    for tp in probe:
        consumer.seek(tp, reported[tp] - 1)
    waiting = set(probe)
    deadline = time.monotonic() + timeout_s
    while waiting and time.monotonic() < deadline:
        for tp, records in consumer.poll(timeout_ms=100, max_records=100_000).items():
            if records:
                ends[tp] = max(ends[tp], records[-1].offset + 1)
            waiting.discard(tp)
        for tp in list(waiting):
            high = consumer.highwater(tp)
            if high is not None:  # a fetch answered, with no records at or after the seek offset
                waiting.discard(tp)
    for tp in probe:
        high = consumer.highwater(tp)
        if high is not None:
            ends[tp] = max(ends[tp], high)
    if waiting:
        log.debug("lag probe: no fetch answer for %s within %.1f s; using the reported end", waiting, timeout_s)
    return waiting


class KafkaLag:
    """Measures the lag of :class:`LagSource` groups; thread-safe, results cached for ``cache_s``.

    Args:
        bootstrap: the brokers.
        sources: the groups to watch.
        cache_s: a measurement younger than this is returned again (scrapes and dashboard polls share it).
        timeout_s: how long one measurement may wait for the broker.
    """

    def __init__(self, bootstrap: str, sources: Iterable[LagSource], cache_s: float = 1.0,
                 timeout_s: float = 2.0) -> None:
        self.bootstrap = bootstrap
        self.sources = list(sources)
        self.cache_s = cache_s
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._consumer: KafkaConsumer | None = None
        self._admin: KafkaAdminClient | None = None
        self._last: tuple[float, list[PartitionLag]] = (0.0, [])
        self.errors = 0

    def _clients(self) -> tuple[KafkaConsumer, KafkaAdminClient]:
        if self._consumer is None or self._admin is None:
            timeout_ms = int(self.timeout_s * 1000)
            self._consumer = KafkaConsumer(bootstrap_servers=self.bootstrap, client_id="gfm-lag-probe",
                                           enable_auto_commit=False, request_timeout_ms=max(timeout_ms, 5000),
                                           max_partition_fetch_bytes=4 * 1024 * 1024)
            self._admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, client_id="gfm-lag-probe",
                                           request_timeout_ms=max(timeout_ms, 5000))
        return self._consumer, self._admin

    def measure(self) -> list[PartitionLag]:
        """The lag of every watched partition (cached for ``cache_s``).

        Raises:
            KafkaError: when the broker cannot be reached (the clients are rebuilt on the next call).
        """
        with self._lock:
            at, rows = self._last
            if time.monotonic() - at < self.cache_s:
                return rows
            try:
                rows = self._measure()
            except Exception:
                self.errors += 1
                self.close_clients()
                raise
            self._last = (time.monotonic(), rows)
            return rows

    def _measure(self) -> list[PartitionLag]:
        consumer, admin = self._clients()
        partitions: dict[str, list[TopicPartition]] = {}
        for source in self.sources:
            for topic in source.topics:
                if topic not in partitions:
                    found = consumer.partitions_for_topic(topic) or set()
                    partitions[topic] = [TopicPartition(topic, p) for p in sorted(found)]
        every = [tp for tps in partitions.values() for tp in tps]
        if not every:
            return []
        beginnings: dict[TopicPartition, int] = consumer.beginning_offsets(every)
        ends = true_end_offsets(consumer, every, self.timeout_s)
        groups = admin.list_group_offsets({s.group: None for s in self.sources})
        rows = []
        for source in self.sources:
            committed: Mapping[TopicPartition, object] = groups.get(source.group, {}) or {}
            for topic in source.topics:
                for tp in partitions[topic]:
                    meta = committed.get(tp)
                    offset = getattr(meta, "offset", None) if meta is not None else None
                    rows.append(PartitionLag(source.consumer, topic, tp.partition, ends[tp], offset,
                                             partition_lag(ends[tp], offset, beginnings.get(tp, 0))))
        return rows

    def close_clients(self) -> None:
        """Close the Kafka clients (new ones are made on the next measurement)."""
        for client in (self._consumer, self._admin):
            if client is not None:
                try:
                    client.close()
                except Exception:  # closing a broken client must not hide the error that broke it
                    log.debug("closing a lag-probe client failed", exc_info=True)
        self._consumer = self._admin = None


class LagCollector(Collector):
    """Exposes a :class:`KafkaLag` at scrape time: ``gfm_consumer_lag``, ``gfm_consumer_end_offset``,
    ``gfm_consumer_committed_offset`` (labels ``consumer``, ``topic``, ``partition``: bounded by the topics'
    partition counts) and ``gfm_consumer_lag_probe_up`` (0 when the broker did not answer)."""

    def __init__(self, lag: KafkaLag) -> None:
        self.lag = lag

    def describe(self) -> Iterator[GaugeMetricFamily]:
        """No metrics at registration time: collecting would call the broker."""
        return iter(())

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """Measure and yield the lag families."""
        labels = ["consumer", "topic", "partition"]
        lag = GaugeMetricFamily("gfm_consumer_lag", "Records not yet committed by the consumer group "
                                "(true end offset minus committed offset)", labels=labels)
        end = GaugeMetricFamily("gfm_consumer_end_offset", "Offset after the partition's last record", labels=labels)
        committed = GaugeMetricFamily("gfm_consumer_committed_offset", "The group's committed offset",
                                      labels=labels)
        up = GaugeMetricFamily("gfm_consumer_lag_probe_up", "1 when the last lag measurement reached the broker")
        try:
            rows = self.lag.measure()
            up.add_metric([], 1.0)
        except Exception as error:
            log.warning("consumer lag not measured: %s", error)
            rows = []
            up.add_metric([], 0.0)
        for row in rows:
            key = [row.consumer, row.topic, str(row.partition)]
            lag.add_metric(key, float(row.lag))
            end.add_metric(key, float(row.end))
            if row.committed is not None:
                committed.add_metric(key, float(row.committed))
        yield from (lag, end, committed, up)


def pipeline_sources(topic_prefix: str, streams_group: str, edges_group: str | None = None) -> list[LagSource]:
    """The consumers of the pipeline: the Faust workers (one group, or two when the edges agent runs apart:
    ``edges_group``) and the refresher."""
    events, pairs = f"{topic_prefix}-events", f"{topic_prefix}-pairs"
    streams = ([LagSource("streams", streams_group, (events, pairs))]
               if edges_group in (None, streams_group) else
               [LagSource("streams", streams_group, (events,)), LagSource("streams", edges_group, (pairs,))])
    return [
        *streams,
        LagSource("refresher", refresher_group(topic_prefix),
                  (f"{topic_prefix}-catalog", f"{topic_prefix}-item-updates", f"{topic_prefix}-user-updates")),
    ]


def register_lag(registry: CollectorRegistry, bootstrap: str, topic_prefix: str, streams_group: str,
                 edges_group: str | None = None) -> KafkaLag:
    """Register the pipeline's lag collector in ``registry``; returns the probe (the dashboard shares it)."""
    lag = KafkaLag(bootstrap, pipeline_sources(topic_prefix, streams_group, edges_group))
    registry.register(LagCollector(lag))
    return lag
