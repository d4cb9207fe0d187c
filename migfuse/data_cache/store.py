"""The token cache: a Zarr v3 store with one group per (track, backbone), written by many workers.

Layout of a group (e.g. ``CACHE.zarr/video/mvit_v2_s``), N = number of rows; every array carries
Zarr v3 ``dimension_names`` so that ``xarray.open_zarr(CACHE, group=...)`` opens it as a Dataset:

    clip | video     (N,) str        the row ids, named after the row dimension ("video" for the
                                     per-video tracks context / face_context, else "clip"), so it
                                     is xarray's index coordinate: ``ds.sel(clip="0298_3")``
    <name>           (N, *shape)     one array per named output (tokens, features, mask, ...); dims
                                     e.g. ("clip", "token", "channel"), see AXIS_NAMES
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
file and the fix (`_writing`); reopening an existing group writes nothing, so a resume with nothing
left to do works on a read-only cache.

This module must not import torch: the laptop side and `migfuse cache info` open caches without it.
"""
from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from migfuse.data_cache.tracks import TRACKS
from migfuse.errors import UserError

MISSING, DONE, FAILED = 0, 1, 2
FORMAT_VERSION = 2
_RESERVED = {"ids", "status", "failure", "clip", "video", "rowdef"}
_VERSION_DISTS = ("numpy", "zarr", "torch", "torchvision", "timm", "av", "facenet-pytorch")

#: Tracks whose rows are videos (their row dimension and id array are named "video"); from the track table.
PER_VIDEO_TRACKS = tuple(t.name for t in TRACKS.values() if t.per_video)

#: Names of the trailing per-row axes of each track's arrays (the axes after the row axis). One
#: more leading axis, when an array has it, is "window" (windowed video, context, face_context,
#: views of them). Arrays not listed get "<array>_axis<k>". A producer may pass ArraySpec(dims=...).
AXIS_NAMES: dict[str, dict[str, tuple[str, ...]]] = {
    "video": {"tokens": ("token", "channel")},
    "context": {"tokens": ("token", "channel"), "valid": ()},
    "joint": {"features": ("channel", "time", "joint")},
    "bone": {"features": ("channel", "time", "joint")},
    "face": {"features": ("face", "feature"), "logits": ("face", "expression"), "mask": ("face",),
             "global_tokens": ("face", "token", "channel")},
    "views": {"tokens": ("token", "channel"), "mask": ("token",)},
}
AXIS_NAMES["face_context"] = AXIS_NAMES["face"]

#: How the cache lock is taken: "file" (flock / Windows lock, via filelock) or "soft" (a lock file
#: whose existence is the lock, for network filesystems without flock).
LOCK_ENV = "MIGFUSE_CACHE_LOCK"
SOFT_LOCK_TIMEOUT_S = 600.0

_FULL = "free space on that disk (or pass another --cache) and rerun: finished rows are kept"
_READ_ONLY = ("the cache is read-only: reading it needs no writes, but to add rows copy it to a "
              "writable place (or pass another --cache)")
_WRITE_FIXES = {errno.ENOSPC: _FULL, errno.EDQUOT: _FULL, errno.EFBIG: _FULL,
                errno.EROFS: _READ_ONLY, errno.EACCES: _READ_ONLY, errno.EPERM: _READ_ONLY}


@contextmanager
def _writing(cache_path: Path) -> Iterator[None]:
    """Turn a full disk, a quota or a read-only cache met while writing into a one-line UserError."""
    try:
        yield
    except OSError as e:
        fix = _WRITE_FIXES.get(e.errno)
        if fix is None:
            raise
        raise UserError(f"cannot write {e.filename or cache_path}: {e.strerror or e}; {fix}") from None


def _compressors():
    from zarr.codecs import ZstdCodec

    return (ZstdCodec(level=0, checksum=True),)  # the checksum makes a corrupt chunk fail when read


