"""How long after a user's last training event their type-T target comes, on a time-split dataset's test and
validation protocols (``load_split``): the distribution the next-item training examples must match. Usage:

    python bench/target_gaps.py DATA_DIR TYPE
"""

import sys
from pathlib import Path

import numpy as np

from models.datasets import iter_events
from models.evaluate import load_split

folder, kind = Path(sys.argv[1]), sys.argv[2]
for which in ("valid", "test"):
    split = load_split(folder, which)
    assert split.cut is not None, "a time-split dataset is needed"
    last = {user: ts for user, _, ts in split.train}
    target = dict(split.targets[kind])
    first_after: dict[str, float] = {}
    for event in iter_events(folder):
        if (event.ts >= split.cut and event.user_id in target and event.user_id not in first_after
                and split.index.get(event.item_id) == target[event.user_id]):
            first_after[event.user_id] = event.ts
    gaps = np.array([(first_after[u] - last[u]) / 86400 for u in target if u in first_after and u in last])
    lengths = np.array([len(split.histories[u]) for u in target if u in split.histories])
    print(f"{which}: {len(target)} {kind} users; days from the last training event to the target: median "
          f"{np.median(gaps):.1f}, share over 1 day {(gaps > 1).mean():.3f}, over 30 days {(gaps > 30).mean():.3f}; "
          f"history length median {np.median(lengths):.0f}")
    stamps: dict[str, list[float]] = {}
    for user, _, ts in split.train:
        stamps.setdefault(user, []).append(ts)
    steps = np.concatenate([np.diff(np.asarray(s)) / 86400 for s in stamps.values() if len(s) > 1])
    print(f"  training next-item pairs (every position): {len(steps)}; share with over 1 day since the previous "
          f"event {(steps > 1).mean():.3f}, over 30 days {(steps > 30).mean():.3f}")
