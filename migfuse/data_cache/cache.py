"""`TokenCache`: the store on disk (``CACHE.zarr``): opening it, listing, creating and deleting its
groups under the cache lock, and the consolidated metadata at its root.

Groups are created (and deleted) under a file lock, `CACHE.zarr.lock` next to the store (outside the
Zarr hierarchy), by whichever process comes first; the consolidated metadata is rewritten under the
same lock after each such change. migfuse itself always reads the live metadata. store.py explains
the layout and why many writers are safe.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from migfuse.data_cache.chunks import WRITE_FIXES, compressors, shard_rows, writing
from migfuse.data_cache.group import TokenGroup
from migfuse.data_cache.spec import FORMAT_VERSION, MISSING, GroupSpec
from migfuse.errors import UserError

#: How the cache lock is taken: "file" (flock / Windows lock, via filelock) or "soft" (a lock file
#: whose existence is the lock, for network filesystems without flock).
LOCK_ENV = "MIGFUSE_CACHE_LOCK"
SOFT_LOCK_TIMEOUT_S = 600.0
#: Distributions whose versions go into every group's "info" (what produced it).
_VERSION_DISTS = ("numpy", "zarr", "torch", "torchvision", "timm", "av", "facenet-pytorch")


class TokenCache:
    """A token cache on disk (``CACHE.zarr``). Cheap to construct; opens Zarr lazily."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"TokenCache({str(self.path)!r})"

    @property
    def lock_path(self) -> Path:
        """The lock file, next to the store (``CACHE.zarr.lock``): never inside the Zarr hierarchy."""
        absolute = self.path.absolute()
        return absolute.with_name(absolute.name + ".lock")

    # -- opening ---------------------------------------------------------------------------------
    def _root(self, create: bool) -> Any:
        import zarr

        if not (self.path / "zarr.json").is_file() and not create:
            raise UserError(f"no token cache at {self.path} (create it with `migfuse extract ...`, or check the path)")
        # Never through the consolidated metadata: another process may have added a group since.
        return zarr.open_group(store=str(self.path), mode="a" if create else "r+", use_consolidated=False)

    def group_names(self) -> list[str]:
        """Names of the complete groups (those whose creator finished writing the spec)."""
        self._check_root()
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

    def _check_root(self) -> None:
        """UserError when the root metadata (CACHE/zarr.json) is missing or unreadable but groups are there:
        nothing would be listed, and the cache would look empty."""
        root_meta = self.path / "zarr.json"
        if _node_meta(self.path) is not None or not self.path.is_dir():
            return
        if root_meta.exists() or any((p / "zarr.json").is_file() for p in self.path.iterdir() if p.is_dir()):
            state = "cannot be read" if root_meta.exists() else "is missing"
            raise UserError(f"{root_meta}, the root metadata of cache {self.path}, {state} while its groups are there; "
                            f"restore it with `migfuse cache info {self.path} --consolidate`")

    def has_group(self, name: str) -> bool:
        return name in self.group_names()

    def group(self, name: str) -> TokenGroup:
        """Open an existing group for reading and writing."""
        root = self._root(create=False)
        if name not in self.group_names():
            have = ", ".join(self.group_names()) or "none"
            raise UserError(f"cache {self.path} has no group '{name}' (groups: {have}); "
                            "run the matching `migfuse extract` first")
        return TokenGroup(self, root[name])

    def require_group(self, spec: GroupSpec) -> TokenGroup:
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
        with writing(self.path), self._lock():
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
        """Rewrite the consolidated metadata at the root (what `cache info --consolidate` does); a root
        zarr.json that is missing or unreadable while groups are there is written afresh first."""
        with writing(self.path), self._lock():
            if _node_meta(self.path) is None and self.path.is_dir():
                fresh = self.path / "zarr.json.tmp"
                fresh.write_text(json.dumps({"attributes": {}, "zarr_format": 3, "node_type": "group"}))
                os.replace(fresh, self.path / "zarr.json")
            self._root(create=False)
            self._consolidate()

    def _consolidate(self) -> None:
        import zarr

        with warnings.catch_warnings():  # "not part of the v3 specification yet": known, and documented
            warnings.simplefilter("ignore")
            zarr.consolidate_metadata(str(self.path))

    def write_lock(self, group: str) -> Any:
        """The lock every row write of `group` holds (format 3: a shard holds many rows), a file
        under ``CACHE.zarr/.locks/``: held for the write of one batch, never across a forward."""
        return self._lock(self.path / ".locks" / (group.replace("/", "__") + ".lock"))

    @contextmanager
    def _lock(self, path: Path | None = None) -> Iterator[None]:
        """A cache-wide lock around creating and deleting groups (rare, so one lock is enough), or
        the lock at `path` (a group's write lock)."""
        from filelock import FileLock, SoftFileLock, Timeout

        kind = os.environ.get(LOCK_ENV, "file")
        if kind not in ("file", "soft"):
            raise UserError(f"{LOCK_ENV}={kind!r} is not a lock kind; set it to file (default) or soft")
        path = path or self.lock_path
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = SoftFileLock(str(path), timeout=SOFT_LOCK_TIMEOUT_S) if kind == "soft" else FileLock(str(path))
        try:
            lock.acquire()
        except Timeout:
            raise UserError(f"the cache lock {path} has been held for over {SOFT_LOCK_TIMEOUT_S:.0f} s; if no other "
                            f"migfuse process uses this cache, delete {path} and rerun") from None
        except OSError as e:
            if e.errno in WRITE_FIXES:
                raise
            raise UserError(f"cannot lock {path} ({e.strerror or e}): this filesystem has no working file locks "
                            f"(e.g. NFS without lockd); set {LOCK_ENV}=soft, "
                            "or put the cache on a local disk") from None
        try:
            yield
        finally:
            lock.release()

    def delete_group(self, name: str) -> None:
        """Remove a group and everything in it (used by `--overwrite` style commands)."""
        if (self.path / name).is_dir():
            self.drop_group(name)

    def drop_group(self, name: str) -> None:
        """Remove group `name` (complete, or left half-made or damaged) so that nothing lists it any more.

        Under the cache lock: the folder is first renamed out of the store (one atomic rename, next
        to the store: ``CACHE.zarr.dropped-*``), then the consolidated metadata is rewritten, then
        the renamed folder is deleted; a drop interrupted anywhere leaves either the whole group or
        none of it in the store, and the next drop deletes the leftover folder.
        Raises UserError when `name` is no group of the cache (lists the groups), or an extraction
        holds a claim on its rows right now.
        """
        import shutil

        self._root(create=False)
        name = name.strip("/")
        target = self.path / name
        claims = self.path / ".claims" / name.replace("/", "__")
        with writing(self.path), self._lock():
            if name not in self.droppable():  # under the lock: a drop running beside this one has finished
                have = ", ".join(self.droppable()) or "none"
                raise UserError(f"cache {self.path} has no group '{name}' to drop (groups: {have})")
            _refuse_if_claimed(claims, name)
            trash = self.path.absolute().with_name(f"{self.path.name}.dropped-{name.replace('/', '__')}-{os.getpid()}")
            os.replace(target, trash)
            parent = target.parent
            if parent != self.path and not [p for p in parent.iterdir() if p.name != "zarr.json"]:
                shutil.rmtree(parent)  # a track folder (e.g. video/) left with no group
            self._consolidate()
            for leftover in self.path.absolute().parent.glob(f"{self.path.name}.dropped-*"):
                shutil.rmtree(leftover, ignore_errors=True)
            shutil.rmtree(claims, ignore_errors=True)

    def droppable(self) -> list[str]:
        """Names `drop_group` accepts: the complete groups, and folders of groups whose creator died before
        finishing them or whose own zarr.json is gone (two levels deep, e.g. video/mvit_v2_s)."""
        names = set(self.group_names())
        for folder in self.path.glob("*/*"):
            rel = folder.relative_to(self.path).as_posix()
            if folder.is_dir() and not rel.startswith(".") and not any(n.startswith(rel + "/") for n in names):
                meta = _node_meta(folder)
                if meta is None or (meta.get("node_type") == "group" and "migfuse" not in meta.get("attributes", {})):
                    if rel.split("/")[0] not in names:
                        names.add(rel)
        return sorted(names)


