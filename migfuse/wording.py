"""How counts read in messages: `counted(1, "clip")` -> "1 clip", `counted(18442, "clip")` -> "18,442 clips".

One rule for every console line and error: thousands separators, and the singular for exactly one.
"""
from __future__ import annotations


def counted(n: int, word: str, plural: str | None = None) -> str:
    """`n` with thousands separators and `word`, plural unless n == 1 (`plural` default: word + "s")."""
    return f"{n:,} {word if n == 1 else plural or word + 's'}"
