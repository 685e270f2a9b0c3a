"""Wiring: settings in, running components out. Each ``run_*`` is what one ``gfm worker`` subcommand does."""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, start_http_server

from models.embedding import TextPropagationModel, UserComposer, VectorModel
from models.text import TextEncoder, make_encoder
from monitoring.lag import register_lag
from monitoring.metrics import (
    RefresherMetrics,
    StoreMetrics,
    StreamMetrics,
    register_process,
    register_store_memory,
)
from streams.agents import StreamConfig, create_app
from streams.records import DeadLetter
from streams.store import rocksdb_memory
from vectorstore.base import VectorStore
from workers.kafka_io import EventSink, ensure_topics, make_producer
from workers.refresher import Ownership, Refresher, RefresherLoop
from workers.settings import Settings

if TYPE_CHECKING:
    from fastapi import FastAPI

    from monitoring.page import MetricsHistory
    from vectorstore.api import EventSink as ApiSink

log = logging.getLogger(__name__)


def build_store(settings: Settings) -> VectorStore:
    """The Qdrant server when ``qdrant.url`` is set, else the embedded qdrant-edge shards."""
    if settings.qdrant.url:
        from vectorstore.server import ServerStore

        return ServerStore(settings.qdrant.url, settings.qdrant.collection_prefix, settings.qdrant.api_key)
    from vectorstore.edge import EdgeStore

    return EdgeStore(settings.qdrant.path, hnsw_ef=settings.qdrant.hnsw_ef,
                     flush_interval_s=settings.qdrant.flush_interval_s)


def build_encoder(settings: Settings, progress: bool = False) -> TextEncoder:
    """The text featuriser named by the settings, with its disk cache."""
    return make_encoder(settings.model.encoder, settings.model.text_cache, progress)


def build_model(settings: Settings, encoder: TextEncoder) -> VectorModel:
    """The vector model: the trained 2T-HGNN of ``model.dir`` (``model.kind=gfm``), or text propagation
    (``model.kind=textprop``).

    Raises:
        ValueError: ``model.kind`` is ``gfm`` and no ``model.dir`` is set.
    """
    if settings.model.kind == "textprop":
        return TextPropagationModel(encoder.name, encoder.dim, settings.model.neighbour_weight,
                                    settings.streams.history_per_type)
    if settings.model.dir is None:
        raise ValueError("model.kind='gfm' needs a trained model: set GFM_MODEL__DIR to a directory written by "
                         "`gfm train --data DIR` (`gfm up` trains and sets the demo model itself), or choose the "
                         "text-propagation fallback with GFM_MODEL__KIND=textprop")
    from models.serving import TrainedModel

    return TrainedModel(settings.model.dir, encoder.name)


def build_composer(settings: Settings) -> UserComposer:
    """The served model's user side, for an API without a refresher in its process: the user tower alone of
    ``model.dir`` (no HGNN, no text encoder), or text propagation's mean of item vectors."""
    if settings.model.kind == "gfm" and settings.model.dir is not None:
        from models.serving import UserTower

        return UserTower.load(settings.model.dir)
    return build_model(settings, build_encoder(settings)).composer


def stream_config(settings: Settings) -> StreamConfig:
    """The Faust app's configuration."""
    return StreamConfig(
        broker=f"gfm-kafka://{settings.kafka.bootstrap}",
        app_id=settings.streams.app_id,
        topic_prefix=settings.kafka.topic_prefix,
        partitions=settings.kafka.partitions,
        take_max=settings.streams.take_max,
        pairs_take_max=settings.streams.pairs_take_max,
        take_within_s=settings.streams.take_within_s,
        pairs_take_within_s=settings.streams.pairs_take_within_s,
        stall_s=settings.streams.stall_s,
        min_stream_ms=settings.streams.min_stream_ms,
        producer_max_batch_size=settings.streams.producer_max_batch_size,
        output_max_batch_size=settings.streams.output_max_batch_size,
        rocksdb_write_buffer_mib=settings.streams.rocksdb_write_buffer_mib,
        rocksdb_block_cache_mib=settings.streams.rocksdb_block_cache_mib,
        datadir=str(settings.stream_datadir()),
        graph=settings.streams.graph_config(),
        agents=settings.streams.role,
        edges_group=settings.streams.edges_group,
    )


GC_THRESHOLDS = (10_000, 100, 100)
"""The garbage collector thresholds of the stream worker and of the refresher's process (CPython's default: 700,
10, 10)."""


def tune_gc() -> None:
    """Collect garbage less often in a process whose state is millions of small containers.

    The stream worker's state (adjacency rows, user histories) and the refresher's graph (every item's adjacency,
    one list per neighbour) are such; each micro-batch decodes and allocates more, so the default thresholds run
    collections that traverse the whole state over and over. In the stream worker they took half of the edges
    agent's time (``bench/agents_bench.py``). In the refresher's process (``gfm worker api``, embedded) a full
    collection came every ~2 s at 1,000 events/s and held the GIL for 0.3-0.54 s, growing with the graph: every
    thread stopped meanwhile, the users' thread reading a fresh state and the API answering included (README
    *Freshness*, the refresher's pauses). Objects alive now are frozen out of collection, and so, through
    ``on_caught_up=gc.freeze``, is the refresher's graph once built. The state holds no reference cycles, so
    collecting less often only delays freeing cyclic garbage.
    """
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def run_streams(settings: Settings) -> None:
    """Run the Faust worker (blocks)."""
    import faust

    ensure_topics(settings.kafka)
    registry = CollectorRegistry()
    register_process(registry)
    register_lag(registry, settings.kafka.bootstrap, settings.kafka.topic_prefix, settings.streams.app_id,
                 settings.streams.edges_group)
    start_http_server(settings.streams.own_metrics_port, addr=settings.metrics_host, registry=registry)
    app = create_app(stream_config(settings), StreamMetrics.create(registry))
    register_store_memory(registry, lambda: rocksdb_memory(app.tables.values()))
    tune_gc()
    worker = faust.Worker(app, loglevel="WARNING", quiet=True)
    worker.execute_from_commandline()


