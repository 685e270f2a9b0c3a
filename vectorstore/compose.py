"""User vectors composed at query time, from what the store holds.

The refresher keeps item points current (their vectors and what a user vector reads of them) and writes each
user's state when it changes; it computes no user vector. When a user's recommendations are asked for,
:class:`ComposedUsers` reads the items of the user's state that the model's user side reads (at most
``history`` per type for the 2T-HGNN, its 50 most recent for text propagation), in one store call, and runs the
model's :class:`~models.embedding.UserComposer` on them: the user tower for the 2T-HGNN (the function evaluation
uses), the mean of the items' vectors for text propagation. A user's vector is then as fresh as the last of their
state and their items' inputs that reached the store, and no moved item leaves any user vector stale.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from models.embedding import ItemInputs, UserComposer
from vectorstore.base import UserPoint, VectorStore


class ComposedUsers:
    """Composes a stored user's vector from their state and their items' stored inputs.

    Args:
        store: where the users and items are.
        composer: the served model's user side (``VectorModel.composer``, or ``models.serving.UserTower.load``).
    """

    def __init__(self, store: VectorStore, composer: UserComposer) -> None:
        self.store = store
        self.composer = composer

    @property
    def version(self) -> str:
        """The version of the model that composes."""
        return self.composer.version

    def vectors(self, users: list[UserPoint]) -> np.ndarray:
        """``(len(users), dim)``: each user's vector from their stored state (zero rows: no item known yet)."""
        states = [u.state() for u in users]
        wanted = list(dict.fromkeys(i for s in states for i in self.composer.history(s)))
        found = self.store.item_inputs(wanted, self.composer.reads_features)
        width = next(iter(found.values()))[1].shape[0] if found else 1
        return self.composer.compose(states, ItemInputs.of(found, width))

    def __call__(self, user: UserPoint) -> UserPoint:
        """``user`` with its composed vector and the composing model's version."""
        return dataclasses.replace(user, vector=self.vectors([user])[0], model_version=self.composer.version)
