"""One-line errors for CSV files that are not readable text tables (label files, light_hand skeletons,
the PREPARED manifest): binary or non-UTF-8 bytes, or a field over the csv module's 128 KiB limit
(no real cell is that long; a hostile file would otherwise end in a `_csv.Error` traceback).

    with reading_csv(path, "fix or re-download it"):
        rows = list(csv.reader(f))
"""
from __future__ import annotations

import csv
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from migfuse.errors import UserError


@contextmanager
def reading_csv(path: str | Path, fix: str) -> Iterator[None]:
    """Turn a csv.Error or a UnicodeDecodeError met while reading `path` into a UserError naming the
    file, the cause and `fix` (UserErrors raised inside pass unchanged)."""
    try:
        yield
    except csv.Error as e:
        raise UserError(f"{path} is not a readable CSV file ({e}); {fix}") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start}); {fix}") from None
