"""Lever selection, step 2: train two-tower variants on a pickle from bench/lever_prep.py and print, per
variant, HR@10 and NDCG@10 per type (the evaluator of `gfm evaluate`) and the Spearman correlation of the
mean score over 200 validation users with item popularity. Usage:

    python bench/lever_exp.py PREP.pkl hgnn NAME:field=value,field=value ...

where `hgnn` (or `hgnn_noib`) picks the prepared HGNN embeddings and the fields are TwoTowerConfig fields
(booleans as 0/1), changed from the config pickled by the prep step.
"""
import logging
import pickle
import sys
import time
from dataclasses import replace

import torch
from scipy.stats import spearmanr

from models.evaluate import evaluate_scorer
from models.train import histories_list, two_tower_scorer
from models.twotower import train_two_tower

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
with open(sys.argv[1], "rb") as handle:
    d = pickle.load(handle)
split, text, graph = d["split"], d["text"], d["graph"]
emb_name = sys.argv[2]
base = d["config"].two_tower
for spec in sys.argv[3:]:
    name, _, kv = spec.partition(":")
    change = {}
    for pair in filter(None, kv.split(",")):
        k, v = pair.split("=")
        cur = getattr(base, k) if k != "emb" else ""
        change[k] = v if k == "emb" else (v == "1" if isinstance(cur, bool) else type(cur)(v))
    emb = d["embs"].get(change.pop("emb", emb_name)) if True else None
    if emb is None:
        emb = text
    tt = replace(base, **change)
    t = time.time()
    degree = graph.weighted_degree(len(split.items))
    stamps: dict[str, list[float]] = {}
    for user, _, ts in split.train:
        stamps.setdefault(user, []).append(ts)
    model, losses = train_two_tower(histories_list(split), emb, text, split.item_type, len(split.type_names), tt,
                                    torch.device("cpu"), degree=degree if tt.item_degree else None,
                                    times=list(stamps.values()))
    scorer = two_tower_scorer(split, model, emb, text, tt, torch.device("cpu"), degree if tt.item_degree else None)
    res = {r.item_type: (round(r.hr10, 4), round(r.ndcg10, 4)) for r in
           (evaluate_scorer(split, name, scorer, ty) for ty in split.type_names if split.targets[ty])}
    diag = {}
    users = [u for u, _ in split.targets[split.type_names[0]]][:200]
    for ty in split.type_names:
        c = split.items_of(ty)
        s = scorer(users, c).mean(0)
        diag[ty] = round(spearmanr(s, split.popularity[c]).correlation, 3)
    print(f"{name}: {res} pop-spearman {diag} loss {losses[-1]:.3f} {time.time()-t:.0f}s", flush=True)
