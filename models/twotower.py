"""The dynamic adaptation layer: one two-tower model for all item types (2T-HGNN).

User tower: for each item type :math:`t`, the mean of the features of the user's last ``history`` items of
that type, the features of the user's last item (any type: the tower is not blind to order), and
:math:`\\log(1 + n_t)`; concatenated, through an MLP. An item's features for the user tower are its embedding
(HGNN, or text for the no-GNN ablation) beside its text embedding, so the graph adds to the text instead of
replacing it. Item tower: the item's embedding, its text embedding, a one-hot of its type and its popularity
in the co-interaction graph (:math:`\\log(1 + \\text{weighted degree})/10`), through an MLP: popularity lives
inside the dot product, so retrieval stays one cosine query. With ``item_bias`` the score is
:math:`s(u, i) = \\langle u, v_i\\rangle + \\gamma_u b_i` (unit directions, an item bias, the user's weight for it),
packed into unit vectors of one space (:meth:`TwoTower.items`); without it both towers are L2-normalised. Trained
on (history -> next item) pairs, each softmax over the in-batch and uniformly drawn items of the target's type,
minus (``exclude_consumed``) what the user had already consumed, as evaluation and serving rank only unconsumed
items, with the logQ correction for the candidates' sampling probability (Yi et al., 2019):

.. math:: \\ell = -\\log \\frac{e^{s(u, i)/\\tau - \\log q_i}}{\\sum_{j \\in C} e^{s(u, j)/\\tau - \\log q_j}}

With ``trend`` the logit gains :math:`\\lambda_u\\,\\mathrm{trend}_j(t)` (:mod:`models.trend`): the user tower
also says how much this user follows what is trending (:math:`\\lambda_u \\ge 0`), and each candidate's trend is
its decayed consumption count over all users' training events strictly before the example's target time
(:class:`TrendLevels`). Served, the item vector carries its level as one more coordinate and the user vector
:math:`w\\lambda_u`, so the ranking stays one dot product (:func:`item_vectors`, :meth:`TwoTower.users`); the multiplier
:math:`w` (:attr:`TwoTower.trend_weight`) is chosen on validation data after training.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from models.features import Histories, has_history, user_tower_features
from models.graph import UserState
from models.trend import EMPTY_LEVEL

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TwoTowerConfig:
    """Two-tower hyperparameters."""

    dim: int = 128
    hidden: int = 512
    history: int = 50
    """Items per type the user tower reads (the stream's ``history_per_type``)."""
    examples_per_user: int = 10
    """Training examples per user at most (10: on movielens validation with the trend, 0.447 / 0.137 HR@10
    against 0.421 / 0.139 with 30, at half the cost; reports/validation.md)."""
    epochs: int = 5
    batch: int = 1024
    lr: float = 1e-3
    weight_decay: float = 1e-6
    temperature: float = 0.05
    user_text: bool = False
    """User tower reads the text embeddings beside the item embeddings (off: it hurt on movielens validation,
    reports/validation.md)."""
    last_item: bool = True
    """User tower reads the last item's features (order)."""
    item_degree: bool = True
    """Item tower reads the item's weighted degree in the co-interaction graph (popularity)."""
    type_softmax: bool = True
    """Each example's softmax runs over the in-batch items of its target's type, as ranking is within a type."""
    uniform_negatives: int = 512
    """Per step and item type, items drawn uniformly beside the in-batch negatives (mixed negative sampling,
    Yang et al. 2020): in-batch negatives are drawn by popularity, so alone they teach little about the tail."""
    item_bias: bool = True
    """An item bias and each user's weight for it, as two coordinates of the one vector space: the score is
    :math:`\\langle u, v\\rangle + \\gamma_u b_i` with unit :math:`u, v`, so a tower can say "popular" without
    spending directions of the space on it, and retrieval stays one cosine query (:meth:`TwoTower.items`)."""
    exclude_consumed: bool = True
    """Drop from each example's softmax the items its user consumed before it, as evaluation and serving rank
    only unconsumed items: otherwise the towers spend capacity pushing down what a user has already seen,
    popular items first."""
    time_weighted: bool = True
    """Pick each user's example positions with probability proportional to the time since the previous event
    (a cut uniform in time, not in the sequence): the next item after a gap, as a
    served user's next item comes after the last one, not within a rating session."""
    trend: bool = True
    """Add :math:`\\lambda_u\\,\\mathrm{trend}_j(t)` to the score (:mod:`models.trend`): the user tower emits
    :math:`\\lambda_u \\ge 0`, an item's trend is its decayed consumption count, with the time constant chosen on
    validation data (:func:`models.evaluate.select_trend_tau`); served as one more coordinate of a dot product."""
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
        user_text: the user tower reads text beside the embeddings.
        last_item: the user tower reads the last item.
        item_degree: the item tower reads the item's graph degree.
        item_bias: an item bias and each user's weight for it (:meth:`items`).
        trend: the user tower also emits :math:`\\lambda_u \\ge 0`, the weight of the items' trend.
        temperature: the training softmax's temperature (the served vectors of a trend model carry it).

    Attributes:
        trend_weight: :math:`w`, the multiplier of :math:`\\lambda_u` in the served user vectors (1: the weight
            training learned). Not trained: chosen on validation data after training
            (:func:`models.train.choose_trend_weight`) and saved beside the weights (``config.json``).
    """

    def __init__(self, embed_dim: int, text_dim: int, num_types: int, hidden: int, dim: int,
                 user_text: bool = False, last_item: bool = False, item_degree: bool = False,
                 item_bias: bool = False, trend: bool = False, temperature: float = 1.0) -> None:
        super().__init__()
        self.trend_weight = 1.0
        if item_bias and dim < 3:
            raise ValueError(f"dim={dim}: an item bias needs at least 3 dimensions (2 hold the bias)")
        self.num_types = num_types
        self.item_degree = item_degree
        self.item_bias = item_bias
        self.trend = trend
        self.temperature = temperature
        self.dim = dim
        per_item = embed_dim + (text_dim if user_text else 0)
        # with the bias, each tower gives dim - 2 directions and one scalar (the bias, the user's weight for it)
        out = dim - 1 if item_bias else dim
        self.user_tower = _mlp(num_types * (per_item + 1) + (per_item if last_item else 0), hidden, out + int(trend))
        self.item_tower = _mlp(embed_dim + text_dim + num_types + int(item_degree), hidden, out)

    @classmethod
    def for_config(cls, embed_dim: int, text_dim: int, num_types: int, config: TwoTowerConfig) -> TwoTower:
        """The model that ``config`` describes."""
        return cls(embed_dim, text_dim, num_types, config.hidden, config.dim, config.user_text, config.last_item,
                   config.item_degree, config.item_bias, config.trend, config.temperature)

    @property
    def out_dim(self) -> int:
        """Size of the served vectors: ``dim``, and one more (the trend) with the trend."""
        return self.dim + int(self.trend)

    def user_parts(self, features: Tensor) -> tuple[Tensor, Tensor | None]:
        """User features -> ``(B, dim)`` vectors (:meth:`user_scores_vectors`) and, with the trend, ``(B,)``
        weights :math:`\\lambda_u = \\mathrm{softplus}(\\cdot) \\ge 0` of the items' trend (None without)."""
        out = self.user_tower(features)
        if not self.trend:
            return self._directions(out), None
        return self._directions(out[:, :-1]), nn.functional.softplus(out[:, -1])

    def user_scores_vectors(self, features: Tensor) -> Tensor:
        """User features -> ``(B, dim)`` vectors whose dot product with :meth:`items` is the training score
        divided by :attr:`scale`: a unit direction, then with the item bias the user's weight for it and a 0."""
        return self.user_parts(features)[0]

    def _directions(self, out: Tensor) -> Tensor:
        if not self.item_bias:
            return nn.functional.normalize(out, dim=-1)
        direction = nn.functional.normalize(out[:, :-1], dim=-1)
        return torch.cat([direction, out[:, -1:], torch.zeros_like(out[:, -1:])], -1)

    @property
    def scale(self) -> float:
        """Training score = ``scale * <user_scores_vectors, items>``: with the bias the item vectors are
        divided by sqrt(2) to stay unit vectors."""
        return float(np.sqrt(2.0)) if self.item_bias else 1.0

    def users(self, features: Tensor) -> Tensor:
        """User features (:func:`~models.features.user_tower_features`) -> served user vectors: without the
        trend, ``(B, dim)`` unit vectors, whose cosine with :meth:`items` ranks as the training score; with it,
        ``(B, dim + 1)`` vectors ``[scale * u / temperature, w * lambda_u]`` (``w``: :attr:`trend_weight`), whose
        dot product with an item vector and its level (:func:`item_vectors`) is the training logit (before the
        logQ correction) with the trend's weight multiplied by ``w``."""
        vectors, weight = self.user_parts(features)
        if weight is None:
            return nn.functional.normalize(vectors, dim=-1)
        return torch.cat([vectors * (self.scale / self.temperature), self.trend_weight * weight[:, None]], -1)

    def items(self, embedding: Tensor, text: Tensor, item_type: Tensor, degree: Tensor | None = None) -> Tensor:
        """``(N, E)``, ``(N, X)``, ``(N,)``, weighted degree ``(N,)`` -> ``(N, dim)`` unit vectors.

        With the item bias :math:`b_i = \\tanh(\\cdot) \\in (-1, 1)`, an item is
        :math:`[v_i, b_i, \\sqrt{1 - b_i^2}] / \\sqrt{2}` (unit norm, so a cosine store ranks as the dot product
        does) and a user :math:`[u, \\gamma_u, 0]`, whose dot product is :math:`(\\langle u, v_i\\rangle +
        \\gamma_u b_i) / \\sqrt{2}`.
        """
        parts = [embedding, text, nn.functional.one_hot(item_type, self.num_types).float()]
        if self.item_degree:
            if degree is None:
                raise ValueError("this model's item tower reads the items' graph degree; pass degree")
            parts.append(torch.log1p(degree.float())[:, None] / 10.0)
        out = self.item_tower(torch.cat(parts, -1))
        if not self.item_bias:
            return nn.functional.normalize(out, dim=-1)
        direction = nn.functional.normalize(out[:, :-1], dim=-1)
        bias = torch.tanh(out[:, -1:])
        rest = torch.sqrt(torch.clamp(1.0 - bias * bias, min=0.0))
        return torch.cat([direction, bias, rest], -1) / float(np.sqrt(2.0))


def user_item_features(embedding: np.ndarray, text: np.ndarray, config: TwoTowerConfig) -> np.ndarray:
    """What the user tower reads of each item: the embedding, and the text beside it when ``user_text``."""
    if config.user_text:
        return np.concatenate([embedding, text], 1).astype(np.float32)
    return embedding.astype(np.float32)


def training_examples(histories: Histories, per_item: np.ndarray, item_type: np.ndarray, config: TwoTowerConfig,
                      rng: np.random.Generator, target_types: np.ndarray | None = None
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(user-tower features, next item) pairs: up to ``examples_per_user`` random positions ``k`` of each user's
    sequence (drawn in proportion to the time since the previous event when ``time_weighted``), optionally only
    those whose next item has a type in ``target_types``; the features are those of the user's stream state after
    the events before ``k`` (:func:`~models.features.user_tower_features`).

    Returns:
        Features, targets, and each example's user (index into ``histories``) and position in its sequence.
    """
    features: list[np.ndarray] = []
    targets: list[np.ndarray] = []
    owners: list[np.ndarray] = []
    where: list[np.ndarray] = []
    rows = histories.rows
    for user, sequence in enumerate(histories.items):
        positions = np.arange(1, len(sequence))
        if target_types is not None and len(positions):
            positions = positions[np.isin(item_type[sequence[positions]], target_types)]
        if len(positions) > config.examples_per_user:
            weight = None
            if config.time_weighted:
                stamps = histories.ts[user]
                gap = np.maximum(stamps[positions] - stamps[positions - 1], 0.0) + 1.0
                weight = gap / gap.sum()
            positions = np.sort(rng.choice(positions, config.examples_per_user, replace=False, p=weight))
        if len(positions):
            states = list(histories.states(user, [int(k) for k in positions]))
            features.append(user_tower_features(states, rows, item_type, histories.type_names, per_item,
                                                config.history, config.last_item))
            targets.append(sequence[positions])
            owners.append(np.full(len(positions), user, dtype=np.int64))
            where.append(positions.astype(np.int64))
    return np.concatenate(features), np.concatenate(targets), np.concatenate(owners), np.concatenate(where)


class ConsumedBefore:
    """Whether a user had consumed an item before a position of their sequence, for a whole batch at once:
    the batch's prefixes are scattered into a (examples x distinct candidates) mask, in time linear in the
    prefixes' total length.

    Args:
        histories: the users' sequences (oldest first).
        n_items: catalogue size.
        device: where the batches live.
    """

    def __init__(self, histories: Sequence[Sequence[int] | np.ndarray], n_items: int, device: torch.device) -> None:
        lengths = np.array([len(h) for h in histories], dtype=np.int64)
        self.n_items = n_items
        self.flat = torch.from_numpy(np.concatenate([np.asarray(h, dtype=np.int64) for h in histories])
                                     if len(histories) else np.zeros(0, dtype=np.int64)).to(device)
        self.offset = torch.from_numpy(np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)).to(device)

    def __call__(self, users: Tensor, positions: Tensor, candidates: Tensor) -> Tensor:
        """``(B,)`` users, ``(B,)`` positions, ``(C,)`` items -> ``(B, C)``: consumed before the position."""
        device = candidates.device
        distinct, column = torch.unique(candidates, return_inverse=True)
        lookup = torch.full((self.n_items,), -1, dtype=torch.long, device=device)
        lookup[distinct] = torch.arange(len(distinct), device=device)
        # every (example, prefix item) pair: example b owns positions offset[u_b] .. offset[u_b] + k_b - 1
        example = torch.repeat_interleave(torch.arange(len(users), device=device), positions)
        start = torch.cumsum(positions, 0) - positions
        within = torch.arange(len(example), device=device) - start[example]
        item = self.flat[self.offset[users][example] + within]
        hit = lookup[item]
        keep = hit >= 0
        mask = torch.zeros((len(users), len(distinct)), dtype=torch.bool, device=device)
        mask[example[keep], hit[keep]] = True
        return mask[:, column]


class TrendLevels:
    """Every candidate's trend at every example's time, from the training events strictly before that time:
    :math:`\\mathrm{trend}_j(t) = \\log(\\epsilon + \\sum_{e \\in E_j, t_e < t} e^{-(t - t_e)/\\tau})`, which is
    :func:`models.trend.levels` over the events before :math:`t` with the epoch :math:`t` (``tests/unit/
    test_twotower.py`` checks the two agree).

    The events are sorted by (item, time) once, with each item's running log-sum-exp of :math:`(t_e - t_0)/\\tau`
    (float64); a query (item, t) is one binary search on the combined key (item, rank of the time among the
    distinct times), so a step's (examples x candidates) trends cost one sorted ``numpy.searchsorted``.

    Args:
        items: the events' items (all users).
        ts: the events' times.
        tau: the time constant (seconds; None: no decay, the log of the count).
    """

    def __init__(self, items: np.ndarray, ts: np.ndarray, tau: float | None) -> None:
        items = np.asarray(items, dtype=np.int64)
        ts = np.asarray(ts, dtype=np.float64)
        order = np.lexsort((ts, items))
        self.items, ts = items[order], ts[order]
        self.tau = tau
        self.epoch = float(ts.max()) if len(ts) else 0.0
        self.times = np.unique(ts)
        self.width = len(self.times) + 1
        self.keys = self.items * self.width + np.searchsorted(self.times, ts)
        x = np.zeros(len(ts)) if tau is None else (ts - self.epoch) / tau
        self.running = np.empty_like(x)
        bounds = np.concatenate([[0], np.flatnonzero(np.diff(self.items)) + 1, [len(self.items)]])
        for start, end in zip(bounds[:-1], bounds[1:], strict=True):
            self.running[start:end] = np.logaddexp.accumulate(x[start:end])

    def __call__(self, candidates: Tensor, times: Tensor, dtype: type = np.float64) -> Tensor:
        """``(C,)`` items, ``(B,)`` times -> ``(B, C)`` trends (on the CPU, computed in float64, returned as
        ``dtype``).

        The queries are searched in sorted order (distinct candidates, then times ascending), which numpy's
        binary search runs near-sequentially: ~15x faster than the same keys unsorted on a movielens step."""
        distinct, column = np.unique(candidates.cpu().numpy(), return_inverse=True)
        at = times.cpu().numpy().astype(np.float64)
        order = np.argsort(at, kind="stable")
        rank = np.searchsorted(self.times, at[order])  # distinct times strictly before each t
        query = distinct[:, None] * self.width + rank[None, :]  # (D, B), ascending when read row after row
        last = np.searchsorted(self.keys, query.ravel()).reshape(query.shape) - 1  # the last event before t
        safe = np.maximum(last, 0)
        found = (last >= 0) & (self.items[safe] == distinct[:, None])
        level = np.where(found, self.running[safe], -np.inf)
        if self.tau is not None:
            level -= ((at[order] - self.epoch) / self.tau)[None, :]
        level = np.logaddexp(level, EMPTY_LEVEL).astype(dtype)
        back = np.empty_like(order)
        back[order] = np.arange(len(order))
        return torch.from_numpy(level[column[None, :], back[:, None]])


def train_two_tower(
    histories: Histories,
    embedding: np.ndarray,
    text: np.ndarray,
    item_type: np.ndarray,
    num_types: int,
    config: TwoTowerConfig,
    device: torch.device,
    target_types: np.ndarray | None = None,
    degree: np.ndarray | None = None,
    trend_tau: float | None = None,
) -> tuple[TwoTower, list[float]]:
    """Train on (state -> next item) pairs from ``histories`` (each user's events, oldest first);
    ``degree`` is each item's weighted degree in the co-interaction graph (needed when ``item_degree``);
    ``trend_tau`` is the trend's time constant (with ``trend``; None: no decay).

    Returns:
        The model and the mean loss of each epoch.
    """
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    examples, targets, owners, positions = training_examples(
        histories, user_item_features(embedding, text, config), item_type, config, rng, target_types)
    consumed = ConsumedBefore(histories.items, len(item_type), device) if config.exclude_consumed else None
    owners_t, positions_t = torch.from_numpy(owners).to(device), torch.from_numpy(positions).to(device)
    features = torch.from_numpy(examples)
    frequency = np.bincount(targets, minlength=len(item_type)).astype(np.float64)
    # candidates come from the mixture of the batch (by target frequency q) and the uniform draw of the
    # item's type: the logQ correction uses that mixture, B q_j + M / N_t (up to a constant per type)
    type_size = np.bincount(item_type, minlength=num_types).astype(np.float64)
    mixture = config.batch * frequency / frequency.sum() + config.uniform_negatives / type_size[item_type]
    log_q = torch.from_numpy(np.log(np.maximum(mixture, 1e-12))).float().to(device)
    pools = [torch.from_numpy(np.flatnonzero(item_type == t)).to(device) for t in range(num_types)]
    emb_t = torch.from_numpy(embedding).float().to(device)
    text_t = torch.from_numpy(text).float().to(device)
    type_t = torch.from_numpy(item_type).long().to(device)
    degree_t = torch.from_numpy(_degree(degree, len(item_type))).to(device)
    targets_t = torch.from_numpy(targets).to(device)
    trend = None
    if config.trend:  # every user's events; each example is read at its target's time
        trend = TrendLevels(np.concatenate(histories.items), np.concatenate(histories.ts), trend_tau)
        times = torch.from_numpy(np.array([histories.ts[u][k] for u, k in zip(owners, positions, strict=True)]))
    model = TwoTower.for_config(embedding.shape[1], text.shape[1], num_types, config).to(device)
    optimiser = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    losses = []
    for epoch in range(config.epochs):
        order = torch.from_numpy(rng.permutation(len(targets)))
        total, steps = 0.0, 0
        for start in range(0, len(order), config.batch):
            idx = order[start : start + config.batch]
            items = targets_t[idx.to(device)]  # (B,)
            u, weight = model.user_parts(features[idx].to(device))  # (B, D), (B,) or None
            v = model.items(emb_t[items], text_t[items], type_t[items], degree_t[items])  # (B, D)
            if config.uniform_negatives:  # (B + T*M,) candidates: the batch, then M uniform items per type
                drawn = torch.cat([p[torch.randint(0, len(p), (config.uniform_negatives,), device=device)]
                                   for p in pools if len(p)])
                candidates = torch.cat([items, drawn])
                v = torch.cat([v, model.items(emb_t[drawn], text_t[drawn], type_t[drawn], degree_t[drawn])])
            else:
                candidates = items
            logits = model.scale * (u @ v.T) / config.temperature - log_q[candidates][None, :]  # (B, C)
            if trend is not None and weight is not None:
                logits = logits + weight[:, None] * trend(candidates, times[idx], np.float32).to(device)
            same = items[:, None] == candidates[None, :]
            drop = same & ~torch.eye(len(items), len(candidates), dtype=torch.bool, device=device)
            if config.type_softmax:
                drop |= type_t[items][:, None] != type_t[candidates][None, :]
            if consumed is not None:
                drop |= consumed(owners_t[idx.to(device)], positions_t[idx.to(device)], candidates)
                # a repeat play's target was consumed before it: its own logit must stay (else the loss is ~1e9)
                drop &= ~torch.eye(len(items), len(candidates), dtype=torch.bool, device=device)
            logits = logits.masked_fill(drop, -1e9)
            loss = nn.functional.cross_entropy(logits, torch.arange(len(items), device=device))
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += loss.item()
            steps += 1
        losses.append(total / max(steps, 1))
        log.info("two-tower epoch %d: loss %.4f", epoch, losses[-1])
    return model, losses


def _degree(degree: np.ndarray | None, n: int) -> np.ndarray:
    return np.zeros(n, dtype=np.float32) if degree is None else np.asarray(degree, dtype=np.float32)


@torch.no_grad()
def item_vectors(model: TwoTower, embedding: np.ndarray, text: np.ndarray, item_type: np.ndarray,
                 device: torch.device, degree: np.ndarray | None = None, levels: np.ndarray | None = None
                 ) -> np.ndarray:
    """Item-tower vectors of every item: ``(N, dim)``; with the trend ``(N, dim + 1)``, the last coordinate the
    item's level (:func:`models.trend.levels` at the model's epoch; required then).

    Raises:
        ValueError: the model has the trend and ``levels`` is missing or of the wrong length.
    """
    model.eval()
    out = model.items(torch.from_numpy(embedding).float().to(device), torch.from_numpy(text).float().to(device),
                      torch.from_numpy(item_type).long().to(device),
                      torch.from_numpy(_degree(degree, len(item_type))).to(device))
    model.train()
    return with_levels(model, out.cpu().numpy(), levels)


def with_levels(model: TwoTower, vectors: np.ndarray, levels: np.ndarray | None) -> np.ndarray:
    """Item-tower vectors ``(N, dim)`` as served: with the trend, each item's level appended (float32).

    Raises:
        ValueError: the model has the trend and ``levels`` is missing or of the wrong length.
    """
    if not model.trend:
        return vectors
    if levels is None or len(levels) != len(vectors):
        raise ValueError(f"this model ranks with the items' trend: pass one level per item ({len(vectors)}), got "
                         f"{None if levels is None else len(levels)}")
    return np.concatenate([vectors, np.asarray(levels, dtype=np.float32)[:, None]], 1)


class NumpyUserTower:
    """:meth:`TwoTower.users` as a plain numpy forward of the same weights, for serving one user per request.

    Why not the torch module: a torch op releases the GIL and takes it back, so with any other thread running
    (the API's event loop under uvloop, the refresher's threads) each of the forward's few ops can wait a GIL
    switch interval. Measured for one user of the movielens model: 0.1 ms in a quiet thread either way, but 10-16
    ms in torch and 0.03 ms in numpy on a uvloop event loop (what serves queries), and 4-13 ms against 0.05-0.1 ms
    beside a busy thread. Equal to the torch forward within float rounding (``tests/unit/test_twotower.py``; the
    served vectors are checked against training's within 1e-5 in ``tests/unit/test_features.py``).

    Args:
        model: the trained towers (its user tower: ``Linear, ReLU, Linear``).
    """

    def __init__(self, model: TwoTower) -> None:
        first, second = (m for m in model.user_tower if isinstance(m, nn.Linear))
        self.w1 = first.weight.detach().cpu().numpy().T.astype(np.float32)  # (F, H)
        self.b1 = first.bias.detach().cpu().numpy().astype(np.float32)
        self.w2 = second.weight.detach().cpu().numpy().T.astype(np.float32)  # (H, O)
        self.b2 = second.bias.detach().cpu().numpy().astype(np.float32)
        self.item_bias = model.item_bias
        self.trend = model.trend
        self.factor = model.scale / model.temperature
        self.trend_weight = model.trend_weight

    def __call__(self, features: np.ndarray) -> np.ndarray:
        """``(B, F)`` user features -> the served user vectors, as :meth:`TwoTower.users`."""
        out = np.maximum(features @ self.w1 + self.b1, 0.0) @ self.w2 + self.b2
        if self.trend:
            out, raw = out[:, :-1], out[:, -1:]
        if self.item_bias:
            direction = out[:, :-1] / np.maximum(np.linalg.norm(out[:, :-1], axis=1, keepdims=True), 1e-12)
            out = np.concatenate([direction, out[:, -1:], np.zeros_like(out[:, -1:])], 1)
        else:
            out = out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        if not self.trend:
            return (out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)).astype(np.float32)
        weight = self.trend_weight * np.logaddexp(0.0, raw)  # w * softplus
        return np.concatenate([out * self.factor, weight], 1).astype(np.float32)


@torch.no_grad()
def user_vectors(model: TwoTower, states: Sequence[UserState], rows: Mapping[str, int], item_type: np.ndarray,
                 type_names: Sequence[str], per_item: np.ndarray, config: TwoTowerConfig,
                 device: torch.device, forward: NumpyUserTower | None = None) -> np.ndarray:
    """User-tower vectors of stream states (:func:`~models.features.user_tower_features`): ``(U, dim)``, with the
    trend ``(U, dim + 1)`` (:meth:`TwoTower.users`); zero for
    a state with no item the tower can read. The one path from states to user vectors, for evaluation and for
    the query-time composition that serving does (``models.serving.UserTower``).

    Args:
        model: the trained towers.
        states: user states (``recent`` and ``counts`` are read).
        rows: item id -> row of ``item_type`` and ``per_item``; items without a row are not read.
        item_type: per row, the type index (< 0: unknown to the model, not read).
        type_names: the model's types.
        per_item: what the user tower reads of each item (:func:`user_item_features`).
        config: the towers' configuration.
        device: where the tower runs.
        forward: the tower as numpy (:class:`NumpyUserTower`, serving); None runs the torch module.
    """
    features = user_tower_features(states, rows, item_type, type_names, per_item, config.history, config.last_item)
    if forward is not None:
        out = forward(features)
    else:
        was_training = model.training
        model.eval()
        out = model.users(torch.from_numpy(features).to(device)).cpu().numpy()
        model.train(was_training)
    out[~has_history(states, rows, item_type)] = 0.0
    return out
