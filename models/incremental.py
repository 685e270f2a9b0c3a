"""The trained HGNN over a live graph, kept per layer and recomputed only where its inputs changed.

The HGNN (``models/hgnn.py``) computes, for an item :math:`i` of type :math:`t`,

.. math::
    h^{(1)}_i = \\mathrm{ReLU}\\Big(\\sum_s W^{(1)}_{st} \\sum_{j \\in N_s(i)} a_{ij} x_j + U^{(1)}_{st} x_i
    + b^{(1)}_{st}\\Big), \\quad
    z_i = \\mathrm{norm}\\Big(\\sum_s W^{(2)}_{st} \\sum_{j \\in N_s(i)} a_{ij} h^{(1)}_j
    + U^{(2)}_{st} h^{(1)}_i + b^{(2)}_{st} + S_t x_i\\Big)

where :math:`N_s(i)` are the neighbours of type :math:`s` that item :math:`i` keeps (its own adjacency,
:func:`models.features.graph_tensors`) and :math:`a_{ij}` its co-count weights normalised over them. So:

* :math:`h^{(1)}_i` reads :math:`x_i`, item :math:`i`'s adjacency and its neighbours' :math:`x_j`: it must be
  recomputed for the items whose text or adjacency changed, new items, and the items that list an item whose text
  changed (its followers);
* :math:`z_i` reads :math:`x_i`, the adjacency, :math:`h^{(1)}_i` and the neighbours' :math:`h^{(1)}_j`: recomputed
  for the first set and its followers.

:class:`IncrementalHGNN` keeps :math:`h^{(1)}`, :math:`z` and each item's parsed adjacency (and weighted degree) for
one :class:`~models.embedding.LiveGraph`, asks the graph which rows changed since it last looked
(:meth:`~models.embedding.LiveGraph.changed_since`), and runs each layer on its set only, as a sparse product over
those rows' adjacencies: the cost of a refresh grows with the affected set, not with the graph. The first look at a
graph (a started or restarted refresher) computes every row with the same code. The result equals the full-graph
forward (``models.hgnn.embed`` over :func:`~models.features.graph_tensors`) up to float rounding; tests check 1e-5.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from operator import itemgetter

import numpy as np
import torch
from torch import Tensor, nn
from torch_geometric.nn import HeteroConv

from models.embedding import LiveGraph
from models.hgnn import HGNN

log = logging.getLogger(__name__)
_weight = itemgetter(1)

@dataclass
class RefreshSizes:
    """What the last :meth:`IncrementalHGNN.update` recomputed."""

    layer1: int = 0
    layer2: int = 0
    rows: int = 0
    seconds: float = 0.0


class IncrementalHGNN:
    """A trained HGNN's embeddings of a live graph's items, per layer, refreshed where inputs changed.

    Args:
        hgnn: the trained model (eval mode).
        type_names: its item types; an item of another type is embedded as the first type.
        device: where the products run.
    """

    def __init__(self, hgnn: HGNN, type_names: list[str], device: torch.device) -> None:
        self.hgnn = hgnn
        self.type_names = type_names
        self.device = device
        self._known = {t: k for k, t in enumerate(type_names)}
        self.hidden = int(next(iter(hgnn.conv1.convs.values())).out_channels)
        self.graph: LiveGraph | None = None
        self.last = RefreshSizes()
        self.layer2_total = 0
        """Layer-2 rows computed since this object was made (what the refreshes cost, in rows)."""
        self._reset(None)

    def _reset(self, graph: LiveGraph | None) -> None:
        self.graph = graph
        self._seen = -1
        self._n = 0
        self.codes = np.zeros(0, dtype=np.int64)
        """Per row, the type index (-1: a type the model does not know)."""
        self.degree = np.zeros(0, dtype=np.float32)
        """Per row, the sum of its adjacency's co-counts (the item tower's popularity)."""
        self.z = np.zeros((0, self.hgnn.out), dtype=np.float32)
        """Per row, the HGNN embedding (unit norm)."""
        self._h1 = torch.zeros((0, self.hidden), device=self.device)
        self._x = torch.zeros((0, len(self.hgnn.input_mean)), device=self.device)
        """Per row, the HGNN's input: the text through the model's input transform."""
        self._neighbours: list[tuple[np.ndarray, np.ndarray]] = []

    def __len__(self) -> int:
        return self._n

    @torch.no_grad()
    def update(self, graph: LiveGraph) -> None:
        """Bring the embeddings up to date with ``graph`` (a new graph object starts from scratch)."""
        if graph is not self.graph:
            self._reset(graph)
        if graph.version == self._seen and len(graph) == self._n:
            return
        started = time.perf_counter()
        text_rows, adjacency_rows = graph.changed_since(self._seen)
        new_rows = np.arange(self._n, len(graph))
        self._grow(len(graph))
        for row in np.union1d(text_rows, new_rows):
            self.codes[row] = self._code(graph.types[row])
        for row in np.union1d(adjacency_rows, new_rows):
            self._parse(graph, int(row))
        inputs = np.union1d(text_rows, new_rows)  # rows whose x changed
        layer1 = np.union1d(np.union1d(inputs, adjacency_rows), self._followers(graph, inputs))
        layer2 = np.union1d(layer1, self._followers(graph, layer1))
        if len(inputs):  # the input transform (whitening) of the rows whose text changed
            where = torch.from_numpy(inputs).to(self.device)
            self._x[where] = self.hgnn.inputs(torch.from_numpy(graph.text_matrix()[inputs]).to(self.device))
        x = self._x[: len(graph)]
        if len(layer1):
            self._h1[torch.from_numpy(layer1).to(self.device)] = torch.relu(
                self._layer(self.hgnn.conv1, x, layer1, self.hidden))
        if len(layer2):
            index = torch.from_numpy(layer2).to(self.device)
            out = self._layer(self.hgnn.conv2, self._h1, layer2, self.hgnn.out)
            if len(self.hgnn.skip):
                types = np.maximum(self.codes[layer2], 0)
                for k, name in enumerate(self.type_names):
                    where = torch.from_numpy(np.flatnonzero(types == k)).to(self.device)
                    if len(where) and name in self.hgnn.skip:
                        out[where] += self.hgnn.skip[name](x[index[where]])
            self.z[layer2] = nn.functional.normalize(out, dim=-1).cpu().numpy()
        self._seen, self._n = graph.version, len(graph)
        self.last = RefreshSizes(len(layer1), len(layer2), len(graph), time.perf_counter() - started)
        self.layer2_total += len(layer2)

    def _code(self, name: str) -> int:
        code = self._known.get(name)
        if code is None:
            log.warning("item type %r is unknown to the served model (trained on %s): its items are embedded as %r "
                        "and user histories skip them; serve a model trained on this data (`gfm train`) or the "
                        "text-propagation fallback (GFM_MODEL__KIND=textprop)", name, self.type_names,
                        self.type_names[0])
            code = self._known[name] = -1
        return code

    def _grow(self, n: int) -> None:
        if n <= len(self.codes):
            return
        size = max(n, 2 * len(self.codes), 1024)
        extra = size - len(self.codes)
        self.codes = np.concatenate([self.codes, np.full(extra, -1, dtype=np.int64)])
        self.degree = np.concatenate([self.degree, np.zeros(extra, dtype=np.float32)])
        self.z = np.concatenate([self.z, np.zeros((extra, self.z.shape[1]), dtype=np.float32)])
        self._h1 = torch.cat([self._h1, self._h1.new_zeros((extra, self._h1.shape[1]))])
        self._x = torch.cat([self._x, self._x.new_zeros((extra, self._x.shape[1]))])
        self._neighbours += [(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64))] * extra

    def _parse(self, graph: LiveGraph, row: int) -> None:
        adjacency = graph.adjacency.get(graph.ids[row], {})
        cols = np.fromiter(map(graph.rows.__getitem__, adjacency), dtype=np.int64, count=len(adjacency))
        weights = np.fromiter(map(_weight, adjacency.values()), dtype=np.float64, count=len(adjacency))
        self._neighbours[row] = (cols, weights)
        self.degree[row] = np.float32(weights.sum())

    @staticmethod
    def _followers(graph: LiveGraph, rows: Iterable[int]) -> np.ndarray:
        ids, followers, empty = graph.ids, graph.followers, frozenset[str]()
        found = set[str]().union(*(followers.get(ids[r], empty) for r in rows))  # the union runs in C
        return np.fromiter(map(graph.rows.__getitem__, found), dtype=np.int64, count=len(found))

    def _layer(self, conv: HeteroConv, inputs: Tensor, rows: np.ndarray, width: int) -> Tensor:
        """One HeteroConv(SAGEConv) layer for ``rows`` only: per relation ``(s, t)``, the weighted mean of the
        row's type-``s`` neighbours' inputs through ``lin_l`` plus the row's own input through ``lin_r``."""
        types = np.maximum(self.codes, 0)
        count = len(self.type_names)
        parts = [self._neighbours[r] for r in rows]
        sizes = np.fromiter((len(c) for c, _ in parts), dtype=np.int64, count=len(parts))
        position = np.repeat(np.arange(len(rows)), sizes)
        cols = np.concatenate([c for c, _ in parts]) if len(parts) else np.zeros(0, dtype=np.int64)
        weights = np.concatenate([w for _, w in parts]) if len(parts) else np.zeros(0)
        source = types[cols]
        key = position * count + source
        total = np.bincount(key, weights=weights, minlength=len(rows) * count)
        share = (weights / np.maximum(total[key], 1e-12)).astype(np.float32)
        destination = types[rows]
        own = inputs[torch.from_numpy(rows).to(self.device)]
        out = inputs.new_zeros((len(rows), width))
        for s, s_name in enumerate(self.type_names):
            m = source == s
            # position is sorted (rows' adjacencies one after another) and a row lists a neighbour once: CSR as is
            crow = np.concatenate([[0], np.cumsum(np.bincount(position[m], minlength=len(rows)))])
            matrix = torch.sparse_csr_tensor(torch.from_numpy(crow), torch.from_numpy(cols[m]),
                                             torch.from_numpy(share[m]), (len(rows), len(inputs)))
            aggregated = (matrix.to(self.device) @ inputs) if len(rows) else inputs.new_zeros((0, inputs.shape[1]))
            for t, t_name in enumerate(self.type_names):
                relation = (s_name, "co", t_name)
                where = torch.from_numpy(np.flatnonzero(destination == t)).to(self.device)
                if len(where) and relation in self.hgnn.edge_types:
                    block = conv.convs[relation]
                    out[where] += block.lin_l(aggregated[where]) + block.lin_r(own[where])
        return out
