import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from workers.settings import ApiSettings, KafkaSettings, ModelSettings, QdrantSettings, Settings, StreamSettings


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve_in_thread(app: Any) -> Iterator[str]:
    """``app`` on uvicorn on a free loopback port, in a thread of this process; yields its base URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline:
            raise TimeoutError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def make_settings(root: Path, encoder: str = "hashing", model: str = "textprop", **streams: object) -> Settings:
    """Settings for one isolated stack under ``root``, on free loopback ports; the text-propagation model unless
    ``model`` says ``gfm`` (then set ``model.dir``): these stacks test the data path, which needs no training."""
    return Settings(
        var_dir=root,
        kafka=KafkaSettings(bootstrap=f"127.0.0.1:{free_port()}", partitions=2),
        qdrant=QdrantSettings(path=root / "qdrant"),
        api=ApiSettings(port=free_port()),
        streams=StreamSettings(**{"metrics_port": free_port(), "edges_metrics_port": free_port(), **streams}),  # type: ignore[arg-type]
        model=ModelSettings(kind=model, encoder=encoder, text_cache=root / "text-cache"),  # type: ignore[arg-type]
    )


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)
