"""Deployment settings: every endpoint, path and bound, read once at the entry point and passed down.

Environment variables use the prefix ``GFM_`` and ``__`` for nesting, e.g. ``GFM_KAFKA__BOOTSTRAP=kafka:9092``
or ``GFM_QDRANT__URL=http://qdrant:6333`` (which switches the vector store to the Qdrant server).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from models.graph import GraphConfig


class KafkaSettings(BaseModel):
    """Where the broker is and how topics are laid out."""

    bootstrap: str = "127.0.0.1:19092"
    topic_prefix: str = "gfm"
    partitions: int = Field(4, ge=1)
    replication: int = Field(1, ge=1)
    embedded_broker: bool = True
    """``gfm up`` starts the tansu broker on ``bootstrap`` when true."""

    def topic(self, name: str) -> str:
        """The full name of one of the project's topics (``events``, ``catalog``, ...)."""
        return f"{self.topic_prefix}-{name}"


class QdrantSettings(BaseModel):
    """The vector store: the embedded qdrant-edge shard by default, a Qdrant server when ``url`` is set."""

    url: str | None = None
    api_key: str | None = None
    path: Path = Path("var/qdrant")
    collection_prefix: str = "gfm"
    hnsw_ef: int | None = Field(
        256, ge=1, description="embedded store: HNSW search breadth (recall against speed); None: exact search")
    index_min_unindexed: int = Field(
        20_000, ge=1, description="embedded store: build the vector index before the API serves when at least "
        "this many items are unindexed (it pauses the process: ~1 min for 100k items)")
    flush_interval_s: float = Field(
        5.0, ge=0, description="embedded store: longest time between an upsert and the flush that persists it; "
        "until a flush the shards keep every update in their write-ahead log and cannot reuse freed payload "
        "blocks, so memory and disk grow with the updates (0: flush after every upsert)")


class StreamSettings(BaseModel):
    """The Faust worker."""

    app_id: str = "gfm-streams"
    take_max: int = Field(100, ge=1, description="event messages (packs of events) per micro-batch")
    pairs_take_max: int = Field(
        500, ge=1, description="pair messages per micro-batch: larger batches write each touched item less often"
    )
    take_within_s: float = Field(
        0.02, gt=0, description="longest wait for an events micro-batch to fill: at 1,000 and 2,000 events/s a "
                                "batch closes on this window, so a user's freshness waits half of it on average "
                                "(0.1 s until 2026-12-06; 0.02 s took 0.07 s off the fresh user vector's p95 with "
                                "throughput unchanged, README *Freshness*)")
    pairs_take_within_s: float = Field(
        0.5, gt=0, description="longest wait for a pairs micro-batch to fill: each batch writes every item it "
                               "touched (its whole adjacency, to the changelog and the refresher), so a short "
                               "window writes popular items many times a second; at 0.1 s the item path fell "
                               "behind at 1,000 events/s and item vectors grew staler all run long; 1 s from "
                               "2026-11-25, 0.5 s since 2026-12-06, once the refresher kept up (README "
                               "*Freshness*)")
    min_stream_ms: int = Field(30_000, ge=0, description="a stream shorter than this is not a consumption")
    producer_max_batch_size: int = Field(
        16_384, ge=1, description="bytes per batch and partition of Faust's producer, which writes the tables' "
                                  "changelogs (restores read to the true end offsets, streams.transport: tansu's "
                                  "reported ones are short of a batch)"
    )
    output_max_batch_size: int = Field(
        16_384, ge=1, description="bytes per batch and partition of the agents' outputs (pairs, refresh requests, "
                                  "dead letters), which nothing restores from (streams.agents.Outputs)")
    stall_s: float = Field(
        30.0, gt=0, description="an agent that has not started a micro-batch for this long while messages it was "
                                "fetched wait makes the worker exit, so that its supervisor restarts it (see "
                                "streams.agents.StallWatch)")
    metrics_port: int = 9101
    datadir: Path | None = None
    """This worker's RocksDB table directory (``var_dir/faust`` when unset). Every stream worker needs its own:
    the tables are local caches of their changelogs, per worker."""
    rocksdb_write_buffer_mib: int = Field(
        4, ge=1, description="RocksDB memtable size per table and partition (two at most): the worker's resident "
                             "memory holds up to 2 x this x 2 tables x partitions of memtables")
    rocksdb_block_cache_mib: int = Field(16, ge=1, description="RocksDB block cache per table and partition")
    window: int = 20
    history_per_type: int = 50
    max_consumed: int = 2000
    max_degree: int = 100
    split: bool = True
    """Run the edges agent in stream processes of its own, in the consumer group ``<app_id>-edges`` (the default):
    the events agent then never waits behind an edges micro-batch, and the two use two cores. Every process of a
    deployment must agree on it (the lag probes read the edges group from it); ``gfm up`` then starts two stream
    workers, and a lone ``gfm worker streams`` runs the events agent unless ``agents`` says ``edges``. Off, one
    process runs both agents (README *Split stream workers*: on two cores the split gave the better user and item
    freshness at 1,000 and 2,000 events/s, for about 300 MiB more resident memory)."""
    agents: Literal["all", "events", "edges"] | None = None
    """What this stream process runs (:attr:`role`): by default ``all``, or ``events`` when ``split``."""
    edges_metrics_port: int = 9103
    """Where an edges-only stream worker (``agents=edges``) serves its metrics."""

    @model_validator(mode="after")
    def _agents_fit_split(self) -> StreamSettings:
        if self.split and self.agents == "all":
            raise ValueError("streams.split is set: a stream worker runs either the events agent or the edges agent "
                             "(GFM_STREAMS__AGENTS=events or edges)")
        if not self.split and self.agents not in (None, "all"):
            raise ValueError(f"streams.agents={self.agents!r} needs streams.split: without it one process runs "
                             "both agents and nothing else would run the other one")
        return self

    @property
    def role(self) -> Literal["all", "events", "edges"]:
        """The agents this stream process runs."""
        return self.agents or ("events" if self.split else "all")

    @property
    def own_metrics_port(self) -> int:
        """Where this stream process serves its metrics."""
        return self.edges_metrics_port if self.role == "edges" else self.metrics_port

    @property
    def edges_group(self) -> str:
        """The consumer group of the edges agent (the events agent's is ``app_id``)."""
        return f"{self.app_id}-edges" if self.split else self.app_id

    def graph_config(self) -> GraphConfig:
        """The graph bounds these settings describe."""
        return GraphConfig(
            window=self.window,
            history_per_type=self.history_per_type,
            max_consumed=self.max_consumed,
            max_degree=self.max_degree,
        )


