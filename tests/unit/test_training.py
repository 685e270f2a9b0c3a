"""Training and evaluation on a small generated dataset, end to end through the same code as the reports."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from prometheus_client import CollectorRegistry

from models.evaluate import load_split
from models.features import user_tower_features
from models.hgnn import HGNNConfig
from models.serving import TrainedModel, train_for_serving
from models.synthetic import generate, write_dataset
from models.text import HashingEncoder
from models.train import (
    MODELS,
    TrainConfig,
    choose_trend_tau,
    choose_trend_weight,
    histories_list,
    render_markdown,
    run_evaluation,
    select_trend_weight,
    weight_row,
    write_report,
)
from models.twotower import TrendLevels, TwoTowerConfig, item_vectors, train_two_tower, user_item_features, user_vectors
from monitoring.metrics import RefresherMetrics
from streams.agents import empty_levels
from streams.records import CatalogItem, ItemUpdate, UserUpdate
from vectorstore.compose import ComposedUsers
from vectorstore.server import ServerStore
from workers.refresher import Changes, Refresher
from workers.settings import RefresherSettings

SMALL = TrainConfig(hgnn=HGNNConfig(hidden=32, out=16, epochs=3, batch_edges=256),
                    two_tower=TwoTowerConfig(dim=16, hidden=32, epochs=3, batch=64, examples_per_user=10))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    data = generate(users=60, items_per_type=20, events_per_user=12, seed=5)
    return write_dataset(data, tmp_path_factory.mktemp("synthetic"), holdout=True), data


def test_every_row_of_the_table_is_evaluated_and_reported(dataset, tmp_path):
    folder, _ = dataset
    split = load_split(folder)
    assert split.protocol == "user-holdout"
    rows = run_evaluation(split, HashingEncoder(64), SMALL)
    report = json.loads(write_report(split, rows, SMALL, "test", tmp_path).read_text())
    assert {r["model"] for r in report["rows"]} == set(MODELS)
    assert {r["item_type"] for r in report["rows"]} == {"podcast", "audiobook"}
    for r in report["rows"]:
        assert set(r) == {"dataset", "model", "item_type", "users", "hr10", "mrr", "ndcg10", "cov100"}
        assert 0 <= r["hr10"] <= 1 and 0 <= r["cov100"] <= 1 and r["users"] > 0
    assert (tmp_path / f"{split.name}.md").read_text().count("|") > 50


def test_time_split_targets_are_new_items_after_the_cut(dataset):
    folder, data = dataset
    (folder / "holdout.tsv").rename(folder / "holdout.off")
    try:
        split = load_split(folder)
    finally:
        (folder / "holdout.off").rename(folder / "holdout.tsv")
    assert split.protocol == "time-split" and split.cut is not None
    assert all(ts < split.cut for _, _, ts in split.train)
    for targets in split.targets.values():
        for user, item in targets:
            assert item not in split.histories[user]


def test_time_split_validation_cut_never_sees_the_test_period(dataset):
    folder, _ = dataset
    (folder / "holdout.tsv").rename(folder / "holdout.off")
    try:
        test, valid = load_split(folder), load_split(folder, "valid")
    finally:
        (folder / "holdout.off").rename(folder / "holdout.tsv")
    assert valid.cut is not None and test.cut is not None and valid.cut < test.cut
    assert all(ts < valid.cut for _, _, ts in valid.train)
    assert len(valid.train) < len(test.train)
    assert sum(len(t) for t in valid.targets.values()) > 0
    # every validation target was consumed inside the training period of the test split
    seen = {(u, i) for u, i, _ in test.train}
    assert all((u, i) in seen for targets in valid.targets.values() for u, i in targets)


def test_trained_model_serves_through_the_refresher(dataset, tmp_path):
    folder, data = dataset
    encoder = HashingEncoder(64)
    no_trend = replace(SMALL, two_tower=replace(SMALL.two_tower, trend=False))  # cosine; trend: test_features
    directory = train_for_serving(load_split(folder, everything=True), encoder, no_trend, tmp_path, "abc")
    meta = json.loads((directory / "config.json").read_text())
    assert meta["data_fingerprint"] == "abc" and meta["type_names"] == ["audiobook", "podcast"]
    with pytest.raises(ValueError, match="trained on"):
        TrainedModel(directory, "another-encoder")
    model = TrainedModel(directory, encoder.name)
    store = ServerStore(":memory:")
    refresher = Refresher(store, model, encoder, RefresherMetrics.create(CollectorRegistry()), RefresherSettings())
    catalog = {i.item_id: CatalogItem(item_id=i.item_id, item_type=i.item_type, title=i.title,
                                      description=i.text) for i in data.items}
    items = {"p0000": ItemUpdate(item_id="p0000", item_type="podcast",
                                 adjacency={"a0001": ["audiobook", 3, 1.0]}, levels=empty_levels())}
    state = {"recent": {"podcast": [["p0000", 1.0]], "audiobook": [["a0001", 2.0]]},
             "consumed": {"p0000": 1.0, "a0001": 2.0}, "event_ids": {}, "counts": {"podcast": 1, "audiobook": 1}}
    refresher.apply(Changes(catalog, items, {"u": UserUpdate(user_id="u", state=state, event_ts=1.0)}))
    assert store.count_items() == len(data.items)
    user = ComposedUsers(store, model.composer)(store.get_user("u"))
    assert user is not None and user.model_version == model.version
    assert np.isclose(np.linalg.norm(user.vector), 1.0, atol=1e-5)
    hits = store.search(user.vector, 5, item_type="podcast", exclude=user.consumed)
    assert len(hits) == 5 and "p0000" not in {h.item_id for h in hits}


def write_planted(folder, items_per_type: int = 30, users: int = 400, length: int = 8, seed: int = 3):
    """Items of two types on one hidden cycle (a random order of all items); every user walks ``length + 1``
    consecutive items of it from a random start; the last is held out. Titles are random, so only the walks
    say what comes next: the held-out item is planted right after the user's last training item."""
    rng = np.random.default_rng(seed)
    ids = [f"{t[0]}{n:03d}" for t in ("podcast", "audiobook") for n in range(items_per_type)]
    cycle = [ids[k] for k in rng.permutation(len(ids))]
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "items.tsv").open("w") as out:
        out.write("item_id\titem_type\ttitle\ttext\n")
        for item_id in ids:
            kind = "podcast" if item_id[0] == "p" else "audiobook"
            out.write(f"{item_id}\t{kind}\ttitle {rng.integers(10**6)}\t\n")
    events, holdout = [], []
    for u in range(users):
        start = int(rng.integers(len(cycle)))
        walk = [cycle[(start + k) % len(cycle)] for k in range(length + 1)]
        t0 = 1_000_000 + u
        events += [(t0 + 1000 * k, f"u{u}", item) for k, item in enumerate(walk[:-1])]
        holdout.append((f"u{u}", walk[-1]))
    with (folder / "events.tsv").open("w") as out:
        out.write("user_id\titem_id\tts\n")
        out.writelines(f"{user}\t{item}\t{ts}\n" for ts, user, item in sorted(events))
    with (folder / "holdout.tsv").open("w") as out:
        out.write("user_id\titem_id\tsplit\n")
        out.writelines(f"{user}\t{item}\ttest\n" for user, item in holdout)
    return folder


