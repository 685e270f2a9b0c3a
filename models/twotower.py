"""The dynamic adaptation layer: one two-tower model for all item types (2T-HGNN).

User tower: for each item type :math:`t`, the mean of the item embeddings of the user's last ``history``
items of that type, and :math:`\\log(1 + n_t)`; concatenated, through an MLP. Item tower: the item's
embedding (HGNN, or text for the no-GNN ablation), its text embedding and a one-hot of its type, through an
MLP. Both L2-normalised into one space. Trained on (history -> next item) pairs with in-batch negatives and
the logQ correction for item frequency (Yi et al., 2019):

.. math:: \\ell = -\\log \\frac{e^{s(u, i)/\\tau - \\log q_i}}{\\sum_{j \\in B} e^{s(u, j)/\\tau - \\log q_j}}
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TwoTowerConfig:
    """Two-tower hyperparameters."""

    dim: int = 128
    hidden: int = 512
    history: int = 50
    """Items per type the user tower reads (the stream's ``history_per_type``)."""
    examples_per_user: int = 50
    epochs: int = 8
    batch: int = 1024
    lr: float = 1e-3
    weight_decay: float = 1e-6
    temperature: float = 0.05
    seed: int = 0


def _mlp(n_in: int, hidden: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, n_out))


class TwoTower(nn.Module):
    """The unified two-tower model.

    Args:
        embed_dim: size of the item embeddings the towers read (HGNN or text).
        text_dim: size of the text embeddings.
        num_types: number of item types.
        hidden: MLP hidden size.
        dim: size of the shared space.
    """

    def __init__(self, embed_dim: int, text_dim: int, num_types: int, hidden: int, dim: int) -> None:
        super().__init__()
        self.num_types = num_types
        self.user_tower = _mlp(num_types * (embed_dim + 1), hidden, dim)
        self.item_tower = _mlp(embed_dim + text_dim + num_types, hidden, dim)

    def users(self, features: Tensor) -> Tensor:
        """``(B, T*(E+1))`` user features -> ``(B, dim)`` unit vectors."""
        return nn.functional.normalize(self.user_tower(features), dim=-1)

    def items(self, embedding: Tensor, text: Tensor, item_type: Tensor) -> Tensor:
        """``(N, E)``, ``(N, X)``, ``(N,)`` -> ``(N, dim)`` unit vectors."""
        onehot = nn.functional.one_hot(item_type, self.num_types).float()
        return nn.functional.normalize(self.item_tower(torch.cat([embedding, text, onehot], -1)), dim=-1)


def prefix_features(items: np.ndarray, positions: np.ndarray, embedding: np.ndarray, item_type: np.ndarray,
                    num_types: int, history: int) -> np.ndarray:
    """User-tower features of the prefixes ``items[:k]`` of one user's sequence, for each ``k`` in ``positions``:
    per type, the mean embedding of the last ``history`` items of that type, then log(1 + count) per type.

    Returns:
        ``(len(positions), num_types * (E + 1))``.
    """
    dim = embedding.shape[1]
    out = np.zeros((len(positions), num_types * (dim + 1)), dtype=np.float32)
    types = item_type[items] if len(items) else items
    for t in range(num_types):
        where = np.flatnonzero(types == t)  # positions of type-t items in the sequence
        count = np.searchsorted(where, positions)  # type-t items before each k
        if len(where):
            sums = np.concatenate([np.zeros((1, dim)), np.cumsum(embedding[items[where]], 0)])
            first = np.maximum(count - history, 0)
            n = np.maximum(count - first, 1)[:, None]
            out[:, t * dim : (t + 1) * dim] = (sums[count] - sums[first]) / n
        out[:, num_types * dim + t] = np.log1p(count)
    return out


def user_features(histories: Sequence[Sequence[int]], embedding: np.ndarray, item_type: np.ndarray,
                  num_types: int, history: int) -> np.ndarray:
    """User-tower features of whole histories: ``(len(histories), num_types * (E + 1))``."""
    dim = embedding.shape[1]
    out = np.zeros((len(histories), num_types * (dim + 1)), dtype=np.float32)
    for u, items in enumerate(histories):
        sequence = np.asarray(items, dtype=np.int64)
        out[u] = prefix_features(sequence, np.array([len(sequence)]), embedding, item_type, num_types, history)[0]
    return out


