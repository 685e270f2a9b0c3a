"""``gfm status``: the dashboard's key figures once, as text for a terminal."""

from __future__ import annotations

import math
from typing import Any

STATUS_PANELS = ("lag", "pending", "events", "dead_letters", "user_freshness", "item_freshness", "upserts",
                 "store", "vector_age", "model", "api_rate", "api_errors", "api_latency")
"""The panels ``gfm status`` prints, in order (keys of :data:`monitoring.panels.PANELS`)."""


def format_value(value: float, unit: str) -> str:
    """A figure in the panel's unit (``s``, ``ops``, ``reqps``, ``short``)."""
    if math.isnan(value):
        return "-"
    if unit == "s":
        return f"{value * 1000:.0f} ms" if abs(value) < 1 else f"{value:.2f} s"
    if unit in ("ops", "reqps"):
        return f"{value:.1f}/s"
    return f"{value:.0f}"


def render_status(body: dict[str, Any]) -> str:
    """The text of ``gfm status`` from a ``GET /dashboard/data`` answer."""
    panels = {p["key"]: p for p in body["panels"]}
    latest: dict[str, dict[str, float]] = body["points"][-1][1] if body["points"] else {}
    lines = []
    if body.get("sources_down"):
        lines.append(f"not reachable: {', '.join(body['sources_down'])}")
    for key in STATUS_PANELS:
        panel = panels[key]
        values = latest.get(key, {})
        if panel["stat"]:
            shown = ", ".join(values) or "-"
        else:
            shown = "  ".join(f"{legend or 'value'} {format_value(v, panel['unit'])}" for legend, v in values.items())
        lines.append(f"{panel['title']:<46} {shown or '- (no data yet)'}")
    return "\n".join(lines)
