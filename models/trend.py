"""Trending: each item's exponentially decayed consumption count, one coordinate of the dot product.

An item's trend at time :math:`t` is

.. math:: \\mathrm{trend}_i(t) = \\log\\Big(\\epsilon + \\sum_{e \\in E_i,\\, t_e \\le t} e^{-(t - t_e)/\\tau}\\Big)

over its consumption events :math:`E_i` (every event, repeats included, as popularity counts them), with
time constant :math:`\\tau` (``None``: no decay, the log of the count). It is kept as a *level* relative to a
fixed epoch :math:`t_0`, :math:`\\ell_i = \\log(\\epsilon + \\sum_e e^{(t_e - t_0)/\\tau})`, so that
:math:`\\mathrm{trend}_i(t) = \\ell_i - (t - t_0)/\\tau` for every item at once: the shift is the same for every
item, so a score :math:`s(u, i) + \\lambda_u \\ell_i` ranks a user's items as :math:`s(u, i) + \\lambda_u
\\mathrm{trend}_i(t)` does at any query time, and an item's stored level changes only when it is consumed.
(The :math:`\\epsilon` is a pseudo-event at the epoch, so it decays like a real one and the identity holds.)

Folding is ``logaddexp``: commutative and associative, so the level does not depend on the order in which
events arrive (partitions, replays in another order); only on the set of events folded once.

The stream does not know which time constant a model will choose, so it keeps one level per constant of
:data:`TAUS`, relative to the epoch 0 (float64 keeps ~1e-10 absolute precision at today's ``ts / tau``); a
model chooses one of :data:`TAUS` and :func:`rebase` moves its level to the model's own epoch, where float32
vectors keep its precision.
"""

from __future__ import annotations

import math

import numpy as np

EPSILON = 1e-3
"""Weight of the pseudo-event at the epoch that every level starts from (an item never consumed)."""

EMPTY_LEVEL = math.log(EPSILON)

DAY = 86400.0
TAUS: tuple[float | None, ...] = (None, 1 * DAY, 3 * DAY, 7 * DAY, 14 * DAY, 30 * DAY, 90 * DAY)
"""The time constants a model may choose from (``None``: no decay); the stream keeps a level for each."""


def exponent(ts: float, tau: float | None, epoch: float) -> float:
    """One event's log-weight relative to the epoch: ``(ts - epoch) / tau`` (0 without decay)."""
    return 0.0 if tau is None else (ts - epoch) / tau


def fold(level: float, ts: float, tau: float | None, epoch: float) -> float:
    """The level after one more consumption at ``ts``."""
    return float(np.logaddexp(level, exponent(ts, tau, epoch)))


def levels(items: np.ndarray, ts: np.ndarray, n_items: int, tau: float | None, epoch: float,
           start: np.ndarray | None = None) -> np.ndarray:
    """Every item's level after folding the events ``(items[k], ts[k])`` into ``start`` (float64, one level per
    item; default ``EMPTY_LEVEL``, no events yet); equal to :func:`fold` applied event by event, in any order, up
    to rounding. ``start`` lets a stream fold a micro-batch's events into the levels it holds."""
    items = np.asarray(items, dtype=np.int64)
    x = np.zeros(len(items)) if tau is None else (np.asarray(ts, dtype=np.float64) - epoch) / tau
    base = np.full(n_items, EMPTY_LEVEL) if start is None else np.asarray(start, dtype=np.float64)
    top = base.copy()
    np.maximum.at(top, items, x)
    total = np.exp(base - top)
    np.add.at(total, items, np.exp(x - top[items]))
    return top + np.log(total)


def rebase(level: float | np.ndarray, tau: float | None, epoch: float) -> float | np.ndarray:
    """A level kept relative to the epoch 0 (the stream's), moved to ``epoch``: the events' weights shifted by
    ``-epoch / tau`` and the epsilon pseudo-event placed at ``epoch`` (the old one, at 0, has decayed to nothing
    for any real epoch). Equal to :func:`levels` computed with ``epoch`` directly, up to that decayed epsilon."""
    if tau is None:
        return level
    return np.logaddexp(np.asarray(level, dtype=np.float64) - epoch / tau, EMPTY_LEVEL)