def test_trained_model_ranks_a_planted_next_item_above_chance(tmp_path):
    split = load_split(write_planted(tmp_path / "planted"))
    config = TrainConfig(hgnn=HGNNConfig(hidden=32, out=16, epochs=5, batch_edges=256),
                         two_tower=TwoTowerConfig(dim=32, hidden=64, epochs=15, batch=128, lr=3e-3,
                                                  temperature=0.1))
    rows = {row.model: row for row in run_evaluation(split, HashingEncoder(64), config, ("popularity", "2t_hgnn"))}
    for result in rows["2t_hgnn"].results:
        candidates = len(split.items_of(result.item_type)) - 8  # at most 8 of them excluded as history
        chance = 10 / candidates
        assert result.users > 150
        assert result.hr10 > 2 * chance, (result, chance)
        popularity = next(r for r in rows["popularity"].results if r.item_type == result.item_type)
        assert result.hr10 > popularity.hr10 + 0.2


def write_trending(folder, users: int = 200, per_type: int = 40, events_per_user: int = 30, seed: int = 7):
    """Items of two types; events at random times over 100 days. In each 5-day period one item of each type is
    hot: an event takes it with probability 0.7 (unless its user has it already), else a uniform item of the
    last 21. From day 87 on, the hot item is a new one (item 18 of its type), which stays hot past the time split's
    cut (the 90th percentile, about day 90): a user's next new item after the cut is mostly it. At the cut it
    has fewer events than the 17 earlier hot items, so all-time popularity ranks it about 18th; trending, first."""
    rng = np.random.default_rng(seed)
    types = ("podcast", "audiobook")
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "items.tsv").open("w") as out:
        out.write("item_id\titem_type\ttitle\ttext\n")
        for kind in types:
            for n in range(per_type):
                out.write(f"{kind[0]}{n:03d}\t{kind}\ttitle {rng.integers(10**6)}\t\n")
    day = 86400.0
    events = []
    for u in range(users):
        seen: set[str] = set()
        for ts in np.sort(rng.uniform(0, 100 * day, events_per_user)):
            kind = types[int(rng.integers(2))]
            hot = f"{kind[0]}{(18 if ts >= 87 * day else int(ts // (5 * day))):03d}"
            item = hot if hot not in seen and rng.random() < 0.7 else f"{kind[0]}{int(rng.integers(19, per_type)):03d}"
            seen.add(item)
            events.append((1e9 + ts, f"u{u}", item))
    with (folder / "events.tsv").open("w") as out:
        out.write("user_id\titem_id\tts\n")
        out.writelines(f"{user}\t{item}\t{ts:.0f}\n" for ts, user, item in sorted(events))
    return folder


