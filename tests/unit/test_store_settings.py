"""The embedded store's flush interval setting: parsed from the environment, validated, passed to the store."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from workers.services import build_store
from workers.settings import QdrantSettings, Settings


def test_the_flush_interval_is_read_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("GFM_QDRANT__FLUSH_INTERVAL_S", "2.5")
    monkeypatch.setenv("GFM_QDRANT__PATH", str(tmp_path))
    settings = Settings()
    assert settings.qdrant.flush_interval_s == 2.5
    store = build_store(settings)
    assert store.flush_interval_s == 2.5  # type: ignore[attr-defined]


def test_the_flush_interval_defaults_to_five_seconds():
    assert QdrantSettings().flush_interval_s == 5.0


@pytest.mark.parametrize("bad", ["-1", "soon"])
def test_a_bad_flush_interval_is_refused_naming_the_setting(monkeypatch, bad):
    monkeypatch.setenv("GFM_QDRANT__FLUSH_INTERVAL_S", bad)
    with pytest.raises(ValidationError, match="flush_interval_s"):
        Settings()
