"""The token cache: a Zarr v3 store with one group per (track, backbone), written by many workers.

Layout of a group (e.g. ``CACHE.zarr/video/mvit_v2_s``), N = number of ids:

    ids              (N,) str           the row order, fixed when the group is created
    <name>           (N, *shape)        one array per named output (tokens, features, mask, ...)
    <name>_len       (N,) int32         valid length along axis 0, for ragged arrays only
    failure          (N,) str           JSON {stage, message, time, host} of the last failure
    rowdef           (N,) str           what defined the row when it was written (tracks.row_definition)
    status           (N,) uint8         0 missing, 1 done, 2 failed; written LAST for each clip
    attrs["migfuse"]                    spec + provenance + info, written once by the creator

Why it is safe with many writers (see research/style_ecosystem.md §3.1, §4):
  * every per-clip array has one clip per chunk, so two processes never write the same chunk
    (zarr has no locks; a shared chunk loses updates);
  * a clip's `status` goes to 0 before its arrays are (re)written and to DONE after them, and the
    local store writes each chunk atomically (temp file + rename): a writer killed mid-clip leaves
    the clip "not done" and the store readable;
  * attributes are written once, under a file lock, by whichever process creates the group;
    workers never touch them.
Groups with `clips_per_chunk > 1` (views) are for a single writer (`write_many`).

This module must not import torch: the laptop side and `migfuse cache info` open caches without it.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from migfuse.errors import UserError

MISSING, DONE, FAILED = 0, 1, 2
FORMAT_VERSION = 1
_RESERVED = {"ids", "status", "failure", "rowdef"}
_VERSION_DISTS = ("numpy", "zarr", "torch", "torchvision", "timm", "av", "facenet-pytorch")


@dataclass(frozen=True)
class ArraySpec:
    """One named per-clip array: its per-clip `shape` and `dtype` (numpy name).

    With `ragged=True` the first axis is a maximum; each clip stores its own length in `<name>_len`
    and is zero-padded on write (zarr v3 has no ragged arrays).
    """

    shape: tuple[int, ...]
    dtype: str
    ragged: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        object.__setattr__(self, "dtype", np.dtype(self.dtype).name)
        if self.ragged and not self.shape:
            raise ValueError("a ragged array needs at least one axis")

    def to_json(self) -> dict:
        return {"shape": list(self.shape), "dtype": self.dtype, "ragged": self.ragged}

    @classmethod
    def from_json(cls, d: Mapping) -> "ArraySpec":
        return cls(tuple(d["shape"]), d["dtype"], bool(d.get("ragged", False)))


@dataclass(frozen=True)
class GroupSpec:
    """What a group holds: its name, row ids, arrays, and the provenance that produced them.

    `provenance` (JSON-able) identifies the producer: backbone, checkpoint sha256, preprocessing,
    frame sampling. Reopening a group with a different one is refused, never mixed.
    """

    name: str
    ids: Sequence[str]
    arrays: Mapping[str, ArraySpec]
    provenance: Mapping[str, Any] = field(default_factory=dict)
    clips_per_chunk: int = 1

    def __post_init__(self) -> None:
        if not self.name or self.name.startswith("/") or ".." in self.name.split("/"):
            raise ValueError(f"bad group name {self.name!r}")
        ids = [str(i) for i in self.ids]
        if len(set(ids)) != len(ids):
            raise ValueError(f"group {self.name}: duplicate ids")
        object.__setattr__(self, "ids", ids)
        for n in self.arrays:
            if n in _RESERVED or n.endswith("_len"):
                raise ValueError(f"group {self.name}: array name {n!r} is reserved")
        # JSON round trip now, so what is compared later is exactly what was stored.
        object.__setattr__(self, "provenance", json.loads(json.dumps(dict(self.provenance), sort_keys=True)))


class TokenCache:
    """A token cache on disk (``CACHE.zarr``). Cheap to construct; opens Zarr lazily."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"TokenCache({str(self.path)!r})"

    # -- opening ---------------------------------------------------------------------------------
    def _root(self, create: bool):
        import zarr

        if not (self.path / "zarr.json").is_file() and not create:
            raise UserError(f"no token cache at {self.path} (create it with `migfuse extract ...`, or check the path)")
        return zarr.open_group(store=str(self.path), mode="a" if create else "r+")

    def group_names(self) -> list[str]:
        """Names of the complete groups (those whose creator finished writing the spec)."""
        names: list[str] = []
        # Walk group nodes only: array folders hold one chunk file per clip and are never entered.
        stack = [self.path]
        while stack:
            folder = stack.pop()
            meta = _node_meta(folder)
            if meta is None or meta.get("node_type") != "group":
                continue
            if "migfuse" in meta.get("attributes", {}):
                names.append(folder.relative_to(self.path).as_posix())
            stack.extend(p for p in folder.iterdir() if p.is_dir())
        return sorted(names)

    def has_group(self, name: str) -> bool:
        return name in self.group_names()

    def group(self, name: str) -> "TokenGroup":
        """Open an existing group for reading and writing."""
        root = self._root(create=False)
        if name not in self.group_names():
            have = ", ".join(self.group_names()) or "none"
            raise UserError(f"cache {self.path} has no group '{name}' (groups: {have}); run the matching `migfuse extract` first")
        return TokenGroup(self, root[name])

    def require_group(self, spec: GroupSpec) -> "TokenGroup":
        """Create the group described by `spec`, or reopen it if it was made with the same spec.

        Safe when several processes call it at once: creation happens under a file lock.
        Raises UserError (one line) if the existing group has other ids, arrays or provenance.
        """
        with self._lock():
            root = self._root(create=True)
            if spec.name in self.group_names():
                g = TokenGroup(self, root[spec.name])
                g._check_matches(spec)
                if "rowdef" not in g._g.array_keys():  # a group made before row definitions were stored
                    _create_rowdef(g._g, len(g.ids), g.clips_per_chunk)
                return g
            return TokenGroup(self, _create_group(root, spec))

    @contextmanager
    def _lock(self) -> Iterator[None]:
        """A cache-wide file lock around creating the root and groups (rare, so one lock is enough)."""
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.path / ".migfuse.lock", "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def delete_group(self, name: str) -> None:
        """Remove a group and everything in it (used by `--overwrite` style commands)."""
        import shutil

        target = self.path / name
        if target.is_dir():
            shutil.rmtree(target)


