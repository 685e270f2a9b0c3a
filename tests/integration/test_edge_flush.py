"""The embedded store's periodic flush: without it qdrant-edge keeps every update in its write-ahead log and cannot
reuse freed payload blocks, so its memory and disk grow with the updates (the soak's API process); with it they
stay bounded by the points."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vectorstore.base import ItemPoint, UserPoint
from vectorstore.edge import EdgeStore


def _bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _churn(store: EdgeStore, rounds: int) -> list[int]:
    """Rewrite the same 50 users (1,000 consumed items each, ~0.1 MB of payload apiece) ``rounds`` times; the
    store's size on disk after each round."""
    consumed = [f"item-{i}" for i in range(1000)]
    sizes = []
    for _ in range(rounds):
        store.upsert_users([UserPoint(f"user-{u}", np.ones(8, np.float32), "v1", 0.0, 0.0, consumed, {"movie": 1000})
                            for u in range(50)])
        sizes.append(_bytes(store.path))
    return sizes


def test_flushing_keeps_the_store_bounded_under_rewrites(tmp_path):
    flushed = EdgeStore(tmp_path / "flushed", flush_interval_s=0.0)
    unflushed = EdgeStore(tmp_path / "unflushed", flush_interval_s=1e9)
    for store in (flushed, unflushed):
        store.ensure(8)
    rounds = 30
    with_flush, without = _churn(flushed, rounds), _churn(unflushed, rounds)
    mib = 1 << 20
    assert flushed.flushes == rounds and unflushed.flushes == 0
    # the same 50 points throughout: flushed, the store stops growing once its files are allocated (one 32 MiB
    # write-ahead log segment of slack); unflushed, it keeps every rewrite
    assert with_flush[-1] - with_flush[rounds // 3] <= 32 * mib, with_flush
    assert without[-1] - with_flush[-1] >= 48 * mib, (without, with_flush)
    assert flushed.get_user("user-3") is not None and flushed.get_user("user-3").consumed[-1] == "item-999"
    flushed.close()
    unflushed.close()


def test_the_store_flushes_when_the_interval_has_passed(tmp_path):
    now = [100.0]
    store = EdgeStore(tmp_path, flush_interval_s=5.0, clock=lambda: now[0])
    store.ensure(4)
    point = ItemPoint("a", "movie", "A", np.ones(4, np.float32), "v1", 0.0)
    store.upsert_items([point])
    assert store.flushes == 0
    now[0] += 4.9
    store.upsert_items([point])
    assert store.flushes == 0
    now[0] += 0.1
    store.upsert_users([UserPoint("u", np.ones(4, np.float32), "v1", 0.0, 0.0)])
    assert store.flushes == 1
    store.upsert_items([])  # nothing written, nothing to flush
    now[0] += 10
    store.upsert_items([])
    assert store.flushes == 1
    store.upsert_items([point])
    assert store.flushes == 2
    store.close()


def test_a_negative_flush_interval_is_refused(tmp_path):
    with pytest.raises(ValueError, match="flush_interval_s must be >= 0, got -1"):
        EdgeStore(tmp_path, flush_interval_s=-1)
