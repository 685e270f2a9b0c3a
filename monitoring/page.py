"""The built-in live dashboard at ``/dashboard``: the panels of :mod:`monitoring.panels`, for the embedded stack
and anyone without Grafana.

The API process samples its own registry and the other services' ``/metrics`` (the stream worker's, and the
refresher's when it runs apart) at most once a second while someone watches, keeps ten minutes of scrapes,
and evaluates the panels itself; the page (one HTML file with hand-written SVG charts in vanilla JavaScript,
served by the app: no network access, no charting library) polls ``/dashboard/data`` every two seconds.
"""

from __future__ import annotations

import logging
import threading
import time
import urllib.request
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Query
from fastapi.responses import HTMLResponse
from prometheus_client import CollectorRegistry, generate_latest

from monitoring.panels import PANELS, Panel, Scrape, evaluate_panels, parse_exposition

log = logging.getLogger(__name__)

PAGE = Path(__file__).parent / "static" / "dashboard.html"
KEEP_S = 600.0
LONGEST_WINDOW_S = max(series.window_s for panel in PANELS for series in panel.series)
"""Scrapes older than the longest rate window (plus a margin) are dropped."""


def registry_source(registry: CollectorRegistry) -> Callable[[], str]:
    """A source reading this process's registry."""
    return lambda: generate_latest(registry).decode()


def url_source(url: str, timeout_s: float = 1.0) -> Callable[[], str]:
    """A source scraping another service's ``/metrics``."""

    def read() -> str:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return str(response.read().decode())

    return read


class MetricsHistory:
    """Scrapes of every source and the panel values computed from them, for the last ``keep_s`` seconds.

    Args:
        sources: name -> a function returning a Prometheus text exposition.
        keep_s: how much history to keep.
        min_interval_s: a sample younger than this is not taken again.
        clock: wall-clock time (unix seconds).
    """

    def __init__(self, sources: Mapping[str, Callable[[], str]], keep_s: float = KEEP_S,
                 min_interval_s: float = 1.0, clock: Callable[[], float] = time.time) -> None:
        self.sources = dict(sources)
        self.keep_s = keep_s
        self.min_interval_s = min_interval_s
        self.clock = clock
        self.scrapes: deque[Scrape] = deque()
        self.points: deque[tuple[float, dict[str, dict[str, float]]]] = deque()
        self.down: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def sample(self) -> None:
        """Scrape every source and compute the panels, unless the last sample is too recent."""
        with self._lock:
            now = self.clock()
            if self.points and now - self.points[-1][0] < self.min_interval_s:
                return
            down = []
            for name, read in self.sources.items():
                try:
                    self.scrapes.append(parse_exposition(read(), name, now))
                except Exception as error:  # a service that is down is shown as such, not an error page
                    log.debug("dashboard source %s not readable: %s", name, error)
                    down.append(name)
            self.down = down
            while self.scrapes and self.scrapes[0].at < now - LONGEST_WINDOW_S - 10:
                self.scrapes.popleft()
            self.points.append((now, evaluate_panels(list(self.scrapes), now)))
            while self.points and self.points[0][0] < now - self.keep_s:
                self.points.popleft()

    def start(self, interval_s: float = 2.0) -> MetricsHistory:
        """Sample every ``interval_s`` in a daemon thread, so the page opens on recent history."""

        def loop() -> None:
            while not self._stop.wait(interval_s):
                try:
                    self.sample()
                except Exception:  # the sampler must outlive one bad evaluation
                    log.exception("dashboard sample failed")

        threading.Thread(target=loop, name="dashboard-sampler", daemon=True).start()
        return self

    def stop(self) -> None:
        """Stop the sampling thread."""
        self._stop.set()

    def since(self, t: float) -> list[tuple[float, dict[str, dict[str, float]]]]:
        """The computed points after ``t``."""
        with self._lock:
            return [p for p in self.points if p[0] > t]

    def latest(self) -> dict[str, dict[str, float]]:
        """The newest computed panel values."""
        with self._lock:
            return self.points[-1][1] if self.points else {}


def panel_meta(panel: Panel) -> dict[str, Any]:
    """What the page needs to draw a panel."""
    meta = asdict(panel)
    meta["series"] = [{"legend": s.legend, "promql": s.promql()} for s in panel.series]
    return meta


def dashboard_router(history: MetricsHistory) -> APIRouter:
    """``GET /dashboard`` (the page) and ``GET /dashboard/data`` (panel values since a time)."""
    router = APIRouter()
    html = PAGE.read_text()

    @router.get("/dashboard", response_class=HTMLResponse, include_in_schema=False)
    def page() -> HTMLResponse:
        """The live dashboard."""
        return HTMLResponse(html)

    @router.get("/dashboard/data")
    def data(since: float = Query(0.0, ge=0, description="unix seconds: only points after this")) -> dict[str, Any]:
        """The panels, and their values at every sample after ``since`` (a new sample is taken first)."""
        history.sample()
        return {"now": history.clock(), "panels": [panel_meta(p) for p in PANELS],
                "points": history.since(since), "sources_down": history.down}

    return router
