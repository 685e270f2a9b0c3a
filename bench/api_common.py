"""Shared parts of the API benchmarks: a seeded embedded store, the real API served by uvicorn in a child
process on loopback (optionally with a real tansu broker behind POST /events), and a bounded asyncio client
that records every request's latency and status.

Run as a script it is that child: ``python bench/api_common.py serve --store DIR --port P [--bootstrap B]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
TYPES = ("podcast", "audiobook")


def seed_store(path: Path, n_items: int, dim: int, n_users: int, consumed: int, seed: int = 0,
               recent: int | None = None) -> None:
    """Fill an embedded store under ``path``: ``n_items`` random unit vectors alternating between two types,
    ``n_users`` users who each consumed ``consumed`` random items. A user's vector is random, or with
    ``recent`` the mean of their last ``recent`` items, as the text-propagation model makes it (so that what
    they consumed crowds the top of their ranking, the hard case for excluding it)."""
    from vectorstore.base import ItemPoint, UserPoint
    from vectorstore.edge import EdgeStore

    rng = np.random.default_rng(seed)
    store = EdgeStore(path)
    store.ensure(dim)
    now = time.time()
    vectors = rng.normal(size=(n_items, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    for start in range(0, n_items, 5000):
        store.upsert_items([ItemPoint(f"i{k}", TYPES[k % 2], f"item {k}", vectors[k], "bench", now)
                            for k in range(start, min(n_items, start + 5000))])
    users = []
    for u in range(n_users):
        chosen = rng.choice(n_items, size=min(consumed, n_items), replace=False)
        vector = vectors[chosen[-recent:]].mean(axis=0) if recent else rng.normal(size=dim).astype(np.float32)
        eaten = [f"i{k}" for k in chosen]
        users.append(UserPoint(f"u{u}", vector / np.linalg.norm(vector), "bench", now, now, eaten,
                               {t: len(eaten) // 2 for t in TYPES}))
    for start in range(0, n_users, 100):
        store.upsert_users(users[start : start + 100])
    store.close()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def broker() -> Iterator[str]:
    """A tansu broker on a free loopback port with the project's topics; yields its bootstrap address."""
    from workers.kafka_io import ensure_topics
    from workers.settings import KafkaSettings
    from workers.stack import start_broker

    bootstrap = f"127.0.0.1:{free_port()}"
    with tempfile.TemporaryDirectory() as logs:
        process = start_broker(bootstrap, Path(logs) / "broker.log")
        try:
            ensure_topics(KafkaSettings(bootstrap=bootstrap, partitions=4))
            yield bootstrap
        finally:
            process.terminate()
            process.wait(10)


@contextlib.contextmanager
def served(store: Path, bootstrap: str | None = None, extra: tuple[str, ...] = (),
           pythonpath: Path = ROOT) -> Iterator[str]:
    """The API in a child process on a free loopback port; yields its base URL. ``pythonpath`` picks the code
    under test (another checkout measures the code before a change)."""
    port = free_port()
    args = [sys.executable, str(Path(__file__).resolve()), "serve", "--store", str(store), "--port", str(port)]
    if bootstrap:
        args += ["--bootstrap", bootstrap]
    env = {**os.environ, "PYTHONPATH": str(pythonpath)}
    process = subprocess.Popen([*args, *extra], env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the API process exited with {process.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise TimeoutError("the API did not answer within 120 s")
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def server_cpu_seconds(url: str) -> float | None:
    """The API process's CPU seconds so far (its ``process_cpu_seconds_total``), None where it has none."""
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith("process_cpu_seconds_total "):
            return float(line.split()[1])
    return None


@dataclass
class Record:
    """Latencies (seconds) and status counts of one kind of request."""

    latencies: list[float] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)
    errors: int = 0

    server_error_samples: list[str] = field(default_factory=list)

    def add(self, seconds: float, status: int, text: str = "") -> None:
        self.latencies.append(seconds)
        self.statuses[str(status)] = self.statuses.get(str(status), 0) + 1
        if status >= 500 and len(self.server_error_samples) < 5:
            self.server_error_samples.append(f"{status} {text[:200]}")

    def summary(self, wall_s: float) -> dict[str, Any]:
        lat = np.asarray(self.latencies) * 1000
        return {
            "requests": len(self.latencies),
            "requests_per_s": round(len(self.latencies) / wall_s, 1),
            "p50_ms": round(float(np.percentile(lat, 50)), 2) if len(lat) else None,
            "p99_ms": round(float(np.percentile(lat, 99)), 2) if len(lat) else None,
            "max_ms": round(float(lat.max()), 2) if len(lat) else None,
            "statuses": dict(sorted(self.statuses.items())),
            "server_errors": sum(n for s, n in self.statuses.items() if s.startswith("5")),
            "connection_errors": self.errors,
            "server_error_samples": self.server_error_samples,
        }


@dataclass
class RawResponse:
    """What :class:`RawHttp` read back: the status and the body."""

    status_code: int
    content: bytes

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")


class RawHttp:
    """A minimal HTTP/1.1 keep-alive client on one asyncio connection, for load generation: ``get`` writes the
    request line and reads the status line, the headers and a ``Content-Length`` body, nothing else (no
    redirects, no chunked bodies: it raises on those). httpx costs ~1.9 ms of client CPU per request on this
    machine, as much as the server's work, and the client shares the server's two cores; this costs a fraction.
    The interface is the part of ``httpx.AsyncClient`` the benchmarks use (``get(path, params=...)``)."""

    def __init__(self, base_url: str) -> None:
        parts = urlsplit(base_url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def __aenter__(self) -> RawHttp:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        return self

    async def __aexit__(self, *_: object) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()

    async def get(self, path: str, params: dict[str, Any] | None = None) -> RawResponse:
        if self.reader is None or self.writer is None:
            raise RuntimeError("RawHttp is used as an async context manager")
        target = f"{path}?{urlencode(params)}" if params else path
        self.writer.write(f"GET {target} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n\r\n".encode())
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as error:
            raise ConnectionError("the server closed the connection") from error
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:] if ":" in line)}
        length = headers.get("content-length")
        if length is None:
            raise ConnectionError(f"answer {status} without Content-Length: RawHttp reads no other framing")
        return RawResponse(status, await self.reader.readexactly(int(length)))