def _node_meta(folder: Path) -> dict | None:
    try:
        return json.loads((folder / "zarr.json").read_text())
    except (OSError, ValueError):
        return None


def _create_group(root, spec: GroupSpec):
    n = len(spec.ids)
    cpc = max(1, min(int(spec.clips_per_chunk), max(n, 1)))
    zg = root.require_group(spec.name)
    for existing in list(zg.array_keys()):  # leftovers of a creator that died half-way
        del zg[existing]
    ids = zg.create_array("ids", shape=(n,), chunks=(max(n, 1),), dtype=str, fill_value="")
    if n:
        ids[:] = np.array(spec.ids, dtype=object)
    for name, a in spec.arrays.items():
        zg.create_array(name, shape=(n, *a.shape), chunks=(cpc, *a.shape), dtype=a.dtype, fill_value=0)
        if a.ragged:
            zg.create_array(f"{name}_len", shape=(n,), chunks=(cpc,), dtype="int32", fill_value=0)
    zg.create_array("failure", shape=(n,), chunks=(cpc,), dtype=str, fill_value="")
    _create_rowdef(zg, n, cpc)
    zg.create_array("status", shape=(n,), chunks=(cpc,), dtype="uint8", fill_value=MISSING)
    # The attribute is the "group complete" marker: written last.
    zg.attrs.update({"migfuse": {
        "format": FORMAT_VERSION,
        "arrays": {k: v.to_json() for k, v in spec.arrays.items()},
        "clips_per_chunk": cpc,
        "n": n,
        "provenance": dict(spec.provenance),
        "info": _info(),
    }})
    return zg


def _create_rowdef(zg, n: int, cpc: int) -> None:
    """The per-row definition array ("" = not recorded); chunked like `failure` (one writer per chunk)."""
    zg.create_array("rowdef", shape=(n,), chunks=(cpc,), dtype=str, fill_value="")


