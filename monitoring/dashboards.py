"""The Grafana dashboard, built from :data:`monitoring.panels.PANELS` (the same panels as the built-in page at
``/dashboard`` and ``gfm status``). ``python -m monitoring.dashboards`` rewrites
``monitoring/grafana/dashboards/gfm.json`` and the alert rules ``monitoring/alerts.yml``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from monitoring.panels import PANELS, Panel

DATASOURCE = {"type": "prometheus", "uid": "prometheus"}


def _panel(n: int, panel: Panel, x: int, y: int, width: int, height: int) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": n + 1,
        "type": "stat" if panel.stat else "timeseries",
        "title": panel.title,
        "description": panel.description,
        "datasource": DATASOURCE,
        "gridPos": {"h": height, "w": width, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": panel.unit}, "overrides": []},
        "targets": [
            {"refId": chr(65 + k), "expr": series.promql(), "legendFormat": series.legend, "datasource": DATASOURCE}
            for k, series in enumerate(panel.series)
        ],
    }
    if panel.stat:
        out["options"] = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                          "textMode": "name", "colorMode": "none"}
    return out


def dashboard() -> dict[str, Any]:
    """The dashboard as Grafana's JSON model: two charts a row, stat panels a third of a row."""
    panels = []
    x = y = 0
    for n, panel in enumerate(PANELS):
        width, height = (8, 4) if panel.stat else (12, 8)
        if x + width > 24:
            x, y = 0, y + 8
        panels.append(_panel(n, panel, x, y, width, height))
        x += width
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
    from monitoring.alerts import write_rules

    print(write())
    print(write_rules())
