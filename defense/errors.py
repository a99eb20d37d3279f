"""The CLI's own error for a bad command-line value (kept apart so that every command module can raise it)."""

from __future__ import annotations


class UsageError(ValueError):
    """A bad command-line value; reported in one line."""
