"""The trend level: folding event by event, in any order, equals the vectorised fold and the definition."""

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from models import trend

events = st.lists(st.tuples(st.integers(0, 4), st.floats(0, 1e6)), max_size=40)


@settings(max_examples=60, deadline=None)
@given(events, st.sampled_from([None, 3600.0, 86400.0 * 7]), st.randoms(use_true_random=False))
def test_fold_is_order_free_and_matches_levels(pairs, tau, rnd):
    epoch = 5e5
    shuffled = list(pairs)
    rnd.shuffle(shuffled)
    folded = [trend.EMPTY_LEVEL] * 5
    for item, ts in shuffled:
        folded[item] = trend.fold(folded[item], ts, tau, epoch)
    items = np.array([i for i, _ in pairs], dtype=np.int64)
    ts = np.array([t for _, t in pairs])
    assert np.allclose(trend.levels(items, ts, 5, tau, epoch), folded, rtol=0, atol=1e-9)


def test_level_is_the_decayed_count_shifted_by_the_epoch():
    tau, epoch, now = 10.0, 100.0, 130.0
    ts = np.array([100.0, 120.0, 125.0])
    level = trend.levels(np.zeros(3, dtype=np.int64), ts, 2, tau, epoch)
    decayed = trend.EPSILON * math.exp(-(now - epoch) / tau) + np.exp(-(now - ts) / tau).sum()
    assert math.isclose(level[0] - (now - epoch) / tau, math.log(decayed), rel_tol=1e-12)
    assert level[1] == trend.EMPTY_LEVEL
    assert math.isclose(trend.levels(np.zeros(3, dtype=np.int64), ts, 1, None, epoch)[0],
                        math.log(3 + trend.EPSILON), rel_tol=1e-12)


def test_rebase_moves_the_streams_levels_to_a_models_epoch():
    rng = np.random.default_rng(0)
    items = rng.integers(0, 20, 500)
    ts = 1.6e9 + rng.uniform(0, 90 * trend.DAY, 500)
    epoch = 1.6e9 + 60 * trend.DAY
    for tau in trend.TAUS:
        at_zero = trend.levels(items, ts, 25, tau, 0.0)
        direct = trend.levels(items, ts, 25, tau, epoch)
        assert np.allclose(trend.rebase(at_zero, tau, epoch), direct, rtol=0, atol=1e-6), tau
