"""HGNN lever selection, step 3: the unified two-tower (default config) on HGNN embeddings saved by
``bench/hgnn_exp.py --save DIR`` (or on the text, ``text``), trained and scored as the ``2t_hgnn`` row of
``gfm evaluate --split valid`` computes it (``train_two_tower`` + ``two_tower_scorer`` + ``evaluate_scorer``,
seed 0). Usage:

    python bench/hgnn_tt.py PREP.pkl EMB.npy|text [EMB.npy ...]
"""
import logging
import pickle
import sys
import time
from dataclasses import replace

import numpy as np
import torch

from models.evaluate import evaluate_scorer
from models.train import histories_list, two_tower_scorer
from models.twotower import train_two_tower

logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
with open(sys.argv[1], "rb") as handle:
    d = pickle.load(handle)
split, text, graph, config = d["split"], d["text"], d["graph"], d["config"]
histories = histories_list(split, config.graph)
device = torch.device("cpu")
for source in sys.argv[2:]:
    emb = text if source == "text" else np.load(source)
    tt = replace(config.two_tower, user_text=False) if source == "text" else config.two_tower  # as 2t_no_gnn
    started = time.time()
    degree = graph.weighted_degree(len(split.items)) if tt.item_degree else None
    model, losses = train_two_tower(histories, emb, text, split.item_type, len(split.type_names), tt, device,
                                    degree=degree)
    scorer = two_tower_scorer(split, histories, model, emb, text, tt, device, degree)
    res = {r.item_type: (round(r.hr10, 4), round(r.ndcg10, 4)) for r in
           (evaluate_scorer(split, source, scorer, t) for t in split.type_names if split.targets[t])}
    print(f"2t on {source}: {res} train {time.time() - started:.0f}s", flush=True)
