"""The heterogeneous GNN of the static foundation layer (2T-HGNN, Spotify 2024).

A 2-layer GraphSAGE over the item-item co-interaction graph, one relation per ordered pair of item types,
built with :class:`~torch_geometric.nn.HeteroConv` over homogeneous :class:`~torch_geometric.nn.SAGEConv`
blocks. Node features are the items' text embeddings. For a node :math:`i` of type :math:`t`:

.. math::
    h_i^{(l+1)} = \\sum_{r=(s,t)} \\Big( W_r^{(l)} \\sum_{j \\in N_r(i)} a_{ij} h_j^{(l)} + U_r^{(l)} h_i^{(l)} \\Big),
    \\qquad a_{ij} = w_{ij} / \\sum_{k \\in N_r(i)} w_{ik}

with co-count weights :math:`w_{ij}` (a weighted mean, applied as a row-normalised CSR matrix: full-graph
message passing with no sampler), ReLU between layers, a linear projection of the text added to the output
(``text_skip``: the graph adds to the text instead of replacing it), and L2-normalised outputs. Trained by link
prediction on co-interaction edges with 2T-HGNN's balanced multi-link sampler (each epoch, every relation
contributes as many edges as the smallest one, capped); each step runs the full graph once and takes a chunk of
every relation; each edge's softmax contrasts its destination with uniform negatives of the destination type
and, with ``in_batch``, with the other destinations of its block of edges (mixed negatives, Yang et al. 2020).
Inductive: an item unseen in training is embedded from its text and whatever edges it has.
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
    edges_per_relation: int = 20_000
    """Cap on the balanced sample per relation and epoch."""
    batch_edges: int = 4096
    """Edges per relation and step; one step (one full-graph forward) takes a chunk of every relation."""
    lr: float = 5e-3
    weight_decay: float = 1e-5
    temperature: float = 0.1
    negatives: int = 4
    """Uniform negatives of the destination type per edge."""
    in_batch: bool = True
    """Also contrast each edge with the other destinations of its block of ``in_batch_block`` edges (mixed
    negatives, Yang et al. 2020)."""
    in_batch_block: int = 512
    text_skip: bool = True
    """Add a linear projection of the text to the output, so the graph adds to the text."""
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

    def reset_parameters(self) -> None:
        """Re-initialise every weight."""
        self.conv1.reset_parameters()
        self.conv2.reset_parameters()
        for layer in self.skip.values():
            layer.reset_parameters()  # type: ignore[operator]

    def forward(self, x: dict[str, Tensor], adj: dict[EdgeType, Tensor]) -> dict[str, Tensor]:
        """Embed every node.

        Args:
            x: per node type, features ``(N_t, in_dim)``.
            adj: per relation ``(s, co, t)``, the row-normalised adjacency ``(N_t, N_s)`` (sparse CSR).

        Returns:
            Per node type, L2-normalised embeddings ``(N_t, out)``.
        """
        adj = {et: a for et, a in adj.items() if et in self.edge_types}
        h = self.conv1(x, adj)
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


def balanced_edges(graph: TypedGraph, cap: int, rng: np.random.Generator) -> dict[EdgeType, np.ndarray]:
    """2T-HGNN's multi-link sampler: per relation, a sample of edge positions of the smallest relation's size
    (capped), so large relations do not drown small ones."""
    present = {et: e for et, e in graph.edges.items() if len(e[0])}
    size = min(cap, min(len(e[0]) for e in present.values()))
    return {et: rng.choice(len(e[0]), size=size, replace=False) for et, e in present.items()}


def train_hgnn(graph: TypedGraph, text: np.ndarray, config: HGNNConfig, device: torch.device
               ) -> tuple[HGNN, list[float]]:
    """Train the HGNN by link prediction; returns the model and the mean loss of each epoch."""
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    model = HGNN(text.shape[1], config.hidden, config.out, graph.edges, config.text_skip).to(device)
    optimiser = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    x = {t: v.to(device) for t, v in graph.features(text).items()}
    adj = {et: a.to(device) for et, a in graph.adjacency().items()}
    losses = []
    for epoch in range(config.epochs):
        picked = balanced_edges(graph, config.edges_per_relation, rng)
        # one step takes a chunk of every relation: the full-graph forward, the costly part, serves them all
        steps = max(1, min(len(p) for p in picked.values()) // config.batch_edges)
        chunks = {et: np.array_split(rng.permutation(positions), steps) for et, positions in picked.items()}
        total = 0.0
        for step in range(steps):
            z = model(x, adj)
            loss = sum((_link_loss(z, graph, et, chunks[et][step], config, device) for et in chunks),
                       torch.zeros((), device=device)) / len(chunks)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += loss.item()
        batches = range(steps)
        losses.append(total / max(1, len(batches)))
        log.info("hgnn epoch %d: loss %.4f", epoch, losses[-1])
    return model, losses


def _link_loss(z: dict[str, Tensor], graph: TypedGraph, et: EdgeType, chunk: np.ndarray, config: HGNNConfig,
               device: torch.device) -> Tensor:
    """Softmax loss of the edges ``chunk`` of relation ``et`` against uniform negatives of the destination type
    and, with ``in_batch``, the chunk's other destinations."""
    src_t, _, dst_t = et
    s, d, _ = graph.edges[et]
    zs = z[src_t][torch.from_numpy(s[chunk]).to(device)]  # (B, D)
    zd = z[dst_t][torch.from_numpy(d[chunk]).to(device)]  # (B, D)
    neg = torch.randint(0, len(graph.members[dst_t]), (len(chunk), config.negatives), device=device)
    neg_logit = torch.einsum("bd,bkd->bk", zs, z[dst_t][neg]) / config.temperature  # (B, K)
    if config.in_batch:  # blocks of M edges: column m of a block is edge m's positive, the others its negatives
        m = min(config.in_batch_block, len(chunk))
        blocks = len(chunk) // m
        n = blocks * m  # the remainder of the chunk keeps its uniform negatives only
        dst = torch.from_numpy(d[chunk[:n]]).to(device).view(blocks, m)
        block_logit = torch.bmm(zs[:n].view(blocks, m, -1), zd[:n].view(blocks, m, -1).transpose(1, 2))
        repeat = (dst[:, :, None] == dst[:, None, :]) & ~torch.eye(m, dtype=torch.bool, device=device)
        block_logit = (block_logit / config.temperature).masked_fill(repeat, -1e9).view(n, m)
        rest = (zs[n:] * zd[n:]).sum(-1, keepdim=True) / config.temperature  # (B - n, 1)
        pos_logit = torch.cat([block_logit, nn.functional.pad(rest, (0, m - 1), value=-1e9)])
        labels = torch.cat([torch.arange(m, device=device).repeat(blocks),
                            torch.zeros(len(chunk) - n, dtype=torch.long, device=device)])
    else:
        pos_logit = (zs * zd).sum(-1, keepdim=True) / config.temperature  # (B, 1)
        labels = torch.zeros(len(chunk), dtype=torch.long, device=device)
    return nn.functional.cross_entropy(torch.cat([pos_logit, neg_logit], 1), labels)


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
