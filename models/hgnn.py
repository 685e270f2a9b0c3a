"""The heterogeneous GNN of the static foundation layer (2T-HGNN, Spotify 2024).

A 2-layer GraphSAGE over the item-item co-interaction graph, one relation per ordered pair of item types,
built with :class:`~torch_geometric.nn.HeteroConv` over homogeneous :class:`~torch_geometric.nn.SAGEConv`
blocks. Node features are the items' text embeddings. For a node :math:`i` of type :math:`t`:

.. math::
    h_i^{(l+1)} = \\sum_{r=(s,t)} \\Big( W_r^{(l)} \\sum_{j \\in N_r(i)} a_{ij} h_j^{(l)} + U_r^{(l)} h_i^{(l)} \\Big),
    \\qquad a_{ij} = w_{ij} / \\sum_{k \\in N_r(i)} w_{ik}

with co-count weights :math:`w_{ij}` (a weighted mean, applied as a row-normalised CSR matrix: full-graph
message passing with no sampler), ReLU between layers, a linear projection of the text added to the output
(``text_skip``: the graph adds to the text instead of replacing it), and L2-normalised outputs. The text enters
whitened (``whiten``: centred and decorrelated over the training items' text, a fixed transform stored with the
weights): text embeddings share one large direction, and without it the layers spend their few steps on it.

Trained by link prediction on co-interaction edges with a balanced multi-link sampler: each epoch every relation
contributes the same number of edges, by default the smallest relation's size (capped), drawn uniformly from the
pruned adjacency lists without replacement (``edge_power`` > 0: the largest relation's size, drawn by co-count;
on movielens validation that cost the two-tower on top film and family hits, reports/validation.md);
each edge is trained in both directions (``direction``), each end scored by softmax among items of its type
against negatives shared by the step's edges (``shared_negatives``, uniform: the learned score keeps each item's
popularity, which the ranking needs) and optionally per-edge and in-batch ones (mixed negatives, Yang et al.
2020; off by default, they remove popularity). Each step runs the full graph once and takes a chunk of every
relation; the first layer's neighbour means of the fixed inputs are computed once per training. Inductive: an
item unseen in training is embedded from its text and whatever edges it has.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn
from torch_geometric.nn import HeteroConv, SAGEConv

log = logging.getLogger(__name__)

EdgeType = tuple[str, str, str]


@dataclass(frozen=True)
class HGNNConfig:
    """HGNN hyperparameters."""

    hidden: int = 128
    out: int = 128
    epochs: int = 10
    edges_per_relation: int = 100_000
    """Cap on the balanced sample per relation and epoch."""
    batch_edges: int = 4096
    """Edges per relation and step; one step (one full-graph forward) takes a chunk of every relation."""
    lr: float = 5e-3
    weight_decay: float = 1e-5
    temperature: float = 0.05
    negatives: int = 0
    """Negatives of the destination type per edge (uniform, or see ``negative_power``)."""
    shared_negatives: int = 512
    """Negatives of the destination type drawn once per step and relation and shared by all its edges (a
    matrix product instead of a gather per edge, so many cost little); a negative that is the edge's own
    destination is masked."""
    in_batch: bool = False
    """Also contrast each edge with the other destinations of its block of ``in_batch_block`` edges (mixed
    negatives, Yang et al. 2020)."""
    in_batch_block: int = 512
    edge_power: float = 0.0
    """0: the balanced sample without replacement (every relation as many edges as the smallest one, capped at
    ``edges_per_relation``); otherwise positive edges drawn with replacement in proportion to
    ``co-count ** edge_power``, as many from every relation each epoch as the largest relation has (capped). 0
    (validation, issue 7): the unified two-tower on top, against ``edge_power=1``, on movielens film 0.132 ->
    0.151 and family 0.390 -> 0.424 HR@10 (3 seeds), on amazon food 0.270 -> 0.237, kitchen 0.105 -> 0.106 (2
    seeds); reports/validation.md, *Which HGNN lever costs movielens film*."""
    negative_power: float = 0.0
    """Negatives of the destination type drawn in proportion to ``weighted degree ** negative_power`` (0:
    uniform)."""
    direction: str = "both"
    """Which end of an edge (neighbour -> owner) is predicted from the other: ``owner`` (the neighbour's
    embedding scores the owner among items of the owner's type), ``neighbour`` (the reverse) or ``both``."""
    text_skip: bool = True
    """Add a linear projection of the text to the output, so the graph adds to the text."""
    whiten: bool = True
    """Whiten the text features (centred, decorrelated, each direction scaled to the same variance, fitted on
    the training items' text) before the first layer: text embeddings share a large common direction and their
    informative directions have small variance, which the layers otherwise need many steps to amplify."""
    whiten_eps: float = 1e-2
    """Added to the covariance's eigenvalues, relative to their mean, before whitening (bounds the amplification
    of the weakest directions)."""
    seed: int = 0


class HGNN(nn.Module):
    """Two HeteroConv(SAGEConv) layers over the item types.

    Args:
        in_dim: size of the input (text) features.
        hidden: size of the first layer's output.
        out: size of the embeddings.
        edge_types: the relations ``(src_type, "co", dst_type)``.
        text_skip: add a per-type linear projection of the input to the output, so the graph adds to the text
            instead of replacing it.
    """

    def __init__(self, in_dim: int, hidden: int, out: int, edge_types: Iterable[EdgeType],
                 text_skip: bool = False) -> None:
        super().__init__()
        edge_types = list(edge_types)
        self.edge_types = edge_types
        self.out = out
        self.conv1 = HeteroConv({et: SAGEConv((in_dim, in_dim), hidden, aggr="sum") for et in edge_types},
                                aggr="sum")
        self.conv2 = HeteroConv({et: SAGEConv((hidden, hidden), out, aggr="sum") for et in edge_types},
                                aggr="sum")
        node_types = sorted({t for et in edge_types for t in (et[0], et[2])})
        self.skip = nn.ModuleDict({t: nn.Linear(in_dim, out) for t in node_types} if text_skip else {})
        self.input_mean: Tensor
        self.input_map: Tensor
        self.input_fitted: Tensor
        self.register_buffer("input_mean", torch.zeros(in_dim))
        self.register_buffer("input_map", torch.eye(in_dim))
        self.register_buffer("input_fitted", torch.zeros((), dtype=torch.bool))

    def fit_inputs(self, text: np.ndarray, eps: float) -> None:
        """Set the input transform to whiten ``text`` (rows: items): ``(x - mean) @ map`` has identity covariance
        over ``text`` divided by the input size, so a whitened row has the squared norm of a unit text vector on
        average. ``eps`` (relative to the mean eigenvalue) is added to the covariance's eigenvalues."""
        x = torch.from_numpy(np.asarray(text, dtype=np.float64))
        mean = x.mean(0)
        centred = x - mean
        values, vectors = torch.linalg.eigh(centred.T @ centred / max(len(x), 1))
        values = values.clamp(min=0) + eps * values.clamp(min=0).mean()
        transform = vectors @ torch.diag(values.rsqrt()) @ vectors.T / np.sqrt(x.shape[1])
        self.input_mean.copy_(mean.float())
        self.input_map.copy_(transform.float())
        self.input_fitted.fill_(True)

    def inputs(self, x: Tensor) -> Tensor:
        """The input transform applied to text features ``(N, in_dim)`` (the identity unless fitted)."""
        return (x - self.input_mean) @ self.input_map if bool(self.input_fitted) else x

    def _load_from_state_dict(self, state_dict: dict[str, Tensor], prefix: str, *args: object, **kwargs: object
                              ) -> None:
        # models saved before the input transform existed load with the identity
        state_dict.setdefault(prefix + "input_mean", torch.zeros_like(self.input_mean))
        state_dict.setdefault(prefix + "input_map", torch.eye(len(self.input_mean)))
        state_dict.setdefault(prefix + "input_fitted", torch.zeros((), dtype=torch.bool))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)  # type: ignore[arg-type]

    def reset_parameters(self) -> None:
        """Re-initialise every weight."""
        self.conv1.reset_parameters()
        self.conv2.reset_parameters()
        for layer in self.skip.values():
            layer.reset_parameters()  # type: ignore[operator]

    def aggregate(self, x: dict[str, Tensor], adj: dict[EdgeType, Tensor]) -> dict[EdgeType, Tensor]:
        """The first layer's neighbour means of prepared inputs ``x`` (per relation ``adj @ x[src]``): fixed while
        the text and the graph are, so training computes them once."""
        return {et: torch.sparse.mm(adj[et], x[et[0]]) for et in self.edge_types if et in adj}

    def forward(self, x: dict[str, Tensor], adj: dict[EdgeType, Tensor], prepared: bool = False,
                aggregated: dict[EdgeType, Tensor] | None = None) -> dict[str, Tensor]:
        """Embed every node.

        Args:
            x: per node type, text features ``(N_t, in_dim)``.
            adj: per relation ``(s, co, t)``, the row-normalised adjacency ``(N_t, N_s)`` (sparse CSR).
            prepared: ``x`` has already been through :meth:`inputs` (training transforms it once).
            aggregated: the first layer's neighbour means (:meth:`aggregate`), when computed once for many steps.

        Returns:
            Per node type, L2-normalised embeddings ``(N_t, out)``.
        """
        adj = {et: a for et, a in adj.items() if et in self.edge_types}
        if not prepared:
            x = {t: self.inputs(v) for t, v in x.items()}
        if aggregated is None:
            h = self.conv1(x, adj)
        else:  # the first layer from its fixed neighbour means: SAGEConv's lin_l(mean) + lin_r(own), summed
            h = {}
            for et, mean in aggregated.items():
                block = self.conv1.convs[et]  # type: ignore[index]
                part = block.lin_l(mean) + block.lin_r(x[et[2]])
                h[et[2]] = h[et[2]] + part if et[2] in h else part
        h = {t: torch.relu(v) for t, v in h.items()}
        h = self.conv2(h, adj)
        out = {t: h[t] if t in h else x[t].new_zeros(len(x[t]), self.out) for t in x}
        if self.skip:
            out = {t: v + self.skip[t](x[t]) for t, v in out.items()}
        # a type that receives no relation and has no skip stays zero: no signal to offer
        return {t: nn.functional.normalize(v, dim=-1) for t, v in out.items()}