def _refuse_if_claimed(claims: Path, name: str) -> None:
    """UserError when a process holds a claim on rows of group `name` (an extraction writing it now)."""
    from filelock import FileLock, Timeout

    for path in sorted(claims.glob("*.lock")) if claims.is_dir() else []:
        lock = FileLock(str(path))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            raise UserError(f"an extraction is writing group '{name}' right now (it holds {path}); "
                            f"stop it or wait for it to end, then drop the group") from None
        lock.release()


def _node_meta(folder: Path) -> dict | None:
    try:
        return json.loads((folder / "zarr.json").read_text())
    except (OSError, ValueError):
        return None


def _create_group(root: Any, spec: GroupSpec) -> Any:
    """Create the arrays of `spec` in `root` (under the lock); the attribute written last marks it complete."""
    n = len(spec.ids)
    cpc = max(1, min(int(spec.clips_per_chunk), max(n, 1)))
    zg = root.require_group(spec.name)
    for existing in list(zg.array_keys()):  # leftovers of a creator that died half-way
        del zg[existing]

    def per_row(name: str, dims: tuple[str, ...], shape: tuple[int, ...], chunk_rows: int, dtype: Any,
                fill: Any, data: bool = False) -> Any:
        row_bytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize if data else None
        chunk, shard = shard_rows(n, chunk_rows, row_bytes)
        return zg.create_array(name, shape=(n, *shape), chunks=(chunk, *shape), shards=(shard, *shape), dtype=dtype,
                               fill_value=fill, compressors=compressors(), dimension_names=(spec.row_dim, *dims))

    ids = zg.create_array(spec.row_dim, shape=(n,), chunks=(max(n, 1),), dtype=str, fill_value="",
                          compressors=compressors(), dimension_names=(spec.row_dim,))
    if n:
        ids[:] = np.array(spec.ids, dtype=object)
    for name, a in spec.arrays.items():
        fill = np.nan if np.dtype(a.dtype).kind == "f" else 0  # NaN: a row not written never reads as zeros
        per_row(name, a.dims, a.shape, cpc, a.dtype, fill, data=True)
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
        "info": {**_info(), **({"environment": dict(spec.environment)} if spec.environment else {})},
    }})
    return zg


