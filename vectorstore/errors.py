"""Errors of the vector store.

    VectorStoreError
    ├── DimensionMismatch   an existing collection holds vectors of another size
    ├── DistanceMismatch    an existing collection ranks by another distance
    └── NotFound            no point for that user or item
"""

from __future__ import annotations


class VectorStoreError(Exception):
    """Base class of the errors of :mod:`vectorstore`."""


class DimensionMismatch(VectorStoreError):
    """An existing collection was created for vectors of another size."""

    def __init__(self, collection: str, existing: int, wanted: int) -> None:
        super().__init__(
            f"collection {collection!r} holds {existing}-dim vectors but the model makes {wanted}-dim ones; "
            "point the store elsewhere or delete the collection"
        )


class DistanceMismatch(VectorStoreError):
    """An existing collection was created for another distance (a model with the trend needs ``dot``)."""

    def __init__(self, collection: str, existing: str, wanted: str) -> None:
        super().__init__(
            f"collection {collection!r} ranks by {existing} but the model needs {wanted}; "
            "point the store elsewhere or delete the collection"
        )


class NotFound(VectorStoreError):
    """No such user or item in the store."""

    def __init__(self, kind: str, key: str) -> None:
        self.kind = kind
        self.key = key
        super().__init__(f"unknown {kind} {key!r}")
