"""The operator's panels, defined once: the Grafana dashboard (:mod:`monitoring.dashboards`), the built-in page
at ``/dashboard`` (:mod:`monitoring.page`) and ``gfm status`` all show these.

Each :class:`Series` is a small structured query that renders itself as PromQL (for Grafana and the alert
rules) and is evaluated here in Python over a history of scrapes (for the page and the CLI), so the three views
cannot drift apart. Four shapes cover every panel:

* ``rate``: ``sum by (BY) (rate(METRIC{SEL}[W]))``, a counter's per-second increase;
* ``quantile``: ``histogram_quantile(Q, sum by (le, BY) (rate(METRIC_bucket{SEL}[W])))``;
* ``value``: ``sum by (BY) (max without (instance, job) (METRIC{SEL}))``, a gauge (the inner ``max`` merges
  the same series exported by two processes, e.g. the lag, which the API and the stream worker both measure);
* ``age``: ``time() - max by (BY) (METRIC{SEL})``, seconds since a timestamp gauge.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

Kind = Literal["rate", "quantile", "value", "age"]

Labels = tuple[tuple[str, str], ...]
"""A sample's labels, sorted by name."""


@dataclass(frozen=True)
class Sample:
    """One sample of a scrape: metric name (with its ``_total``/``_bucket`` suffix), labels and value."""

    name: str
    labels: Labels
    value: float


@dataclass(frozen=True)
class Scrape:
    """Everything read from one source at one time."""

    source: str
    at: float
    samples: tuple[Sample, ...]


@dataclass(frozen=True)
class Series:
    """One query of a panel.

    Attributes:
        kind: ``rate``, ``quantile``, ``value`` or ``age`` (module docstring).
        metric: the metric family's name (``gfm_stream_events_total``, ``gfm_event_to_vector_seconds``, ...).
        legend: Grafana's legend template, e.g. ``"{{outcome}}"`` or ``"p95"``.
        by: the labels to group by.
        match: label matchers ``(label, op, value)`` with ``op`` ``=`` or ``=~``.
        q: the quantile, for ``quantile``.
        window_s: the rate window in seconds.
    """

    kind: Kind
    metric: str
    legend: str
    by: tuple[str, ...] = ()
    match: tuple[tuple[str, str, str], ...] = ()
    q: float | None = None
    window_s: int = 60

    def selector(self, name: str) -> str:
        """``name{label="value",...}``."""
        if not self.match:
            return name
        inner = ",".join(f'{label}{op}"{value}"' for label, op, value in self.match)
        return f"{name}{{{inner}}}"

    def promql(self, window_s: int | None = None) -> str:
        """The PromQL expression (``window_s`` overrides the rate window, for test copies of alert rules)."""
        window = f"{window_s or self.window_s}s"
        by = ", ".join(self.by)
        if self.kind == "rate":
            return f"sum by ({by}) (rate({self.selector(self.metric)}[{window}]))"
        if self.kind == "quantile":
            inner = ", ".join(("le", *self.by))
            return (f"histogram_quantile({self.q}, sum by ({inner}) "
                    f"(rate({self.selector(self.metric + '_bucket')}[{window}])))")
        if self.kind == "value":
            return f"sum by ({by}) (max without (instance, job) ({self.selector(self.metric)}))"
        return f"time() - max by ({by}) ({self.selector(self.metric)})"

    def matches(self, labels: Labels) -> bool:
        """Whether a sample's labels satisfy :attr:`match`."""
        found = dict(labels)
        for label, op, value in self.match:
            have = found.get(label, "")
            if (op == "=" and have != value) or (op == "=~" and not re.fullmatch(value, have)):
                return False
        return True

    def legend_for(self, group: Labels) -> str:
        """The legend of one result group."""
        values = dict(group)
        return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: values.get(m.group(1), ""), self.legend)


@dataclass(frozen=True)
class Panel:
    """A titled chart of one or more series, in one unit (Grafana's unit names: ``s``, ``ops``, ``short``)."""

    key: str
    title: str
    unit: str
    series: tuple[Series, ...]
    description: str = ""
    stat: bool = field(default=False)
    """Shown as a figure (a Grafana stat panel) rather than a time series."""