@dataclass
class TypedGraph:
    """The co-interaction graph as tensors, items split by type (local indices)."""

    type_names: list[str]
    local: np.ndarray
    """Global item index -> index within its type."""
    members: dict[str, np.ndarray]
    """Per type, the global indices of its items, in local order."""
    edges: dict[EdgeType, tuple[np.ndarray, np.ndarray, np.ndarray]]
    """Per relation: local src, local dst, weight."""

    @classmethod
    def build(cls, item_type: np.ndarray, type_names: list[str],
              src: np.ndarray, dst: np.ndarray, weight: np.ndarray) -> TypedGraph:
        """From global directed edges ``src -> dst`` with weights."""
        members = {t: np.flatnonzero(item_type == k) for k, t in enumerate(type_names)}
        local = np.zeros(len(item_type), dtype=np.int64)
        for index in members.values():
            local[index] = np.arange(len(index))
        edges = {}
        for a, ta in enumerate(type_names):
            for b, tb in enumerate(type_names):
                # every pair of types is a relation, even with no edges yet: its root weights still carry each
                # item's own text, and a model trained on one graph applies to any other
                mask = (item_type[src] == a) & (item_type[dst] == b)
                edges[(ta, "co", tb)] = (local[src[mask]], local[dst[mask]], weight[mask].astype(np.float32))
        return cls(type_names, local, members, edges)

    def adjacency(self) -> dict[EdgeType, Tensor]:
        """Row-normalised transposed adjacencies (destination rows), sparse CSR."""
        out = {}
        for (ta, rel, tb), (s, d, w) in self.edges.items():
            n_s, n_d = len(self.members[ta]), len(self.members[tb])
            index = torch.from_numpy(np.stack([d, s]).astype(np.int64)).reshape(2, -1)
            values = torch.from_numpy(w)
            matrix = torch.sparse_coo_tensor(index, values, (n_d, n_s)).coalesce()
            row_sum = torch.zeros(n_d).index_add_(0, matrix.indices()[0], matrix.values())
            normalised = matrix.values() / row_sum[matrix.indices()[0]].clamp(min=1e-12)
            out[(ta, rel, tb)] = torch.sparse_coo_tensor(matrix.indices(), normalised, (n_d, n_s)).to_sparse_csr()
        return out

    def weighted_degree(self, n_items: int) -> np.ndarray:
        """Per item (global order), the sum of the weights of the edges into it: its popularity in the graph."""
        out = np.zeros(n_items, dtype=np.float64)
        for (_, _, tb), (_, d, w) in self.edges.items():
            np.add.at(out, self.members[tb][d], w)
        return out.astype(np.float32)

    def features(self, text: np.ndarray) -> dict[str, Tensor]:
        """Per type, the text features of its items."""
        return {t: torch.from_numpy(text[index]).float() for t, index in self.members.items()}

    def to_global(self, per_type: dict[str, Tensor], n_items: int) -> np.ndarray:
        """Scatter per-type embeddings back to global item order."""
        dim = next(iter(per_type.values())).shape[1]
        out = np.zeros((n_items, dim), dtype=np.float32)
        for t, index in self.members.items():
            out[index] = per_type[t].detach().cpu().numpy()
        return out


