"""The panels' Python evaluation agrees with PromQL's semantics on hand-made scrapes; lag arithmetic; status."""

import math

from monitoring.lag import partition_lag
from monitoring.panels import PANELS, Sample, Scrape, Series, evaluate, histogram_quantile, parse_exposition
from monitoring.status import render_status


def _scrape(source, at, *samples):
    return Scrape(source, at, tuple(Sample(n, tuple(sorted(labels.items())), v) for n, labels, v in samples))


def test_rate_is_per_second_increase_from_each_series_first_sample_in_the_window():
    series = Series("rate", "gfm_stream_events_total", "{{outcome}}", by=("outcome",), window_s=60)
    history = [
        _scrape("w", 0.0, ("gfm_stream_events_total", {"outcome": "consumed"}, 100.0)),
        _scrape("w", 10.0, ("gfm_stream_events_total", {"outcome": "consumed"}, 200.0),
                ("gfm_stream_events_total", {"outcome": "invalid"}, 5.0)),
        _scrape("w", 20.0, ("gfm_stream_events_total", {"outcome": "consumed"}, 400.0),
                ("gfm_stream_events_total", {"outcome": "invalid"}, 7.0)),
    ]
    assert evaluate(series, history, 20.0) == {"consumed": 15.0, "invalid": 0.2}
    assert "rate(gfm_stream_events_total[60s])" in series.promql()


def test_quantile_matches_prometheus_histogram_quantile():
    # 10 observations in (0, 1], 10 in (1, 2]: the median is the top of the first bucket, p75 halfway into the second
    assert histogram_quantile(0.5, [(1.0, 10), (2.0, 20), (math.inf, 20)]) == 1.0
    assert histogram_quantile(0.75, [(1.0, 10), (2.0, 20), (math.inf, 20)]) == 1.5
    assert histogram_quantile(0.99, [(1.0, 0), (2.0, 0), (math.inf, 5)]) == 2.0
    assert math.isnan(histogram_quantile(0.5, [(1.0, 0), (math.inf, 0)]))


def test_value_merges_the_same_series_from_two_processes_and_sums_partitions():
    series = Series("value", "gfm_consumer_lag", "{{consumer}}", by=("consumer",))
    lag = [("gfm_consumer_lag", {"consumer": "streams", "topic": "e", "partition": "0"}, 3.0),
           ("gfm_consumer_lag", {"consumer": "streams", "topic": "e", "partition": "1"}, 4.0)]
    history = [_scrape("api", 5.0, *lag), _scrape("streams", 5.0, *lag)]
    assert evaluate(series, history, 5.0) == {"streams": 7.0}
    assert series.promql() == "sum by (consumer) (max without (instance, job) (gfm_consumer_lag))"


def test_a_source_that_stopped_answering_is_not_shown_stale():
    series = Series("value", "gfm_store_items", "items")
    history = [_scrape("api", 1.0, ("gfm_store_items", {}, 9.0)), _scrape("other", 2.0)]
    assert evaluate(series, history, 2.0) == {}


def test_age_and_exposition_parsing():
    text = 'gfm_vectors_last_upsert_timestamp_seconds{kind="user"} 100.0\nother_metric 1\n'
    scrape = parse_exposition(text, "api", 130.0)
    assert [s.name for s in scrape.samples] == ["gfm_vectors_last_upsert_timestamp_seconds"]
    age = next(s for p in PANELS if p.key == "vector_age" for s in p.series)
    assert evaluate(age, [scrape], 130.0) == {"user": 30.0}


def test_lag_is_end_minus_committed_or_everything_when_nothing_is_committed():
    assert partition_lag(end=15, committed=15, beginning=0) == 0
    assert partition_lag(end=15, committed=None, beginning=3) == 12
    assert partition_lag(end=15, committed=16, beginning=0) == 0


def test_status_prints_every_key_figure():
    body = {"panels": [{"key": p.key, "title": p.title, "unit": p.unit, "stat": p.stat} for p in PANELS],
            "points": [[1.0, {"lag": {"streams gfm-events": 12.0}, "model": {"v1": 1.0},
                              "user_freshness": {"p95": 1.5}, "events": {"consumed": 42.0}}]],
            "sources_down": []}
    text = render_status(body)
    assert "streams gfm-events 12" in text and "v1" in text and "p95 1.50 s" in text and "consumed 42.0/s" in text
    assert "(no data yet)" in text  # panels without values say so
