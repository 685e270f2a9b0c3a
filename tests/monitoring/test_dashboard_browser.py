"""The built-in dashboard in a real browser: headless Chromium (Debian's ``chromium``, driven by Playwright)
opens /dashboard on a running embedded stack while events flow, sees every panel render and its values
change, then watches a replay burst push the stream's consumer lag up and back to zero.

Screenshots go to ``$GFM_SCREENSHOT_DIR`` when set (``make test-monitoring`` sets it to ``docs/``)."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from monitoring.panels import PANELS
from tests.monitoring.flow import Flow
from workers.stack import Stack, http_json

CHROMIUM = "/usr/bin/chromium"
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = [
    pytest.mark.integration,
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists() or shutil.which("chromium") is None,
                       reason="needs Debian's chromium (/usr/bin/chromium): `make test-monitoring` installs it"),
]


def _legend_values(page, key: str) -> dict[str, str]:
    script = "els => Object.fromEntries(els.map(e => [e.dataset.series, e.textContent]))"
    return page.eval_on_selector_all(f'[data-panel="{key}"] .legend .v', script)




def _streams_lag(page) -> float | None:
    """The stream's lag on the events topic as the page shows it (None before it has a value)."""
    text = _legend_values(page, "lag").get("streams gfm-events")
    if text in (None, "–"):
        return None
    number = text.rstrip("kM")
    scale = 1000 if text.endswith("k") else 1e6 if text.endswith("M") else 1
    return float(number) * scale


def test_dashboard_renders_live_panels_and_lag_drains_after_a_burst(tmp_path):
    from playwright.sync_api import sync_playwright

    from tests.conftest import make_settings

    shots = Path(os.environ.get("GFM_SCREENSHOT_DIR", tmp_path))
    stack = Stack(make_settings(tmp_path))
    stack.start()
    flow = None
    try:
        flow = Flow(stack, rate=150).start()
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{stack.api_url}/dashboard")
            page.wait_for_selector('[data-panel="events"]', timeout=15_000)
            assert page.eval_on_selector_all("[data-panel]", "els => els.map(e => e.dataset.panel)") == \
                [p.key for p in PANELS]

            # every chart draws a line once events flow, bad messages arrive and clients ask (a stat panel
            # shows its value)
            flow.send_bad()
            missing: list[str] = []

            def all_drawn():
                http_json(f"{stack.api_url}/users/nobody/recommendations")  # a 404 for the error panel
                missing[:] = [p.key for p in PANELS if not p.stat
                              and page.locator(f'[data-panel="{p.key}"] polyline').count() == 0]
                return not missing or None
            try:
                stack.wait_until(all_drawn, 90, "every panel to draw a line", interval_s=0.5)
            except AssertionError as error:
                raise AssertionError(f"{error}: {missing} drew nothing") from None
            assert page.text_content('[data-panel="model"] .big').startswith("textprop-hashing")

            # values change while events flow
            before = {k: _legend_values(page, k) for k in ("events", "upserts", "vector_age", "store")}
            time.sleep(3)
            flow.send_bad()
            time.sleep(3)
            after = {k: _legend_values(page, k) for k in ("events", "upserts", "vector_age", "store")}
            changed = [k for k in before if before[k] != after[k]]
            assert len(changed) >= 2, (before, after)
            page.screenshot(path=str(shots / "dashboard.png"), full_page=True)

            # a burst: the stream falls behind, then drains back to zero lag, as the page shows
            flow.stop()  # lag reads zero only when nothing new arrives between two commits
            burst_at = time.monotonic()
            # 1,500 messages of 20 events: the lag is counted in messages, and 150 packs of 200 were drained
            # before the page showed more than 100 of them (CI, once)
            flow.send(30_000, pack_size=20)
            peak = stack.wait_until(lambda: (lag := _streams_lag(page)) and lag > 100 and lag, 30, "the burst's lag",
                                    interval_s=0.5)
            stack.wait_until(lambda: _streams_lag(page) == 0, 150, "the lag to return to zero", interval_s=0.5)
            stack.wait_until(lambda: set(_legend_values(page, "lag").values()) == {"0"}, 150,
                             "every group's lag to be zero", interval_s=0.5)
            print(f"burst of 30,000 events: the page showed the events topic's lag at {peak:.0f} records; every "
                  f"group's lag read zero {time.monotonic() - burst_at:.1f} s after the burst was sent")
            time.sleep(3)
            page.screenshot(path=str(shots / "dashboard-burst.png"), full_page=True)
            browser.close()
        assert peak > 100
    finally:
        if flow is not None:
            flow.close()
        stack.stop()