PANELS: tuple[Panel, ...] = (
    Panel("lag", "Consumer lag (records)", "short",
          (Series("value", "gfm_consumer_lag", "{{consumer}} {{topic}}", by=("consumer", "topic")),),
          "Records written but not yet committed by each consumer group, per topic (summed over partitions)."),
    Panel("events", "Events through the stream, by outcome", "ops",
          (Series("rate", "gfm_stream_events_total", "{{outcome}}", by=("outcome",)),)),
    Panel("dead_letters", "Dead letters, by reason", "ops",
          (Series("rate", "gfm_dead_letters_total", "{{field}}", by=("field",), window_s=300),),
          "Messages sent to the dead-letter topic; the reason is the field that failed validation."),
    Panel("user_freshness", "Event to fresh user vector (p50 / p95)", "s",
          (Series("quantile", "gfm_event_to_vector_seconds", "p50", q=0.5),
           Series("quantile", "gfm_event_to_vector_seconds", "p95", q=0.95))),
    Panel("item_freshness", "Event to fresh item vector (p50 / p95)", "s",
          (Series("quantile", "gfm_event_to_item_vector_seconds", "p50", q=0.5),
           Series("quantile", "gfm_event_to_item_vector_seconds", "p95", q=0.95)),
          "From an event to the new vectors of the items whose neighbours it changed."),
    Panel("pending", "Refresher pending work", "short",
          (Series("value", "gfm_refresh_pending", "{{kind}}s in the frontier", by=("kind",)),
           Series("value", "gfm_consumer_lag", "{{topic}} records", by=("topic",),
                  match=(("consumer", "=", "refresher"),))),
          "Items and users waiting to be refreshed because a change reached them (the frontier), and the "
          "catalogue, item-update and user-update records not yet read."),
    Panel("upserts", "Vectors upserted", "ops",
          (Series("rate", "gfm_vectors_upserted_total", "{{kind}}", by=("kind",)),)),
    Panel("store", "Vector store size", "short",
          (Series("value", "gfm_store_items", "items in the store"),
           Series("value", "gfm_catalog_items", "items known to the refresher"))),
    Panel("api_rate", "API requests, by route", "reqps",
          (Series("rate", "gfm_api_requests_total", "{{route}}", by=("route",)),)),
    Panel("api_errors", "API errors (4xx, 5xx), by route", "reqps",
          (Series("rate", "gfm_api_requests_total", "{{route}} {{status}}", by=("route", "status"),
                  match=(("status", "=~", "[45].."),), window_s=300),)),
    Panel("api_latency", "API latency p95, by route", "s",
          (Series("quantile", "gfm_api_request_seconds", "{{route}}", by=("route",), q=0.95),)),
    Panel("vector_age", "Age of the newest vector", "s",
          (Series("age", "gfm_vectors_last_upsert_timestamp_seconds", "{{kind}}", by=("kind",)),),
          "Seconds since the refresher last upserted a vector of each kind."),
    Panel("model", "Served model version", "short",
          (Series("value", "gfm_model_info", "{{version}}", by=("version",)),), stat=True),
    Panel("stream_batch", "Stream micro-batch time (p95)", "s",
          (Series("quantile", "gfm_stream_batch_seconds", "{{agent}}", by=("agent",), q=0.95),)),
    Panel("refresh_batch", "Refresh micro-batch time (p95)", "s",
          (Series("quantile", "gfm_refresh_batch_seconds", "refresh", q=0.95),)),
    Panel("pairs", "Graph pairs merged", "ops", (Series("rate", "gfm_graph_pairs_total", "pairs"),)),
)


def metric_names(series: Series) -> list[str]:
    """The sample names a series reads."""
    if series.kind == "quantile":
        return [series.metric + "_bucket"]
    return [series.metric]


def _group(labels: Labels, by: Sequence[str]) -> Labels:
    found = dict(labels)
    return tuple((name, found.get(name, "")) for name in by)


def _latest(history: Sequence[Scrape]) -> dict[str, Scrape]:
    """The newest sample's scrapes by source (a source that did not answer then is left out, not shown stale)."""
    if not history:
        return {}
    newest = max(scrape.at for scrape in history)
    return {scrape.source: scrape for scrape in history if scrape.at == newest}


