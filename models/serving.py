"""Trained model directories, and the trained 2T-HGNN behind the refresher's :class:`VectorModel` interface.

A model directory (``gfm train``) holds ``config.json`` (item types, hyperparameters, the text encoder, the
data fingerprint, training metrics), ``hgnn.pt`` and ``twotower.pt``. :class:`TrainedModel` runs the HGNN over
the refresher's live graph (recomputed when the graph changed, so new items and edges are embedded
inductively) and the towers on top.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.embedding import LiveGraph
from models.evaluate import Split
from models.graph import UserState
from models.hgnn import HGNN, HGNNConfig, TypedGraph, embed, train_hgnn
from models.text import TextEncoder
from models.train import TrainConfig, graph_of, histories_list, peak_rss_mib, pick_device, text_embeddings, times_list
from models.twotower import TwoTower, TwoTowerConfig, train_two_tower, user_features, user_item_features


def train_for_serving(split: Split, encoder: TextEncoder, config: TrainConfig, out_root: Path,
                      fingerprint: str) -> Path:
    """Train the unified 2T-HGNN on all of ``split.train`` and write a versioned model directory."""
    device = pick_device()
    started = time.perf_counter()
    text = text_embeddings(split, encoder)
    graph = graph_of(split, split.train, config.graph, config.graph_cache)
    hgnn, hgnn_losses = train_hgnn(graph, text, config.hgnn, device)
    embedding = embed(hgnn, graph, text, device)
    degree = graph.weighted_degree(len(split.items)) if config.two_tower.item_degree else None
    towers, tt_losses = train_two_tower(histories_list(split), embedding, text, split.item_type,
                                        len(split.type_names), config.two_tower, device, degree=degree,
                                        times=times_list(split))
    version = f"2t-hgnn-{split.name}-{fingerprint}-{time.strftime('%Y%m%d%H%M%S')}"
    directory = out_root / version
    directory.mkdir(parents=True, exist_ok=False)
    torch.save(hgnn.state_dict(), directory / "hgnn.pt")
    torch.save(towers.state_dict(), directory / "twotower.pt")
    meta = {
        "version": version,
        "dataset": split.name,
        "data_fingerprint": fingerprint,
        "type_names": split.type_names,
        "edge_types": [list(et) for et in graph.edges],
        "text_encoder": encoder.name,
        "text_dim": int(text.shape[1]),
        "config": asdict(config),
        "metrics": {"hgnn_losses": hgnn_losses, "two_tower_losses": tt_losses,
                    "train_seconds": round(time.perf_counter() - started, 1), "peak_rss_mib": round(peak_rss_mib()),
                    "device": str(device), "items": len(split.items), "events": len(split.train)},
    }
    (directory / "config.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")
    return directory


class TrainedModel:
    """The trained 2T-HGNN as a :class:`~models.embedding.VectorModel`: item vectors read 2 hops (the HGNN's
    layers).

    Args:
        directory: a model directory written by :func:`train_for_serving`.
        encoder_name: the refresher's text encoder, which must be the one the model was trained with.
    """

    def __init__(self, directory: Path, encoder_name: str) -> None:
        meta: dict[str, Any] = json.loads((directory / "config.json").read_text())
        if meta["text_encoder"] != encoder_name:
            raise ValueError(f"model.dir={str(directory)!r} was trained on {meta['text_encoder']!r} text embeddings, "
                             f"but the refresher's encoder is {encoder_name!r}")
        self.device = pick_device()
        self.version = meta["version"]
        self.type_names: list[str] = meta["type_names"]
        hgnn_config = HGNNConfig(**meta["config"]["hgnn"])
        self.tt_config = TwoTowerConfig(**meta["config"]["two_tower"])
        edge_types = [tuple(et) for et in meta["edge_types"]]
        self.hgnn = HGNN(meta["text_dim"], hgnn_config.hidden, hgnn_config.out, edge_types,  # type: ignore[arg-type]
                         hgnn_config.text_skip)
        self.hgnn.load_state_dict(torch.load(directory / "hgnn.pt", map_location="cpu"))
        self.hgnn.to(self.device).eval()
        self.towers = TwoTower.for_config(hgnn_config.out, meta["text_dim"], len(self.type_names), self.tt_config)
        self.towers.load_state_dict(torch.load(directory / "twotower.pt", map_location="cpu"))
        self.towers.to(self.device).eval()
        self.dim = self.tt_config.dim
        self.hops = 2
        self._embedding: np.ndarray | None = None
        self._degree: np.ndarray | None = None
        self._stamp: tuple[int, int] = (-1, -1)

    def _type_codes(self, graph: LiveGraph) -> np.ndarray:
        known = {t: k for k, t in enumerate(self.type_names)}
        return np.array([known.get(t, -1) for t in graph.types], dtype=np.int64)

    def hgnn_embeddings(self, graph: LiveGraph) -> np.ndarray:
        """HGNN embeddings of every item in the live graph; recomputed when the graph grew or changed."""
        self._refresh(graph)
        assert self._embedding is not None
        return self._embedding

    def degrees(self, graph: LiveGraph) -> np.ndarray:
        """Every item's weighted degree in the live graph (what the item tower reads as popularity)."""
        self._refresh(graph)
        assert self._degree is not None
        return self._degree

    def _refresh(self, graph: LiveGraph) -> None:
        stamp = (len(graph), graph.version)
        if self._embedding is not None and stamp == self._stamp:
            return
        codes = self._type_codes(graph)
        src, dst, weight = [], [], []
        for item_id, adjacency in graph.adjacency.items():
            row = graph.rows.get(item_id)
            if row is None:
                continue
            for neighbour, (_, w, _) in adjacency.items():
                other = graph.rows.get(neighbour)
                if other is not None:
                    src.append(other)
                    dst.append(row)
                    weight.append(w)
        # an item of a type the model has never seen is embedded as the first type (its text still counts)
        typed = TypedGraph.build(np.maximum(codes, 0), self.type_names, np.array(src, dtype=np.int64),
                                 np.array(dst, dtype=np.int64), np.array(weight, dtype=np.float32))
        self._embedding = embed(self.hgnn, typed, graph.text(np.arange(len(graph))), self.device)
        self._degree = typed.weighted_degree(len(graph))
        self._stamp = stamp

    @torch.no_grad()
    def item_vectors(self, rows: Sequence[int], graph: LiveGraph) -> np.ndarray:
        index = np.asarray(rows, dtype=np.int64)
        embedding = self.hgnn_embeddings(graph)[index]
        codes = np.maximum(self._type_codes(graph)[index], 0)
        out = self.towers.items(torch.from_numpy(embedding).to(self.device),
                                torch.from_numpy(graph.text(index)).to(self.device),
                                torch.from_numpy(codes).to(self.device),
                                torch.from_numpy(self.degrees(graph)[index]).to(self.device))
        vectors = out.cpu().numpy()
        vectors[~graph.has_text(index)] = 0.0  # not in the catalogue yet: wait for its text
        return vectors

    @torch.no_grad()
    def user_vectors(self, states: Sequence[UserState], graph: LiveGraph) -> np.ndarray:
        embedding = self.hgnn_embeddings(graph)
        codes = self._type_codes(graph)
        histories = []
        for state in states:
            # every type's recent items merged oldest first, as training read the user's sequence
            recent = sorted((ts, graph.rows[i]) for rows in state["recent"].values() for i, ts in rows
                            if i in graph.rows)
            histories.append([r for _, r in recent if codes[r] >= 0])
        per_item = user_item_features(embedding, graph.text(np.arange(len(graph))), self.tt_config)
        features = user_features(histories, per_item, np.maximum(codes, 0), len(self.type_names),
                                 self.tt_config.history, self.tt_config.last_item)
        # the state keeps a bounded history; the counts feature is the user's full count per type (the last
        # len(type_names) columns)
        first = features.shape[1] - len(self.type_names)
        for u, state in enumerate(states):
            for k, name in enumerate(self.type_names):
                features[u, first + k] = np.log1p(state["counts"].get(name, 0))
        vectors = self.towers.users(torch.from_numpy(features).to(self.device)).cpu().numpy()
        empty = np.array([not h for h in histories], dtype=bool)
        vectors[empty] = 0.0
        return vectors
