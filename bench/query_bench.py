"""Query latency at catalogue scale (issue 9): filtered top-10 recommendations through the real HTTP API on the
embedded qdrant-edge store, 100k random unit vectors of dim 128 in two types, users who consumed 2,000 items
(their vector the mean of their 50 latest, so that what they consumed crowds the top of their ranking),
8 concurrent clients.

    flock /tmp/gfm-bench.lock python bench/query_bench.py              # writes bench/results/query-100k.json
    flock /tmp/gfm-bench.lock python bench/query_bench.py --before ../main   # also today's code, same client

Measures, single-threaded at the store: get_user, the filtered search with the consumed items excluded, and
recall@10 against an exact numpy ranking; then p50/p99 and requests/s through HTTP: a closed loop (each client
sends again as soon as it is answered: the server's throughput sets the latency) and open loops at ``--rates``
requests per second in all (latency from when each request was due). Bounded: ``--duration`` seconds or
``--max-requests`` per run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from api_common import ROOT, TYPES, drive, seed_store, served, server_cpu_seconds  # noqa: E402

ISSUE_9 = {"source": "issue 9, measured before this change",
           "item_point_ids_for_2000_consumed_ms": 7.4, "store_filtered_top10_p99_ms": 12.9,
           "store_filtered_top10_2000_excluded_p99_ms": 30.5}


def _ms(seconds: list[float]) -> dict[str, float]:
    return {"p50_ms": round(float(np.percentile(seconds, 50)) * 1000, 2),
            "p99_ms": round(float(np.percentile(seconds, 99)) * 1000, 2)}


def at_the_store(path: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Build the index, then time the store's calls and check recall against an exact ranking."""
    from vectorstore.edge import EdgeStore

    store = EdgeStore(path)
    store.ensure(args.dim)
    started = time.perf_counter()
    store.optimize()
    report: dict[str, Any] = {"index_build_s": round(time.perf_counter() - started, 1),
                              "unindexed_after": store.unindexed_items()}
    rng = random.Random(1)
    users = [store.get_user(f"u{rng.randrange(args.users)}") for _ in range(args.store_queries)]
    timings: dict[str, list[float]] = {"get_user": [], "search_type_only": [], "search_type_and_exclusion": []}
    for user in users:
        assert user is not None
        item_type = rng.choice(TYPES)
        started = time.perf_counter()
        store.get_user(user.user_id)
        timings["get_user"].append(time.perf_counter() - started)
        started = time.perf_counter()
        store.search(user.vector, 10, item_type=item_type)
        timings["search_type_only"].append(time.perf_counter() - started)
        started = time.perf_counter()
        store.search(user.vector, 10, item_type=item_type, exclude_points=user.excluded_points())
        timings["search_type_and_exclusion"].append(time.perf_counter() - started)
    report.update({name: _ms(values) for name, values in timings.items()})
    vectors = np.stack([store.get_item(f"i{k}").vector for k in range(args.items)])  # type: ignore[union-attr]
    recalls = []
    truth = {}
    for user in users[:100]:
        assert user is not None
        consumed = {int(i[1:]) for i in user.consumed}
        scores = vectors @ (user.vector / np.linalg.norm(user.vector))
        exact = [k for k in np.argsort(-scores) if k % 2 == 0 and k not in consumed][:10]
        truth[user.user_id] = exact
        got = [int(h.item_id[1:]) for h in store.search(user.vector, 10, item_type=TYPES[0],
                                                         exclude_points=user.excluded_points())]
        recalls.append(len(set(exact) & set(got)) / 10)
    report["recall_at_10_vs_exact"] = round(float(np.mean(recalls)), 3)
    report["hnsw_ef_default"] = store.hnsw_ef
    report["by_hnsw_ef"] = {}
    default = store.hnsw_ef
    for ef in (64, 128, 256, 512, None):  # None: exact search
        store.hnsw_ef = ef
        recalls, seconds = [], []
        for user in users[:100]:
            assert user is not None
            exact = truth[user.user_id]
            started = time.perf_counter()
            got = [int(h.item_id[1:]) for h in store.search(user.vector, 10, item_type=TYPES[0],
                                                             exclude_points=user.excluded_points())]
            seconds.append(time.perf_counter() - started)
            recalls.append(len(set(exact) & set(got)) / 10)
        report["by_hnsw_ef"][str(ef) if ef else "exact"] = {
            "recall_at_10": round(float(np.mean(recalls)), 3), **_ms(seconds)}
    store.hnsw_ef = default
    store.close()
    return report


