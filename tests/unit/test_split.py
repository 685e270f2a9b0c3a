"""`streams.split`: the edges agent in stream workers of its own. The settings' rules, each process's agents,
tables and consumer group, the one changelog per table whatever the shape, and the lag probes of both groups."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from monitoring.lag import pipeline_sources
from monitoring.metrics import StreamMetrics
from streams.agents import StreamConfig, create_app
from workers.services import stream_config
from workers.settings import Settings, StreamSettings
from workers.stack import edges_worker


def app_for(monkeypatch, tmp_path, **env: str):
    monkeypatch.setenv("GFM_STREAMS__DATADIR", str(tmp_path / "faust"))
    for key, value in env.items():
        monkeypatch.setenv(f"GFM_STREAMS__{key.upper()}", value)
    settings = Settings()
    return settings, create_app(stream_config(settings), StreamMetrics.create(CollectorRegistry()))


@pytest.mark.parametrize(("env", "group", "tables", "topics"), [
    ({"split": "false"}, "gfm-streams", {"users", "adjacency"}, {"gfm-events", "gfm-pairs"}),
    ({}, "gfm-streams", {"users"}, {"gfm-events"}),
    ({"split": "true", "agents": "events"}, "gfm-streams", {"users"}, {"gfm-events"}),
    ({"split": "true", "agents": "edges"}, "gfm-streams-edges", {"adjacency"}, {"gfm-pairs"}),
], ids=["unsplit", "split-default", "split-events", "split-edges"])
def test_each_process_runs_its_agents_in_its_group_on_the_shared_changelogs(monkeypatch, tmp_path, env, group,
                                                                           tables, topics):
    _, app = app_for(monkeypatch, tmp_path, **env)
    assert app.conf.id == group
    assert set(app.tables) == tables
    for name in tables:  # the changelog is named after the deployment's app id, never the process's group
        assert app.tables[name].changelog_topic.get_topic_name() == f"gfm-streams-{name}-changelog"
    assert {topic for agent in app.agents.values() for topic in agent.channel.topics} == topics


def test_an_edges_worker_has_its_own_metrics_port_and_rocksdb_directory(tmp_path):
    settings = Settings(var_dir=tmp_path, streams=StreamSettings(split=True))
    edges = edges_worker(settings)
    assert (settings.streams.role, edges.streams.role) == ("events", "edges")
    assert settings.streams.own_metrics_port != edges.streams.own_metrics_port
    assert (settings.stream_datadir(), edges.stream_datadir()) == (tmp_path / "faust", tmp_path / "faust-edges")


def test_an_explicit_datadir_gets_a_sibling_for_the_edges_worker(tmp_path):
    settings = Settings(var_dir=tmp_path, streams=StreamSettings(split=True, datadir=tmp_path / "data" / "streams"))
    assert edges_worker(settings).stream_datadir() == tmp_path / "data" / "streams-edges"
    with pytest.raises(ValueError, match="needs streams.split"):
        edges_worker(Settings(var_dir=tmp_path, streams=StreamSettings(split=False)))


def test_split_is_the_default(tmp_path):
    """The default shape is split (README *Split stream workers*: better user and item freshness at 1,000 and 2,000
    events/s on two cores): a stream worker runs the events agent, and `gfm up` adds the edges worker."""
    settings = Settings(var_dir=tmp_path)
    assert settings.streams.split and settings.streams.role == "events"
    assert edges_worker(settings).streams.role == "edges"


@pytest.mark.parametrize(("fields", "message"), [
    ({"split": True, "agents": "all"}, "runs either the events agent or the edges agent"),
    ({"split": False, "agents": "edges"}, "needs streams.split"),
    ({"agents": "sometimes"}, "agents"),
])
def test_agents_that_would_leave_an_agent_unrun_are_refused(fields, message):
    with pytest.raises(ValidationError, match=message):
        StreamSettings(**fields)


def test_a_stream_config_with_unknown_agents_is_refused():
    with pytest.raises(ValueError, match="agents='both'"):
        StreamConfig(agents="both")


def test_the_lag_probes_read_the_edges_group_for_the_pairs_topic_when_split():
    unsplit = pipeline_sources("gfm", "gfm-streams", "gfm-streams")
    assert [(s.consumer, s.group, s.topics) for s in unsplit if s.consumer == "streams"] == [
        ("streams", "gfm-streams", ("gfm-events", "gfm-pairs"))]
    split = pipeline_sources("gfm", "gfm-streams", StreamSettings(split=True).edges_group)
    assert [(s.consumer, s.group, s.topics) for s in split if s.consumer == "streams"] == [
        ("streams", "gfm-streams", ("gfm-events",)), ("streams", "gfm-streams-edges", ("gfm-pairs",))]
