"""Errors a user can cause.

Library functions raise :class:`UserError` (a ``ValueError``) for bad input; the CLI turns it into
one line ``degl: error: ...`` and exit status 2. Anything else is an internal failure (exit 1).
"""

from __future__ import annotations


class UserError(ValueError):
    """Bad input from the user: a path, a config value, a shape, a corrupt file.

    The message must be one line that says what is wrong and what to do about it.
    """

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))


class DivergedError(UserError):
    """The training loss became NaN or infinite: the run stops, its last finite checkpoint kept."""
