"""Where the stream worker's memory is: a probe thread that appends one JSON line every ``every`` seconds.

This is how the stream worker's RSS growth in the soak was traced to RocksDB's memtables (README, *Soak*). It is
not wired into the worker: to use it, patch ``workers.services.run_streams`` locally (do not commit the patch),
right after ``create_app``::

    import sys; sys.path.insert(0, "bench"); import memprobe
    memprobe.start(app, "/tmp/memprobe.jsonl")

then run ``bench/soak_bench.py``. Each line: the process's ``Rss`` and ``Anonymous`` (MiB, smaps_rollup), glibc's
malloc arena, mmapped, in-use and free bytes (``mallinfo2``, all arenas, MiB), CPython's allocated blocks
(``sys.getallocatedblocks``), the collector's counts, and per RocksDB database (``<table><partition>``) its
memtables, block cache and table readers (MiB) and immutable memtables; every 4th line also the number of
gc-tracked objects and the 12 types that gained most since the last such line. ``bench/results/memprobe-*.jsonl``
were written this way.
"""

from __future__ import annotations

import collections
import ctypes
import gc
import json
import sys
import threading
import time
from typing import Any


class MallInfo2(ctypes.Structure):
    """glibc's ``struct mallinfo2``."""

    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def smaps_mib() -> dict[str, int]:
    """This process's ``/proc/self/smaps_rollup`` in MiB."""
    out = {}
    with open("/proc/self/smaps_rollup") as rollup:
        for line in rollup:
            parts = line.split()
            if len(parts) >= 3 and parts[-1] == "kB":
                out[parts[0].rstrip(":")] = int(parts[1]) // 1024
    return out


def start(app: Any, path: str, every: float = 15.0) -> threading.Thread:
    """Start the probe thread on a Faust ``app`` whose tables use ``streams.store``; lines go to ``path``."""
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    started = time.monotonic()
    previous: collections.Counter[str] = collections.Counter()

    def record(n: int) -> dict[str, Any]:
        nonlocal previous
        smaps = smaps_mib()
        info = libc.mallinfo2()
        line: dict[str, Any] = {
            "t": round(time.monotonic() - started, 1), "rss": smaps.get("Rss"), "anon": smaps.get("Anonymous"),
            "malloc_arena_mib": info.arena >> 20, "malloc_mmap_mib": info.hblkhd >> 20,
            "malloc_used_mib": info.uordblks >> 20, "malloc_free_mib": info.fordblks >> 20,
            "py_blocks": sys.getallocatedblocks(), "gc_count": gc.get_count(),
            "gc_stats": [stats["collections"] for stats in gc.get_stats()], "gc_freeze": gc.get_freeze_count(),
        }
        databases = {}
        for name, table in app.tables.items():
            store = table._data  # never create a store from this thread
            for partition, db in list(getattr(store, "_dbs", {}).items()):
                databases[f"{name}{partition}"] = [
                    (db.property_int_value("rocksdb.cur-size-all-mem-tables") or 0) >> 20,
                    (db.property_int_value("rocksdb.block-cache-usage") or 0) >> 20,
                    (db.property_int_value("rocksdb.estimate-table-readers-mem") or 0) >> 20,
                    db.property_int_value("rocksdb.num-immutable-mem-table"),
                ]
        line["rocksdb_mib"] = databases
        line["rocksdb_memtables_total"] = sum(v[0] for v in databases.values())
        line["rocksdb_cache_total"] = sum(v[1] for v in databases.values())
        if n % 4 == 0:
            objects = gc.get_objects()
            counts = collections.Counter(type(o).__name__ for o in objects)
            line["gc_objects"] = len(objects)
            line["types_delta"] = dict((counts - previous).most_common(12))
            previous = counts
        return line

    def loop() -> None:
        for n in range(1, sys.maxsize):
            time.sleep(every)
            try:
                line = record(n)
            except Exception as error:  # a database closed under the probe: note it, go on
                line = {"t": round(time.monotonic() - started, 1), "error": repr(error)}
            with open(path, "a") as out:
                out.write(json.dumps(line) + "\n")

    thread = threading.Thread(target=loop, daemon=True, name="memprobe")
    thread.start()
    return thread