def through_http(url: str, args: argparse.Namespace) -> dict[str, Any]:
    """The closed loop (each client sends again as soon as it is answered), then an open loop at each of
    ``args.rates`` requests per second (all clients together; latency from when a request was due)."""
    async def recommend(http: Any, rng: random.Random) -> Any:
        return await http.get(f"/users/u{rng.randrange(args.users)}/recommendations",
                              params={"type": rng.choice(TYPES), "k": 10})

    httpx.get(f"{url}/users/u0/recommendations", params={"type": TYPES[0]}, timeout=60)  # warm up
    runs: dict[str, Any] = {}
    for rate in (None, *args.rates):
        cpu = server_cpu_seconds(url)
        records, wall = asyncio.run(drive(url, {"recommend": (args.clients, recommend)}, args.duration,
                                          args.max_requests, rate=rate, client=args.client))
        run = records["recommend"].summary(wall)
        if cpu is not None:  # what the server spends per request, which other work on the cores does not inflate
            spent = (server_cpu_seconds(url) or cpu) - cpu
            run["server_cpu_ms_per_request"] = round(spent / run["requests"] * 1e3, 3)
        runs["closed_loop" if rate is None else f"open_{rate:g}_per_s"] = run
        print(rate, run, flush=True)
    return runs


def _server_gc_modes(value: str) -> list[str]:
    """``--server-gc``: comma-separated modes, each ``default`` or ``tuned``."""
    modes = [x for x in value.split(",") if x]
    wrong = [m for m in modes if m not in ("default", "tuned")]
    if wrong:
        raise argparse.ArgumentTypeError(f"{', '.join(map(repr, wrong))}: each mode is default or tuned")
    return modes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--consumed", type=int, default=2000)
    parser.add_argument("--recent", type=int, default=50, help="a user's vector: the mean of their last N items")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--max-requests", type=int, default=50_000)
    parser.add_argument("--store-queries", type=int, default=300)
    parser.add_argument("--rates", type=lambda v: [float(x) for x in v.split(",") if x], default=[100.0, 200.0, 400.0],
                        help="open-loop runs: total requests per second, comma-separated (empty: none)")
    parser.add_argument("--client", choices=("raw", "httpx"), default="raw",
                        help="the load generator's HTTP client: raw (api_common.RawHttp, a fraction of httpx's "
                             "~1.9 ms of CPU per request on the cores the server uses) or httpx")
    parser.add_argument("--before", type=Path, default=None, help="another checkout (today's code) to measure")
    parser.add_argument("--server-gc", type=_server_gc_modes, default=["default"],
                        help="one HTTP measurement per entry, in order: default (Python's collector as it comes) or "
                             "tuned (workers.services.tune_gc, as `gfm worker api` runs); e.g. default,tuned,"
                             "default,tuned alternates them")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/query-100k.json")
    args = parser.parse_args()
    report: dict[str, Any] = {
        "command": "python " + " ".join(sys.argv),
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "out"},
        "setup": "one uvicorn process on 127.0.0.1 over the embedded qdrant-edge store; client: asyncio "
                 f"({args.client}: api_common.CLIENTS), one keep-alive connection per client, each connected and "
                 "warmed with one GET /healthz before the clock starts, in another process on the same 2-core "
                 "machine",
        "issue_9_before": ISSUE_9,
        "goal": "p99 <= 10 ms through the HTTP API, 8 clients",
    }
    with tempfile.TemporaryDirectory() as tmp:
        plain = Path(tmp) / "plain"
        started = time.perf_counter()
        seed_store(plain, args.items, args.dim, args.users, args.consumed, recent=args.recent)
        report["seed_s"] = round(time.perf_counter() - started, 1)
        if args.before is not None:  # today's code never builds the index: it serves the store as written
            with served(plain, pythonpath=args.before) as url:
                report["before_http"] = through_http(url, args)
                print("before", report["before_http"], flush=True)
        indexed = Path(tmp) / "indexed"
        shutil.copytree(plain, indexed)
        report["after_store"] = at_the_store(indexed, args)
        print("store", report["after_store"], flush=True)
        runs = []
        for mode in args.server_gc:
            with served(indexed, extra=("--tune-gc",) if mode == "tuned" else ()) as url:
                runs.append({"server_gc": mode, **through_http(url, args)})
                print("after", runs[-1], flush=True)
        report["after_http"] = runs[0] if len(runs) == 1 else runs
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
