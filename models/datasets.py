"""Loading datasets in the shared layout (``items.tsv``, ``events.tsv``, optional ``holdout.tsv``).

See ``../shared/data/README.md``: ``items.tsv`` is ``item_id, item_type, title, text``; ``events.tsv`` is
``user_id, item_id, ts`` sorted by ``ts``.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


class DatasetError(ValueError):
    """A dataset folder is missing a file or holds a malformed row."""


@dataclass(frozen=True)
class Item:
    """One catalogue row."""

    item_id: str
    item_type: str
    title: str
    text: str


@dataclass(frozen=True)
class Event:
    """One consumption row."""

    user_id: str
    item_id: str
    ts: float


def _rows(path: Path, columns: tuple[str, ...]) -> Iterator[tuple[int, dict[str, str]]]:
    if not path.is_file():
        raise DatasetError(f"{path}: no such file (expected a dataset folder in the shared layout)")
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        missing = [c for c in columns if c not in (reader.fieldnames or [])]
        if missing:
            raise DatasetError(f"{path}: header lacks column(s) {missing}")
        yield from enumerate(reader, start=2)


def load_items(folder: Path) -> list[Item]:
    """Every item of ``folder/items.tsv``."""
    items = []
    for line, row in _rows(folder / "items.tsv", ("item_id", "item_type", "title")):
        if not row["item_id"] or not row["item_type"]:
            raise DatasetError(f"{folder / 'items.tsv'}:{line}: empty item_id or item_type")
        items.append(Item(row["item_id"], row["item_type"], row["title"] or "", row.get("text") or ""))
    return items


def iter_events(folder: Path, limit: int | None = None) -> Iterator[Event]:
    """The events of ``folder/events.tsv`` in file (time) order, at most ``limit``."""
    path = folder / "events.tsv"
    for n, (line, row) in enumerate(_rows(path, ("user_id", "item_id", "ts"))):
        if limit is not None and n >= limit:
            return
        try:
            ts = float(row["ts"])
        except (TypeError, ValueError):
            raise DatasetError(f"{path}:{line}: ts={row['ts']!r} is not a number") from None
        yield Event(row["user_id"], row["item_id"], ts)


def count_events(folder: Path) -> int:
    """How many events ``folder/events.tsv`` holds (lines less the header)."""
    with (folder / "events.tsv").open("rb") as handle:
        return max(0, sum(1 for _ in handle) - 1)
