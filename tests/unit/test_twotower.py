"""The user tower's numpy forward (what serving runs per request) equals the torch module's (what training and
evaluation run), with and without the item bias."""

import numpy as np
import pytest
import torch

from models.twotower import NumpyUserTower, TwoTower


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
