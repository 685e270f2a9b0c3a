"""HGNN lever selection, step 2: train HGNN variants on a pickle from bench/hgnn_prep.py and print, per variant,
the ``hgnn`` row of ``gfm evaluate --split valid`` (a user is the mean of their last ``history`` training items'
HGNN embeddings, items score by dot product: ``embedding_scorer`` through ``evaluate_scorer``): HR@10 and NDCG@10
per type, the training seconds and the last epoch's loss. Usage:

    python bench/hgnn_exp.py PREP.pkl NAME:field=value,field=value ...

where the fields are HGNNConfig fields (booleans as 0/1), changed from the config pickled by the prep step
(the code's defaults at prep time). ``--save DIR`` also writes each variant's embeddings to ``DIR/NAME.npy``.
"""
import logging
import pickle
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from models.evaluate import embedding_scorer, evaluate_scorer
from models.hgnn import HGNNConfig, embed, train_hgnn

logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
args = sys.argv[1:]
save = None
if "--save" in args:
    k = args.index("--save")
    save = Path(args[k + 1])
    del args[k : k + 2]
with open(args[0], "rb") as handle:
    d = pickle.load(handle)
split, text, graph = d["split"], d["text"], d["graph"]
history = d["config"].two_tower.history
defaults = HGNNConfig()
for spec in args[1:]:
    name, _, kv = spec.partition(":")
    change: dict[str, object] = {}
    for pair in filter(None, kv.split(",")):
        k, v = pair.split("=")
        cur = getattr(defaults, k)
        change[k] = v == "1" if isinstance(cur, bool) else type(cur)(v)
    config = replace(defaults, **change)
    started = time.time()
    model, losses = train_hgnn(graph, text, config, torch.device("cpu"))
    seconds = time.time() - started
    emb = embed(model, graph, text, torch.device("cpu"))
    if save is not None:
        save.mkdir(parents=True, exist_ok=True)
        np.save(save / f"{name}.npy", emb)
    scorer = embedding_scorer(split, emb, history)
    res = {r.item_type: (round(r.hr10, 4), round(r.ndcg10, 4)) for r in
           (evaluate_scorer(split, name, scorer, t) for t in split.type_names if split.targets[t])}
    print(f"{name}: {res} train {seconds:.0f}s loss {losses[-1]:.3f} ({change})", flush=True)
