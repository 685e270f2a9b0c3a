"""The stream worker's RocksDB memory bounds: settings -> the tables' options -> memtables that stay small."""

from __future__ import annotations

import os

import pytest
from faust.stores.rocksdb import RocksDBOptions
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from monitoring.metrics import StreamMetrics, register_store_memory
from streams.agents import create_app
from streams.store import MAX_WRITE_BUFFERS, rocksdb_memory, rocksdb_options
from workers.services import stream_config
from workers.settings import Settings

MIB = 1 << 20


def peak_memtables(options: RocksDBOptions, path: str, rounds: int = 40) -> int:
    """The largest ``rocksdb.cur-size-all-mem-tables`` seen while rewriting 250 keys of 4 KiB ``rounds`` times
    (the agents rewrite a touched key's whole value every micro-batch): 40 MiB written in all by default."""
    db = options.open(path)  # type: ignore[arg-type]
    try:
        peak = 0
        for r in range(rounds):
            for k in range(250):
                db[f"key-{k}".encode()] = os.urandom(4096 - 8) + r.to_bytes(8, "big")
            peak = max(peak, db.property_int_value("rocksdb.cur-size-all-mem-tables") or 0)
        return peak
    finally:
        db.close()


def test_memtables_stay_within_the_configured_write_buffers(tmp_path):
    bounded = RocksDBOptions(**rocksdb_options(2, 1), use_rocksdict=True)
    assert peak_memtables(bounded, str(tmp_path / "bounded")) <= MAX_WRITE_BUFFERS * 2 * MIB * 1.1


def test_faust_default_memtables_hold_everything_written(tmp_path):
    # what the worker had before: the 40 MiB written all stay in one 64 MiB memtable
    assert peak_memtables(RocksDBOptions(use_rocksdict=True), str(tmp_path / "default")) > 30 * MIB


@pytest.mark.parametrize(("env", "tables"), [
    ({}, ("users",)),  # split, the default: the events worker
    ({"GFM_STREAMS__AGENTS": "edges"}, ("adjacency",)),
    ({"GFM_STREAMS__SPLIT": "false"}, ("users", "adjacency")),
], ids=["events-worker", "edges-worker", "one-worker"])
def test_the_settings_reach_the_tables_stores(monkeypatch, tmp_path, env, tables):
    monkeypatch.setenv("GFM_STREAMS__ROCKSDB_WRITE_BUFFER_MIB", "3")
    monkeypatch.setenv("GFM_STREAMS__ROCKSDB_BLOCK_CACHE_MIB", "5")
    monkeypatch.setenv("GFM_STREAMS__DATADIR", str(tmp_path / "faust"))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    app = create_app(stream_config(Settings()), StreamMetrics.create(CollectorRegistry()))
    assert set(app.tables) == set(tables)
    for name in tables:
        options = app.tables[name].data.rocksdb_options  # type: ignore[attr-defined]
        assert (options.write_buffer_size, options.max_write_buffer_number, options.block_cache_size) == (
            3 * MIB, MAX_WRITE_BUFFERS, 5 * MIB)
        assert options.use_rocksdict


def test_the_defaults_bound_memtables_to_a_few_mib():
    streams = Settings().streams
    assert (streams.rocksdb_write_buffer_mib, streams.rocksdb_block_cache_mib) == (4, 16)


@pytest.mark.parametrize("name", ["ROCKSDB_WRITE_BUFFER_MIB", "ROCKSDB_BLOCK_CACHE_MIB"])
def test_a_size_below_one_mib_is_refused_naming_the_setting(monkeypatch, name):
    monkeypatch.setenv(f"GFM_STREAMS__{name}", "0")
    with pytest.raises(ValidationError, match=name.lower()):
        Settings()


def test_rocksdb_options_refuses_a_size_below_one_mib():
    with pytest.raises(ValueError, match="write_buffer_mib=0"):
        rocksdb_options(0, 16)


def test_the_worker_exports_its_tables_memtables(monkeypatch, tmp_path):
    monkeypatch.setenv("GFM_STREAMS__DATADIR", str(tmp_path / "faust"))
    app = create_app(stream_config(Settings()), StreamMetrics.create(CollectorRegistry()))
    registry = CollectorRegistry()
    register_store_memory(registry, lambda: rocksdb_memory(app.tables.values()))
    # before Faust creates the stores: nothing exported, and the scrape (another thread) must not create them
    assert registry.get_sample_value("gfm_rocksdb_memtable_bytes", {"table": "users"}) is None
    assert app.tables["users"]._data is None  # type: ignore[attr-defined]
    store = app.tables["users"].data
    assert registry.get_sample_value("gfm_rocksdb_memtable_bytes", {"table": "users"}) == 0  # no database open
    for k in range(64):
        store._set(f"user-{k}".encode(), os.urandom(16 << 10))  # type: ignore[attr-defined]
    written = registry.get_sample_value("gfm_rocksdb_memtable_bytes", {"table": "users"})
    assert written is not None and written >= 64 * (16 << 10)
    assert registry.get_sample_value("gfm_rocksdb_block_cache_bytes", {"table": "users"}) is not None
    assert registry.get_sample_value("gfm_rocksdb_memtable_bytes", {"table": "adjacency"}) is None
    for db in store._dbs.values():  # type: ignore[attr-defined]
        db.close()
    # a database closed under the scrape (a rebalance, the worker stopping) counts 0
    assert registry.get_sample_value("gfm_rocksdb_memtable_bytes", {"table": "users"}) == 0
