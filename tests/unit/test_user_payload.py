"""A user's stored payload: its lists in one JSON string (a payload list costs qdrant-edge ~5 us per element to
convert), read back exactly, and payloads written before that still read."""

import numpy as np

from vectorstore.base import UserPoint, item_point_id, user_from, user_payload


def _user() -> UserPoint:
    recent = {"film": [["i0", 1.5], ["i\u00e9\"2", 2.0]], "family": [["i3", 3.25]]}
    return UserPoint("u1", np.zeros(4, np.float32), "v1", 10.0, 9.5, ["i0", "i\u00e9\"2", "i3"],
                     {"film": 2, "family": 1}, recent=recent)


def test_a_users_lists_are_one_string_and_read_back_exactly():
    user = _user()
    payload = user_payload(user)
    assert not any(isinstance(v, list) for v in payload.values())
    assert isinstance(payload["lists"], str)
    got = user_from(payload, [0.0] * 4)
    assert (got.user_id, got.model_version, got.updated_at, got.event_ts) == ("u1", "v1", 10.0, 9.5)
    assert got.consumed == user.consumed and got.recent == user.recent and got.counts == user.counts
    assert got.excluded_points() == [item_point_id(i) for i in user.consumed]


def test_a_payload_written_before_the_lists_were_one_string_still_reads():
    user = _user()
    legacy = {"user_id": "u1", "model_version": "v1", "updated_at": 10.0, "event_ts": 9.5, "counts": user.counts,
              "consumed": user.consumed, "consumed_points": user.excluded_points(), "recent": user.recent}
    got = user_from(legacy, [0.0] * 4)
    assert got.consumed == user.consumed and got.recent == user.recent
    assert got.excluded_points() == user.excluded_points()