CLIENTS: dict[str, Callable[[str], Any]] = {
    "httpx": lambda url: httpx.AsyncClient(base_url=url, timeout=30),
    "raw": RawHttp,
}
"""The load generator's HTTP clients by name (:func:`drive`'s ``client``)."""

Request = Callable[[Any, random.Random], Awaitable[Any]]
"""A request maker: given a client (``httpx.AsyncClient`` or :class:`RawHttp`), send one request."""


async def drive(url: str, workers: dict[str, tuple[int, Request]], duration_s: float, max_requests: int,
                seed: int = 0, rate: float | None = None, client: str = "httpx") -> tuple[dict[str, Record], float]:
    """Run ``count`` concurrent clients per named request maker for ``duration_s`` or until ``max_requests`` in
    all, each on its own keep-alive connection of the HTTP client ``client`` (:data:`CLIENTS`); returns the records
    by name and the wall time.

    Without ``rate`` each client sends its next request as soon as the last is answered (a closed loop: the
    server's throughput sets the latency). With ``rate`` (requests per second, all clients together) the load is
    open: client ``i`` of ``n`` is due to send at ``start + (i + j * n) / rate`` for its ``j``-th request, and a
    request's latency runs from when it was due, so a server that falls behind pays for the queue it built
    (no coordinated omission).

    Every client opens its connection and sends one unrecorded ``GET /healthz`` before the clock starts: an
    ``httpx.AsyncClient`` costs ~20 ms of client CPU to create, so clients started on the schedule's first tick
    made the first ~0.2 s of an open loop late by up to ~175 ms, 1-2 % of a 15 s run and so its p99."""
    records = {name: Record() for name in workers}
    done = 0
    total = sum(count for count, _ in workers.values())
    ready = 0
    go = asyncio.Event()
    clock = {"deadline": 0.0, "begun": 0.0, "started": 0.0}  # set when the last client is connected

    async def one_client(name: str, make: Request, rng: random.Random, index: int) -> None:
        nonlocal done, ready
        sent = 0
        async with CLIENTS[client](url) as http:
            await http.get("/healthz")
            ready += 1
            if ready == total:  # the last client to connect starts the clock
                clock.update(started=time.monotonic(), begun=time.perf_counter())
                clock["deadline"] = clock["started"] + duration_s
                go.set()
            await go.wait()
            begun = clock["begun"]
            while time.monotonic() < clock["deadline"] and done < max_requests:
                started = time.perf_counter()
                if rate is not None:
                    due = begun + (index + sent * total) / rate
                    sent += 1
                    if due > started:
                        await asyncio.sleep(due - started)
                    started = due
                try:
                    response = await make(http, rng)
                except (httpx.HTTPError, OSError):  # RawHttp's ConnectionError is an OSError
                    records[name].errors += 1
                    continue
                records[name].add(time.perf_counter() - started, response.status_code,
                                  response.text if response.status_code >= 500 else "")
                done += 1

    indexed = [(name, make, count) for name, (count, make) in workers.items()]
    tasks, index = [], 0
    for n, (name, make, count) in enumerate(indexed):
        for i in range(count):
            tasks.append(one_client(name, make, random.Random(seed * 1000 + n * 100 + i), index))
            index += 1
    await asyncio.gather(*tasks)
    return records, time.monotonic() - clock["started"]


def _serve(argv: list[str]) -> None:
    import uvicorn
    from prometheus_client import CollectorRegistry

    from vectorstore.edge import EdgeStore

    parser = argparse.ArgumentParser()
    parser.add_argument("--store", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--bootstrap", default=None)
    parser.add_argument("--tune-gc", action="store_true", help="tune the collector as `gfm worker api` does")
    args = parser.parse_args(argv)
    store = EdgeStore(args.store)
    store.ensure(int((args.store / "items.dim").read_text()))
    if args.tune_gc:
        from workers.services import tune_gc

        tune_gc()
    sink = producer = None
    if args.bootstrap:
        from workers.kafka_io import EventSink, make_producer
        from workers.settings import KafkaSettings

        kafka = KafkaSettings(bootstrap=args.bootstrap, partitions=4)
        producer = make_producer(kafka)
        sink = EventSink(producer, kafka)
    registry = CollectorRegistry()
    with contextlib.suppress(ImportError):  # a checkout from before the process collector
        from monitoring.metrics import register_process

        register_process(registry)
    try:
        from workers.services import build_api
        from workers.settings import Settings

        app = build_api(Settings(), store, sink, registry)
    except ImportError:  # a checkout from before the API's limits: its create_api with its defaults
        from vectorstore.api import create_api

        app = create_api(store, sink, registry)
    try:
        uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")
    finally:
        if producer is not None:
            producer.close()
        store.close()


if __name__ == "__main__":
    if sys.argv[1:2] != ["serve"]:
        raise SystemExit("usage: python bench/api_common.py serve --store DIR --port P [--bootstrap HOST:PORT]")
    _serve(sys.argv[2:])