class CorruptChunk(UserError):
    """A chunk file that cannot be decoded (bad checksum, truncated): names group, row ids and file."""

    def __init__(self, group: str, array: str, chunk: Path, rows: Sequence[str], cause: BaseException, hint: str = ""):
        self.group, self.array, self.chunk, self.rows = group, array, chunk, list(rows)
        shown = ", ".join(self.rows[:3]) + (f" (+{len(self.rows) - 3})" if len(self.rows) > 3 else "")
        #: the message without the fix
        self.what = (f"corrupt chunk {chunk} in cache group '{group}' (array {array}, row {shown or '-'}): "
                     f"{type(cause).__name__}: {cause}")
        super().__init__(f"{self.what}; {hint}" if hint else self.what)


@dataclass(frozen=True)
class ArraySpec:
    """One named per-row array: its per-row `shape` and `dtype` (numpy name).

    With `ragged=True` the first axis is a maximum; each row stores its own length in `<name>_len`
    and is zero-padded on write (zarr v3 has no ragged arrays). `dims` names the per-row axes
    (len(dims) == len(shape)); None lets the group pick them from `AXIS_NAMES`.
    """

    shape: tuple[int, ...]
    dtype: str
    ragged: bool = False
    dims: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        object.__setattr__(self, "dtype", np.dtype(self.dtype).name)
        if self.ragged and not self.shape:
            raise ValueError("a ragged array needs at least one axis")
        if self.dims is not None:
            object.__setattr__(self, "dims", tuple(str(d) for d in self.dims))
            if len(self.dims) != len(self.shape) or len(set(self.dims)) != len(self.dims):
                raise ValueError(f"dims {self.dims} do not name the {len(self.shape)} axes of shape {self.shape} once each")

    def to_json(self) -> dict:
        return {"shape": list(self.shape), "dtype": self.dtype, "ragged": self.ragged,
                **({"dims": list(self.dims)} if self.dims is not None else {})}

    @classmethod
    def from_json(cls, d: Mapping) -> "ArraySpec":
        dims = d.get("dims")
        return cls(tuple(d["shape"]), d["dtype"], bool(d.get("ragged", False)), tuple(dims) if dims is not None else None)


def default_row_dim(group_name: str) -> str:
    """"video" for groups of per-video tracks (context, face_context), else "clip"."""
    return "video" if group_name.split("/")[0] in PER_VIDEO_TRACKS else "clip"


def _default_dims(track: str, name: str, ndim: int) -> tuple[str, ...]:
    trailing = AXIS_NAMES.get(track, {}).get(name)
    if trailing is not None and ndim == len(trailing):
        return trailing
    if trailing is not None and ndim == len(trailing) + 1:
        return ("window", *trailing)
    return tuple(f"{name}_axis{k + 1}" for k in range(ndim))


def _name_dims(group_name: str, row_dim: str, arrays: Mapping[str, ArraySpec]) -> dict[str, ArraySpec]:
    """`arrays` with every `dims` filled in, renamed where needed so that one dimension name has
    one size in the whole group (xarray requires it): a clash becomes "<array>_<dim>"."""
    track = group_name.split("/")[0]
    sizes: dict[str, int] = {}
    named: dict[str, ArraySpec] = {}
    for name in sorted(arrays):  # sorted: the same names whatever order a producer lists its arrays in
        a = arrays[name]
        dims = []
        for d, n in zip(a.dims if a.dims is not None else _default_dims(track, name, len(a.shape)), a.shape):
            if d == row_dim or sizes.get(d, n) != n:
                d = f"{name}_{d}"
            sizes[d] = n
            dims.append(d)
        named[name] = ArraySpec(a.shape, a.dtype, a.ragged, tuple(dims))
    return {name: named[name] for name in arrays}


@dataclass(frozen=True)
class GroupSpec:
    """What a group holds: its name, row ids, arrays, and the provenance that produced them.

    `provenance` (JSON-able) identifies the producer: backbone, checkpoint sha256, preprocessing,
    frame sampling. Reopening a group with a different one is refused, never mixed. `row_dim` names
    the row dimension and the id array ("" = `default_row_dim(name)`).
    """

    name: str
    ids: Sequence[str]
    arrays: Mapping[str, ArraySpec]
    provenance: Mapping[str, Any] = field(default_factory=dict)
    clips_per_chunk: int = 1
    row_dim: str = ""

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
        row_dim = self.row_dim or default_row_dim(self.name)
        object.__setattr__(self, "row_dim", row_dim)
        object.__setattr__(self, "arrays", _name_dims(self.name, row_dim, self.arrays))
        # JSON round trip now, so what is compared later is exactly what was stored.
        object.__setattr__(self, "provenance", json.loads(json.dumps(dict(self.provenance), sort_keys=True)))


