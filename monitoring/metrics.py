"""Every Prometheus metric of gfm, defined once; each component takes a ``registry`` so tests can pass a
fresh one."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)


def register_process(registry: CollectorRegistry) -> None:
    """The process's own figures in ``registry``: ``process_cpu_seconds_total``, ``process_resident_memory_bytes``
    and the rest of prometheus-client's process collector (one per process: each gfm process has one registry)."""
    ProcessCollector(registry=registry)


class StoreMemoryCollector(Collector):
    """The stream worker's table store memory at scrape time: ``gfm_rocksdb_memtable_bytes`` and
    ``gfm_rocksdb_block_cache_bytes``, labelled by ``table`` (two tables)."""

    def __init__(self, read: Callable[[], Mapping[str, Mapping[str, int]]]) -> None:
        self.read = read

    def describe(self) -> Iterator[GaugeMetricFamily]:
        """No metrics at registration time: the tables' databases are not open yet."""
        return iter(())

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """Read the tables' memory and yield the two families."""
        memtables = GaugeMetricFamily("gfm_rocksdb_memtable_bytes", "Bytes in the table's RocksDB memtables, all "
                                      "partitions", labels=["table"])
        cache = GaugeMetricFamily("gfm_rocksdb_block_cache_bytes", "Bytes in the table's RocksDB block caches, all "
                                  "partitions", labels=["table"])
        for table, memory in sorted(self.read().items()):
            memtables.add_metric([table], float(memory["memtables"]))
            cache.add_metric([table], float(memory["block_cache"]))
        yield from (memtables, cache)


def register_store_memory(registry: CollectorRegistry, read: Callable[[], Mapping[str, Mapping[str, int]]]) -> None:
    """Register a :class:`StoreMemoryCollector` reading ``read()`` (``{table: {"memtables": bytes, "block_cache":
    bytes}}``) in ``registry``."""
    registry.register(StoreMemoryCollector(read))


@dataclass
class StreamMetrics:
    """The Faust worker's metrics."""

    events: Counter
    dead_letters: Counter
    pairs: Counter
    pairs_published: Counter
    pairs_redelivered: Counter
    consumptions_folded: Counter
    user_updates: Counter
    item_updates: Counter
    batch_seconds: Histogram

    @classmethod
    def create(cls, registry: CollectorRegistry) -> StreamMetrics:
        """Register the metrics in ``registry``."""
        return cls(
            events=Counter("gfm_stream_events_total", "Events read by the stream agents, by outcome",
                           ["outcome"], registry=registry),
            dead_letters=Counter("gfm_dead_letters_total", "Messages sent to the dead-letter topic",
                                 ["topic", "field"], registry=registry),
            pairs=Counter("gfm_graph_pairs_total", "Directed co-interaction pairs merged into the graph",
                          registry=registry),
            pairs_published=Counter("gfm_graph_pairs_published_total",
                                    "Directed co-interaction pairs published to the pairs topic", registry=registry),
            pairs_redelivered=Counter("gfm_graph_pairs_redelivered_total",
                                      "Pairs skipped because their item had merged their origin already",
                                      registry=registry),
            consumptions_folded=Counter("gfm_trend_consumptions_total",
                                        "Consumptions folded into their items' trend levels", registry=registry),
            user_updates=Counter("gfm_user_updates_total", "User refresh requests published", registry=registry),
            item_updates=Counter("gfm_item_updates_total", "Item refresh requests published", registry=registry),
            batch_seconds=Histogram("gfm_stream_batch_seconds", "Time to process one micro-batch",
                                    ["agent"], buckets=LATENCY_BUCKETS, registry=registry),
        )


class RefresherView(Protocol):
    """What :meth:`RefresherMetrics.observe_batch` reads from the refresher."""

    items_refreshed: int
    users_refreshed: int

    @property
    def model(self) -> Any:
        """The vector model (its ``version`` is exported)."""


class TimestampedRecord(Protocol):
    """A Kafka record as the consumer returns it (only its timestamp is read)."""

    timestamp: int


