"""Every error the storage layer raises: temporary failures and domain errors."""

from __future__ import annotations


class NotFoundError(LookupError):
    """The named row does not exist."""


class ConflictError(ValueError):
    """The row would violate a uniqueness rule (it already exists)."""


class InUseError(ValueError):
    """The row cannot go: something that must be dealt with first still depends on it."""


class StorageError(Exception):
    """The database could not be reached or refused the operation (a temporary failure)."""


class DurabilityError(StorageError):
    """The database runs without the settings that make a commit durable (R9)."""


def storage_error(error: Exception) -> StorageError:
    """The :class:`StorageError` that reports a driver or SQLAlchemy ``error``."""
    return StorageError(f"database error: {describe_error(error)}")


def describe_error(error: BaseException) -> str:
    """``error`` in one line: the driver's own error where SQLAlchemy wraps one (its
    text adds the statement and a link to its documentation), whitespace collapsed."""
    original = getattr(error, "orig", None)
    shown = original if isinstance(original, BaseException) else error
    return f"{type(shown).__name__}: {' '.join(str(shown).split())}"
