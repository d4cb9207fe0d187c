"""The token cache: a Zarr v3 store with one group per (track, backbone), written by many workers.

Layout of a group (e.g. ``CACHE.zarr/video/mvit_v2_s``), N = number of rows; every array carries
Zarr v3 ``dimension_names`` so that ``xarray.open_zarr(CACHE, group=...)`` opens it as a Dataset:

    clip | video     (N,) str        the row ids, named after the row dimension ("video" for the
                                     per-video tracks context / face_context, else "clip"), so it
                                     is xarray's index coordinate: ``ds.sel(clip="0298_3")``
    <name>           (N, *shape)     one array per named output (tokens, features, mask, ...); dims
                                     e.g. ("clip", "token", "channel"): the track's
                                     axis_names (tracks.py)
    <name>_len       (N,) int32      valid length along axis 0, for ragged arrays only
    failure          (N,) str        JSON {stage, message, time, host, pid} of the last failure
    rowdef           (N,) str        what defined the row when it was written (tracks.row_definition)
    status           (N,) uint8      0 missing, 1 done, 2 failed; written LAST for each row
    attrs["migfuse"]                 spec + provenance + info, written once by the creator

Float arrays are filled with NaN, so a row that is not done never reads as zeros by accident, and
every chunk carries a zstd checksum, so a corrupt chunk fails when read (`CorruptChunk`) instead of
giving wrong numbers. Caches of format 1 (before dimension names: ids array ``ids``, zero fill, no
checksums) are still read and resumed by migfuse; xarray needs format 2 (docs/cache.md).

Why it is safe with many writers (zarr-python docs, performance.md "Thread safety and process safety"):
  * every per-row array has one row per chunk, so two processes never write the same chunk
    (zarr has no locks; a shared chunk loses updates);
  * a row's `status` goes to 0 before its arrays are (re)written and to DONE after them, and the
    local store writes each chunk atomically (temp file + rename): a writer killed mid-row leaves
    the row "not done" and the store readable;
  * groups are created (and deleted) under a file lock, `CACHE.zarr.lock` next to the store (outside
    the Zarr hierarchy), by whichever process comes first; workers never touch attributes. The
    consolidated metadata at the root is rewritten under the same lock after each such change, so
    zarr / xarray readers open the store without crawling it. It holds metadata only, never status,
    and migfuse itself always reads the live metadata (``use_consolidated=False``).
Groups with `clips_per_chunk > 1` (views) are for a single writer (`write_many`).

Errors a user can cause end in one line (`UserError`): a full disk or a read-only cache names the
file and the fix (`chunks.writing`); reopening an existing group writes nothing, so a resume with nothing
left to do works on a read-only cache.

Where each job lives (this module re-exports their public names: import them from here):
  spec.py    ArraySpec, GroupSpec, MISSING / DONE / FAILED, dimension names, provenance comparison
  group.py   TokenGroup: row reads and writes, status, failures, chunk verification
  cache.py   TokenCache: open, list, create / delete groups under the lock, consolidate
  chunks.py  the checksummed codec, one-line write-fault errors, CorruptChunk

None of them imports torch: the laptop side and `migfuse cache info` open caches without it.
"""
from __future__ import annotations

from migfuse.data_cache.cache import LOCK_ENV, SOFT_LOCK_TIMEOUT_S, TokenCache
from migfuse.data_cache.chunks import CorruptChunk
from migfuse.data_cache.group import TokenGroup
from migfuse.data_cache.spec import DONE, FAILED, FORMAT_VERSION, MISSING, ArraySpec, GroupSpec, default_row_dim

__all__ = ["DONE", "FAILED", "FORMAT_VERSION", "LOCK_ENV", "MISSING", "SOFT_LOCK_TIMEOUT_S", "ArraySpec",
           "CorruptChunk", "GroupSpec", "TokenCache", "TokenGroup", "default_row_dim"]