def _info() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    import migfuse

    versions = {"migfuse": migfuse.__version__}
    for dist in _VERSION_DISTS:
        try:
            versions[dist] = version(dist)
        except PackageNotFoundError:
            pass
    return {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": socket.gethostname(),
        "versions": versions,
        "code_version": _code_version(),
    }


def _code_version() -> str:
    """`git describe` of the migfuse checkout when there is one, else the package version."""
    import migfuse

    here = Path(migfuse.__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "-C", str(here), "describe", "--always", "--dirty", "--tags"],
            capture_output=True, text=True, timeout=5,
        )
        if out.returncode == 0 and out.stdout.strip():
            return f"{migfuse.__version__}+git.{out.stdout.strip()}"
    except (OSError, subprocess.SubprocessError):
        pass
    return migfuse.__version__


def _first_difference(a: Any, b: Any, prefix: str = "") -> str | None:
    """Dotted key of the first place where two JSON values differ (None if equal)."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b:
                return f"{prefix}{k}"
            d = _first_difference(a[k], b[k], f"{prefix}{k}.")
            if d:
                return d
        return None
    return None if a == b else prefix.rstrip(".") or "(value)"


def _lookup(d: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(d, dict) or part not in d:
            return "(absent)"
        d = d[part]
    return d


class TokenGroup:
    """One (track, backbone) group or view: per-clip arrays keyed by id."""

    def __init__(self, cache: TokenCache, zgroup):
        self.cache = cache
        self._g = zgroup
        meta = dict(zgroup.attrs)["migfuse"]
        self.name: str = zgroup.path
        self.arrays: dict[str, ArraySpec] = {k: ArraySpec.from_json(v) for k, v in meta["arrays"].items()}
        self.clips_per_chunk: int = meta["clips_per_chunk"]
        self.provenance: dict = meta["provenance"]
        self.info: dict = meta["info"]
        self.ids: list[str] = [str(i) for i in zgroup["ids"][:]]
        self._row = {cid: i for i, cid in enumerate(self.ids)}

    def __repr__(self) -> str:
        return f"TokenGroup({self.name!r}, n={len(self.ids)})"

    @property
    def spec(self) -> GroupSpec:
        return GroupSpec(self.name, self.ids, self.arrays, self.provenance, self.clips_per_chunk)

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
        fix = f"use another --cache, or delete {self.path} to rebuild it"
        diff = _first_difference(self.provenance, dict(spec.provenance))
        if diff:
            raise UserError(
                f"{where} was written with {diff}={_lookup(self.provenance, diff)!r} but this run has "
                f"{diff}={_lookup(dict(spec.provenance), diff)!r}; {fix}"
            )
        if self.arrays != dict(spec.arrays):
            raise UserError(f"{where} holds arrays {_fmt_arrays(self.arrays)} but this run writes {_fmt_arrays(spec.arrays)}; {fix}")
        if self.ids != list(spec.ids):
            extra = sorted(set(spec.ids) - set(self.ids))[:3]
            gone = sorted(set(self.ids) - set(spec.ids))[:3]
            raise UserError(
                f"{where} was created for {len(self.ids)} ids, this run has {len(spec.ids)} "
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
        """Write every array of one clip (and its row definition), then mark it done. Safe from any
        worker process."""
        if set(arrays) != set(self.arrays):
            raise ValueError(f"{self.name}: write() needs arrays {sorted(self.arrays)}, got {sorted(arrays)}")
        r = self.row(clip_id)
        prepared = {k: self._prepare(k, v) for k, v in arrays.items()}  # validate before touching disk
        status = self._g["status"]
        if status[r] != MISSING:
            status[r] = MISSING  # a rewrite interrupted half-way must not look done
        for k, (v, n) in prepared.items():
            self._g[k][r] = v
            if n is not None:
                self._g[f"{k}_len"][r] = n
        if rowdef is not None:
            self._write_rowdef(r, rowdef)
        status[r] = DONE

    def write_failure(self, clip_id: str, stage: str, message: str, rowdef: str | None = None) -> None:
        """Record why a clip could not be produced; it stays retryable."""
        r = self.row(clip_id)
        if rowdef is not None:
            self._write_rowdef(r, rowdef)
        record = {"stage": stage, "message": str(message)[:2000], "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                  "host": socket.gethostname(), "pid": os.getpid()}
        self._g["failure"][r] = json.dumps(record)
        self._g["status"][r] = FAILED

    def write_many(self, ids: Sequence[str], arrays: Mapping[str, np.ndarray]) -> None:
        """Bulk write of stacked arrays for many clips (one writer only: views, tests)."""
        if set(arrays) != set(self.arrays):
            raise ValueError(f"{self.name}: write_many() needs arrays {sorted(self.arrays)}, got {sorted(arrays)}")
        rows = np.array([self.row(i) for i in ids], dtype=np.int64)
        if len(rows) == 0:
            return
        order = np.argsort(rows)
        rows_sorted = rows[order]
        contiguous = bool(np.all(np.diff(rows_sorted) == 1))
        self._g["status"].oindex[rows_sorted] = MISSING
        for k, value in arrays.items():
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
            v = v[order].astype(spec.dtype, copy=False)
            if contiguous:
                self._g[k][int(rows_sorted[0]) : int(rows_sorted[-1]) + 1] = v
            else:
                self._g[k].oindex[rows_sorted] = v
        self._g["status"].oindex[rows_sorted] = DONE

    # -- row definitions (what defined each row when it was written) ------------------------------------
    def _write_rowdef(self, r: int, rowdef: str) -> None:
        if "rowdef" in self._g.array_keys():
            self._g["rowdef"][r] = rowdef

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
    def status(self, ids: Sequence[str] | None = None) -> np.ndarray:
        """(N,) uint8 status of `ids` (all ids when None), in the order asked."""
        s = self._g["status"][:]
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
        """The failure records of the clips whose status is FAILED: {clip_id, stage, message, time, host, pid}."""
        s = self.status()
        rows = np.flatnonzero(s == FAILED)
        if len(rows) == 0:
            return []
        texts = self._g["failure"].oindex[rows]
        out = []
        for r, t in zip(rows, texts):
            try:
                rec = json.loads(str(t))
            except ValueError:
                rec = {"stage": "?", "message": str(t)}
            out.append({"clip_id": self.ids[r], **rec})
        return out

    def read(self, clip_id: str, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Arrays of one done clip (ragged ones trimmed to their length)."""
        r = self.row(clip_id)
        if self._g["status"][r] != DONE:
            raise KeyError(f"clip {clip_id} is not done in cache group {self.name}")
        out = {}
        for k in names or self.arrays:
            v = self._g[k][r]
            if self.arrays[k].ragged:
                v = v[: int(self._g[f"{k}_len"][r])]
            out[k] = v
        return out

    def read_many(self, ids: Sequence[str], names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Stacked arrays of many done clips in the order of `ids`; ragged ones padded, plus `<name>_len`."""
        rows = np.array([self.row(i) for i in ids], dtype=np.int64)
        if len(rows):
            bad = self._g["status"].oindex[rows] != DONE
            if bad.any():
                first = [ids[i] for i in np.flatnonzero(bad)[:3]]
                raise KeyError(f"{int(bad.sum())} clips are not done in cache group {self.name}, e.g. {first}")
        order = np.argsort(rows)
        inverse = np.empty_like(order)
        inverse[order] = np.arange(len(order))
        out = {}
        for k in names or self.arrays:
            wanted = [k, f"{k}_len"] if self.arrays[k].ragged else [k]
            for w in wanted:
                arr = self._g[w]
                if len(rows) == 0:
                    out[w] = np.zeros((0, *arr.shape[1:]), dtype=arr.dtype)
                    continue
                out[w] = arr.oindex[rows[order]][inverse]
        return out

    def iter_clips(self, ids: Sequence[str] | None = None, names: Sequence[str] | None = None) -> Iterator[tuple[str, dict]]:
        """Yield (id, arrays) for done clips (all done clips when `ids` is None)."""
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


def _fmt_arrays(arrays: Mapping[str, ArraySpec]) -> str:
    return "{" + ", ".join(f"{k}: {tuple(v.shape)} {v.dtype}" for k, v in sorted(arrays.items())) + "}"