class TokenCache:
    """A token cache on disk (``CACHE.zarr``). Cheap to construct; opens Zarr lazily."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"TokenCache({str(self.path)!r})"

    @property
    def lock_path(self) -> Path:
        """The lock file, next to the store (``CACHE.zarr.lock``): never inside the Zarr hierarchy."""
        absolute = self.path.absolute()
        return absolute.with_name(absolute.name + ".lock")

    # -- opening ---------------------------------------------------------------------------------
    def _root(self, create: bool):
        import zarr

        if not (self.path / "zarr.json").is_file() and not create:
            raise UserError(f"no token cache at {self.path} (create it with `migfuse extract ...`, or check the path)")
        # Never through the consolidated metadata: another process may have added a group since.
        return zarr.open_group(store=str(self.path), mode="a" if create else "r+", use_consolidated=False)

    def group_names(self) -> list[str]:
        """Names of the complete groups (those whose creator finished writing the spec)."""
        names: list[str] = []
        # Walk group nodes only: array folders hold one chunk file per row and are never entered.
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

        Reopening writes nothing (a finished group on a read-only disk opens). Creating happens
        under the cache lock, so several processes may call this at once, and then refreshes the
        consolidated metadata.
        Raises UserError (one line) if the existing group has other ids, arrays or provenance, or
        the disk is full / read-only.
        """
        if (self.path / "zarr.json").is_file() and spec.name in self.group_names():
            g = self.group(spec.name)
            g._check_matches(spec)
            if "rowdef" in g._g.array_keys():
                return g
            # a group made before row definitions were stored: add the array below, under the lock
        with _writing(self.path), self._lock():
            root = self._root(create=True)
            if spec.name in self.group_names():  # another process created it meanwhile
                g = TokenGroup(self, root[spec.name])
                g._check_matches(spec)
                if "rowdef" not in g._g.array_keys():  # a group made before row definitions were stored
                    _create_rowdef(g._g, len(g.ids), g.clips_per_chunk, g.row_dim if g.format >= 2 else None)
                    self._consolidate()
                return g
            zg = _create_group(root, spec)
            self._consolidate()
            return TokenGroup(self, zg)

    def consolidate(self) -> None:
        """Rewrite the consolidated metadata at the root (what `cache info --consolidate` does)."""
        with _writing(self.path), self._lock():
            self._root(create=False)
            self._consolidate()

    def _consolidate(self) -> None:
        import zarr

        with warnings.catch_warnings():  # "not part of the v3 specification yet": known, and documented
            warnings.simplefilter("ignore")
            zarr.consolidate_metadata(str(self.path))

    @contextmanager
    def _lock(self) -> Iterator[None]:
        """A cache-wide lock around creating and deleting groups (rare, so one lock is enough)."""
        from filelock import FileLock, SoftFileLock, Timeout

        kind = os.environ.get(LOCK_ENV, "file")
        if kind not in ("file", "soft"):
            raise UserError(f"{LOCK_ENV}={kind!r} is not a lock kind; set it to file (default) or soft")
        path = self.lock_path
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = SoftFileLock(str(path), timeout=SOFT_LOCK_TIMEOUT_S) if kind == "soft" else FileLock(str(path))
        try:
            lock.acquire()
        except Timeout:
            raise UserError(f"the cache lock {path} has been held for over {SOFT_LOCK_TIMEOUT_S:.0f} s; if no other "
                            f"migfuse process uses this cache, delete {path} and rerun") from None
        except OSError as e:
            if e.errno in _WRITE_FIXES:
                raise
            raise UserError(f"cannot lock {path} ({e.strerror or e}): this filesystem has no working file locks "
                            f"(e.g. NFS without lockd); set {LOCK_ENV}=soft, or put the cache on a local disk") from None
        try:
            yield
        finally:
            lock.release()

    def delete_group(self, name: str) -> None:
        """Remove a group and everything in it (used by `--overwrite` style commands)."""
        import shutil

        target = self.path / name
        if target.is_dir():
            with _writing(self.path), self._lock():
                shutil.rmtree(target)
                self._consolidate()


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

    def per_row(name: str, dims: tuple[str, ...], shape: tuple[int, ...], chunk_rows: int, dtype, fill):
        return zg.create_array(name, shape=(n, *shape), chunks=(chunk_rows, *shape), dtype=dtype, fill_value=fill,
                               compressors=_compressors(), dimension_names=(spec.row_dim, *dims))

    ids = per_row(spec.row_dim, (), (), max(n, 1), str, "")
    if n:
        ids[:] = np.array(spec.ids, dtype=object)
    for name, a in spec.arrays.items():
        fill = np.nan if np.dtype(a.dtype).kind == "f" else 0  # NaN: a row not written never reads as zeros
        per_row(name, a.dims, a.shape, cpc, a.dtype, fill)
        if a.ragged:
            per_row(f"{name}_len", (), (), cpc, "int32", 0)
    per_row("failure", (), (), cpc, str, "")
    per_row("rowdef", (), (), cpc, str, "")
    per_row("status", (), (), cpc, "uint8", MISSING)
    # The attribute is the "group complete" marker: written last.
    zg.attrs.update({"migfuse": {
        "format": FORMAT_VERSION,
        "row_dim": spec.row_dim,
        "arrays": {k: v.to_json() for k, v in spec.arrays.items()},
        "clips_per_chunk": cpc,
        "n": n,
        "provenance": dict(spec.provenance),
        "info": _info(),
    }})
    return zg


