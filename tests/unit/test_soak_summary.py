"""The soak benchmark's summary: RSS at the warm-up's end, half time and the end, and slopes per minute."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("soak_bench", Path(__file__).parents[2] / "bench" / "soak_bench.py")
assert _spec is not None and _spec.loader is not None
soak = importlib.util.module_from_spec(_spec)
sys.modules["soak_bench"] = soak  # its dataclass looks its module up
_spec.loader.exec_module(soak)


def test_slope_is_the_least_squares_slope_per_minute():
    assert soak.slope_per_minute([(0, 100), (30, 110), (60, 120)]) == pytest.approx(20.0)
    assert soak.slope_per_minute([(0, 5), (15, 9), (30, 5), (45, 9)]) == pytest.approx(3.2)
    assert soak.slope_per_minute([(0, 1), (10, 2)]) is None  # too few points
    assert soak.slope_per_minute([(5, 1), (5, 2), (5, 3)]) is None  # no spread in time


def _sample(t, users, items, api, broker):
    return {"t_s": t, "users_seen": users, "items_seen": items, "rss_mib": {"api": api, "broker": broker}}


def test_summary_finds_the_warmup_end_and_the_slopes():
    samples = [
        _sample(0, 10, 5, 100, 10), _sample(60, 20, 8, 200, 20), _sample(120, 30, 9, 300, 30),
        _sample(180, 30, 9, 300, 40), _sample(240, 30, 9, 300, 50), _sample(300, 30, 9, 300, 60),
    ]
    summary = soak.summarise(samples, half_s=150)
    assert (summary["warmup_end_s"], summary["half_s"], summary["end_s"]) == (120, 180, 300)
    assert summary["api"] == {"rss_mib_at_warmup_end": 300, "rss_mib_at_half": 300, "rss_mib_at_end": 300,
                              "slope_mib_per_min_after_warmup": 0.0, "slope_mib_per_min_second_half": 0.0}
    assert summary["broker"]["slope_mib_per_min_after_warmup"] == 10.0
    assert summary["broker"]["slope_mib_per_min_second_half"] == 10.0


def test_summary_of_nothing_is_refused():
    with pytest.raises(ValueError, match="no samples"):
        soak.summarise([], half_s=1)


def test_worker_counters_sum_labels_from_one_scrape_and_say_none_when_unanswered(monkeypatch):
    page = (b"# HELP gfm_stream_events_total events\n# TYPE gfm_stream_events_total counter\n"
            b'gfm_stream_events_total{partition="0"} 10.0\ngfm_stream_events_total{partition="1"} 5.0\n'
            b'gfm_stream_events_created{partition="0"} 1.7e9\ngfm_graph_pairs_total 7.0\n')

    class Page:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def read(self):
            return page

    monkeypatch.setattr(soak.urllib.request, "urlopen", lambda url, timeout: Page())
    assert soak.worker_counters(1, ["gfm_stream_events_total", "gfm_graph_pairs_total", "absent_total"]) == {
        "gfm_stream_events_total": 15.0, "gfm_graph_pairs_total": 7.0, "absent_total": 0.0}

    def timeout(url, timeout):
        raise TimeoutError("timed out")

    monkeypatch.setattr(soak.urllib.request, "urlopen", timeout)
    assert soak.worker_counters(1, ["gfm_stream_events_total"]) is None


def test_summary_gives_cpu_seconds_per_thousand_events_after_the_warmup():
    samples = [{**_sample(t, users, 9, 300, 10), "produced": produced, "cpu_s": {"api": cpu, "broker": 1.0}}
               for t, users, produced, cpu in [(0, 10, 0, 0.0), (60, 30, 1000, 5.0), (120, 30, 5000, 9.0)]]
    summary = soak.summarise(samples, half_s=60)
    assert summary["api"]["cpu_s_per_1k_events_after_warmup"] == 1.0  # (9 - 5) s over 4,000 events
    assert summary["broker"]["cpu_s_per_1k_events_after_warmup"] == 0.0


def test_cpu_seconds_reads_this_process():
    import os
    import time

    before = soak.cpu_seconds(os.getpid())
    deadline = time.process_time() + 0.3
    while time.process_time() < deadline:
        pass
    assert soak.cpu_seconds(os.getpid()) - before >= 0.2
