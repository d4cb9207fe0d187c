"""Checking a cache group's files: decode every chunk (`verify_group`), find the chunk files of done
rows that are gone, and record the rows of damaged ones as failed so a rerun rewrites them
(`mark_rows_failed`). What `migfuse cache info --verify [--mark-failed]` runs, through `TokenGroup`.

Format-1 groups have no chunk checksums: only chunks that fail to decompress are found there.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

from migfuse.data_cache.chunks import CorruptChunk, writing
from migfuse.data_cache.spec import DONE

if TYPE_CHECKING:
    from migfuse.data_cache.group import TokenGroup


def verify_group(group: TokenGroup, batch_rows: int = 256) -> list[CorruptChunk]:
    """Decode every chunk of every array (all rows, done or not); return the corrupt ones.

    Format-1 groups have no chunk checksums: only chunks that fail to decompress are found."""
    bad: list[CorruptChunk] = []
    names = ["status", "failure", *group.arrays, *(f"{k}_len" for k, a in group.arrays.items() if a.ragged)]
    for name in names:
        arr = group._g[name]
        step = max(arr.chunks[0], batch_rows // arr.chunks[0] * arr.chunks[0])
        for start in range(0, arr.shape[0], step):
            try:
                arr[start : start + step]
                continue
            except Exception:  # noqa: BLE001 - narrowed to single chunks below
                pass
            for first in range(start, min(start + step, arr.shape[0]), arr.chunks[0]):
                try:
                    arr[first : first + arr.chunks[0]]
                except Exception as cause:  # noqa: BLE001 - reported with the chunk's name
                    bad.append(group._corrupt(name, first, cause))
    bad += _missing_chunks(group)
    return bad

def _missing_chunks(group: TokenGroup) -> list[CorruptChunk]:
    """Chunks of float arrays that read NaN in done rows (their file is gone: see `_check_filled`)."""
    bad: list[CorruptChunk] = []
    try:
        done = np.flatnonzero(group.status() == DONE)
    except CorruptChunk:  # a status chunk that does not decode is reported by the decoding pass
        return bad
    for name, spec in group.arrays.items():
        if np.dtype(spec.dtype).kind != "f":
            continue
        cpc = group._rows_per_file(name)
        for first in sorted({int(r) // cpc * cpc for r in done}):
            rows = done[(done >= first) & (done < first + cpc)]
            try:
                values = group._g[name][first : first + cpc][rows - first]
            except Exception:  # noqa: BLE001 - a chunk that does not decode is reported by the pass above
                continue
            try:
                group._check_filled(name, values, rows)
            except CorruptChunk as c:
                bad.append(c)
    return bad


def mark_rows_failed(group: TokenGroup, corrupt: Sequence[CorruptChunk]) -> int:
    """Record the rows of corrupt chunks as FAILED (stage "verify"), so a rerun with --retry-failed
    (or `cache view`) rewrites them; returns how many rows. The status chunk itself is rewritten. A damaged
    failure or rowdef file is emptied instead: no row is failed for it."""
    mine = [c for c in corrupt if c.group == group.name]
    # The failure texts and row definitions only describe rows: a damaged file of them is emptied (its
    # rows read "" again) and no row's tokens are thrown away for it.
    notes = [c for c in mine if c.array in ("failure", "rowdef")]
    mine = [c for c in mine if c not in notes]
    why = {cid: f"corrupt chunk {c.chunk}" for c in reversed(mine) for cid in c.rows if cid in group._row}
    if notes:
        with writing(group.cache.path), group._write_lock():
            for c in notes:
                c.chunk.unlink(missing_ok=True)
    if group.format >= 3:
        # A damaged shard cannot be partly rewritten: it is deleted, and every row it held is failed.
        with writing(group.cache.path), group._write_lock():
            for c in mine:
                per_file = group._rows_per_file(c.array)
                first = group._row[c.rows[0]] // per_file * per_file if c.rows and c.rows[0] in group._row else 0
                for cid in group.ids[first : first + per_file]:
                    why.setdefault(cid, f"corrupt chunk {c.chunk}")
                c.chunk.unlink(missing_ok=True)
    group.write_failures([(cid, "verify", reason, None) for cid, reason in why.items()])
    return len(why)
