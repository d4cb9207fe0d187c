"""Errors a user can cause, and how they reach the terminal.

A `UserError` carries a one-line message: what is wrong, which file, what to do. The CLI prints it
as ``error: <message>`` and exits with status 2, without a traceback. Anything else is a bug and
keeps its traceback.
"""
from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix (bad path, wrong layout, mismatched checkpoint or cache).

    The message must be one line and name the file and the fix.
    """

    def __init__(self, message: str):
        if "\n" in message:
            message = " ".join(part.strip() for part in message.splitlines() if part.strip())
        super().__init__(message)
