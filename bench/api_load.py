"""Bounded load test of the HTTP API on loopback: ``--clients`` concurrent clients (one keep-alive connection
each) for ``--duration`` seconds or ``--max-requests`` requests, a mix of recommendations (70 %), similar items
(20 %), health checks (5 %) and small event posts (5 %, produced to a real tansu broker), over the embedded
qdrant-edge store. Reports requests/s, p50/p99 per route and overall, statuses; exits 1 on any 5xx.

    flock /tmp/gfm-bench.lock python bench/api_load.py        # writes bench/results/api-load.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from api_common import ROOT, TYPES, Record, broker, drive, seed_store, served  # noqa: E402


def run(args: argparse.Namespace) -> dict[str, Any]:
    routes: dict[str, Record] = {}

    async def mixed(http: httpx.AsyncClient, rng: random.Random) -> httpx.Response:
        roll = rng.random()
        started = time.perf_counter()
        if roll < 0.70:
            name = "GET /users/{user_id}/recommendations"
            response = await http.get(f"/users/u{rng.randrange(args.users)}/recommendations",
                                      params={"type": rng.choice(TYPES), "k": 10})
        elif roll < 0.90:
            name = "GET /items/{item_id}/similar"
            response = await http.get(f"/items/i{rng.randrange(args.items)}/similar",
                                      params={"type": rng.choice(TYPES), "k": 10})
        elif roll < 0.95:
            name = "GET /healthz"
            response = await http.get("/healthz")
        else:
            name = "POST /events"
            item = rng.randrange(args.items)
            response = await http.post("/events", json=[
                {"user_id": f"u{rng.randrange(args.users)}", "item_id": f"i{item}", "item_type": TYPES[item % 2]}
                for _ in range(10)])
        routes.setdefault(name, Record()).add(time.perf_counter() - started, response.status_code,
                                              response.text if response.status_code >= 500 else "")
        return response

    report: dict[str, Any] = {
        "command": "python " + " ".join(sys.argv),
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "out"},
        "setup": "one uvicorn process on 127.0.0.1, embedded qdrant-edge store, POST /events to a real tansu "
                 "broker; client: httpx asyncio in another process on the same 2-core machine",
    }
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "store"
        seed_store(store, args.items, args.dim, args.users, args.consumed)
        runs = {"after": ROOT} if args.before is None else {"before": args.before, "after": ROOT}
        with broker() as bootstrap:
            for name, checkout in runs.items():
                routes.clear()
                with served(store, bootstrap, pythonpath=checkout) as url:
                    records, wall = asyncio.run(drive(url, {"mixed": (args.clients, mixed)}, args.duration,
                                                      args.max_requests))
                run_report = {"wall_s": round(wall, 2), "overall": records["mixed"].summary(wall),
                              "routes": {n: record.summary(wall) for n, record in sorted(routes.items())}}
                if name == "after":
                    report.update(run_report)
                else:
                    report[name] = run_report
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--max-requests", type=int, default=100_000)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--consumed", type=int, default=200)
    parser.add_argument("--before", type=Path, default=None, help="another checkout (older code) to load too")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/api-load.json")
    args = parser.parse_args()
    report = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["overall"], indent=1))
    if report["overall"]["server_errors"] or report["overall"]["connection_errors"]:
        raise SystemExit("server errors or dropped connections under load")


if __name__ == "__main__":
    main()
