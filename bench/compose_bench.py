"""What composing a user's vector at query time adds to a recommendation (issue 6's choice, issue 9's budget).

    flock /tmp/gfm-bench.lock python bench/compose_bench.py --model-dir var/models/<a movielens 2T-HGNN>

On the embedded qdrant-edge store: ``--items`` items in the served model's types with random unit vectors and
random user-tower features of the model's width (what the refresher stores), ``--users`` users whose states hold
``--recent`` items per type (the stream keeps 50) and ``--consumed`` consumed items. One thread, per query, timed
separately: reading the user (``get_user``), fetching the history items' inputs (``item_inputs``), the user tower on
one user (the served path, torch, through ``models.twotower.user_vectors``; and a plain numpy forward of the same
weights, to compare), the whole composition (``ComposedUsers``), and the filtered top-10 search with the consumed
items excluded. The recommend route without composition is ``get_user`` + search; with it, ``get_user`` +
composition + search. Writes ``bench/results/compose-<items>.json``.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models.embedding import ItemInputs  # noqa: E402
from models.features import user_tower_features  # noqa: E402
from models.serving import UserTower  # noqa: E402
from vectorstore.base import ItemPoint, UserPoint  # noqa: E402
from vectorstore.compose import ComposedUsers  # noqa: E402
from vectorstore.edge import EdgeStore  # noqa: E402


def _ms(values: list[float]) -> dict[str, float]:
    seconds = np.asarray(values)
    return {"n": len(values), "p50_ms": round(float(np.percentile(seconds, 50)) * 1000, 3),
            "p99_ms": round(float(np.percentile(seconds, 99)) * 1000, 3),
            "mean_ms": round(float(seconds.mean()) * 1000, 3)}


def numpy_tower(tower: UserTower) -> Any:
    """The same user tower as plain numpy (for the comparison only; serving runs the torch module)."""
    layers = [m for m in tower.towers.user_tower if isinstance(m, torch.nn.Linear)]
    (w1, b1), (w2, b2) = [(m.weight.detach().numpy().T.copy(), m.bias.detach().numpy().copy()) for m in layers]
    bias = tower.towers.item_bias

    def forward(features: np.ndarray) -> np.ndarray:
        out = np.maximum(features @ w1 + b1, 0.0) @ w2 + b2
        if bias:
            direction = out[:, :-1] / np.linalg.norm(out[:, :-1], axis=1, keepdims=True)
            out = np.concatenate([direction, out[:, -1:], np.zeros_like(out[:, -1:])], 1)
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    return forward


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, required=True, help="a trained 2T-HGNN (`gfm train`)")
    parser.add_argument("--items", type=int, default=3416, help="catalogue size (movielens-1m: 3,416)")
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--recent", type=int, default=50, help="recent items per type in each state")
    parser.add_argument("--consumed", type=int, default=2000)
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tower = UserTower.load(args.model_dir)
    types = tower.type_names
    meta = json.loads((args.model_dir / "config.json").read_text())
    width = meta["config"]["hgnn"]["out"] + (meta["text_dim"] if tower.config.user_text else 0)
    rng = np.random.default_rng(0)
    root = Path(tempfile.mkdtemp(prefix="gfm-compose-"))
    try:
        store = EdgeStore(root / "qdrant")
        store.ensure(tower.dim)
        vectors = rng.normal(size=(args.items, tower.dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        features = rng.normal(size=(args.items, width)).astype(np.float32)
        features /= np.linalg.norm(features, axis=1, keepdims=True)
        now = time.time()
        for start in range(0, args.items, 5000):
            store.upsert_items([ItemPoint(f"i{k}", types[k % len(types)], f"item {k}", vectors[k], "bench", now,
                                          features[k]) for k in range(start, min(args.items, start + 5000))])
        by_type = {t: [k for k in range(args.items) if k % len(types) == n] for n, t in enumerate(types)}
        users = []
        for u in range(args.users):
            consumed = rng.choice(args.items, size=min(args.consumed, args.items), replace=False)
            recent = {t: [[f"i{k}", float(n)] for n, k in enumerate(rng.choice(rows, args.recent, replace=False))]
                      for t, rows in by_type.items()}
            users.append(UserPoint(f"u{u}", np.zeros(tower.dim, dtype=np.float32), "bench", now, now,
                                   [f"i{k}" for k in consumed], {t: args.recent for t in types}, recent=recent))
        for start in range(0, len(users), 100):
            store.upsert_users(users[start : start + 100])
        store.optimize()
        composed = ComposedUsers(store, tower)
        forward = numpy_tower(tower)
        timings: dict[str, list[float]] = {name: [] for name in (
            "get_user", "item_inputs", "tower_torch", "tower_numpy", "compose_total", "search", "route_stored_vector",
            "route_composed")}
        difference = 0.0
        pick = random.Random(1)
        for _ in range(args.queries):
            user_id, item_type = f"u{pick.randrange(args.users)}", pick.choice(types)
            started = time.perf_counter()
            user = store.get_user(user_id)
            timings["get_user"].append(time.perf_counter() - started)
            assert user is not None
            state = user.state()
            started = time.perf_counter()
            found = store.item_inputs(tower.history(state), True)
            timings["item_inputs"].append(time.perf_counter() - started)
            inputs = ItemInputs.of(found, width)
            started = time.perf_counter()
            vector = tower.compose([state], inputs)[0]
            timings["tower_torch"].append(time.perf_counter() - started)
            started = time.perf_counter()
            codes = np.array([types.index(t) for t in inputs.types])
            row = forward(user_tower_features([state], inputs.rows, codes, types, inputs.matrix, tower.config.history,
                                              tower.config.last_item))[0]
            timings["tower_numpy"].append(time.perf_counter() - started)
            difference = max(difference, float(np.abs(row - vector).max()))
            started = time.perf_counter()
            user = composed(user)
            timings["compose_total"].append(time.perf_counter() - started)
            started = time.perf_counter()
            store.search(user.vector, 10, item_type=item_type, exclude_points=user.excluded_points())
            timings["search"].append(time.perf_counter() - started)
            started = time.perf_counter()
            stored = store.get_user(user_id)
            store.search(vector, 10, item_type=item_type, exclude_points=stored.excluded_points())  # type: ignore[union-attr]
            timings["route_stored_vector"].append(time.perf_counter() - started)
            started = time.perf_counter()
            user = composed(store.get_user(user_id))  # type: ignore[arg-type]
            store.search(user.vector, 10, item_type=item_type, exclude_points=user.excluded_points())
            timings["route_composed"].append(time.perf_counter() - started)
        store.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    report = {
        "command": " ".join(sys.argv), "model": tower.version, "types": types, "feature_width": width,
        "items": args.items, "users": args.users, "recent_per_type": args.recent, "consumed": args.consumed,
        "torch_threads": args.threads, "numpy_vs_torch_max_abs_difference": difference,
        **{name: _ms(values) for name, values in timings.items()},
    }
    report["added_by_composition_p50_ms"] = round(report["route_composed"]["p50_ms"]
                                                  - report["route_stored_vector"]["p50_ms"], 3)
    out = args.out or Path(__file__).parent / "results" / f"compose-{args.items}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