class RefresherSettings(BaseModel):
    """The refresher's micro-batches."""

    batch_max: int = Field(5000, ge=1, description="refresh requests per micro-batch")
    wait_ms: int = Field(100, ge=1, description="longest wait for a micro-batch to fill, and for the broker to "
                                                "answer a fetch (its consumers' fetch_max_wait_ms)")
    dependents_per_batch: int = Field(
        2000, ge=1, description="items and users of the frontier (indirectly changed) refreshed per micro-batch"
    )
    retry_initial_s: float = Field(0.2, gt=0, description="first wait before retrying a failed vector store call")
    retry_max_s: float = Field(5.0, gt=0, description="longest wait between vector store retries")
    metrics_port: int = 9102
    replicas: int = Field(1, ge=1, description="refresher replicas sharing the work (see workers/refresher.py)")
    replica: int = Field(0, ge=0, description="this replica's index, 0 to replicas - 1")

    @model_validator(mode="after")
    def _replica_in_range(self) -> RefresherSettings:
        if self.replica >= self.replicas:
            raise ValueError(f"refresher.replica={self.replica} must be below refresher.replicas={self.replicas}")
        return self


class ApiSettings(BaseModel):
    """The query API and its bounds on requests (see ``vectorstore.api.ApiLimits``)."""

    host: str = "127.0.0.1"
    port: int = 8000
    max_k: int = Field(200, ge=1)
    max_body_bytes: int = Field(1_048_576, ge=1, description="largest request body; 413 beyond")
    max_batch: int = Field(1000, ge=1, description="most events per POST /events; 413 beyond")
    ts_min: float = Field(946_684_800.0, description="earliest event time accepted (2000-01-01, unix seconds)")
    ts_future_s: float = Field(86_400.0, ge=0, description="how far past now an event time may be")
    ingest_threads: int = Field(2, ge=1, description="threads that decode and send posted events")
    ingest_in_flight: int = Field(32, ge=1, description="most POST /events in progress; 503 beyond")
    dashboard_sources: list[str] | None = None
    """The other services' /metrics URLs that /dashboard reads; by default the stream worker's (and the
    refresher's, when it runs apart) on 127.0.0.1."""


class ModelSettings(BaseModel):
    """Which model computes vectors, and where text embeddings are cached."""

    kind: Literal["gfm", "textprop"] = "gfm"
    """``gfm``: the trained 2T-HGNN of ``dir``; ``textprop``: the text-propagation fallback (no training)."""
    dir: Path | None = None
    """A trained model directory (``gfm train``). With ``kind=gfm`` and no ``dir``, ``gfm up`` trains the demo model
    (or reuses it from ``<var_dir>/models``) and serves it; a lone ``gfm worker`` refuses to start."""
    text_cache: Path = Path("var/text-cache")
    encoder: str = "minilm"
    """``minilm`` (all-MiniLM-L6-v2, shipped in a wheel) or ``hashing`` (fast, for tests)."""
    neighbour_weight: float = 1.0


class Settings(BaseSettings):
    """All of gfm's deployment settings."""

    model_config = SettingsConfigDict(env_prefix="GFM_", env_nested_delimiter="__", extra="ignore")

    var_dir: Path = Path("var")
    metrics_host: str = "127.0.0.1"
    """Where the workers' Prometheus endpoints bind (0.0.0.0 inside containers)."""
    kafka: KafkaSettings = KafkaSettings()
    qdrant: QdrantSettings = QdrantSettings()
    streams: StreamSettings = StreamSettings()
    refresher: RefresherSettings = RefresherSettings()
    api: ApiSettings = ApiSettings()
    model: ModelSettings = ModelSettings()

    @model_validator(mode="after")
    def _replicas_fit_partitions(self) -> Settings:
        if self.refresher.replicas > self.kafka.partitions:
            raise ValueError(f"refresher.replicas={self.refresher.replicas} exceeds kafka.partitions="
                             f"{self.kafka.partitions}: a replica owns whole partitions, so some would own nothing")
        return self

    def stream_datadir(self) -> Path:
        """The stream worker's RocksDB directory: ``streams.datadir`` when set (each worker's own, as in
        docker-compose), else ``var_dir/faust`` (an edges-only worker's: ``var_dir/faust-edges``)."""
        if self.streams.datadir is not None:
            return self.streams.datadir
        return self.var_dir / ("faust-edges" if self.streams.role == "edges" else "faust")