def start_refresher(settings: Settings, store: VectorStore, registry: CollectorRegistry,
                    on_caught_up: Callable[[], None] | None = None) -> RefresherLoop:
    """Start the refresher loop in a thread of this process; its rejected records go to the dead-letter topic
    (``on_caught_up``: see :class:`RefresherLoop`)."""
    ensure_topics(settings.kafka)
    encoder = build_encoder(settings)
    ownership = Ownership(settings.kafka.partitions, settings.refresher.replicas, settings.refresher.replica)
    refresher = Refresher(store, build_model(settings, encoder), encoder, RefresherMetrics.create(registry),
                          settings.refresher, ownership=ownership)
    producer = make_producer(settings.kafka)
    topic = settings.kafka.topic("dead-letter")

    def dead_letters(letters: list[DeadLetter]) -> None:
        for letter in letters:
            producer.send(topic, value=letter.dumps())
        producer.flush()

    return RefresherLoop(refresher, settings.kafka, dead_letters, on_caught_up).start()


def run_refresher(settings: Settings) -> None:
    """Run the refresher alone (blocks); its metrics are served on ``refresher.metrics_port``."""
    registry = CollectorRegistry()
    register_process(registry)
    start_http_server(settings.refresher.metrics_port, addr=settings.metrics_host, registry=registry)
    tune_gc()
    loop = start_refresher(settings, build_store(settings), registry, on_caught_up=gc.freeze)
    try:
        while loop.alive:
            loop.stop_event.wait(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        loop.stop()
        loop.refresher.store.close()
    if loop.error is not None:
        raise SystemExit(f"refresher failed: {loop.error}")


def attach_monitoring(app: FastAPI, settings: Settings, registry: CollectorRegistry, store: VectorStore,
                      separate_refresher: bool) -> MetricsHistory:
    """The API's share of monitoring: consumer lag and store size in its /metrics, and /dashboard."""
    from monitoring.page import MetricsHistory, dashboard_router, registry_source, url_source

    register_lag(registry, settings.kafka.bootstrap, settings.kafka.topic_prefix, settings.streams.app_id,
                 settings.streams.edges_group)
    StoreMetrics.create(registry, store.count_items)
    urls = settings.api.dashboard_sources
    if urls is None:
        urls = [f"http://127.0.0.1:{settings.streams.metrics_port}/metrics"]
        if settings.streams.split:
            urls.append(f"http://127.0.0.1:{settings.streams.edges_metrics_port}/metrics")
        if separate_refresher:
            urls.append(f"http://127.0.0.1:{settings.refresher.metrics_port}/metrics")
    history = MetricsHistory({"api": registry_source(registry), **{url: url_source(url) for url in urls}})
    app.include_router(dashboard_router(history))
    return history.start()


def build_api(settings: Settings, store: VectorStore, sink: ApiSink | None, registry: CollectorRegistry,
              health: Callable[[], dict[str, Any]] | None = None, composer: UserComposer | None = None) -> FastAPI:
    """The HTTP API with the bounds of ``settings.api``, composing user vectors with ``composer`` (the served
    model's user side, :func:`build_composer`; the live stack always passes one). Without one it serves the vector
    stored with each user (the query benchmarks' synthetic users)."""
    from vectorstore.api import ApiLimits, create_api
    from vectorstore.compose import ComposedUsers

    api = settings.api
    limits = ApiLimits(max_k=api.max_k, max_body_bytes=api.max_body_bytes, max_batch=api.max_batch, ts_min=api.ts_min,
                       ts_future_s=api.ts_future_s, ingest_threads=api.ingest_threads,
                       ingest_in_flight=api.ingest_in_flight)
    users = ComposedUsers(store, composer) if composer is not None else None
    return create_api(store, sink, registry, health=health, limits=limits, users=users)


def run_api(settings: Settings, with_refresher: bool | None = None) -> None:
    """Run the query API (blocks). With the embedded store, the refresher runs in this process too, since a
    qdrant-edge shard can be opened by one process only."""
    import uvicorn

    registry = CollectorRegistry()
    register_process(registry)
    store = build_store(settings)
    embedded = not settings.qdrant.url
    tune_gc()
    loop = start_refresher(settings, store, registry, on_caught_up=gc.freeze) if (with_refresher or embedded) else None
    composer = loop.refresher.model.composer if loop is not None else build_composer(settings)
    if loop is None:
        store.ensure(composer.dim, composer.distance)
    producer = make_producer(settings.kafka)
    sink = EventSink(producer, settings.kafka)

    app = build_api(settings, store, sink, registry, loop.health if loop is not None else None, composer)
    dashboard = attach_monitoring(app, settings, registry, store, separate_refresher=loop is None)
    store.optimize(settings.qdrant.index_min_unindexed)  # before serving: qdrant-edge's indexing holds the GIL
    try:
        uvicorn.run(app, host=settings.api.host, port=settings.api.port, log_level="warning")
    finally:
        dashboard.stop()
        if loop is not None:
            loop.stop()
        producer.close()
        store.close()