def balanced_edges(graph: TypedGraph, cap: int, rng: np.random.Generator, power: float = 0.0
                   ) -> dict[EdgeType, np.ndarray]:
    """2T-HGNN's multi-link sampler: per relation, a sample of edge positions of the same size, so large
    relations do not drown small ones. With ``power`` 0, the smallest relation's size (capped at ``cap``), without
    replacement; otherwise the largest relation's size (capped at ``cap``), with replacement, in proportion to
    ``weight ** power``."""
    present = {et: e for et, e in graph.edges.items() if len(e[0])}
    if power == 0:
        size = min(cap, min(len(e[0]) for e in present.values()))
        return {et: rng.choice(len(e[0]), size=size, replace=False) for et, e in present.items()}
    size = min(cap, max(len(e[0]) for e in present.values()))
    out = {}
    for et, (_, _, w) in present.items():
        p = w.astype(np.float64) ** power
        out[et] = rng.choice(len(w), size=size, replace=True, p=p / p.sum())
    return out


def negative_weights(graph: TypedGraph, power: float) -> dict[str, np.ndarray]:
    """Per type, the probability of drawing each item as a negative: ``weighted degree ** power``, normalised
    (items with no edge get the smallest positive degree's weight, so every item can be drawn)."""
    out = {}
    for t, index in graph.members.items():
        degree = np.zeros(len(index), dtype=np.float64)
        for (_, _, tb), (_, d, w) in graph.edges.items():
            if tb == t:
                np.add.at(degree, d, w)
        floor = degree[degree > 0].min() if (degree > 0).any() else 1.0
        p = np.maximum(degree, floor) ** power
        out[t] = p / p.sum()
    return out


