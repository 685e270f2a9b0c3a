"""What composing a user's vector at query time adds to a recommendation (issue 6's choice, issue 9's budget).

    flock /tmp/gfm-bench.lock python bench/compose_bench.py --model-dir var/models/<a movielens 2T-HGNN>

On the embedded qdrant-edge store: ``--items`` items in the served model's types with random unit vectors and random
user-tower features of the model's width (what the refresher stores), ``--users`` users whose states hold
``--recent`` items per type (the stream keeps 50) and ``--consumed`` consumed items. One thread, per query, timed
separately: reading the user (``get_user``), fetching the history items' inputs (``item_inputs``), the user tower on
one user (the served path: ``UserTower.compose``, the tower's numpy forward; and the torch module, to compare), the
whole composition (``ComposedUsers``), and the filtered top-10 search with the consumed items excluded. The
recommend route without composition is ``get_user`` + search; with it, ``get_user`` + composition + search. Then
through HTTP: the real API (``create_api``) on uvicorn on loopback in this process, twice over the same store,
without and with composition (``users=ComposedUsers``), one client asking ``--http-requests`` filtered top-10
recommendations of each in turn. Writes ``bench/results/compose-<items>.json``. """

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch
from prometheus_client import CollectorRegistry

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models.embedding import ItemInputs  # noqa: E402
from models.serving import UserTower  # noqa: E402
from models.twotower import user_vectors  # noqa: E402
from tests.conftest import serve_in_thread as serve  # noqa: E402
from vectorstore.api import create_api  # noqa: E402
from vectorstore.base import ItemPoint, UserPoint  # noqa: E402
from vectorstore.compose import ComposedUsers  # noqa: E402
from vectorstore.edge import EdgeStore  # noqa: E402


def _ms(values: list[float]) -> dict[str, float]:
    seconds = np.asarray(values)
    return {"n": len(values), "p50_ms": round(float(np.percentile(seconds, 50)) * 1000, 3),
            "p99_ms": round(float(np.percentile(seconds, 99)) * 1000, 3),
            "mean_ms": round(float(seconds.mean()) * 1000, 3)}


def over_http(store: EdgeStore, composed: ComposedUsers, users: int, types: list[str], requests: int
              ) -> dict[str, Any]:
    """One client, the two APIs in turn: stored vectors (the users' stored vector is set here) and composed."""
    apps = {"stored_vector": create_api(store, None, CollectorRegistry()),
            "composed": create_api(store, None, CollectorRegistry(), users=composed)}
    seconds: dict[str, list[float]] = {name: [] for name in apps}
    pick = random.Random(2)
    with serve(apps["stored_vector"]) as plain, serve(apps["composed"]) as composing, httpx.Client() as client:
        for n in range(requests + 50):
            user_id, item_type = f"u{pick.randrange(users)}", pick.choice(types)
            for name, url in (("stored_vector", plain), ("composed", composing)):
                started = time.perf_counter()
                response = client.get(f"{url}/users/{user_id}/recommendations", params={"type": item_type, "k": 10})
                took = time.perf_counter() - started
                if response.status_code != 200 or len(response.json()["items"]) != 10:
                    raise RuntimeError(f"{name}: {response.status_code} {response.text[:200]}")
                if n >= 50:  # warm-up
                    seconds[name].append(took)
    out: dict[str, Any] = {name: _ms(values) for name, values in seconds.items()}
    out["added_p50_ms"] = round(out["composed"]["p50_ms"] - out["stored_vector"]["p50_ms"], 3)
    out["added_p99_ms"] = round(out["composed"]["p99_ms"] - out["stored_vector"]["p99_ms"], 3)
    return out


def _spin(stop: threading.Event) -> None:
    while not stop.is_set():
        time.sleep(0)


def _timed(once: Any, runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        once()
        times.append(time.perf_counter() - started)
    return times[10:]


def tower_on_event_loop(tower: UserTower, width: int, runs: int = 200) -> dict[str, Any]:
    """One user's tower forward, torch module against numpy, on a uvloop event loop in a thread (where the API
    answers queries) and in a plain thread beside a thread that keeps taking the GIL."""
    import uvloop

    from models.twotower import NumpyUserTower

    features = torch.randn(1, len(tower.type_names) * (width + 1) + (width if tower.config.last_item else 0))
    forward, array = NumpyUserTower(tower.towers), features.numpy()

    def torch_once() -> None:
        with torch.no_grad():
            tower.towers.users(features)

    def numpy_once() -> None:
        forward(array)

    out: dict[str, Any] = {}
    for name, once in (("torch", torch_once), ("numpy", numpy_once)):
        found: list[float] = []

        async def on_loop(once: Any = once, found: list[float] = found) -> None:
            found.extend(_timed(once, runs))

        worker = threading.Thread(target=uvloop.run, args=(on_loop(),))
        worker.start()
        worker.join()
        out[f"{name}_uvloop"] = _ms(found)
        stop = threading.Event()
        busy = threading.Thread(target=_spin, args=(stop,))
        busy.start()
        beside: list[float] = []
        worker = threading.Thread(target=lambda once=once, beside=beside: beside.extend(_timed(once, runs)))
        worker.start()
        worker.join()
        stop.set()
        busy.join()
        out[f"{name}_beside_a_busy_thread"] = _ms(beside)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, required=True, help="a trained 2T-HGNN (`gfm train`)")
    parser.add_argument("--items", type=int, default=3416, help="catalogue size (movielens-1m: 3,416)")
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--recent", type=int, default=50, help="recent items per type in each state")
    parser.add_argument("--consumed", type=int, default=2000)
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--http-requests", type=int, default=1000, help="requests per API through HTTP (0: skip)")
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
        store.ensure(tower.dim, tower.distance)
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
        timings: dict[str, list[float]] = {name: [] for name in (
            "get_user", "item_inputs", "tower_served_numpy", "tower_torch_module", "compose_total", "search",
            "route_stored_vector", "route_composed")}
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
            timings["tower_served_numpy"].append(time.perf_counter() - started)
            started = time.perf_counter()
            codes = np.array([types.index(t) for t in inputs.types])
            row = user_vectors(tower.towers, [state], inputs.rows, codes, types, inputs.matrix, tower.config,
                               tower.device)[0]
            timings["tower_torch_module"].append(time.perf_counter() - started)
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
        http = None
        if args.http_requests:  # give the users their composed vector as their stored one: same answers both ways
            store.upsert_users([composed(u) for u in users])
            http = over_http(store, composed, args.users, types, args.http_requests)
        store.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    report = {
        "command": " ".join(sys.argv), "model": tower.version, "types": types, "feature_width": width,
        "items": args.items, "users": args.users, "recent_per_type": args.recent, "consumed": args.consumed,
        "torch_threads": args.threads, "served_numpy_vs_torch_max_abs_difference": difference,
        **{name: _ms(values) for name, values in timings.items()},
    }
    report["added_by_composition_p50_ms"] = round(report["route_composed"]["p50_ms"]
                                                  - report["route_stored_vector"]["p50_ms"], 3)
    report["http_one_client"] = http
    report["tower_forward_one_user"] = tower_on_event_loop(tower, width)
    out = args.out or Path(__file__).parent / "results" / f"compose-{args.items}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
