"""`TokenGroup`: one (track, backbone) group or view of the cache, as rows keyed by id.

Row writes (`write`, `write_failure`, `write_many`) set `status` to MISSING first and to DONE (or
FAILED) last, so a writer killed mid-row leaves the row "not done" (store.py says why that is safe
with many writers). Row reads check the status first: a row that is not done raises KeyError, a
chunk that cannot be decoded raises `CorruptChunk` naming its file. `group_check.verify_group`
decodes every chunk.

Opening a group reads its attributes and its id array once; keep the handle rather than reopening
it by name (`TokenCache.group`) for every question.
"""
from __future__ import annotations

import json
import os
import socket
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, ContextManager, Iterator, Mapping, Protocol, Sequence

import numpy as np

from migfuse.data_cache.chunks import CorruptChunk, writing
from migfuse.data_cache.spec import (DONE, FAILED, MISSING, ArraySpec, GroupSpec, default_row_dim, first_difference,
                                     format_arrays, name_dims, value_at)
from migfuse.data_cache.tracks import VIEW_PREFIX, extract_command, resume_option, track_of_group
from migfuse.errors import UserError


def drop_command(group: "TokenGroup") -> str:
    """The command that removes a group safely, e.g. `migfuse cache drop CACHE video/mvit_v2_s`."""
    return f"`migfuse cache drop {group.cache.path} {group.name}`"


def view_command(cache: Any, name: str, overwrite: bool = False) -> str:
    """The command that pools view `name` again (with --overwrite: replacing one of other settings)."""
    flag = " --overwrite" if overwrite else ""
    also = ", plus --overwrite" if overwrite else ""
    return f"`migfuse cache view {cache} --defaults{flag}` (or the `cache view` command that made {name}{also})"


def rebuild_command(group: "TokenGroup") -> str:
    """The command that writes a group again: its `migfuse extract`, or `migfuse cache view` for a view."""
    if group.name.startswith(VIEW_PREFIX):
        return view_command(group.cache.path, group.name)
    track = track_of_group(group.name)
    if track is None:
        return f"`migfuse extract ... --data PREPARED --cache {group.cache.path}`"
    return extract_command(track, "PREPARED", group.cache.path, group.provenance)


class DamagedGroup(UserError):
    """A group whose arrays do not match its recorded spec (an array's metadata deleted or damaged):
    names the group, the damage and the fix (drop it, then write it again)."""

    def __init__(self, group: "TokenGroup", why: str) -> None:
        self.group, self.why = group.name, why
        super().__init__(f"cache group '{group.name}' in {group.cache.path} is damaged ({why}); rebuild it: "
                         f"{drop_command(group)}, then {rebuild_command(group)}")


class OpenedBy(Protocol):
    """What a group keeps of the `TokenCache` that opened it (its folder; callers reach the cache's
    other groups through it). A protocol, so that this module does not import cache.py, which
    imports it."""

    path: Path

    def write_lock(self, group: str) -> ContextManager[None]:
        """The lock every row write of `group` holds (format 3 groups)."""