def _increase(series: Series, history: Sequence[Scrape], name: str,
              extra: Sequence[str] = ()) -> dict[Labels, float]:
    """Per-second increase of counter ``name`` over the window, summed into groups of ``by`` + ``extra``.

    As Prometheus's ``rate``: each series from its first sample in the window to its newest; a series with a
    single sample in the window has no rate yet.
    """
    out: dict[Labels, float] = defaultdict(float)
    for source, now in _latest(history).items():
        first: dict[Labels, tuple[float, float]] = {}
        for scrape in sorted((s for s in history if s.source == source and now.at - series.window_s <= s.at < now.at),
                             key=lambda s: s.at):
            for sample in scrape.samples:
                if sample.name == name and sample.labels not in first:
                    first[sample.labels] = (scrape.at, sample.value)
        for sample in now.samples:
            if sample.name != name or sample.labels not in first or not series.matches(sample.labels):
                continue
            at, previous = first[sample.labels]
            delta = sample.value - previous if sample.value >= previous else sample.value  # counter reset
            out[_group(sample.labels, (*series.by, *extra))] += delta / (now.at - at)
    return dict(out)


def histogram_quantile(q: float, buckets: Iterable[tuple[float, float]]) -> float:
    """Prometheus's ``histogram_quantile`` on cumulative ``(upper bound, count)`` buckets (``inf`` included);
    NaN when the buckets hold no observations."""
    ordered = sorted(buckets)
    if not ordered or ordered[-1][1] <= 0:
        return math.nan
    total = ordered[-1][1]
    rank = q * total
    lower, below = 0.0, 0.0
    for upper, count in ordered:
        if count >= rank:
            if math.isinf(upper):
                return lower  # in the +Inf bucket: the highest finite bound, as Prometheus does
            if count == below:
                return upper
            return lower + (upper - lower) * (rank - below) / (count - below)
        lower, below = upper, count
    return ordered[-1][0]


def evaluate(series: Series, history: Sequence[Scrape], now: float) -> dict[str, float]:
    """The series' current values over ``history``, keyed by legend (NaN results left out)."""
    results: dict[Labels, float] = {}
    if series.kind == "rate":
        results = _increase(series, history, series.metric)
    elif series.kind == "quantile":
        rates = _increase(series, history, series.metric + "_bucket", extra=("le",))
        grouped: dict[Labels, list[tuple[float, float]]] = defaultdict(list)
        for labels, value in rates.items():
            le = dict(labels)["le"]
            grouped[tuple(x for x in labels if x[0] != "le")].append((float(le), value))
        results = {group: histogram_quantile(series.q or 0.5, buckets) for group, buckets in grouped.items()}
    else:
        merged: dict[Labels, float] = {}
        for scrape in _latest(history).values():
            for sample in scrape.samples:
                if sample.name == series.metric and series.matches(sample.labels):
                    merged[sample.labels] = max(merged.get(sample.labels, -math.inf), sample.value)
        summed: dict[Labels, float] = defaultdict(float)
        for labels, value in merged.items():
            group = _group(labels, series.by)
            if series.kind == "value":
                summed[group] += value
            else:
                summed[group] = max(summed.get(group, -math.inf), value)
        results = dict(summed) if series.kind == "value" else {g: now - v for g, v in summed.items()}
    return {series.legend_for(group): value for group, value in sorted(results.items())
            if not math.isnan(value)}


def evaluate_panels(history: Sequence[Scrape], now: float,
                    panels: Sequence[Panel] = PANELS) -> dict[str, dict[str, float]]:
    """Every panel's current values: ``{panel key: {legend: value}}``."""
    out: dict[str, dict[str, float]] = {}
    for panel in panels:
        values: dict[str, float] = {}
        for series in panel.series:
            values.update(evaluate(series, history, now))
        out[panel.key] = values
    return out


def parse_exposition(text: str, source: str, at: float) -> Scrape:
    """A Prometheus text exposition as a :class:`Scrape` (only ``gfm_`` samples are kept)."""
    from prometheus_client.parser import text_string_to_metric_families

    samples = []
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("gfm_"):
                samples.append(Sample(sample.name, tuple(sorted(sample.labels.items())), float(sample.value)))
    return Scrape(source, at, tuple(samples))