@dataclass
class RefresherMetrics:
    """The refresher's metrics."""

    batches: Counter
    upserts: Counter
    batch_seconds: Histogram
    freshness_seconds: Histogram
    catalog_items: Gauge
    pending: Gauge
    store_errors: Counter
    item_freshness_seconds: Histogram
    last_upsert: Gauge
    model_info: Gauge
    _seen: dict[str, int] = field(default_factory=dict)
    _version: str | None = None

    def observe_batch(self, refresher: RefresherView, polled: Mapping[Any, Sequence[TimestampedRecord]],
                      now: Callable[[], float] = time.time) -> None:
        """After a micro-batch was applied: when each kind of point was last upserted, and the served model
        version. (Event -> item vector latency is observed by the refresher as it upserts each item.)"""
        stamp = now()
        for kind, count in (("item", refresher.items_refreshed), ("user", refresher.users_refreshed)):
            if count != self._seen.get(kind, 0):
                self._seen[kind] = count
                self.last_upsert.labels(kind).set(stamp)
        version = str(refresher.model.version)
        if version != self._version:
            if self._version is not None:
                self.model_info.remove(self._version)
            self.model_info.labels(version).set(1)
            self._version = version

    @classmethod
    def create(cls, registry: CollectorRegistry) -> RefresherMetrics:
        """Register the metrics in ``registry``."""
        return cls(
            batches=Counter("gfm_refresh_batches_total", "Refresh micro-batches", registry=registry),
            upserts=Counter("gfm_vectors_upserted_total", "Vectors upserted into the store", ["kind"],
                            registry=registry),
            batch_seconds=Histogram("gfm_refresh_batch_seconds", "Time to refresh and upsert one micro-batch",
                                    buckets=LATENCY_BUCKETS, registry=registry),
            freshness_seconds=Histogram(
                "gfm_event_to_vector_seconds",
                "From an event's arrival in the stream to its user's state in the store (the next query composes the "
                "user's vector from it)",
                buckets=LATENCY_BUCKETS, registry=registry),
            catalog_items=Gauge("gfm_catalog_items", "Items known to the refresher", registry=registry),
            item_freshness_seconds=Histogram(
                "gfm_event_to_item_vector_seconds",
                "From an event to the vectors of every item it affects in the store, the frontier included (from the "
                "item-update request's Kafka timestamp: the earliest event time of the micro-batch that changed the "
                "item)",
                buckets=LATENCY_BUCKETS, registry=registry),
            last_upsert=Gauge("gfm_vectors_last_upsert_timestamp_seconds",
                              "Unix time of the newest upsert, by kind (item, user)", ["kind"], registry=registry),
            model_info=Gauge("gfm_model_info", "The model version that computes the vectors (value 1)",
                             ["version"], registry=registry),
            pending=Gauge("gfm_refresh_pending", "Dependents waiting to be refreshed (the frontier), by kind",
                          ["kind"], registry=registry),
            store_errors=Counter("gfm_vector_store_errors_total", "Failed vector store calls (retried)", ["op"],
                                 registry=registry),
        )


@dataclass
class ApiMetrics:
    """The query API's metrics."""

    requests: Counter
    latency: Histogram
    events_accepted: Counter
    events_rejected: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry) -> ApiMetrics:
        """Register the metrics in ``registry``."""
        return cls(
            requests=Counter("gfm_api_requests_total", "API requests", ["route", "status"], registry=registry),
            latency=Histogram("gfm_api_request_seconds", "API request latency", ["route"],
                              buckets=LATENCY_BUCKETS, registry=registry),
            events_accepted=Counter("gfm_api_events_accepted_total", "Events accepted by POST /events",
                                    registry=registry),
            events_rejected=Counter("gfm_api_events_rejected_total", "Events rejected by POST /events",
                                    registry=registry),
        )


@dataclass
class StoreMetrics:
    """The vector store's size, read when scraped."""

    items: Gauge

    @classmethod
    def create(cls, registry: CollectorRegistry, count_items: Callable[[], int]) -> StoreMetrics:
        """Register a gauge that calls ``count_items`` at each scrape."""
        items = Gauge("gfm_store_items", "Item vectors in the vector store", registry=registry)
        items.set_function(lambda: float(count_items()))
        return cls(items=items)
