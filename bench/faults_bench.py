"""Fault benchmark: the stream worker killed during a replay of a real dataset, restarted by the supervisor.

    python bench/faults_bench.py --data ../shared/data/movielens-1m --limit 100000 --rate 2000 --faults 3

Three scenarios on fresh stacks (tansu, one Faust worker on RocksDB, supervised): no fault; ``--faults`` kill -9
during the replay; ``--faults`` SIGTERM during the replay. Each ends when the changelogs equal the fold of the
log (every user state equals ``build_graph``, every item below the degree cap too, items past it the fold of the
pairs topic), and reports the replay time, the catch-up time after the replay, and the comparison (zero missing,
zero different, zero extra co-counts). Results: ``bench/results/faults-<dataset>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.conftest import make_settings  # noqa: E402
from workers.kafka_io import dataset_events  # noqa: E402
from workers.stack import RestartPolicy, Stack  # noqa: E402
from workers.statecheck import Fault, run_fault_scenario  # noqa: E402


def scenario(data: Path, limit: int, rate: float, faults: list[Fault], root: Path) -> dict[str, object]:
    events_iter, _ = dataset_events(data, limit)
    events = [e for e in events_iter if e is not None]
    stack = Stack(make_settings(root, split=False), services=("streams",),  # one worker, as its results measured
                  policy=RestartPolicy(backoff_s=0.5))
    stack.start()
    try:
        result = run_fault_scenario(stack, events, faults, rate)
    finally:
        stack.stop()
    print(json.dumps(result, indent=2), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/movielens-1m")
    parser.add_argument("--limit", type=int, default=100_000)
    parser.add_argument("--rate", type=float, default=2000.0)
    parser.add_argument("--faults", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    at = [(k + 1) / (args.faults + 1) for k in range(args.faults)]
    results: dict[str, object] = {
        "dataset": args.data.resolve().name,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": "python " + " ".join(sys.argv),
    }
    with tempfile.TemporaryDirectory(prefix="gfm-faults-") as tmp:
        for name, sig in (("no_fault", None), ("kill_9", signal.SIGKILL), ("sigterm", signal.SIGTERM)):
            faults = [] if sig is None else [Fault(a, sig) for a in at]
            results[name] = scenario(args.data, args.limit, args.rate, faults, Path(tmp) / name)
    out = args.out or ROOT / "bench" / "results" / f"faults-{results['dataset']}.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