def training_examples(histories: Sequence[Sequence[int]], embedding: np.ndarray, item_type: np.ndarray,
                      num_types: int, config: TwoTowerConfig, rng: np.random.Generator,
                      target_types: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(history prefix features, next item) pairs: up to ``examples_per_user`` random positions of each
    user's sequence, optionally only those whose next item has a type in ``target_types``."""
    features: list[np.ndarray] = []
    targets: list[np.ndarray] = []
    for items in histories:
        sequence = np.asarray(items, dtype=np.int64)
        positions = np.arange(1, len(sequence))
        if target_types is not None and len(positions):
            positions = positions[np.isin(item_type[sequence[positions]], target_types)]
        if len(positions) > config.examples_per_user:
            positions = np.sort(rng.choice(positions, config.examples_per_user, replace=False))
        if len(positions):
            features.append(prefix_features(sequence, positions, embedding, item_type, num_types, config.history))
            targets.append(sequence[positions])
    return np.concatenate(features), np.concatenate(targets)


def train_two_tower(
    histories: Sequence[Sequence[int]],
    embedding: np.ndarray,
    text: np.ndarray,
    item_type: np.ndarray,
    num_types: int,
    config: TwoTowerConfig,
    device: torch.device,
    target_types: np.ndarray | None = None,
) -> tuple[TwoTower, list[float]]:
    """Train on (history -> next item) pairs from ``histories`` (sequences of item indices).

    Returns:
        The model and the mean loss of each epoch.
    """
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    examples, targets = training_examples(histories, embedding, item_type, num_types, config, rng, target_types)
    features = torch.from_numpy(examples)
    frequency = np.bincount(targets, minlength=len(item_type)).astype(np.float64)
    log_q = torch.from_numpy(np.log(np.maximum(frequency / frequency.sum(), 1e-12))).float().to(device)
    emb_t = torch.from_numpy(embedding).float().to(device)
    text_t = torch.from_numpy(text).float().to(device)
    type_t = torch.from_numpy(item_type).long().to(device)
    targets_t = torch.from_numpy(targets).to(device)
    model = TwoTower(embedding.shape[1], text.shape[1], num_types, config.hidden, config.dim).to(device)
    optimiser = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    losses = []
    for epoch in range(config.epochs):
        order = torch.from_numpy(rng.permutation(len(targets)))
        total, steps = 0.0, 0
        for start in range(0, len(order), config.batch):
            idx = order[start : start + config.batch]
            items = targets_t[idx.to(device)]  # (B,)
            u = model.users(features[idx].to(device))  # (B, D)
            v = model.items(emb_t[items], text_t[items], type_t[items])  # (B, D)
            logits = u @ v.T / config.temperature - log_q[items][None, :]  # (B, B)
            same = items[:, None] == items[None, :]
            logits = logits.masked_fill(same & ~torch.eye(len(items), dtype=torch.bool, device=device), -1e9)
            loss = nn.functional.cross_entropy(logits, torch.arange(len(items), device=device))
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += loss.item()
            steps += 1
        losses.append(total / max(steps, 1))
        log.info("two-tower epoch %d: loss %.4f", epoch, losses[-1])
    return model, losses


@torch.no_grad()
def item_vectors(model: TwoTower, embedding: np.ndarray, text: np.ndarray, item_type: np.ndarray,
                 device: torch.device) -> np.ndarray:
    """Item-tower vectors of every item: ``(N, dim)``."""
    model.eval()
    out = model.items(torch.from_numpy(embedding).float().to(device), torch.from_numpy(text).float().to(device),
                      torch.from_numpy(item_type).long().to(device))
    model.train()
    return out.cpu().numpy()


@torch.no_grad()
def user_vectors(model: TwoTower, histories: Sequence[Sequence[int]], embedding: np.ndarray,
                 item_type: np.ndarray, history: int, device: torch.device) -> np.ndarray:
    """User-tower vectors from histories: ``(U, dim)``."""
    model.eval()
    features = user_features(histories, embedding, item_type, model.num_types, history)
    out = model.users(torch.from_numpy(features).to(device)).cpu().numpy()
    model.train()
    return out
