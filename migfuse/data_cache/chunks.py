"""Chunks on disk: the checksummed codec, one-line errors for write faults, and `CorruptChunk`.

Every chunk carries a zstd checksum, so a damaged chunk file fails when it is read instead of giving
wrong numbers; `CorruptChunk` then names the group, the rows and the file. A full disk, a quota or a
read-only cache met while writing ends in one line naming the file and the fix (`writing`).

No torch, no Zarr at import time (zarr is imported where a codec is built).
"""
from __future__ import annotations

import errno
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

from migfuse.errors import UserError

_FULL = "free space on that disk (or pass another --cache) and rerun: finished rows are kept"
_READ_ONLY = ("the cache is read-only: reading it needs no writes, but to add rows copy it to a "
              "writable place (or pass another --cache)")
#: errno -> the fix a one-line error names (other OS errors are bugs and keep their traceback)
WRITE_FIXES = {errno.ENOSPC: _FULL, errno.EDQUOT: _FULL, errno.EFBIG: _FULL,
               errno.EROFS: _READ_ONLY, errno.EACCES: _READ_ONLY, errno.EPERM: _READ_ONLY}


@contextmanager
def writing(cache_path: Path) -> Iterator[None]:
    """Turn a full disk, a quota or a read-only cache met while writing into a one-line UserError."""
    try:
        yield
    except OSError as e:
        fix = WRITE_FIXES.get(e.errno)
        if fix is None:
            raise
        raise UserError(f"cannot write {e.filename or cache_path}: {e.strerror or e}; {fix}") from None


def compressors() -> tuple[Any, ...]:
    """The codecs of every chunk written in format 2: zstd level 0 with a checksum."""
    from zarr.codecs import ZstdCodec

    return (ZstdCodec(level=0, checksum=True),)  # the checksum makes a corrupt chunk fail when read


#: Format 3 layout: a data array's shard (one file) holds about this many bytes of rows, so the
#: file count follows the data's size, not rows x arrays; each row stays its own inner chunk (read alone).
SHARD_BYTES = 8 << 20
#: rows per inner chunk of the small per-row arrays (status, failure, rowdef, lengths); their shard
#: holds up to SMALL_SHARD_ROWS rows (one file for the 18,498 iMiGUE clips)
SMALL_CHUNK_ROWS = 1024
SMALL_SHARD_ROWS = 64 * SMALL_CHUNK_ROWS


def shard_rows(n: int, chunk_rows: int, row_bytes: int | None) -> tuple[int, int]:
    """(rows per inner chunk, rows per shard) of an array of `n` rows in format 3.

    Data arrays (`row_bytes` given) keep `chunk_rows` rows per inner chunk and about SHARD_BYTES per
    shard; small arrays (`row_bytes` None) take SMALL_CHUNK_ROWS per chunk and up to
    SMALL_SHARD_ROWS per shard. A shard is a whole number of chunks and never larger than needed.
    """
    if row_bytes is None:
        chunk = max(1, min(SMALL_CHUNK_ROWS, n))
        per_shard = SMALL_SHARD_ROWS
    else:
        chunk = max(1, chunk_rows)
        per_shard = max(chunk, SHARD_BYTES // max(1, row_bytes))
    per_shard = min(per_shard, max(n, 1))
    return chunk, -(-per_shard // chunk) * chunk


class CorruptChunk(UserError):
    """A chunk file that cannot be decoded (bad checksum, truncated): names group, row ids and file."""

    def __init__(self, group: str, array: str, chunk: Path, rows: Sequence[str], cause: BaseException, hint: str = ""
                 ) -> None:
        self.group, self.array, self.chunk, self.rows = group, array, chunk, list(rows)
        shown = ", ".join(self.rows[:3]) + (f" (+{len(self.rows) - 3})" if len(self.rows) > 3 else "")
        #: the message without the fix
        self.what = (f"corrupt chunk {chunk} in cache group '{group}' (array {array}, row {shown or '-'}): "
                     f"{type(cause).__name__}: {cause}")
        super().__init__(f"{self.what}; {hint}" if hint else self.what)

