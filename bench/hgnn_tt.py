"""HGNN lever selection, step 3: the unified two-tower on HGNN embeddings saved by ``bench/hgnn_exp.py --save
DIR`` (or on the text, ``text``, as the ``2t_no_gnn`` row), trained and scored as the ``2t_hgnn`` row of
``gfm evaluate --split valid`` computes it (``train_two_tower`` + ``two_tower_scorer`` + ``evaluate_scorer``;
the code's default ``TwoTowerConfig`` with the pickled ``history``; the trend's time constant chosen on the
pickled split by ``choose_trend_tau``, as ``gfm evaluate --split valid`` does), once per two-tower seed
(``--seeds 0,1,2``; default 0). Usage:

    python bench/hgnn_tt.py PREP.pkl [--seeds 0,1,2] EMB.npy|text [EMB.npy ...]
"""
import logging
import pickle
import sys
import time
from dataclasses import replace

import numpy as np
import torch

from models.evaluate import evaluate_scorer
from models.train import choose_trend_tau, histories_list, two_tower_scorer
from models.twotower import TwoTowerConfig, train_two_tower

logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
args = sys.argv[1:]
seeds = [0]
if "--seeds" in args:
    k = args.index("--seeds")
    seeds = [int(s) for s in args[k + 1].split(",")]
    del args[k : k + 2]
with open(args[0], "rb") as handle:
    d = pickle.load(handle)
split, text, graph, config = d["split"], d["text"], d["graph"], d["config"]
towers = TwoTowerConfig(history=config.two_tower.history)  # the code's defaults, not the prep step's
histories = histories_list(split, config.graph)
tau = choose_trend_tau(split)[0] if towers.trend else None
print("trend tau", tau, flush=True)
device = torch.device("cpu")
for source in args[1:]:
    emb = text if source == "text" else np.load(source)
    base = replace(towers, user_text=False) if source == "text" else towers  # as 2t_no_gnn
    for seed in seeds:
        tt = replace(base, seed=seed)
        started = time.time()
        degree = graph.weighted_degree(len(split.items)) if tt.item_degree else None
        model, losses = train_two_tower(histories, emb, text, split.item_type, len(split.type_names), tt, device,
                                        degree=degree, trend_tau=tau)
        scorer = two_tower_scorer(split, histories, model, emb, text, tt, device, degree, tau)
        res = {r.item_type: (r.users, round(r.hr10, 4), round(r.ndcg10, 4)) for r in
               (evaluate_scorer(split, source, scorer, t) for t in split.type_names if split.targets[t])}
        print(f"2t on {source} seed {seed}: {res} train {time.time() - started:.0f}s", flush=True)
