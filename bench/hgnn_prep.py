"""HGNN lever selection, step 1: a validation split with its text embeddings and co-interaction graph prepared
once and pickled (the inputs of the ``hgnn`` row of ``gfm evaluate --split valid``), so that HGNN variants
(bench/hgnn_exp.py) cost only their own training. Prints the reference rows (popularity, cooc_knn) on the same
split. Usage:

    python bench/hgnn_prep.py DATA_DIR valid OUT.pkl
"""
import logging
import pickle
import sys
import time
from pathlib import Path

from models.evaluate import cooc_scorer, evaluate_scorer, load_split, popularity_scorer
from models.train import graph_of, text_embeddings
from workers.cli import _parser, _train_config
from workers.services import build_encoder
from workers.settings import Settings

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
data, split_name, out = sys.argv[1], sys.argv[2], sys.argv[3]
settings = Settings()
config = _train_config(_parser().parse_args(["evaluate", "--data", data]), settings)
encoder = build_encoder(settings, progress=False)
started = time.time()
split = load_split(Path(data), split_name)
text = text_embeddings(split, encoder)
graph = graph_of(split, split.train, config.graph, config.graph_cache)
print("prepared in", round(time.time() - started), "s", flush=True)
for name, scorer in [("popularity", popularity_scorer(split)), ("cooc_knn", cooc_scorer(split))]:
    results = [evaluate_scorer(split, name, scorer, t) for t in split.type_names if split.targets[t]]
    print(name, {r.item_type: (r.users, round(r.hr10, 4), round(r.ndcg10, 4)) for r in results}, flush=True)
with open(out, "wb") as handle:
    pickle.dump({"split": split, "text": text, "graph": graph, "config": config}, handle)
