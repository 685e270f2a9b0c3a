"""What writing and reading a user's state costs at the embedded store, by the shape of its payload.

    python bench/payload_bench.py [--consumed 200,2000] [--out bench/results/user-payload.json]

A user point carries the state the query API composes the vector from: ``consumed`` (item ids), their point ids,
``recent`` (50 ``[item_id, ts]`` per type, two types) and ``counts``. qdrant-edge turns a Python payload into its
own value by value, so the shape matters. Two shapes, for users with each number of consumed items: *lists* (each
list a payload field, as stored before 2026-12-06) and *packed* (``vectorstore.base.user_payload``: the lists in
one JSON string). Per user, one thread, median of ``--repeat`` runs of ``--users`` users: building the payload,
building the ``qdrant_edge.Point`` (the conversion), the upsert of the points, and reading one user back
(``EdgeStore.get_user``: the store read and ``user_from``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import qdrant_edge as q

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vectorstore.base import UserPoint, user_payload, user_point_id  # noqa: E402
from vectorstore.edge import EdgeStore  # noqa: E402


def lists_payload(point: UserPoint) -> dict[str, object]:
    """The payload as stored before the lists were packed (``user_from`` still reads it)."""
    return {"user_id": point.user_id, "model_version": point.model_version, "updated_at": point.updated_at,
            "event_ts": point.event_ts, "consumed": point.consumed, "consumed_points": point.excluded_points(),
            "counts": point.counts, "recent": point.recent}


def users(n: int, consumed: int, dim: int) -> list[UserPoint]:
    items = [f"item-{k}" for k in range(consumed)]
    recent = {t: [[f"item-{k}", 1.7e9 + k] for k in range(50)] for t in ("film", "family")}
    return [UserPoint(f"u{j}", np.zeros(dim, np.float32), "v1", time.time(), time.time(), items,
                      {"film": consumed // 2, "family": consumed - consumed // 2}, recent=recent) for j in range(n)]


def measure(shape: str, consumed: int, args: argparse.Namespace, root: Path) -> dict[str, Any]:
    build = user_payload if shape == "packed" else lists_payload
    store = EdgeStore(root / f"{shape}-{consumed}", flush_interval_s=1e9)
    store.ensure(args.dim)
    runs: dict[str, list[float]] = {"payload_ms": [], "point_ms": [], "upsert_ms": [], "get_user_ms": []}
    for _ in range(args.repeat):
        batch = users(args.users, consumed, args.dim)
        started = time.perf_counter()
        payloads = [build(u) for u in batch]
        built = time.perf_counter()
        points = [q.Point(user_point_id(u.user_id), u.vector.tolist(), p) for u, p in zip(batch, payloads, strict=True)]
        converted = time.perf_counter()
        store.users.update(q.UpdateOperation.upsert_points(points))
        upserted = time.perf_counter()
        for u in batch:
            store.get_user(u.user_id)
        read = time.perf_counter()
        per_user = 1000 / len(batch)
        runs["payload_ms"].append((built - started) * per_user)
        runs["point_ms"].append((converted - built) * per_user)
        runs["upsert_ms"].append((upserted - converted) * per_user)
        runs["get_user_ms"].append((read - upserted) * per_user)
    store.close()
    return {"shape": shape, "consumed": consumed, **{k: round(statistics.median(v), 4) for k, v in runs.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--consumed", default="200,2000", help="consumed items per user, comma-separated")
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--out", type=Path, default=Path("bench/results/user-payload.json"))
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="gfm-payload-"))
    try:
        rows = [measure(shape, int(c), args, root) for c in args.consumed.split(",") for shape in ("lists", "packed")]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    for row in rows:
        print(row)
    result = {"command": " ".join(["bench/payload_bench.py", *sys.argv[1:]]),
              "when": time.strftime("%Y-%m-%d %H:%M:%S"),
              "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores", "ms_per_user_median": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
