"""Errors raised at the stream's boundary.

    GfmStreamError
    └── InvalidRecord      a message or field that fails validation; carries field, value and reason
"""

from __future__ import annotations

import reprlib
from typing import Any

_SHORT = reprlib.Repr()
_SHORT.maxstring = 120
_SHORT.maxother = 120
_SHORT.maxlevel = 3


class GfmStreamError(Exception):
    """Base class of the errors of :mod:`streams`."""


class InvalidRecord(GfmStreamError):
    """A record failed validation.

    Attributes:
        field: the offending field (``"<message>"`` when the whole message is unreadable).
        value: the offending value, shortened for logs.
        reason: what was wrong, in words.
    """

    def __init__(self, field: str, value: Any, reason: str) -> None:
        self.field = field
        self.value = _SHORT.repr(value)[:200]  # bounded work and size, whatever the value (deep, huge)
        self.reason = reason
        super().__init__(f"{field}={self.value}: {reason}")
