"""``gfm online-eval`` end to end on the seeded generator's data: real tansu, the Faust worker, the API with the
refresher and the embedded store, serving a small 2T-HGNN trained on the events before the cut."""

import json

import pytest

from models.datasets import Event
from models.evaluate import load_split
from models.serving import cached_model
from models.synthetic import SyntheticData, generate, write_dataset
from workers.online import OnlineOptions, run_online_eval
from workers.services import build_encoder
from workers.stack import demo_train_config

pytestmark = pytest.mark.integration


def spread(data: SyntheticData) -> SyntheticData:
    """The generator's users with their plays spread over the whole period, interleaved (the k-th play of every
    user before anyone's (k+1)-th), so that most users have plays on both sides of the 90th-percentile cut."""
    by_user: dict[str, list[Event]] = {}
    for event in data.events:
        by_user.setdefault(event.user_id, []).append(event)
    events = [Event(e.user_id, e.item_id, 1.7e9 + 600.0 * k + u)
              for u, user in enumerate(sorted(by_user)) for k, e in enumerate(by_user[user])]
    return SyntheticData(data.items, sorted(events, key=lambda e: e.ts), data.topic_of)


def test_online_eval_reports_three_modes_and_frozen_equals_the_offline_evaluator(tmp_path):
    from tests.conftest import make_settings

    data = write_dataset(spread(generate(users=60, events_per_user=20)), tmp_path / "data")
    settings = make_settings(tmp_path / "var", model="gfm")
    trained = []

    def model_dir(split):
        directory, fresh = cached_model(split, build_encoder(settings), demo_train_config(settings),
                                        tmp_path / "models", "synthetic-before-cut")
        trained.append(fresh)
        return directory

    options = OnlineOptions(rate=50.0, limit_events=None, every=40)
    path = run_online_eval(settings, data, options, "pytest online", tmp_path / "reports", model_dir)
    report = json.loads(path.read_text())
    split = load_split(data)

    assert path.name == "online-data-whole-period.json" and path.with_suffix(".md").read_text().startswith(
        "# Online evaluation: data\n\nCommand: `pytest online`")
    assert trained == [True]
    assert report["facts"]["replayed_events"] == report["facts"]["test_events"] > 0
    targets = sum(len(v) for v in split.targets.values())
    assert report["facts"]["all_targets"] == targets >= 40
    assert set(report["modes"]) == {"live", "frozen", "periodic"}
    for mode, result in report["modes"].items():
        assert result["failed"] == 0, (mode, result["failures"])
        assert result["questions"] == targets, mode
        assert {r["item_type"] for r in result["rows"]} == {t for t, v in split.targets.items() if v}
        assert sum(r["users"] for r in result["rows"]) == targets
    # periodic checkpoints: the cut, then every 40 test events
    assert [s["checkpoint"] for s in report["freshness"]["settles"]] == list(
        range(0, report["facts"]["test_events"], 40))
    # parity: the frozen stack serves what the offline evaluator ranks with the cut state
    frozen = report["modes"]["frozen"]
    assert frozen["agreement_with_offline"]["identical"] == 1.0, frozen["agreement_with_offline"]
    for row in frozen["rows"]:
        assert row["hr10"] == row["offline_hr10"] and row["ndcg10"] == row["offline_ndcg10"], row
    # the live stack moved: some answers differ from the cut's
    assert report["live_vs_frozen"]["identical"] < 1.0
    for question in report["questions"]:
        assert question["rank_frozen"] == question["rank_offline"], question