class TokenGroup:
    """One (track, backbone) group or view: per-row arrays keyed by id."""

    def __init__(self, cache: OpenedBy, zgroup: Any) -> None:
        self.cache = cache
        self._g = zgroup
        meta = dict(zgroup.attrs)["migfuse"]
        self.name: str = zgroup.path
        self.format: int = int(meta.get("format", 1))
        # format 1 has no row_dim: a view's rows are those of its source track
        self.row_dim: str = meta.get("row_dim") or default_row_dim(str(meta["provenance"].get("track", self.name)))
        arrays = {k: ArraySpec.from_json(v) for k, v in meta["arrays"].items()}
        self.arrays: dict[str, ArraySpec] = name_dims(self.name, self.row_dim, arrays)
        self.clips_per_chunk: int = meta["clips_per_chunk"]
        self.provenance: dict = meta["provenance"]
        self.info: dict = meta["info"]
        #: the array holding the row ids: "clip"/"video" (format 2), "ids" (format 1)
        self.id_array: str = self.row_dim if self.format >= 2 else "ids"
        self._check_arrays(meta.get("n"))
        ids = self._read(self.id_array, slice(None), what="its id list")
        self.ids: list[str] = [str(i) for i in ids]
        if len(self.ids) and (not all(self.ids) or len(set(self.ids)) != len(self.ids)):
            raise DamagedGroup(self, f"its id array '{self.id_array}' reads empty or repeated ids: its chunk file "
                                     f"under {self.path / self.id_array} is gone or damaged")
        self._row = {cid: i for i, cid in enumerate(self.ids)}

    def __repr__(self) -> str:
        return f"TokenGroup({self.name!r}, n={len(self.ids)})"

    def _check_arrays(self, n: int | None) -> None:
        """DamagedGroup unless every array the group's spec names opens with its recorded shape and dtype
        (a deleted or damaged ``zarr.json`` of one array would otherwise read as "done" rows of fill
        values, or fail later with a KeyError)."""
        expected: dict[str, tuple[tuple[int, ...], str | None]] = {self.id_array: ((), None), "status": ((), "uint8"),
                                                                    "failure": ((), None)}
        for k, a in self.arrays.items():
            expected[k] = (a.shape, a.dtype)
            if a.ragged:
                expected[f"{k}_len"] = ((), "int32")
        for name, (shape, dtype) in expected.items():
            try:
                arr = self._g[name]
            except Exception as e:  # noqa: BLE001 - a missing or unreadable zarr.json: named below
                meta = self.path / name / "zarr.json"
                why = f"{meta} is missing" if not meta.is_file() else f"{meta} cannot be read ({type(e).__name__})"
                raise DamagedGroup(self, f"array '{name}' has no usable metadata: {why}") from None
            if n is None:
                n = arr.shape[0] if arr.shape else 0
            want = (n, *shape)
            if tuple(arr.shape) != want or (dtype is not None and np.dtype(arr.dtype).name != dtype):
                raise DamagedGroup(self, f"array '{name}' is {tuple(arr.shape)} {arr.dtype}, but the group records "
                                         f"{want} {dtype or 'str'}")

    @property
    def spec(self) -> GroupSpec:
        return GroupSpec(self.name, self.ids, self.arrays, self.provenance, self.clips_per_chunk, self.row_dim)

    @property
    def path(self) -> Path:
        return self.cache.path / self.name

    def row(self, clip_id: str) -> int:
        try:
            return self._row[clip_id]
        except KeyError:
            raise KeyError(f"id {clip_id!r} is not in cache group {self.name}") from None

    def _check_matches(self, spec: GroupSpec) -> None:
        where = f"cache group '{self.name}' in {self.cache.path}"
        fix = f"use another --cache, or drop the group to rebuild it: {drop_command(self)}"
        this = "this run has"
        if self.name.startswith(VIEW_PREFIX):  # `cache view` has no --cache: it replaces the view
            where, this = f"view '{self.name}' in {self.cache.path}", "this pooling has"
            fix = f"pool it again: {view_command(self.cache.path, self.name, overwrite=True)}"
        diff = first_difference(self.provenance, dict(spec.provenance))
        if diff:
            was = value_at(self.provenance, diff)
            resume = resume_option(self.name, diff, was)
            if resume is not None:
                fix = f"rerun with {resume} to resume it, or {fix}"
            raise UserError(
                f"{where} was written with {diff}={was!r} but {this} "
                f"{diff}={value_at(dict(spec.provenance), diff)!r}; {fix}"
            )
        if self.arrays != dict(spec.arrays):
            raise UserError(f"{where} holds arrays {format_arrays(self.arrays)} "
                            f"but {this.replace(' has', '')} writes {format_arrays(spec.arrays)}; {fix}")
        if self.ids != list(spec.ids):
            extra = sorted(set(spec.ids) - set(self.ids))[:3]
            gone = sorted(set(self.ids) - set(spec.ids))[:3]
            raise UserError(
                f"{where} was created for {len(self.ids)} ids, {this} {len(spec.ids)} "
                f"(new: {extra or 'none'}, absent: {gone or 'none'}, or another order); {fix}"
            )

    # -- writing -----------------------------------------------------------------------------------
    def _prepare(self, name: str, value: np.ndarray) -> tuple[np.ndarray, int | None]:
        spec = self.arrays[name]
        v = np.asarray(value)
        if v.dtype.kind == "f" and not np.isfinite(v).all():
            raise ValueError(f"{self.name}/{name}: refusing to store NaN or inf")
        if spec.ragged:
            n = v.shape[0] if v.ndim else 0
            if v.shape[1:] != spec.shape[1:] or n > spec.shape[0]:
                raise ValueError(f"{self.name}/{name}: shape {v.shape} does not fit ragged {spec.shape}")
            padded = np.zeros(spec.shape, dtype=spec.dtype)
            padded[:n] = v
            return padded, n
        if v.shape != spec.shape:
            raise ValueError(f"{self.name}/{name}: shape {v.shape} != {spec.shape}")
        return v.astype(spec.dtype, copy=False), None

    def write(self, clip_id: str, arrays: Mapping[str, np.ndarray], rowdef: str | None = None) -> None:
        """Write every array of one row (and its row definition), then mark it done. Safe from any
        worker process.

        Raises ValueError on a wrong array set, shape, NaN or inf (nothing written), UserError on a
        full disk or read-only cache."""
        self.write_rows([(clip_id, arrays, rowdef)])

    def write_rows(self, rows: Sequence[tuple[str, Mapping[str, np.ndarray], str | None]]) -> None:
        """Write many rows at once: (id, arrays, row definition or None) each; their status goes to
        MISSING first (where it was not), then the arrays, then DONE. One write per array and run of
        consecutive rows, under the group's write lock: how a batch of the extraction is stored.

        Raises ValueError on a wrong array set, shape, NaN or inf (nothing written), UserError on a
        full disk or read-only cache."""
        if not rows:
            return
        prepared: dict[int, dict[str, tuple[np.ndarray, int | None]]] = {}
        rowdefs: dict[int, str] = {}
        for clip_id, arrays, rowdef in rows:  # validate everything before touching disk
            if set(arrays) != set(self.arrays):
                raise ValueError(f"{self.name}: write() needs arrays {sorted(self.arrays)}, got {sorted(arrays)}")
            r = self.row(clip_id)
            prepared[r] = {k: self._prepare(k, v) for k, v in arrays.items()}
            if rowdef is not None:
                rowdefs[r] = rowdef
        order = np.array(sorted(prepared), dtype=np.int64)
        with writing(self.cache.path), self._write_lock():
            self._reset_status(order)
            for k in self.arrays:
                self._set(k, order, np.stack([prepared[int(r)][k][0] for r in order]))
                if self.arrays[k].ragged:
                    self._set(f"{k}_len", order, np.array([prepared[int(r)][k][1] for r in order], np.int32))
            self._set_rowdefs(rowdefs)
            self._set("status", order, np.full(len(order), DONE, np.uint8))

    def write_failure(self, clip_id: str, stage: str, message: str, rowdef: str | None = None) -> None:
        """Record why a row could not be produced; it stays retryable (`write_failures` for many)."""
        self.write_failures([(clip_id, stage, message, rowdef)])

    def write_failures(self, records: Sequence[tuple[str, str, str, str | None]]) -> None:
        """Record why rows could not be produced: (id, stage, message, row definition or None)
        each, in one write per array and run of consecutive rows. They stay retryable. The arrays
        of rows written before are cleared (to the fill value: NaN for floats), so values of an
        earlier success are not left behind."""
        if not records:
            return
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        host, pid = socket.gethostname(), os.getpid()
        texts: dict[int, str] = {}
        rowdefs: dict[int, str] = {}
        for clip_id, stage, message, rowdef in records:
            r = self.row(clip_id)
            texts[r] = json.dumps({"stage": stage, "message": str(message)[:2000], "time": now, "host": host,
                                   "pid": pid})
            if rowdef is not None:
                rowdefs[r] = rowdef
        order = np.array(sorted(texts), dtype=np.int64)
        with writing(self.cache.path), self._write_lock():
            written = self._reset_status(order)  # rows never written hold the fill value already
            for k in self.arrays:
                if len(written):
                    fill = self._g[k].fill_value
                    self._set(k, written, np.full((len(written), *self._g[k].shape[1:]), fill, self._g[k].dtype))
            self._set_rowdefs(rowdefs)
            self._set("failure", order, np.array([texts[int(r)] for r in order], dtype=object))
            self._set("status", order, np.full(len(order), FAILED, np.uint8))

    def write_many(self, ids: Sequence[str], arrays: Mapping[str, np.ndarray],
                   rowdefs: Sequence[str] | None = None) -> None:
        """Bulk write of stacked arrays for many rows (views, tests), with their row definitions when
        given (a view records those of the source rows it pooled)."""
        if set(arrays) != set(self.arrays):
            raise ValueError(f"{self.name}: write_many() needs arrays {sorted(self.arrays)}, got {sorted(arrays)}")
        rows = np.array([self.row(i) for i in ids], dtype=np.int64)
        if len(rows) == 0:
            return
        order = np.argsort(rows)
        rows_sorted = rows[order]
        values = {}
        for k, value in arrays.items():  # validate everything before touching disk
            spec = self.arrays[k]
            v = np.asarray(value)
            if v.shape[0] != len(rows):
                raise ValueError(f"{self.name}/{k}: {v.shape[0]} rows for {len(rows)} ids")
            if spec.ragged:
                raise ValueError(f"{self.name}/{k}: write_many does not take ragged arrays; use write()")
            if v.shape[1:] != spec.shape:
                raise ValueError(f"{self.name}/{k}: shape {v.shape[1:]} != {spec.shape}")
            if v.dtype.kind == "f" and not np.isfinite(v).all():
                raise ValueError(f"{self.name}/{k}: refusing to store NaN or inf")
            values[k] = v[order].astype(spec.dtype, copy=False)
        if rowdefs is not None and "rowdef" in self._g.array_keys():
            values["rowdef"] = np.array([str(d) for d in rowdefs], dtype=object)[order]
        with writing(self.cache.path), self._write_lock():
            self._set("status", rows_sorted, np.full(len(rows_sorted), MISSING, np.uint8))
            for k, v in values.items():
                self._set(k, rows_sorted, v)
            self._set("status", rows_sorted, np.full(len(rows_sorted), DONE, np.uint8))

    def _write_lock(self) -> Any:
        """The group's write lock. A shard file (format 3) holds many rows and its rewrite is a
        read-modify-write, so two writers of rows of one shard must take turns or lose each other's
        rows; groups of older formats (one row per chunk) need none."""
        return self.cache.write_lock(self.name) if self.format >= 3 else nullcontext()

    def _reset_status(self, rows: np.ndarray) -> np.ndarray:
        """Set `rows` (sorted) that are not MISSING to MISSING, before their arrays are rewritten (a
        rewrite interrupted half-way must not look done); returns those rows."""
        written = rows[np.asarray(self._g["status"].oindex[rows]) != MISSING]
        if len(written):
            self._set("status", written, np.full(len(written), MISSING, np.uint8))
        return written

    def _set(self, name: str, rows: np.ndarray, values: np.ndarray) -> None:
        """`values` into array `name` at sorted `rows`: one slice write per run of consecutive rows
        (zarr writes each touched chunk or shard once per call; its orthogonal writes into sharded
        arrays fail, so runs of slices it is)."""
        arr = self._g[name]
        breaks = np.flatnonzero(np.diff(rows) != 1) + 1
        for lo, hi in zip([0, *breaks.tolist()], [*breaks.tolist(), len(rows)]):
            arr[int(rows[lo]) : int(rows[hi - 1]) + 1] = values[lo:hi]

    def forget(self, ids: Sequence[str]) -> None:
        """Mark rows not done (MISSING) and clear their row definitions, e.g. view rows pooled from source
        rows extracted again since."""
        if ids:
            rows = np.sort(np.array([self.row(i) for i in ids], dtype=np.int64))
            with writing(self.cache.path), self._write_lock():
                self._set("status", rows, np.full(len(rows), MISSING, np.uint8))
                if "rowdef" in self._g.array_keys():
                    self._set("rowdef", rows, np.array([""] * len(rows), dtype=object))

    # -- row definitions (what defined each row when it was written) ------------------------------------
    def _set_rowdefs(self, rowdefs: Mapping[int, str]) -> None:
        if rowdefs and "rowdef" in self._g.array_keys():
            rows = np.array(sorted(rowdefs), dtype=np.int64)
            self._set("rowdef", rows, np.array([rowdefs[int(r)] for r in rows], dtype=object))

    def rowdefs(self, ids: Sequence[str]) -> list[str]:
        """Stored row definition of each of `ids` ("" where none was recorded); reads only their chunks."""
        if not ids or "rowdef" not in self._g.array_keys():
            return [""] * len(ids)
        rows = np.array([self.row(i) for i in ids], dtype=np.int64)
        return [str(v) for v in self._g["rowdef"].oindex[rows]]

    def status_of(self, ids: Sequence[str]) -> np.ndarray:
        """(len(ids),) uint8 status, reading only those rows' chunks (cheap for a few rows of a big group)."""
        if not ids:
            return np.zeros(0, np.uint8)
        rows = np.array([self.row(i) for i in ids], dtype=np.int64)
        return np.asarray(self._g["status"].oindex[rows])

    # -- reading -----------------------------------------------------------------------------------
    def chunk_file(self, array: str, row: int) -> Path:
        """The file holding `row` of `array`: its shard (format 3: many rows per file), else its
        chunk (one row per chunk unless clips_per_chunk > 1)."""
        arr = self._g[array]
        rows_per_file = (arr.shards or arr.chunks)[0]
        coords = (row // rows_per_file, *([0] * (arr.ndim - 1)))
        return self.path / array / arr.metadata.encode_chunk_key(coords)

    def _read(self, array: str, rows: slice | np.ndarray, what: str = "") -> np.ndarray:
        """`array` at `rows` (a slice, or sorted row numbers); CorruptChunk names the first bad chunk."""
        arr = self._g[array]
        try:
            return arr[rows] if isinstance(rows, slice) else arr.oindex[rows]
        except (KeyError, IndexError, UserError):
            raise
        except Exception as e:  # a codec error: find the chunk, then name it (reads are rare enough)
            numbers = range(*rows.indices(arr.shape[0])) if isinstance(rows, slice) else rows
            for first in sorted({int(r) // arr.chunks[0] * arr.chunks[0] for r in numbers}):
                try:
                    arr[first : first + arr.chunks[0]]
                except Exception as cause:  # noqa: BLE001 - reported with the chunk's name
                    raise self._corrupt(array, first, cause, what) from None
            raise e

    def _rows_per_file(self, array: str) -> int:
        """Rows one file of `array` holds: a shard's (format 3), else a chunk's."""
        arr = self._g[array]
        return (arr.shards or arr.chunks)[0]

    def _corrupt(self, array: str, first_row: int, cause: BaseException, what: str = "") -> CorruptChunk:
        cpc = self._g[array].chunks[0]
        ids = getattr(self, "ids", None)
        rows = ids[first_row : first_row + cpc] if ids else [f"#{first_row}"]
        if what:
            hint = (f"{what} is damaged, so the group must be rebuilt: {drop_command(self)}, "
                    f"then {rebuild_command(self)}")
        else:
            hint = (f"run `migfuse cache info {self.cache.path} --verify --mark-failed`, "
                    "then the same `migfuse extract` "
                    f"with --retry-failed (or `migfuse cache view` for a view) to rewrite it")
        return CorruptChunk(self.name, array, self.chunk_file(array, first_row), rows, cause, hint)

    def status(self, ids: Sequence[str] | None = None) -> np.ndarray:
        """(N,) uint8 status of `ids` (all ids when None), in the order asked: 0 MISSING (never
        written, or a write was interrupted), 1 DONE, 2 FAILED (see `failures()`)."""
        s = self._read("status", slice(None))
        return s if ids is None else s[[self.row(i) for i in ids]]

    def done_ids(self) -> list[str]:
        s = self.status()
        return [i for i, v in zip(self.ids, s) if v == DONE]

    def pending_ids(self, retry_failed: bool = True) -> list[str]:
        """Ids still to do: missing ones, and failed ones when `retry_failed`."""
        s = self.status()
        todo = (s == MISSING) | ((s == FAILED) if retry_failed else False)
        return [i for i, t in zip(self.ids, todo) if t]

    def failures(self) -> list[dict]:
        """The failure records of the rows whose status is FAILED: {clip_id, stage, message, time, host, pid}."""
        s = self.status()
        rows = np.flatnonzero(s == FAILED)
        if len(rows) == 0:
            return []
        texts = self._read("failure", rows)
        out = []
        for r, t in zip(rows, texts):
            try:
                rec = json.loads(str(t))
            except ValueError:
                rec = {"stage": "?", "message": str(t)}
            out.append({"clip_id": self.ids[r], **rec})
        return out

    def _not_done(self, ids: Sequence[str], status: np.ndarray) -> KeyError:
        bad = np.flatnonzero(status != DONE)
        first = [ids[i] for i in bad[:3]]
        missing, failed = int((status == MISSING).sum()), int((status == FAILED).sum())
        return KeyError(f"{len(bad)} rows are not done in cache group {self.name} "
                        f"({missing} missing, {failed} failed), e.g. {first}")

    def read(self, clip_id: str, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Arrays of one done row (ragged ones trimmed to their length).

        Raises KeyError when the row is not done (missing or failed: its arrays hold no result),
        CorruptChunk when a chunk cannot be decoded."""
        r = self.row(clip_id)
        s = self._read("status", np.array([r]))
        if s[0] != DONE:
            raise self._not_done([clip_id], s)
        out = {}
        for k in names or self.arrays:
            v = self._read(k, np.array([r]))[0]
            self._check_filled(k, v[None], [r])
            if self.arrays[k].ragged:
                v = v[: int(self._read(f"{k}_len", np.array([r]))[0])]
            out[k] = v
        return out

    def read_many(self, ids: Sequence[str], names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Stacked arrays of many done rows in the order of `ids`; ragged ones padded, plus `<name>_len`.

        Raises KeyError when any row is not done, CorruptChunk when a chunk cannot be decoded."""
        rows = np.array([self.row(i) for i in ids], dtype=np.int64)
        if len(rows):
            s = self._read("status", np.sort(rows))[np.argsort(np.argsort(rows))]
            if (s != DONE).any():
                raise self._not_done(ids, s)
        order = np.argsort(rows)
        inverse = np.empty_like(order)
        inverse[order] = np.arange(len(order))
        out = {}
        for k in names or self.arrays:
            wanted = [k, f"{k}_len"] if self.arrays[k].ragged else [k]
            for w in wanted:
                if len(rows) == 0:
                    arr = self._g[w]
                    out[w] = np.zeros((0, *arr.shape[1:]), dtype=arr.dtype)
                    continue
                out[w] = self._read(w, rows[order])[inverse]
                self._check_filled(w, out[w], rows)
        return out

    def _check_filled(self, array: str, values: np.ndarray, rows: Sequence[int]) -> None:
        """CorruptChunk when a done row of a float array reads NaN: rows are never stored with NaN (writes
        refuse it), so its chunk file is gone and the fill value shows through."""
        if values.dtype.kind != "f" or not len(values):
            return
        bad = np.flatnonzero(np.isnan(values.reshape(len(values), -1)).any(1))
        if len(bad):
            first = int(rows[bad[0]]) // self._g[array].chunks[0] * self._g[array].chunks[0]
            raise self._corrupt(array, first, FileNotFoundError("chunk file missing (reads as NaN)"))

    def iter_clips(self, ids: Sequence[str] | None = None,
                   names: Sequence[str] | None = None) -> Iterator[tuple[str, dict]]:
        """Yield (id, arrays) for done rows (all done rows when `ids` is None)."""
        for cid in (self.done_ids() if ids is None else ids):
            yield cid, self.read(cid, names)

    # -- reporting ---------------------------------------------------------------------------------
    def size_on_disk(self) -> int:
        return sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file())

    def summary(self) -> dict:
        s = self.status()
        return {
            "group": self.name,
            "n": len(self.ids),
            "done": int((s == DONE).sum()),
            "failed": int((s == FAILED).sum()),
            "missing": int((s == MISSING).sum()),
            "arrays": {k: f"{'ragged ' if v.ragged else ''}{tuple(v.shape)} {v.dtype}" for k, v in self.arrays.items()},
            "bytes": self.size_on_disk(),
            "provenance": self.provenance,
            "info": self.info,
        }