def _create_rowdef(zg: Any, n: int, cpc: int, row_dim: str | None = None) -> None:
    """Add the per-row definition array ("" = not recorded) to a group made before it existed;
    chunked like `failure` (one writer per chunk). `row_dim`: the group's row dimension (format 2)."""
    extra = {} if row_dim is None else {"compressors": compressors(), "dimension_names": (row_dim,)}
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



def close_zarr_io(timeout_s: float = 30.0) -> None:
    """Stop Zarr's I/O thread and event loop now and wait for them (up to `timeout_s`), before the
    interpreter exits.

    Why: Zarr's own exit hook waits only 0.2 s for its I/O thread and then closes the loop anyway; on a
    busy machine the loop is still running then, and a run that succeeded ends with a traceback
    ("RuntimeError: Cannot close a running event loop"). Once this has run, the hook finds nothing to
    close. Does nothing when Zarr was never imported; Zarr starts a new loop if it is used again."""
    sync = sys.modules.get("zarr.core.sync")
    if sync is None:
        return
    executor = getattr(sync, "_executor", None)
    if executor is not None:
        executor.shutdown(wait=True, cancel_futures=True)
        sync._executor = None
    loops, threads = getattr(sync, "loop", [None]), getattr(sync, "iothread", [None])
    loop, thread = loops[0], threads[0]
    if loop is None:
        return
    loop.call_soon_threadsafe(loop.stop)
    if thread is not None:
        thread.join(timeout_s)
        if thread.is_alive():  # stuck in a read: leave it to Zarr's hook rather than hang the exit
            return
    loop.close()
    loops[0], threads[0] = None, None
