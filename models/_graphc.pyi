from collections.abc import Sequence
from typing import Any

def merge_neighbours(adjacency: dict[str, list[Any]], flat: Sequence[Any], max_degree: int, start: int = 0) -> None: ...
