"""Lever selection, step 1: a validation split with its text embeddings, co-interaction graph and HGNN
(seed 0: default config, and without in-batch negatives) prepared once and pickled, so that two-tower
variants (bench/lever_exp.py) cost only their own training. Usage:

    python bench/lever_prep.py DATA_DIR valid OUT.pkl
"""
import logging
import pickle
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from models.evaluate import load_split
from models.hgnn import embed, train_hgnn
from models.train import graph_of, text_embeddings
from workers.cli import _parser, _train_config
from workers.services import build_encoder
from workers.settings import Settings

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
data, split_name, out = sys.argv[1], sys.argv[2], sys.argv[3]
settings = Settings()
args = _parser().parse_args(["evaluate", "--data", data])
config = _train_config(args, settings)
encoder = build_encoder(settings, progress=False)
t = time.time()
split = load_split(Path(data), split_name)
text = text_embeddings(split, encoder)
graph = graph_of(split, split.train, config.graph, config.graph_cache)
print("loaded", time.time() - t, flush=True)
embs = {}
for name, h in [("hgnn", config.hgnn), ("hgnn_noib", replace(config.hgnn, in_batch=False))]:
    t = time.time()
    m, losses = train_hgnn(graph, text, h, torch.device("cpu"))
    embs[name] = embed(m, graph, text, torch.device("cpu"))
    print(name, "trained", time.time() - t, losses, flush=True)
with open(out, "wb") as f:
    pickle.dump({"split": split, "text": text, "graph": graph, "embs": embs, "config": config}, f)
