"""A seeded generator of a small two-type catalogue and listening events, for the demo and the tests.

Items belong to topics; each user prefers a few topics and mostly consumes items of those, of both types,
so the co-interaction graph has real structure (topic clusters) that a recommender can find.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.datasets import Event, Item

TOPICS = (
    ("true crime", ["Murder", "Cold Case", "Detective", "Evidence", "Verdict"]),
    ("space", ["Orbit", "Galaxy", "Rocket", "Nebula", "Astronaut"]),
    ("cooking", ["Kitchen", "Recipe", "Bread", "Spice", "Chef"]),
    ("history", ["Empire", "Revolution", "Medieval", "Dynasty", "Ancient"]),
    ("finance", ["Markets", "Money", "Investing", "Budget", "Economy"]),
    ("comedy", ["Laughs", "Stand-up", "Jokes", "Sketch", "Improv"]),
    ("fitness", ["Workout", "Running", "Strength", "Yoga", "Marathon"]),
    ("technology", ["Startups", "Code", "Gadgets", "Robots", "Silicon"]),
)
ITEM_TYPES = ("podcast", "audiobook")


@dataclass(frozen=True)
class SyntheticData:
    """A generated catalogue and its events (sorted by time)."""

    items: list[Item]
    events: list[Event]
    topic_of: dict[str, int]


def generate(
    users: int = 200, items_per_type: int = 80, events_per_user: int = 25, seed: int = 7, t0: float = 1.7e9
) -> SyntheticData:
    """Generate a catalogue of ``items_per_type`` items of each type and events of ``users`` users."""
    rng = np.random.default_rng(seed)
    items: list[Item] = []
    topic_of: dict[str, int] = {}
    for item_type in ITEM_TYPES:
        for n in range(items_per_type):
            topic = int(rng.integers(len(TOPICS)))
            name, words = TOPICS[topic]
            picked = rng.choice(words, size=2, replace=False)
            item_id = f"{item_type[0]}{n:04d}"
            title = f"{picked[0]} {picked[1]} {'Show' if item_type == 'podcast' else 'Chronicles'} #{n}"
            items.append(Item(item_id, item_type, title, f"A {item_type} about {name}."))
            topic_of[item_id] = topic
    by_topic: dict[int, list[str]] = {}
    for item in items:
        by_topic.setdefault(topic_of[item.item_id], []).append(item.item_id)
    all_ids = [item.item_id for item in items]
    events: list[Event] = []
    for u in range(users):
        liked = rng.choice(len(TOPICS), size=2, replace=False)
        start = t0 + float(rng.uniform(0, 86_400))
        for k in range(events_per_user):
            # 85% of plays come from the user's two topics, the rest from anywhere
            pool = by_topic.get(int(rng.choice(liked)), all_ids) if rng.random() < 0.85 else all_ids
            events.append(Event(f"u{u:04d}", str(rng.choice(pool)), start + 60.0 * k))
    events.sort(key=lambda e: e.ts)
    return SyntheticData(items, events, topic_of)


def write_dataset(data: SyntheticData, folder: Path, holdout: bool = False) -> Path:
    """Write ``data`` in the shared layout (``items.tsv``, ``events.tsv``; with ``holdout``, each user's last
    event goes to ``holdout.tsv`` as ``test``), so every dataset tool runs on it."""
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "items.tsv").open("w") as out:
        out.write("item_id\titem_type\ttitle\ttext\n")
        for item in data.items:
            out.write(f"{item.item_id}\t{item.item_type}\t{item.title}\t{item.text}\n")
    last: dict[str, Event] = {}
    if holdout:
        for event in data.events:
            last[event.user_id] = event
    with (folder / "events.tsv").open("w") as out:
        out.write("user_id\titem_id\tts\n")
        for event in data.events:
            if last.get(event.user_id) is not event:
                out.write(f"{event.user_id}\t{event.item_id}\t{int(event.ts)}\n")
    if holdout:
        with (folder / "holdout.tsv").open("w") as out:
            out.write("user_id\titem_id\tsplit\n")
            for event in last.values():
                out.write(f"{event.user_id}\t{event.item_id}\ttest\n")
    return folder
