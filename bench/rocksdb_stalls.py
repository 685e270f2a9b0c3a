"""Does RocksDB delay or stop writes with the stream worker's memtable size? One table database, opened with
the worker's options (:func:`streams.store.rocksdb_options`), takes whole-value rewrites at a steady rate as the
agents write them (``--value-kb`` values over ``--keys`` keys, ``--mb-per-s``), for ``--seconds``; then RocksDB's
own write-stall counters and the slowest 0.1 s group of writes are recorded.

    python bench/rocksdb_stalls.py --write-buffer-mib 4 --out bench/results/rocksdb-stalls-4.json

In the soak the stream worker's memtables, all four databases together, were seen to grow by up to 37 MiB per
15 s (``bench/results/memprobe-150k-before.jsonl``; about 2.5 MiB/s, a flush between two samples hiding some), so
3 MB/s into one database is above that.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from faust.stores.rocksdb import RocksDBOptions  # noqa: E402

from streams.store import rocksdb_options  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write-buffer-mib", type=int, default=4)
    parser.add_argument("--mb-per-s", type=float, default=3.0)
    parser.add_argument("--value-kb", type=int, default=20)
    parser.add_argument("--keys", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    value_bytes = args.value_kb * 1000
    per_tick = max(1, round(args.mb_per_s * 1e6 / 10 / value_bytes))  # writes per 0.1 s
    values = [os.urandom(value_bytes) for _ in range(50)]
    with tempfile.TemporaryDirectory(prefix="gfm-stalls-") as tmp:
        options = RocksDBOptions(**rocksdb_options(args.write_buffer_mib, 16), use_rocksdict=True)
        db = options.open(Path(tmp) / "db")
        started = time.monotonic()
        ticks = 0
        slowest = 0.0
        while time.monotonic() - started < args.seconds:
            tick = time.monotonic()
            for k in range(per_tick):
                n = ticks * per_tick + k
                db[f"key-{n % args.keys}".encode()] = values[n % len(values)]
            slowest = max(slowest, time.monotonic() - tick)
            ticks += 1
            time.sleep(max(0.0, 0.1 - (time.monotonic() - tick)))
        elapsed = time.monotonic() - started
        stats = db.property_value("rocksdb.stats") or ""
        stall_lines = [line.strip() for line in stats.splitlines() if "stall" in line.lower()]
        level0 = db.property_value("rocksdb.num-files-at-level0")
        db.close()
    results = {
        "command": "python " + " ".join(sys.argv),
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "write_buffer_mib": args.write_buffer_mib,
        "written_mib": round(ticks * per_tick * value_bytes / (1 << 20), 1),
        "seconds": round(elapsed, 1),
        "slowest_tick_s": round(slowest, 4),
        "level0_files_at_end": level0,
        "rocksdb_stall_lines": stall_lines,
    }
    print(json.dumps(results, indent=2))
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
