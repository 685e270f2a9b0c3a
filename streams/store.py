"""Faust's RocksDB table store (via ``rocksdict``), with each key kept in the partition Kafka gives it.

Faust's stock store writes a key into the local database of the partition of *the event being processed*. Our
agents write tables once per micro-batch (``take_events``), where that event is just the batch's last, and the
tables use ``use_partitioner=True``: their changelog partition is the key's murmur2 partition. This store keeps
the local database in step with the changelog (and so with rebalances): a key is written to, and read from, the
database of its own partition. Registered as ``gfm-rocksdb://``.

Memory: Faust opens one RocksDB database per table and partition, by default each with up to three 64 MiB
memtables and its own 2 GiB block cache. A memtable fills with every write until it is flushed, and the agents
rewrite a touched key's whole value every micro-batch, so the worker's resident memory grew with the highest sum
of memtable sizes seen so far (the allocator keeps what a flushed memtable freed), by 17 MiB/min for minutes in
the soak (README, *Soak*). :func:`rocksdb_options` bounds both.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from faust.stores import STORES
from faust.stores.rocksdb import Store as RocksDBStore

from streams.agents import partition_for

log = logging.getLogger(__name__)

MAX_WRITE_BUFFERS = 2
"""Memtables per database: the one being written and the one being flushed."""


def rocksdb_options(write_buffer_mib: int, block_cache_mib: int) -> dict[str, int]:
    """A table's RocksDB options (Faust's ``Table(options=...)``): memtables of ``write_buffer_mib`` MiB, at most
    :data:`MAX_WRITE_BUFFERS` of them, and a ``block_cache_mib`` MiB block cache, per database (one per table and
    partition).

    Raises:
        ValueError: for a size below 1 MiB.
    """
    if write_buffer_mib < 1 or block_cache_mib < 1:
        raise ValueError(f"RocksDB sizes must be at least 1 MiB: write_buffer_mib={write_buffer_mib}, "
                         f"block_cache_mib={block_cache_mib}")
    return {"write_buffer_size": write_buffer_mib << 20, "max_write_buffer_number": MAX_WRITE_BUFFERS,
            "block_cache_size": block_cache_mib << 20}


ROCKSDB_MEMORY = {"memtables": "rocksdb.cur-size-all-mem-tables", "block_cache": "rocksdb.block-cache-usage"}
"""The RocksDB properties :func:`rocksdb_memory` reads, by the name it gives them."""


def rocksdb_memory(tables: Iterable[Any]) -> dict[str, dict[str, int]]:
    """Per table (Faust tables on :class:`PartitionedRocksDBStore`; others are skipped), the bytes of its open
    databases' memtables and block caches, summed over partitions: ``{table: {"memtables": n, "block_cache":
    n}}``. Safe from another thread (the metrics server's): it never creates a store (Faust's ``Table.data``
    would, outside the event loop, and the worker then hung on SIGTERM), and a database closed meanwhile (a
    rebalance, the worker stopping) counts 0."""
    memory: dict[str, dict[str, int]] = {}
    for table in tables:
        store = table._data  # the store if Faust created it, else None
        if not isinstance(store, PartitionedRocksDBStore):
            continue
        totals = memory[table.name] = dict.fromkeys(ROCKSDB_MEMORY, 0)
        for db in list(store._dbs.values()):  # a copy: a rebalance may open or close databases meanwhile
            for name, prop in ROCKSDB_MEMORY.items():
                try:
                    totals[name] += db.property_int_value(prop) or 0
                except Exception:  # closed under us: nothing held
                    log.debug("RocksDB property %s not read", prop, exc_info=True)
    return memory


def key_partition(key: bytes, partitions: int) -> int:
    """Kafka's default partition of a table key (the agents route messages with the same function)."""
    return partition_for(key.decode(), partitions)


class PartitionedRocksDBStore(RocksDBStore):
    """RocksDB store that routes each key by Kafka's partitioner (for tables with ``use_partitioner=True``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("driver", "rocksdict")
        super().__init__(*args, **kwargs)

    def _partitions(self) -> int:
        return int(self.table.partitions or self.app.conf.topic_partitions)

    def _set(self, key: bytes, value: bytes | None) -> None:
        partition = key_partition(key, self._partitions())
        self._key_index[key] = partition
        self._db_for_partition(partition).put(key, value)

    def _get(self, key: bytes) -> bytes | None:
        value = self._db_for_partition(key_partition(key, self._partitions())).get(key)
        return value  # type: ignore[no-any-return]

    def _del(self, key: bytes) -> None:
        self._db_for_partition(key_partition(key, self._partitions())).delete(key)


STORES.aliases["gfm-rocksdb"] = f"{__name__}:PartitionedRocksDBStore"
