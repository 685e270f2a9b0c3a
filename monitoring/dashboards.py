"""The Grafana dashboard, built from code so every panel names a metric that :mod:`monitoring.metrics`
defines (``python -m monitoring.dashboards`` rewrites ``monitoring/grafana/dashboards/gfm.json``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

PANELS: list[tuple[str, str, list[tuple[str, str]]]] = [
    # (title, unit, [(PromQL, legend)])
    ("Events through the stream, by outcome", "ops",
     [('sum by (outcome) (rate(gfm_stream_events_total[1m]))', "{{outcome}}")]),
    ("Dead letters", "ops",
     [('sum by (topic, field) (rate(gfm_dead_letters_total[5m]))', "{{topic}} {{field}}")]),
    ("Event to fresh user vector (p50 / p95)", "s",
     [('histogram_quantile(0.5, sum by (le) (rate(gfm_event_to_vector_seconds_bucket[1m])))', "p50"),
      ('histogram_quantile(0.95, sum by (le) (rate(gfm_event_to_vector_seconds_bucket[1m])))', "p95")]),
    ("Vectors upserted", "ops",
     [('sum by (kind) (rate(gfm_vectors_upserted_total[1m]))', "{{kind}}")]),
    ("Stream micro-batch time (p95)", "s",
     [('histogram_quantile(0.95, sum by (le, agent) (rate(gfm_stream_batch_seconds_bucket[1m])))', "{{agent}}")]),
    ("Refresh micro-batch time (p95)", "s",
     [('histogram_quantile(0.95, sum by (le) (rate(gfm_refresh_batch_seconds_bucket[1m])))', "refresh")]),
    ("Graph pairs merged", "ops", [('rate(gfm_graph_pairs_total[1m])', "pairs")]),
    ("Catalogue items", "short", [('max(gfm_catalog_items)', "items")]),
    ("API requests", "reqps",
     [('sum by (route, status) (rate(gfm_api_requests_total[1m]))', "{{route}} {{status}}")]),
    ("API latency (p95)", "s",
     [('histogram_quantile(0.95, sum by (le, route) (rate(gfm_api_request_seconds_bucket[1m])))', "{{route}}")]),
]


def dashboard() -> dict[str, Any]:
    """The dashboard as Grafana's JSON model."""
    panels = []
    for n, (title, unit, queries) in enumerate(PANELS):
        panels.append({
            "id": n + 1,
            "type": "timeseries",
            "title": title,
            "datasource": {"type": "prometheus", "uid": "prometheus"},
            "gridPos": {"h": 8, "w": 12, "x": 12 * (n % 2), "y": 8 * (n // 2)},
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
            "targets": [
                {"refId": chr(65 + k), "expr": expr, "legendFormat": legend,
                 "datasource": {"type": "prometheus", "uid": "prometheus"}}
                for k, (expr, legend) in enumerate(queries)
            ],
        })
    return {
        "uid": "gfm-overview",
        "title": "gfm: stream, refresh, serving",
        "schemaVersion": 39,
        "version": 1,
        "refresh": "5s",
        "time": {"from": "now-30m", "to": "now"},
        "tags": ["gfm"],
        "panels": panels,
    }


def write(path: Path = Path(__file__).parent / "grafana" / "dashboards" / "gfm.json") -> Path:
    """Write the dashboard JSON."""
    path.write_text(json.dumps(dashboard(), indent=2) + "\n")
    return path


if __name__ == "__main__":
    print(write())
