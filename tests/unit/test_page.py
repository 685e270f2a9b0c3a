"""The built-in dashboard's routes, on a hand-made metrics source (no stack, no browser)."""

from fastapi import FastAPI
from fastapi.testclient import TestClient

from monitoring.page import MetricsHistory, dashboard_router
from monitoring.panels import PANELS


def test_dashboard_data_evaluates_the_panels_over_successive_samples_and_reports_a_down_source():
    now = [100.0]
    counter = iter(range(0, 10_000, 50))

    def api() -> str:
        return (f'gfm_stream_events_total{{outcome="consumed"}} {next(counter)}\n'
                'gfm_model_info{version="v7"} 1\n')

    def broken() -> str:
        raise OSError("connection refused")

    history = MetricsHistory({"api": api, "http://streams/metrics": broken}, min_interval_s=0,
                             clock=lambda: now[0])
    app = FastAPI()
    app.include_router(dashboard_router(history))
    client = TestClient(app)

    page = client.get("/dashboard")
    assert page.status_code == 200 and "<svg" not in page.text and "dashboard/data" in page.text
    assert "http://" not in page.text.replace("http://www.w3.org/2000/svg", "")  # nothing loaded from a network

    first = client.get("/dashboard/data").json()
    assert [p["key"] for p in first["panels"]] == [p.key for p in PANELS]
    assert first["sources_down"] == ["http://streams/metrics"]
    now[0] += 2.0
    second = client.get("/dashboard/data", params={"since": first["points"][-1][0]}).json()
    assert len(second["points"]) == 1
    values = second["points"][0][1]
    assert values["events"] == {"consumed": 25.0}  # 50 more events in 2 s
    assert values["model"] == {"v7": 1.0}
    assert client.get("/dashboard/data", params={"since": -1}).status_code == 422