def train_hgnn(graph: TypedGraph, text: np.ndarray, config: HGNNConfig, device: torch.device
               ) -> tuple[HGNN, list[float]]:
    """Train the HGNN by link prediction; returns the model and the mean loss of each epoch."""
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    model = HGNN(text.shape[1], config.hidden, config.out, graph.edges, config.text_skip)
    if config.whiten:
        model.fit_inputs(text, config.whiten_eps)
    model.to(device)
    with torch.no_grad():
        x = {t: model.inputs(v.to(device)) for t, v in graph.features(text).items()}
    optimiser = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    adj = {et: a.to(device) for et, a in graph.adjacency().items()}
    with torch.no_grad():
        aggregated = model.aggregate(x, adj)
    negatives = ({t: torch.from_numpy(p).float().to(device)
                  for t, p in negative_weights(graph, config.negative_power).items()}
                 if config.negative_power else None)
    losses = []
    for epoch in range(config.epochs):
        picked = balanced_edges(graph, config.edges_per_relation, rng, config.edge_power)
        # one step takes a chunk of every relation: the full-graph forward, the costly part, serves them all
        steps = max(1, min(len(p) for p in picked.values()) // config.batch_edges)
        chunks = {et: np.array_split(rng.permutation(positions), steps) for et, positions in picked.items()}
        total = 0.0
        for step in range(steps):
            z = model(x, adj, prepared=True, aggregated=aggregated)
            loss = sum((_edge_loss(z, graph, et, chunks[et][step], config, device, negatives) for et in chunks),
                       torch.zeros((), device=device)) / len(chunks)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += loss.item()
        batches = range(steps)
        losses.append(total / max(1, len(batches)))
        log.info("hgnn epoch %d: loss %.4f", epoch, losses[-1])
    return model, losses


def _link_loss(z: dict[str, Tensor], src_t: str, src: np.ndarray, dst_t: str, dst: np.ndarray, config: HGNNConfig,
               device: torch.device, negatives: dict[str, Tensor] | None = None) -> Tensor:
    """Softmax loss of the pairs ``(src[k], dst[k])`` (local indices of types ``src_t``, ``dst_t``): each
    destination against negatives of its type (uniform, or drawn from ``negatives[dst_t]``'s probabilities) and,
    with ``in_batch``, the other destinations of its block of pairs."""
    size = len(src)
    zs = z[src_t][torch.from_numpy(src).to(device)]  # (B, D)
    zd = z[dst_t][torch.from_numpy(dst).to(device)]  # (B, D)
    if negatives is None or not config.negatives:
        neg = torch.randint(0, len(z[dst_t]), (size, config.negatives), device=device)
    else:
        neg = torch.multinomial(negatives[dst_t], size * config.negatives, replacement=True).view(
            size, config.negatives)
    neg_logit = torch.einsum("bd,bkd->bk", zs, z[dst_t][neg]) / config.temperature  # (B, K)
    if config.shared_negatives:
        dst_index = torch.from_numpy(dst).to(device)
        if negatives is None:
            shared = torch.randint(0, len(z[dst_t]), (config.shared_negatives,), device=device)
        else:
            shared = torch.multinomial(negatives[dst_t], config.shared_negatives, replacement=True)
        shared_logit = (zs @ z[dst_t][shared].T / config.temperature).masked_fill(
            shared[None, :] == dst_index[:, None], -1e9)  # (B, S)
        neg_logit = torch.cat([neg_logit, shared_logit], 1)
    if config.in_batch:  # blocks of M pairs: column m of a block is pair m's positive, the others its negatives
        m = min(config.in_batch_block, size)
        blocks = size // m
        n = blocks * m  # the remainder keeps its uniform negatives only
        block_dst = torch.from_numpy(dst[:n]).to(device).view(blocks, m)
        block_logit = torch.bmm(zs[:n].view(blocks, m, -1), zd[:n].view(blocks, m, -1).transpose(1, 2))
        repeat = (block_dst[:, :, None] == block_dst[:, None, :]) & ~torch.eye(m, dtype=torch.bool, device=device)
        block_logit = (block_logit / config.temperature).masked_fill(repeat, -1e9).view(n, m)
        rest = (zs[n:] * zd[n:]).sum(-1, keepdim=True) / config.temperature  # (B - n, 1)
        pos_logit = torch.cat([block_logit, nn.functional.pad(rest, (0, m - 1), value=-1e9)])
        labels = torch.cat([torch.arange(m, device=device).repeat(blocks),
                            torch.zeros(size - n, dtype=torch.long, device=device)])
    else:
        pos_logit = (zs * zd).sum(-1, keepdim=True) / config.temperature  # (B, 1)
        labels = torch.zeros(size, dtype=torch.long, device=device)
    return nn.functional.cross_entropy(torch.cat([pos_logit, neg_logit], 1), labels)


def _edge_loss(z: dict[str, Tensor], graph: TypedGraph, et: EdgeType, chunk: np.ndarray, config: HGNNConfig,
               device: torch.device, negatives: dict[str, Tensor] | None) -> Tensor:
    """The link loss of the edges ``chunk`` of relation ``et`` (neighbour -> owner) in the configured
    direction(s): the owner predicted from the neighbour, the neighbour from the owner, or both (their mean)."""
    src_t, _, dst_t = et
    s, d, _ = graph.edges[et]
    parts = []
    if config.direction in ("owner", "both"):
        parts.append(_link_loss(z, src_t, s[chunk], dst_t, d[chunk], config, device, negatives))
    if config.direction in ("neighbour", "both"):
        parts.append(_link_loss(z, dst_t, d[chunk], src_t, s[chunk], config, device, negatives))
    return sum(parts, torch.zeros((), device=device)) / len(parts)


@torch.no_grad()
def embed(model: HGNN, graph: TypedGraph, text: np.ndarray, device: torch.device) -> np.ndarray:
    """Embeddings of every item (global order), with the graph given: items absent from training are
    embedded inductively from their text and edges."""
    model.eval()
    x = {t: v.to(device) for t, v in graph.features(text).items()}
    adj = {et: a.to(device) for et, a in graph.adjacency().items()}
    out = model(x, adj)
    model.train()
    return graph.to_global(out, len(text))
