"""Trained model directories, and the trained 2T-HGNN behind the refresher's :class:`VectorModel` interface.

A model directory (``gfm train``) holds ``config.json`` (item types, hyperparameters, the text encoder, the
data fingerprint, training metrics), ``hgnn.pt`` and ``twotower.pt``. :class:`TrainedModel` runs the HGNN over
the refresher's live graph, layer by layer where the inputs changed (:class:`~models.incremental.IncrementalHGNN`:
new items and edges are embedded inductively), and the towers on top.
"""

from __future__ import annotations

import hashlib
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
from models.hgnn import HGNN, HGNNConfig, embed, train_hgnn
from models.incremental import IncrementalHGNN
from models.text import TextEncoder
from models.train import TrainConfig, graph_of, histories_list, peak_rss_mib, pick_device, text_embeddings
from models.twotower import TwoTower, TwoTowerConfig, train_two_tower, user_vectors


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
    towers, tt_losses = train_two_tower(histories_list(split, config.graph), embedding, text, split.item_type,
                                        len(split.type_names), config.two_tower, device, degree=degree)
    shape = hashlib.sha1(json.dumps(asdict(config), default=str, sort_keys=True).encode()).hexdigest()[:6]
    version = f"2t-hgnn-{split.name}-{fingerprint}-{shape}-{time.strftime('%Y%m%d%H%M%S')}"
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


def find_model(root: Path, fingerprint: str, encoder_name: str, config: TrainConfig) -> Path | None:
    """The newest model directory under ``root`` trained on the data of ``fingerprint`` with this text encoder and
    this configuration, if any."""
    wanted = json.loads(json.dumps(asdict(config), default=str))
    found = []
    for path in root.glob("*/config.json") if root.is_dir() else ():
        try:
            meta = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # a directory being written, or not a model
        if (meta.get("data_fingerprint") == fingerprint and meta.get("text_encoder") == encoder_name
                and meta.get("config") == wanted and (path.parent / "twotower.pt").exists()):
            found.append(path.parent)
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def cached_model(split: Split, encoder: TextEncoder, config: TrainConfig, root: Path, fingerprint: str
                 ) -> tuple[Path, bool]:
    """A model for ``split``: the one under ``root`` with this data, encoder and configuration, else a new one
    trained by :func:`train_for_serving`. Returns ``(directory, trained)``."""
    found = find_model(root, fingerprint, encoder.name, config)
    if found is not None:
        return found, False
    return train_for_serving(split, encoder, config, root, fingerprint), True


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
        self.layers = IncrementalHGNN(self.hgnn, self.type_names, self.device)
        """The HGNN's layers over the refresher's live graph, refreshed where their inputs changed."""

    def _type_codes(self, graph: LiveGraph) -> np.ndarray:
        self.layers.update(graph)
        return self.layers.codes[: len(graph)]

    def hgnn_embeddings(self, graph: LiveGraph) -> np.ndarray:
        """HGNN embeddings of every item in the live graph, brought up to date with it."""
        self.layers.update(graph)
        return self.layers.z[: len(graph)]

    def degrees(self, graph: LiveGraph) -> np.ndarray:
        """Every item's weighted degree in the live graph (what the item tower reads as popularity)."""
        self.layers.update(graph)
        return self.layers.degree[: len(graph)]

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
        return user_vectors(self.towers, states, graph.rows, self._type_codes(graph), self.type_names,
                            self.hgnn_embeddings(graph), graph.text_matrix(), self.tt_config,
                            self.device)