def _create_rowdef(zg, n: int, cpc: int, row_dim: str | None = None) -> None:
    """Add the per-row definition array ("" = not recorded) to a group made before it existed;
    chunked like `failure` (one writer per chunk). `row_dim`: the group's row dimension (format 2)."""
    extra = {} if row_dim is None else {"compressors": _compressors(), "dimension_names": (row_dim,)}
    zg.create_array("rowdef", shape=(n,), chunks=(cpc,), dtype=str, fill_value="", **extra)


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
    """One (track, backbone) group or view: per-row arrays keyed by id."""

    def __init__(self, cache: TokenCache, zgroup):
        self.cache = cache
        self._g = zgroup
        meta = dict(zgroup.attrs)["migfuse"]
        self.name: str = zgroup.path
        self.format: int = int(meta.get("format", 1))
        # format 1 has no row_dim: a view's rows are those of its source track
        self.row_dim: str = meta.get("row_dim") or default_row_dim(str(meta["provenance"].get("track", self.name)))
        arrays = {k: ArraySpec.from_json(v) for k, v in meta["arrays"].items()}
        self.arrays: dict[str, ArraySpec] = _name_dims(self.name, self.row_dim, arrays)
        self.clips_per_chunk: int = meta["clips_per_chunk"]
        self.provenance: dict = meta["provenance"]
        self.info: dict = meta["info"]
        #: the array holding the row ids: "clip"/"video" (format 2), "ids" (format 1)
        self.id_array: str = self.row_dim if self.format >= 2 else "ids"
        ids = self._read(self.id_array, slice(None), what="its id list")
        self.ids: list[str] = [str(i) for i in ids]
        self._row = {cid: i for i, cid in enumerate(self.ids)}

    def __repr__(self) -> str:
        return f"TokenGroup({self.name!r}, n={len(self.ids)})"

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
        """Write every array of one row (and its row definition), then mark it done. Safe from any
        worker process.

        Raises ValueError on a wrong array set, shape, NaN or inf (nothing written), UserError on a
        full disk or read-only cache."""
        if set(arrays) != set(self.arrays):
            raise ValueError(f"{self.name}: write() needs arrays {sorted(self.arrays)}, got {sorted(arrays)}")
        r = self.row(clip_id)
        prepared = {k: self._prepare(k, v) for k, v in arrays.items()}  # validate before touching disk
        with _writing(self.cache.path):
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
        """Record why a row could not be produced; it stays retryable. Its arrays are cleared (to
        the fill value: NaN for floats), so values of an earlier success are not left behind."""
        r = self.row(clip_id)
        if rowdef is not None:
            with _writing(self.cache.path):
                self._write_rowdef(r, rowdef)
        record = {"stage": stage, "message": str(message)[:2000], "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                  "host": socket.gethostname(), "pid": os.getpid()}
        with _writing(self.cache.path):
            self._g["status"][r] = MISSING
            for k in self.arrays:
                self._g[k][r] = self._g[k].fill_value
            self._g["failure"][r] = json.dumps(record)
            self._g["status"][r] = FAILED

    def write_many(self, ids: Sequence[str], arrays: Mapping[str, np.ndarray]) -> None:
        """Bulk write of stacked arrays for many rows (one writer only: views, tests)."""
        if set(arrays) != set(self.arrays):
            raise ValueError(f"{self.name}: write_many() needs arrays {sorted(self.arrays)}, got {sorted(arrays)}")
        rows = np.array([self.row(i) for i in ids], dtype=np.int64)
        if len(rows) == 0:
            return
        order = np.argsort(rows)
        rows_sorted = rows[order]
        contiguous = bool(np.all(np.diff(rows_sorted) == 1))
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
        with _writing(self.cache.path):
            self._g["status"].oindex[rows_sorted] = MISSING
            for k, v in values.items():
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
    def chunk_file(self, array: str, row: int) -> Path:
        """The file holding `row` of `array` (one row per chunk unless clips_per_chunk > 1)."""
        arr = self._g[array]
        coords = (row // arr.chunks[0], *([0] * (arr.ndim - 1)))
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

    def _corrupt(self, array: str, first_row: int, cause: BaseException, what: str = "") -> CorruptChunk:
        cpc = self._g[array].chunks[0]
        ids = getattr(self, "ids", None)
        rows = ids[first_row : first_row + cpc] if ids else [f"#{first_row}"]
        if what:
            hint = f"{what} is damaged, so the group must be rebuilt: delete {self.path} and rerun its command"
        else:
            hint = (f"run `migfuse cache info {self.cache.path} --verify --mark-failed`, then the same `migfuse extract` "
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
        return KeyError(f"{len(bad)} rows are not done in cache group {self.name} ({missing} missing, {failed} failed), "
                        f"e.g. {first}")

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
        return out

    def iter_clips(self, ids: Sequence[str] | None = None, names: Sequence[str] | None = None) -> Iterator[tuple[str, dict]]:
        """Yield (id, arrays) for done rows (all done rows when `ids` is None)."""
        for cid in (self.done_ids() if ids is None else ids):
            yield cid, self.read(cid, names)

    # -- checking ----------------------------------------------------------------------------------
    def verify(self, batch_rows: int = 256) -> list[CorruptChunk]:
        """Decode every chunk of every array (all rows, done or not); return the corrupt ones.

        Format-1 groups have no chunk checksums: only chunks that fail to decompress are found."""
        bad: list[CorruptChunk] = []
        names = ["status", "failure", *self.arrays, *(f"{k}_len" for k, a in self.arrays.items() if a.ragged)]
        for name in names:
            arr = self._g[name]
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
                        bad.append(self._corrupt(name, first, cause))
        return bad

    def mark_failed(self, corrupt: Sequence[CorruptChunk]) -> int:
        """Record the rows of corrupt chunks as FAILED (stage "verify"), so a rerun with --retry-failed
        (or `cache view`) rewrites them; returns how many rows. The status chunk itself is rewritten."""
        rows = sorted({r for c in corrupt if c.group == self.name for r in c.rows if r in self._row})
        for cid in rows:
            chunk = next(c for c in corrupt if cid in c.rows)
            self.write_failure(cid, "verify", f"corrupt chunk {chunk.chunk}")
        return len(rows)

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
