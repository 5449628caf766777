"""Domain errors raised by the storage functions."""

from __future__ import annotations


class NotFoundError(LookupError):
    """The named row does not exist."""


class ConflictError(ValueError):
    """The row would violate a uniqueness rule (it already exists)."""
