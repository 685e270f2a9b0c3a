"""Trained model directories, and the trained 2T-HGNN behind the refresher's :class:`VectorModel` interface.

A model directory (``gfm train``) holds ``config.json`` (item types, hyperparameters, the text encoder, the
data fingerprint, training metrics), ``hgnn.pt`` and ``twotower.pt``. :class:`TrainedModel` runs the HGNN over
the refresher's live graph, layer by layer where the inputs changed (:class:`~models.incremental.IncrementalHGNN`:
new items and edges are embedded inductively), and the item tower on top; it hands out what the user tower reads
of each item (:func:`~models.twotower.user_item_features`), which the refresher stores with the item.
:class:`UserTower` is the user tower alone (no HGNN, no text encoder): the query API loads it from the same
directory and composes a user's vector when asked, from the user's state and their items' stored features.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.embedding import Distance, ItemInputs, LiveGraph, ServedTrend, graph_inputs
from models.evaluate import Split
from models.graph import UserState, recent_items
from models.hgnn import HGNN, HGNNConfig, embed, train_hgnn
from models.incremental import IncrementalHGNN
from models.text import TextEncoder
from models.train import TrainConfig, graph_of, histories_list, peak_rss_mib, pick_device, text_embeddings
from models.twotower import (
    NumpyUserTower,
    TwoTower,
    TwoTowerConfig,
    train_two_tower,
    user_item_features,
    user_vectors,
    with_levels,
)


def train_for_serving(split: Split, encoder: TextEncoder, config: TrainConfig, out_root: Path,
                      fingerprint: str, trend_tau: float | None = None, trend_weight: float = 1.0) -> Path:
    """Train the unified 2T-HGNN on all of ``split.train`` and write a versioned model directory; with the trend,
    ``trend_tau`` is its time constant (:func:`~models.train.choose_trend_tau`), the levels' epoch is
    :attr:`Split.now` and ``trend_weight`` multiplies the users' learned trend weight
    (:func:`~models.train.choose_trend_weight`; in ``config.json``: ``trend_tau``, ``trend_epoch``,
    ``trend_weight``)."""
    device = pick_device()
    started = time.perf_counter()
    text = text_embeddings(split, encoder)
    graph = graph_of(split, split.train, config.graph, config.graph_cache)
    hgnn, hgnn_losses = train_hgnn(graph, text, config.hgnn, device)
    embedding = embed(hgnn, graph, text, device)
    degree = graph.weighted_degree(len(split.items)) if config.two_tower.item_degree else None
    towers, tt_losses = train_two_tower(histories_list(split, config.graph), embedding, text, split.item_type,
                                        len(split.type_names), config.two_tower, device, degree=degree,
                                        trend_tau=trend_tau)
    towers.trend_weight = trend_weight
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
        "trend_tau": trend_tau if config.two_tower.trend else None,
        "trend_epoch": split.now if config.two_tower.trend else None,
        "trend_weight": trend_weight if config.two_tower.trend else None,
        "metrics": {"hgnn_losses": hgnn_losses, "two_tower_losses": tt_losses,
                    "train_seconds": round(time.perf_counter() - started, 1), "peak_rss_mib": round(peak_rss_mib()),
                    "device": str(device), "items": len(split.items), "events": len(split.train)},
    }
    (directory / "config.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")
    return directory


def find_model(root: Path, fingerprint: str, encoder_name: str, config: TrainConfig,
               trend_tau: float | None = None) -> Path | None:
    """The newest model directory under ``root`` trained on the data of ``fingerprint`` with this text encoder,
    this configuration (and trend time constant), if any."""
    wanted = json.loads(json.dumps(asdict(config), default=str))
    found = []
    for path in root.glob("*/config.json") if root.is_dir() else ():
        try:
            meta = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # a directory being written, or not a model
        if (meta.get("data_fingerprint") == fingerprint and meta.get("text_encoder") == encoder_name
                and meta.get("config") == wanted and (path.parent / "twotower.pt").exists()
                and (not config.two_tower.trend or meta.get("trend_tau") == trend_tau)):
            found.append(path.parent)
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def cached_model(split: Split, encoder: TextEncoder, config: TrainConfig, root: Path, fingerprint: str,
                 trend_tau: float | None = None, trend_weight: Callable[[], float] = lambda: 1.0
                 ) -> tuple[Path, bool]:
    """A model for ``split``: the one under ``root`` with this data, encoder, configuration and trend time
    constant, else a new one trained by :func:`train_for_serving`, with the trend weight multiplier
    ``trend_weight()`` (called only then: :func:`~models.train.serving_trend_weight` trains a model to choose it,
    and the data, configuration and time constant determine its choice). Returns ``(directory, trained)``."""
    found = find_model(root, fingerprint, encoder.name, config, trend_tau)
    if found is not None:
        return found, False
    return train_for_serving(split, encoder, config, root, fingerprint, trend_tau, trend_weight()), True


def load_towers(directory: Path, meta: dict[str, Any], config: TwoTowerConfig) -> TwoTower:
    """The two-tower model of a model directory (on the CPU, in eval mode), with the trend weight multiplier it
    was saved with (``config.json``: ``trend_weight``; 1 for a model written before it existed)."""
    towers = TwoTower.for_config(meta["config"]["hgnn"]["out"], meta["text_dim"], len(meta["type_names"]), config)
    towers.load_state_dict(torch.load(directory / "twotower.pt", map_location="cpu"))
    towers.trend_weight = float(meta.get("trend_weight") or 1.0)
    return towers.eval()


def served_trend(meta: dict[str, Any]) -> ServedTrend | None:
    """The trend a model directory's ``config.json`` says its towers read: ``trend_tau`` (seconds or null) and
    ``trend_epoch`` (seconds) when its two-tower has ``trend`` on; None for a model without it."""
    if not meta["config"]["two_tower"].get("trend", False):
        return None
    if "trend_tau" not in meta or meta.get("trend_epoch") is None:
        raise ValueError(f"model {meta.get('version')!r} reads the trend but its config.json has no "
                         "trend_tau / trend_epoch")
    return ServedTrend(meta["trend_tau"], float(meta["trend_epoch"]))


def distance_of(trend: ServedTrend | None) -> Distance:
    """The store's distance for a model: the plain dot product with the trend coordinate, cosine without."""
    return "cosine" if trend is None else "dot"


