"""The user tower's numpy forward (what serving runs per request) equals the torch module's (what training and
evaluation run), with and without the item bias."""

import numpy as np
import pytest
import torch

from models.trend import EMPTY_LEVEL, levels
from models.twotower import NumpyUserTower, TrendLevels, TwoTower, item_vectors


@pytest.mark.parametrize("item_bias", [True, False])
def test_numpy_user_tower_equals_the_torch_forward(item_bias):
    torch.manual_seed(0)
    model = TwoTower(embed_dim=12, text_dim=5, num_types=3, hidden=32, dim=8, last_item=True, item_bias=item_bias)
    model.eval()
    features = torch.randn(64, 3 * (12 + 1) + 12)
    with torch.no_grad():
        want = model.users(features).numpy()
    got = NumpyUserTower(model)(features.numpy())
    assert got.shape == (64, 8) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)


@pytest.mark.parametrize("tau", [None, 3.0, 50.0])
def test_training_trend_equals_the_shared_levels_of_the_events_strictly_before(tau):
    """trend_j(t) in training is models.trend.levels over every event before t (not at t: ties in time are
    left out, the target's own event among them), with the epoch t; items never consumed before t are empty."""
    rng = np.random.default_rng(3)
    items = rng.integers(0, 7, 300)
    ts = rng.integers(0, 100, 300).astype(np.float64)  # many ties in time
    index = TrendLevels(items, ts, tau)
    candidates = np.array([0, 3, 6, 3, 9])  # 9: never consumed; 3 twice
    times = np.array([0.0, 1.0, 17.0, 17.5, 50.0, 99.0, 100.0, 1e3])
    got = index(torch.from_numpy(candidates), torch.from_numpy(times)).numpy()
    assert got.shape == (len(times), len(candidates)) and got.dtype == np.float64
    for b, t in enumerate(times):
        before = ts < t
        want = levels(items[before], ts[before], 10, tau, t)[candidates]
        np.testing.assert_allclose(got[b], want, rtol=0, atol=1e-9)
    assert np.all(got[0] == EMPTY_LEVEL) and np.all(got[:, 4] == EMPTY_LEVEL)


@pytest.mark.parametrize(("item_bias", "trend_weight"), [(True, 1.0), (False, 1.0), (True, 8.0), (False, 0.5)])
def test_served_trend_vectors_rank_as_the_training_logit(item_bias, trend_weight):
    """With the trend, the served user vector [scale u / T, w lambda_u] dotted with the served item vector
    [v, level] is the training logit scale <u, v> / T + lambda_u * level with lambda_u multiplied by the model's
    trend weight w, in torch and in the numpy forward; lambda_u >= 0."""
    torch.manual_seed(1)
    model = TwoTower(embed_dim=12, text_dim=5, num_types=3, hidden=32, dim=8, last_item=True, item_bias=item_bias,
                     trend=True, temperature=0.05)
    model.trend_weight = trend_weight
    model.eval()
    features = torch.randn(64, 3 * (12 + 1) + 12)
    embedding, text = np.random.default_rng(0).normal(size=(2, 40, 12)).astype(np.float32)
    item_type = np.arange(40) % 3
    level = np.random.default_rng(1).normal(size=40) * 3
    with torch.no_grad():
        u, weight = model.user_parts(features)
        v = model.items(torch.from_numpy(embedding), torch.from_numpy(text[:, :5]), torch.from_numpy(item_type),
                        torch.ones(40))
        logit = (model.scale * (u @ v.T) / 0.05
                 + trend_weight * weight[:, None] * torch.from_numpy(level).float()).numpy()
        served_users = model.users(features).numpy()
    assert (weight >= 0).all()
    served_items = item_vectors(model, embedding, text[:, :5], item_type, torch.device("cpu"), np.ones(40), level)
    assert served_items.shape == (40, 9) and served_users.shape == (64, 9)
    np.testing.assert_allclose(served_users @ served_items.T, logit, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(NumpyUserTower(model)(features.numpy()), served_users, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="trend"):
        item_vectors(model, embedding, text[:, :5], item_type, torch.device("cpu"), np.ones(40))
