"""Does ingestion slow queries down? Query latency through the HTTP API alone, then while clients post large
batches of events (through a real tansu broker), plus how the API answers a declared 10 GB body and a 12.8 MB
batch of 200,000 events.

    flock /tmp/gfm-bench.lock python bench/api_ingest_bench.py            # writes bench/results/api-ingest.json

Bounded: each phase lasts ``--duration`` seconds or ``--max-requests`` requests, whichever comes first.
``--before PATH`` also measures another checkout's API (the code before a change) with the same client.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from api_common import ROOT, TYPES, broker, drive, seed_store, served  # noqa: E402


def _events(n: int, users: int, items: int, now: float) -> list[dict[str, Any]]:
    return [{"user_id": f"u{k % users}", "item_id": f"i{k % items}", "item_type": TYPES[k % items % 2],
             "ts": now, "event_id": str(uuid.uuid4())} for k in range(n)]


def declared_huge_body(url: str) -> dict[str, Any]:
    """Send only the headers of a POST declaring 10 GB; time the answer and whether the server hangs up."""
    host, port = url.removeprefix("http://").split(":")
    started = time.perf_counter()
    with socket.create_connection((host, int(port)), timeout=20) as s:
        s.sendall(b"POST /events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 10737418240\r\n\r\n")
        reply = b""
        try:
            while b"\r\n\r\n" not in reply:
                chunk = s.recv(65536)
                if not chunk:
                    break
                reply += chunk
        except TimeoutError:
            pass
        elapsed = time.perf_counter() - started
        status = int(reply.split(b" ", 2)[1]) if reply.startswith(b"HTTP/") else None
        closed = False
        s.settimeout(5)
        try:
            while s.recv(65536):
                pass
            closed = True  # the server hung up after its answer instead of waiting for 10 GB
        except (TimeoutError, ConnectionResetError):
            closed = False
    return {"status": status, "seconds": round(elapsed, 3), "connection_closed_by_server": closed}


def big_batch(url: str, users: int, items: int) -> dict[str, Any]:
    body = json.dumps(_events(200_000, users, items, time.time())).encode()
    started = time.perf_counter()
    try:
        response = httpx.post(f"{url}/events", content=body, headers={"content-type": "application/json"},
                              timeout=120)
        status, detail = response.status_code, response.text[:200]
    except httpx.HTTPError as error:
        status, detail = None, f"{type(error).__name__}: {error}"
    return {"body_bytes": len(body), "events": 200_000, "status": status,
            "seconds": round(time.perf_counter() - started, 3), "detail": detail}


def measure(url: str, args: argparse.Namespace) -> dict[str, Any]:
    async def query(http: httpx.AsyncClient, rng: Any) -> httpx.Response:
        user = rng.randrange(args.users)
        return await http.get(f"/users/u{user}/recommendations", params={"type": rng.choice(TYPES), "k": 10})

    # bodies made up front, so that the client's own JSON encoding does not delay its queries
    bodies = [json.dumps(_events(args.batch, args.users, args.items, time.time())).encode() for _ in range(20)]

    async def post(http: httpx.AsyncClient, rng: Any) -> httpx.Response:
        return await http.post("/events", content=rng.choice(bodies), headers={"content-type": "application/json"})

    result: dict[str, Any] = {}
    records, wall = asyncio.run(drive(url, {"query": (args.query_clients, query)}, args.duration, args.max_requests))
    result["queries_alone"] = records["query"].summary(wall)
    records, wall = asyncio.run(drive(url, {"query": (args.query_clients, query), "post": (args.posters, post)},
                                      args.duration, args.max_requests))
    result["queries_while_posting"] = records["query"].summary(wall)
    result["posts"] = records["post"].summary(wall)
    result["posts"]["events_per_s"] = round(
        records["post"].statuses.get("202", 0) * args.batch / wall, 1)
    result["declared_10GB_body"] = declared_huge_body(url)
    result["batch_of_200000_events"] = big_batch(url, args.users, args.items)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--consumed", type=int, default=200)
    parser.add_argument("--query-clients", type=int, default=8)
    parser.add_argument("--posters", type=int, default=2)
    parser.add_argument("--batch", type=int, default=1000, help="events per POST (the API's default limit)")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per phase")
    parser.add_argument("--max-requests", type=int, default=50_000, help="requests per phase at most")
    parser.add_argument("--before", type=Path, default=None, help="another checkout to measure too")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/api-ingest.json")
    args = parser.parse_args()

    report: dict[str, Any] = {
        "command": "python " + " ".join(sys.argv),
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "out"},
        "setup": "API (uvicorn, one process) on 127.0.0.1 over the embedded qdrant-edge store, POST /events "
                 "produced to a real tansu broker; client: httpx asyncio, one keep-alive connection per client",
    }
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "store"
        seed_store(store, args.items, args.dim, args.users, args.consumed)
        with broker() as bootstrap:
            runs = {"after": ROOT} if args.before is None else {"before": args.before, "after": ROOT}
            for name, checkout in runs.items():
                with served(store, bootstrap, pythonpath=checkout) as url:
                    report[name] = measure(url, args)
                    print(name, json.dumps(report[name], indent=1), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
