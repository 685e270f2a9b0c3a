"""The pure parts of the online evaluation: which events are targets, the periodic checkpoints, and the
metrics of API answers through the evaluator."""

from pathlib import Path

import numpy as np
import pytest

from models.evaluate import Split, evaluate_scorer, load_split
from models.online import (
    Target,
    agreement,
    checkpoint_of,
    offline_answers,
    rank_in_list,
    score_answers,
    target_events,
)


def _dataset(folder: Path, events: list[tuple[str, str, int]]) -> Path:
    folder.mkdir()
    items = [("f1", "film"), ("f2", "film"), ("f3", "film"), ("f4", "film"), ("s1", "show"), ("s2", "show")]
    (folder / "items.tsv").write_text("item_id\titem_type\ttitle\ttext\n"
                                      + "".join(f"{i}\t{t}\t{i} title\t\n" for i, t in items))
    (folder / "events.tsv").write_text("user_id\titem_id\tts\n" + "".join(f"{u}\t{i}\t{ts}\n" for u, i, ts in events))
    return folder


# 40 events: the cut (90th percentile of ts) falls at ts 36.1, so the events at ts 37..40 are the test period
BEFORE = [("a", "f1", 1), ("a", "s1", 2), ("b", "f2", 3)] + [("c", "f1", t) for t in range(4, 37)]
AFTER = [
    ("a", "f1", 37),  # a repeat of what a consumed before the cut: not a target
    ("a", "f3", 38),  # a's first new film: the film target
    ("d", "f4", 38),  # d has nothing before the cut: not a test user
    ("a", "f4", 39),  # a's second new film: not a target
    ("b", "s2", 40),  # b's first new show: the show target
]


@pytest.fixture
def split(tmp_path: Path) -> Split:
    return load_split(_dataset(tmp_path / "toy", BEFORE + AFTER))


def test_targets_are_the_first_new_item_per_user_and_type_at_its_test_event(split):
    assert split.cut is not None and 36 < split.cut <= 37
    test = [(u, i) for u, i, ts in BEFORE + AFTER if ts >= split.cut]
    assert target_events(split, test) == [Target("a", "film", "f3", 1), Target("b", "show", "s2", 4)]


def test_targets_missing_from_the_test_events_are_an_error(split):
    with pytest.raises(ValueError, match="1 target"):
        target_events(split, [("a", "f1"), ("a", "f3")])


def test_checkpoints_of_the_periodic_recompute():
    assert [checkpoint_of(p, 5) for p in (0, 4, 5, 9, 10, 11)] == [0, 0, 5, 5, 10, 10]
    with pytest.raises(ValueError, match="every=0"):
        checkpoint_of(3, 0)


def test_answers_score_as_the_evaluator_scores_ranks():
    targets = [Target("u1", "film", "x", 0), Target("u2", "film", "y", 1), Target("u3", "film", "z", 2),
               Target("u4", "show", "s", 3)]
    answers = {("u1", "film"): ["x", "a"], ("u2", "film"): ["a", "b", "c", "y"], ("u3", "film"): ["a"] * 10 + ["z"],
               ("u4", "show"): []}
    assert rank_in_list(["a", "b"], "b") == 1 and rank_in_list(["a"], "q") == 10
    film, show = score_answers(targets, answers)
    assert (film.item_type, film.users, show.users) == ("film", 3, 1)
    assert film.hr10 == pytest.approx(2 / 3)  # z is 11th: past the top 10
    assert film.ndcg10 == pytest.approx((1.0 + 1.0 / np.log2(5)) / 3)
    assert show.hr10 == 0.0 and show.ndcg10 == 0.0


