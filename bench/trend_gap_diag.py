"""Diagnostic, validation only (issue 7): the trend's weight at evaluation scaled per user by how long the user has
been inactive at the cut, ``1 + a * log1p(gap_days)``, where ``gap_days`` is ``split.now`` minus the user's last
training event (known at the cut; at serving, the time since the state's latest event), on top of a global
multiplier ``c``. Trains the default two-tower (seed 0) on a pickle from ``bench/lever_prep.py`` and prints HR@10 and
NDCG@10 per type for each ``(c, a)``, beside ``popularity_recent``. Usage:

    python bench/lever_prep.py ../shared/data/movielens-1m valid /tmp/ml-valid.pkl
    python bench/trend_gap_diag.py /tmp/ml-valid.pkl

Nothing here changes a default: it asks whether a user-recency-aware trend weight is worth building into the towers.
"""
import logging
import pickle
import sys
import time

import numpy as np
import torch

from models.evaluate import evaluate_scorer, recent_popularity_scorer, select_trend_tau
from models.train import histories_list, two_tower_scorer
from models.trend import DAY
from models.twotower import TwoTowerConfig, train_two_tower, user_item_features, user_vectors

logging.basicConfig(level=logging.WARNING)
with open(sys.argv[1], "rb") as handle:
    d = pickle.load(handle)
split, text, graph = d["split"], d["text"], d["graph"]
tt = TwoTowerConfig(history=d["config"].two_tower.history)
tau, _ = select_trend_tau(split)
last = {}
for u, _, ts in split.train:  # in time order: the last one stays
    last[u] = ts
gap_days = {u: max(0.0, (split.now - ts) / DAY) for u, ts in last.items()}
for ty in split.type_names:
    g = np.array([gap_days.get(u, 0.0) for u, _ in split.targets[ty]])
    print(ty, "targets", len(g), "gap days at the cut: quantiles 10/50/90", np.percentile(g, [10, 50, 90]).round(1),
          flush=True)
pop = recent_popularity_scorer(split, tau)


def table(scorer, label):
    out = {r.item_type: (round(r.hr10, 4), round(r.ndcg10, 4)) for r in
           (evaluate_scorer(split, label, scorer, ty) for ty in split.type_names if split.targets[ty])}
    print(f"{label:28s} {out}", flush=True)


table(pop, "popularity_recent")
histories = histories_list(split, d["config"].graph)
degree = graph.weighted_degree(len(split.items))
t = time.time()
model, losses = train_two_tower(histories, d["embs"]["hgnn"], text, split.item_type, len(split.type_names), tt,
                                torch.device("cpu"), degree=degree if tt.item_degree else None, trend_tau=tau)
print("trained", round(time.time() - t), "s", flush=True)
emb = d["embs"]["hgnn"]
scorer = two_tower_scorer(split, histories, model, emb, text, tt, torch.device("cpu"),
                          degree if tt.item_degree else None, tau)
levels = split.levels(tau)
states = dict(zip(histories.users, histories.final_states, strict=True))
per_item = user_item_features(emb, text, tt)


def lam_of(users):
    return user_vectors(model, [states[x] for x in users], histories.rows, split.item_type, split.type_names, per_item,
                        tt, torch.device("cpu"))[:, -1]


for c in (1.0, 8.0, 16.0):
    for a in (0.0, 0.25, 0.5, 1.0):
        def scaled(users, cand, c=c, a=a):
            g = np.array([1.0 + a * np.log1p(gap_days.get(u, 0.0)) for u in users])
            return scorer(users, cand) + (c * g - 1.0)[:, None] * lam_of(users)[:, None] * levels[cand][None, :]

        table(scaled, f"x{c:g}, 1+{a:g}*log1p(gap_d)")
