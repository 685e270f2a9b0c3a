"""Vector store adapters (embedded qdrant-edge, Qdrant server), retrieval and the query API."""

from vectorstore.base import Hit, ItemPoint, UserPoint, VectorStore, item_point_id, user_point_id
from vectorstore.errors import DimensionMismatch, NotFound, VectorStoreError

__all__ = [
    "DimensionMismatch",
    "Hit",
    "ItemPoint",
    "NotFound",
    "UserPoint",
    "VectorStore",
    "VectorStoreError",
    "item_point_id",
    "user_point_id",
]
