"""Lever selection, step 2: train two-tower variants on a pickle from bench/lever_prep.py and print, per
variant, HR@10 and NDCG@10 per type (the evaluator of `gfm evaluate`) and the Spearman correlation of the
mean score over 200 validation users with item popularity. Usage:

    python bench/lever_exp.py PREP.pkl hgnn NAME:field=value,field=value ...

where `hgnn` (or `hgnn_noib`) picks the prepared HGNN embeddings and the fields are TwoTowerConfig fields
(booleans as 0/1; `emb=text` trains on the text embeddings), changed from the defaults in code (the stream's
history length from the pickled config). The trend's time constant is chosen on the pickled split as
`gfm evaluate --split valid` chooses it (`select_trend_tau`); `tau=DAYS` (or `tau=none`) overrides it.
"""
import logging
import pickle
import sys
import time
from dataclasses import replace

import numpy as np
import torch
from scipy.stats import spearmanr

from models.evaluate import evaluate_scorer, recent_popularity_scorer, select_trend_tau
from models.train import histories_list, two_tower_scorer
from models.trend import DAY
from models.twotower import TwoTowerConfig, train_two_tower, user_item_features, user_vectors

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
with open(sys.argv[1], "rb") as handle:
    d = pickle.load(handle)
split, text, graph = d["split"], d["text"], d["graph"]
emb_name = sys.argv[2]
base = TwoTowerConfig(history=d["config"].two_tower.history)
chosen, scores = select_trend_tau(split)
print("trend tau", chosen, {("none" if k is None else k / DAY): round(v, 4) for k, v in scores.items()}, flush=True)
pop = recent_popularity_scorer(split, chosen)
print("popularity_recent:", {r.item_type: (round(r.hr10, 4), round(r.ndcg10, 4)) for r in
                             (evaluate_scorer(split, "p", pop, ty) for ty in split.type_names if split.targets[ty])},
      flush=True)
histories = histories_list(split, d["config"].graph)
degree = graph.weighted_degree(len(split.items))
for spec in sys.argv[3:]:
    name, _, kv = spec.partition(":")
    change: dict[str, object] = {}
    tau = chosen
    emb = d["embs"][emb_name]
    for pair in filter(None, kv.split(",")):
        k, v = pair.split("=")
        if k == "emb":
            emb = text if v == "text" else d["embs"][v]
        elif k == "tau":
            tau = None if v == "none" else float(v) * DAY
        else:
            cur = getattr(base, k)
            change[k] = v == "1" if isinstance(cur, bool) else type(cur)(v)
    tt = replace(base, **change)
    t = time.time()
    model, losses = train_two_tower(histories, emb, text, split.item_type, len(split.type_names), tt,
                                    torch.device("cpu"), degree=degree if tt.item_degree else None, trend_tau=tau)
    train_s = time.time() - t
    scorer = two_tower_scorer(split, histories, model, emb, text, tt, torch.device("cpu"),
                              degree if tt.item_degree else None, tau)
    if tt.trend:
        levels = split.levels(tau)
        states = dict(zip(histories.users, histories.final_states, strict=True))
        per_item = user_item_features(emb, text, tt)

        def lam_of(users, model=model, states=states, per_item=per_item, tt=tt):
            return user_vectors(model, [states[x] for x in users], histories.rows, split.item_type,
                                split.type_names, per_item, tt, torch.device("cpu"))[:, -1]
        lam = lam_of([u for u in histories.users[:2000]])
        print(f"  {name} lambda_u quantiles 5/50/95%: {np.percentile(lam, [5, 50, 95]).round(3)}", flush=True)
    res = {r.item_type: (round(r.hr10, 4), round(r.ndcg10, 4)) for r in
           (evaluate_scorer(split, name, scorer, ty) for ty in split.type_names if split.targets[ty])}
    diag = {}
    users = [u for u, _ in split.targets[split.type_names[0]]][:200]
    for ty in split.type_names:
        c = split.items_of(ty)
        s = scorer(users, c).mean(0)
        diag[ty] = round(spearmanr(s, split.popularity[c]).correlation, 3)
    if tt.trend:  # diagnostic: the trend's weight at evaluation scaled by c (c = 1 is the trained model)
        base_scorer = scorer
        for c in (0.0, 0.5, 2.0, 4.0):
            def scaled(users, cand, c=c, base_scorer=base_scorer, lam_of=lam_of, levels=levels):
                return base_scorer(users, cand) + (c - 1.0) * lam_of(users)[:, None] * levels[cand][None, :]
            out = {r.item_type: (round(r.hr10, 4), round(r.ndcg10, 4)) for r in
                   (evaluate_scorer(split, name, scaled, ty) for ty in split.type_names if split.targets[ty])}
            print(f"  {name} trend weight x{c}: {out}", flush=True)
    print(f"{name}: {res} pop-spearman {diag} loss {losses[-1]:.3f} train {train_s:.0f}s total {time.time()-t:.0f}s",
          flush=True)