def test_offline_answers_rank_as_the_evaluator(split):
    """Through the evaluator's ranking (consumed items excluded): the answers' metrics equal evaluate_scorer's."""
    order = {"f1": 4.0, "f2": 3.0, "f3": 1.0, "f4": 2.0, "s1": 1.0, "s2": 0.5}
    scores = np.array([order[i.item_id] for i in split.items])

    def scorer(users, candidates):
        return np.tile(scores[candidates], (len(users), 1))

    targets = target_events(split, [(u, i) for u, i, ts in AFTER])
    answers = offline_answers(split, scorer, targets)
    assert answers[("a", "film")] == ["f2", "f4", "f3"]  # f1 consumed before the cut
    assert answers[("b", "show")] == ["s1", "s2"]
    for score in score_answers(targets, answers):
        result = evaluate_scorer(split, "toy", scorer, score.item_type)
        assert (score.users, score.hr10, score.ndcg10) == (result.users, result.hr10, result.ndcg10)
    assert score_answers(targets, answers)[0].ndcg10 == pytest.approx(1 / np.log2(4))


def test_agreement_counts_identical_lists_and_common_items():
    a = {("u", "t"): ["x", "y"], ("v", "t"): ["x", "y"], ("w", "t"): ["q"]}
    b = {("u", "t"): ["x", "y"], ("v", "t"): ["y", "z"]}
    assert agreement(a, b) == {"questions": 2, "identical": 0.5, "overlap": 0.75}


def test_options_reject_impossible_values():
    from workers.online import OnlineOptions

    for bad, field in (({"rate": 0}, "rate=0"), ({"limit_events": 0}, "limit_events=0"), ({"every": 0}, "every=0"),
                       ({"partitions": 0}, "partitions=0")):
        with pytest.raises(ValueError, match=field):
            OnlineOptions(**bad)


def test_report_scores_each_mode_beside_the_offline_answers_on_the_same_users(split, tmp_path):
    from workers.online import Answer, OnlineOptions, Run, build_report, write_report
    from workers.settings import Settings

    targets = target_events(split, [(u, i) for u, i, ts in AFTER])
    run = Run(targets)
    film, show = ("a", "film"), ("b", "show")
    run.answers["frozen"] = {film: Answer(["f3", "f2"], 1.0, 0.01, 0.5), show: Answer(["s1"], 1.0, 0.01, 0.5)}
    run.answers["periodic"] = dict(run.answers["frozen"])
    run.answers["live"] = {film: Answer(["f2", "f3"], 2.0, 0.01, 1.5, 0.2, True)}  # the show question failed
    run.failures["live"] = ["b/show: 404"]
    run.facts.update(model_dir="m", model_seconds=0.0, test_events=5, replayed_events=5, all_targets=2,
                     first_ts=37.0, last_ts=40.0, partitions=1)
    report = build_report(split, run, OnlineOptions(every=2), Settings(), "gfm online-eval --data toy",
                          offline=lambda asked: {film: ["f2", "f3"], show: ["s2", "s1"]})
    frozen = {r["item_type"]: r for r in report["modes"]["frozen"]["rows"]}
    assert (frozen["film"]["hr10"], frozen["film"]["ndcg10"], frozen["film"]["offline_ndcg10"]) == (
        1.0, 1.0, round(1 / np.log2(3), 4))
    assert (frozen["show"]["hr10"], frozen["show"]["offline_hr10"]) == (0.0, 1.0)
    live = report["modes"]["live"]
    assert [r["item_type"] for r in live["rows"]] == ["film"] and live["failed"] == 1
    assert live["agreement_with_offline"] == {"questions": 1, "identical": 1.0, "overlap": 1.0}
    assert report["questions"][1] == {"user_id": "b", "item_type": "show", "item_id": "s2", "position": 4,
                                      "rank_live": None, "rank_frozen": 10, "rank_periodic": 10, "rank_offline": 0}
    assert report["freshness"]["user_point_written_after_last_event"] == 1.0
    path = write_report(report, tmp_path)
    text = path.with_suffix(".md").read_text()
    assert path.name == "online-toy.json" and "Command: `gfm online-eval --data toy`" in text
    assert "| frozen at the cut | show | 1 | 0.0000 | 1.0000 |" in text
