"""The API benchmarks, short, as tests (slow): a bounded load test on loopback has no server errors, and
posting large batches through a real broker does not stall queries. Full runs: bench/api_load.py and
bench/api_ingest_bench.py, results in bench/results/."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]


def _bench(script: str, out: Path, *args: str) -> dict:
    subprocess.run([sys.executable, str(ROOT / "bench" / script), "--out", str(out), *args], check=True,
                   cwd=ROOT, timeout=300)
    return json.loads(out.read_text())


def test_load_on_loopback_has_no_server_errors(tmp_path):
    report = _bench("api_load.py", tmp_path / "load.json", "--duration", "10", "--items", "5000", "--users", "200")
    overall = report["overall"]
    assert overall["server_errors"] == 0 and overall["connection_errors"] == 0
    assert overall["requests"] > 200 and set(overall["statuses"]) <= {"200", "202"}
    assert set(report["routes"]) == {"GET /users/{user_id}/recommendations", "GET /items/{item_id}/similar",
                                     "GET /healthz", "POST /events"}


def test_posting_large_batches_does_not_stall_queries(tmp_path):
    report = _bench("api_ingest_bench.py", tmp_path / "ingest.json", "--duration", "8", "--items", "5000",
                    "--users", "200")["after"]
    during = report["queries_while_posting"]
    assert during["statuses"] == {"200": during["requests"]} and during["requests"] > 50
    assert during["p99_ms"] < 1000, during  # a stalled query thread pool shows as seconds
    assert report["posts"]["statuses"].get("202", 0) > 5
    assert report["declared_10GB_body"]["status"] == 413 and report["declared_10GB_body"]["seconds"] < 1
    assert report["declared_10GB_body"]["connection_closed_by_server"]
    assert report["batch_of_200000_events"]["status"] == 413 and report["batch_of_200000_events"]["seconds"] < 2
