"""`gfm up`, the README's run command, on a fresh working directory: the demo model (the 2T-HGNN) is trained,
broker, worker, refresher, embedded Qdrant and API start, the demo runs through Kafka and a demo user gets
recommendations from that model (real MiniLM)."""

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import free_port

pytestmark = pytest.mark.integration


def test_gfm_up_runs_the_demo_end_to_end(tmp_path):
    api_port = free_port()
    env = {
        **os.environ,
        "GFM_VAR_DIR": str(tmp_path),
        "GFM_QDRANT__PATH": str(tmp_path / "qdrant"),
        "GFM_MODEL__TEXT_CACHE": str(tmp_path / "text-cache"),
        "GFM_KAFKA__BOOTSTRAP": f"127.0.0.1:{free_port()}",
        "GFM_API__PORT": str(api_port),
        "GFM_STREAMS__METRICS_PORT": str(free_port()),
    }
    result = subprocess.run([sys.executable, "-m", "workers.cli", "up", "--exit-after-demo"], env=env,
                            capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"API ready at http://127.0.0.1:{api_port}" in result.stdout
    trained = re.search(r"^model: (2t-hgnn-demo-data-\S+) \(trained in [0-9.]+ s, (.+)\)$", result.stdout, flags=re.M)
    assert trained, result.stdout
    version, directory = trained.groups()
    assert directory.startswith(str(tmp_path / "models")) and (tmp_path / "models" / version / "hgnn.pt").exists()
    assert f"serving model {version}" in result.stdout  # /healthz
    assert f"podcast recommendations (model {version}):" in result.stdout  # the API's answer
    ranked = re.findall(r"^\s+\d\. .+\((p\d{4}), score (-?[0-9.]+)\)$", result.stdout, flags=re.M)
    assert len(ranked) == 5
    scores = [float(score) for _, score in ranked]
    assert scores == sorted(scores, reverse=True)
    with pytest.raises(OSError):
        import socket

        socket.create_connection(("127.0.0.1", api_port), timeout=0.5)