class UserTower:
    """The trained user tower as a :class:`~models.embedding.UserComposer`: a user's vector from their state and
    their history items' user-tower features (:func:`~models.twotower.user_item_features`), through
    :func:`~models.twotower.user_vectors`, the function evaluation uses, with the tower's numpy forward
    (:class:`~models.twotower.NumpyUserTower`: one user per request, on the API's event loop).

    Args:
        towers: the trained two-tower model (only its user tower runs).
        type_names: the model's item types.
        config: the towers' configuration.
        version: the model version.
        device: where the tower runs.
        trend: the trend the model reads (its user vectors end with the user's weight for it), or None.
    """

    reads_features = True

    def __init__(self, towers: TwoTower, type_names: list[str], config: TwoTowerConfig, version: str,
                 device: torch.device, trend: ServedTrend | None = None) -> None:
        self.towers = towers
        self.type_names = type_names
        self.config = config
        self.version = version
        self.device = device
        self.trend = trend
        self.dim = towers.out_dim
        self.distance = distance_of(trend)
        self._codes = {name: k for k, name in enumerate(type_names)}
        self._forward = NumpyUserTower(towers)

    @classmethod
    def load(cls, directory: Path, device: torch.device | None = None) -> UserTower:
        """The user tower of a model directory written by :func:`train_for_serving` (the HGNN is not loaded)."""
        meta: dict[str, Any] = json.loads((directory / "config.json").read_text())
        config = TwoTowerConfig(**meta["config"]["two_tower"])
        device = device or torch.device("cpu")
        return cls(load_towers(directory, meta, config).to(device), meta["type_names"], config, meta["version"],
                   device, served_trend(meta))

    def history(self, state: UserState) -> list[str]:
        """Per known type, the ``config.history`` newest items of ``state`` (what the tower averages)."""
        left = dict.fromkeys(self.type_names, self.config.history)
        out = []
        for item_id, item_type, _ in recent_items(state):
            if left.get(item_type, 0) > 0:
                left[item_type] -= 1
                out.append(item_id)
        return out

    def compose(self, states: Sequence[UserState], items: ItemInputs) -> np.ndarray:
        if not items.rows:  # nothing to read: no vector (and no feature width to build one from)
            return np.zeros((len(states), self.dim), dtype=np.float32)
        codes = np.fromiter((self._codes.get(t, -1) for t in items.types), dtype=np.int64, count=len(items.types))
        return user_vectors(self.towers, states, items.rows, codes, self.type_names, items.matrix, self.config,
                            self.device, forward=self._forward)


class TrainedModel:
    """The trained 2T-HGNN as a :class:`~models.embedding.VectorModel`: item vectors read 2 hops (the HGNN's
    layers); user vectors are composed by :attr:`composer` from the items' user-tower features. A model trained
    with the trend (``config.json``: ``trend_tau``, ``trend_epoch``) has :attr:`trend` set: its item vectors end
    with the item's level (which the refresher hands over, rebased to the model's epoch), its vectors are one
    coordinate wider and ranked by the plain dot product.

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
        self.towers = load_towers(directory, meta, self.tt_config).to(self.device)
        self.trend = served_trend(meta)
        self.distance = distance_of(self.trend)
        self.dim = self.towers.out_dim
        self.hops = 2
        self.layers = IncrementalHGNN(self.hgnn, self.type_names, self.device)
        """The HGNN's layers over the refresher's live graph, refreshed where their inputs changed."""
        self._composer = UserTower(self.towers, self.type_names, self.tt_config, self.version, self.device,
                                   self.trend)

    @property
    def composer(self) -> UserTower:
        return self._composer

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
    def item_vectors(self, rows: Sequence[int], graph: LiveGraph, levels: np.ndarray | None = None) -> np.ndarray:
        index = np.asarray(rows, dtype=np.int64)
        embedding = self.hgnn_embeddings(graph)[index]
        codes = np.maximum(self._type_codes(graph)[index], 0)
        out = self.towers.items(torch.from_numpy(embedding).to(self.device),
                                torch.from_numpy(graph.text(index)).to(self.device),
                                torch.from_numpy(codes).to(self.device),
                                torch.from_numpy(self.degrees(graph)[index]).to(self.device))
        vectors = with_levels(self.towers, out.cpu().numpy(), levels)  # with the trend, the level last
        vectors[~graph.has_text(index)] = 0.0  # not in the catalogue yet: wait for its text
        return vectors

    def user_features(self, rows: Sequence[int], graph: LiveGraph) -> np.ndarray:
        index = np.asarray(rows, dtype=np.int64)
        return user_item_features(self.hgnn_embeddings(graph)[index], graph.text(index), self.tt_config)

    def user_vectors(self, states: Sequence[UserState], graph: LiveGraph) -> np.ndarray:
        return self.composer.compose(states, graph_inputs(self, graph))