def test_the_trend_coordinate_finds_a_planted_trending_item(tmp_path):
    """The trend's time constant chosen on validation is a short one, and the 2T-HGNN with the trend ranks the
    item trending at the cut: far above all-time popularity and above the same model without the trend."""
    folder = write_trending(tmp_path / "trending")
    split = load_split(folder)
    tau, chosen = choose_trend_tau(load_split(folder, "valid"))
    assert tau is not None and tau <= 7 * 86400, chosen
    config = TrainConfig(hgnn=HGNNConfig(hidden=32, out=16, epochs=3, batch_edges=256),
                         two_tower=TwoTowerConfig(dim=32, hidden=64, epochs=5, batch=128, examples_per_user=10))
    rows = {row.model: {r.item_type: r for r in row.results} for row in run_evaluation(
        split, HashingEncoder(64), config, ("popularity", "popularity_recent", "2t_hgnn", "2t_hgnn-no_trend"),
        trend_tau=tau)}
    for kind in ("podcast", "audiobook"):
        trending = rows["2t_hgnn"][kind]
        assert trending.users > 50
        assert rows["popularity_recent"][kind].hr10 > rows["popularity"][kind].hr10 + 0.3, rows
        assert trending.hr10 > rows["popularity"][kind].hr10 + 0.3, rows
        # without the trend the item is often in the top 10 of 21 candidates too, but rarely first
        assert trending.mrr > rows["2t_hgnn-no_trend"][kind].mrr + 0.2, rows


def test_the_trend_weight_is_the_best_on_validation_and_ties_go_to_the_smaller():
    assert select_trend_weight({1.0: 0.40, 2.0: 0.45, 4.0: 0.52, 8.0: 0.50, 64.0: 0.30}) == 4.0
    assert select_trend_weight({1.0: 0.40, 2.0: 0.45, 4.0: 0.50, 8.0: 0.50, 16.0: 0.50}) == 4.0
    assert select_trend_weight({64.0: 0.2, 1.0: 0.2}) == 1.0
    with pytest.raises(ValueError, match="no trend weights"):
        select_trend_weight({})


def test_the_report_header_shows_the_trend_weight_and_its_validation_grid():
    report = {"dataset": "d", "protocol": "time-split", "command": "gfm evaluate", "device": "cpu", "threads": 1,
              "rows": [], "costs": [],
              "trend": {"tau": 3 * 86400.0, "valid_hr10": [[None, 0.2], [3 * 86400.0, 0.3]], "weight": 16.0,
                        "weight_valid_hr10": [[1.0, 0.25], [16.0, 0.3204]], "weight_seconds": 407.0}}
    text = render_markdown(report)
    assert "**3 d** (no decay 0.2000, 3 d 0.3000)" in text
    assert "in 407.0 s: (x1 0.2500, x16 0.3204)): **x16**" in text
    fixed = render_markdown({**report, "trend": {**report["trend"], "weight": 2.0, "weight_valid_hr10": None}})
    assert "fixed by `--trend-weight`, not chosen): **x2**" in fixed


