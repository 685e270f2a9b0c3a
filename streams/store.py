"""Faust's RocksDB table store (via ``rocksdict``), with each key kept in the partition Kafka gives it.

Faust's stock store writes a key into the local database of the partition of *the event being processed*. Our
agents write tables once per micro-batch (``take_events``), where that event is just the batch's last, and the
tables use ``use_partitioner=True``: their changelog partition is the key's murmur2 partition. This store keeps
the local database in step with the changelog (and so with rebalances): a key is written to, and read from, the
database of its own partition. Registered as ``gfm-rocksdb://``.
"""

from __future__ import annotations

from typing import Any

from faust.stores import STORES
from faust.stores.rocksdb import Store as RocksDBStore

from streams.agents import partition_for


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