def test_the_trend_weight_is_chosen_on_a_model_trained_on_validation_and_applied_to_the_trend_rows(tmp_path):
    """choose_trend_weight scores one 2T-HGNN (seed 0, trained on the validation split) at every multiplier and
    takes the best; run_evaluation's trend_weight is what the 2t_hgnn row is scored with: its figures are those
    of the weight row with that multiplier, one trained model for both."""
    folder = write_trending(tmp_path / "trending", users=120)
    valid = load_split(folder, "valid")
    tau, _ = choose_trend_tau(valid)
    config = TrainConfig(hgnn=HGNNConfig(hidden=16, out=16, epochs=2, batch_edges=256),
                         two_tower=TwoTowerConfig(dim=16, hidden=32, epochs=2, batch=128, examples_per_user=5))
    encoder = HashingEncoder(32)
    weight, record = choose_trend_weight(valid, encoder, config, tau, weights=(1.0, 4.0, 64.0))
    scores = dict(map(tuple, record["weight_valid_hr10"]))
    assert list(scores) == [1.0, 4.0, 64.0] and record["weight"] == weight
    assert scores[weight] == max(scores.values()) and all(scores[w] < scores[weight] for w in scores if w < weight)
    rows = {row.model: row for row in run_evaluation(valid, encoder, config, (weight_row(1.0), weight_row(64.0)),
                                                     trend_tau=tau)}
    for w in (1.0, 64.0):  # the same model (seed 0, trained on the validation split) as the choice scored
        assert round(float(np.mean([r.hr10 for r in rows[weight_row(w)].results])), 4) == scores[w]

    split = load_split(folder)
    for multiplier in (1.0, 64.0):
        rows = {row.model: row for row in run_evaluation(
            split, encoder, config, ("2t_hgnn", weight_row(1.0), weight_row(64.0)), trend_tau=tau,
            trend_weight=multiplier)}
        assert rows["2t_hgnn"].results == [replace(r, model="2t_hgnn") for r in rows[weight_row(multiplier)].results]
    # the multiplier moves the figures (else the test could not tell whether it was applied)
    assert rows[weight_row(1.0)].results != [replace(r, model=weight_row(1.0)) for r in rows[weight_row(64.0)].results]
    assert rows[weight_row(64.0)].train_seconds < rows["2t_hgnn"].train_seconds  # trained once, rescaled


def test_a_trained_trend_model_serves_its_training_score(dataset, tmp_path):
    """A model trained with the trend: config.json says its time constant and epoch; its served vectors (items with
    their level at the cut from models.trend, users with lambda_u) dotted give the training logit at that time,
    up to one constant per user (the epoch's shift), so they rank every user's items as training scored them."""
    folder, _ = dataset
    split = load_split(folder, everything=True)
    tau = 3 * 86400.0
    directory = train_for_serving(split, HashingEncoder(64), SMALL, tmp_path, "abc", tau, trend_weight=8.0)
    meta = json.loads((directory / "config.json").read_text())
    assert meta["trend_tau"] == tau and meta["trend_epoch"] == split.now and meta["trend_weight"] == 8.0
    served_model = TrainedModel(directory, HashingEncoder(64).name)
    assert served_model.towers.trend_weight == 8.0 and served_model.composer._forward.trend_weight == 8.0

    rng = np.random.default_rng(0)
    embedding = rng.normal(size=(len(split.items), 16)).astype(np.float32)
    text = rng.normal(size=(len(split.items), 8)).astype(np.float32)
    histories = histories_list(split, SMALL.graph)
    config = SMALL.two_tower
    model, _ = train_two_tower(histories, embedding, text, split.item_type, len(split.type_names), config,
                               torch.device("cpu"), trend_tau=tau)
    served_items = item_vectors(model, embedding, text, split.item_type, torch.device("cpu"), None,
                                split.levels(tau))
    served_users = user_vectors(model, histories.final_states, histories.rows, split.item_type, split.type_names,
                                user_item_features(embedding, text, config), config, torch.device("cpu"))
    served = served_users @ served_items.T
    assert served.shape == (len(histories), len(split.items))

    features = user_tower_features(histories.final_states, histories.rows, split.item_type, split.type_names,
                                   user_item_features(embedding, text, config), config.history, config.last_item)
    with torch.no_grad():
        u, weight = model.user_parts(torch.from_numpy(features))
        v = model.items(torch.from_numpy(embedding), torch.from_numpy(text), torch.from_numpy(split.item_type),
                        torch.zeros(len(split.items)))
        everything = torch.arange(len(split.items))
        later = torch.full((len(histories),), split.now + 1.0, dtype=torch.float64)  # every event strictly before
        trend = TrendLevels(np.concatenate(histories.items), np.concatenate(histories.ts), tau)(everything, later)
        logit = (model.scale * (u @ v.T) / config.temperature).double() + weight[:, None].double() * trend
    assert float(weight.min()) >= 0.0 and float(weight.max()) > 0.0
    shift = served - logit.numpy()
    assert np.abs(shift - shift[:, :1]).max() < 1e-3
