"""Every file migfuse writes outside the Zarr cache goes through here: whole or not at all, and a
disk fault ends in one line naming the file and the fix.

* `write_text`, `write_bytes`, `open_atomic` (a file object for csv, json, np.save, torch.save,
  pickle, zipfile, savefig): the bytes go to a hidden temporary file in the same folder
  (``.STEM.PID.tmp.SUFFIX``), which is flushed, fsynced and renamed over NAME (`os.replace`, atomic on
  POSIX and Windows). On any failure the temporary file is removed, so NAME is either the complete
  new file or, untouched, whatever was there before (a previous good checkpoint stays good).
* `atomic_path`: the same for libraries that want a file name (PyAV, XlsxWriter): they write the
  temporary name, which keeps NAME's suffix so they pick the same format.
* `append_text` for logs (train.log): one write per call; a failed append is cut back to the old
  end, so the earlier lines stay readable and no half line is left. Files that grow by records a
  reader parses (metrics.jsonl) are rewritten whole with `write_text` instead: a crash between two
  epochs never leaves a torn row.
* `write_error`: an OSError met while writing -> `UserError` (``cannot write X: <why>; <fix>``)
  with the fix of `PATH_FIXES` (the CLI uses the same table for paths it cannot use). The writers
  above map only the errors of that table; any other OSError (EINVAL from an encoder...) is a bug
  and keeps its traceback, with nothing left on the disk either.

Standard library only: numpy-only `datasets/` and torch-free `data_cache/` import it too. The Zarr
cache keeps its own writer (`data_cache/chunks.py`): a row there is made whole by its status flag.
"""
from __future__ import annotations

import errno
import io
import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator

from migfuse.errors import UserError

_ELSEWHERE = "free space or write elsewhere"
#: errno -> what is wrong and the fix, for a path the user gave (writing or creating folders)
PATH_FIXES = {
    errno.ENOSPC: f"no space left on the device holding it: {_ELSEWHERE}",
    errno.EDQUOT: f"the disk quota is used up on the device holding it: {_ELSEWHERE}",
    errno.EFBIG: ("it would pass the largest file size allowed here (the shell's `ulimit -f`, or the file "
                  "system's limit): raise the limit (ulimit -f unlimited) or write to another disk"),
    errno.EROFS: "the file system is read-only: choose another path",
    errno.EACCES: "permission denied: choose a path you may write to",
    errno.EPERM: "operation not permitted: choose a path you may write to",
    errno.ENAMETOOLONG: "the name is too long: choose a shorter path",
    errno.EEXIST: "a file is in the way: choose another path, or move that file",
    errno.ENOTDIR: "a part of the path is a file, not a folder: choose another path",
    errno.EISDIR: "it is a folder, not a file: name a file",
    errno.ENOENT: "it does not exist: check the path",
    errno.EIO: "the device reported an input/output error (a failing disk or a lost network mount): check it, "
               "or write elsewhere",
}


def write_error(error: OSError, path: str | Path, *, folder: bool = False) -> UserError:
    """The one-line UserError for `error` met while writing the file `path` (or creating the `folder`):
    names it, the cause and the fix."""
    fix = PATH_FIXES.get(error.errno or 0, "check the disk and the path, or write elsewhere")
    cause = error.strerror or str(error) or type(error).__name__
    if folder:  # worded as the CLI words any path it cannot use
        return UserError(f"cannot use {path}: {fix} ({cause})")
    return UserError(f"cannot write {path}: {fix} ({cause}); nothing was written under that name")


def _raise_for(error: OSError, path: Path) -> None:
    """Raise the one-line UserError of `error` when it is a fault of the disk or the path (PATH_FIXES)."""
    if error.errno in PATH_FIXES:
        raise write_error(error, path) from None


def _raw_write(file: IO[bytes], data: Any) -> int:
    """The one place bytes reach the disk (tests replace it to simulate a full disk)."""
    return file.write(data)


class _Guarded(io.RawIOBase):
    """A binary file whose writes go through `_raw_write`; seekable (zipfile, torch.save seek back)."""

    def __init__(self, file: IO[bytes]):
        super().__init__()
        self._file = file
        #: the first write error, kept because some writers turn it into their own error (torch.save
        #: raises "RuntimeError: unexpected pos"), which must still end as the disk fault it is
        self.failure: OSError | None = None

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    def write(self, data: Any) -> int:
        try:
            written = _raw_write(self._file, data)
        except OSError as e:
            self.failure = self.failure or e
            raise
        return memoryview(data).nbytes if written is None else written

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._file.seek(offset, whence)

    def tell(self) -> int:
        return self._file.tell()

    def flush(self) -> None:
        if not self._file.closed:  # io calls flush once more when this object is collected
            self._file.flush()


def _temporary(path: Path) -> Path:
    """``.NAME.PID.tmp.SUFFIX`` beside `path` (hidden; the suffix kept for libraries that pick the format
    by it); a shorter name where that would pass the 255-byte limit of a file name that itself fits."""
    name = f".{path.stem}.{os.getpid()}.tmp{path.suffix}"
    if len(name.encode()) > 255:
        name = f".migfuse.{os.getpid()}.tmp{path.suffix[:32]}"
    return path.with_name(name)


_LEFTOVER = re.compile(r"\..+\.\d+\.tmp(\.[^.]*)?")


def is_leftover(name: str) -> bool:
    """True for the name of a temporary file that a killed writer left behind (never a finished file)."""
    return _LEFTOVER.fullmatch(name) is not None


def _make_parent(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise write_error(e, e.filename or path.parent, folder=True) from None


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary name next to `path` (same suffix) for a library to write; on a clean exit it is
    fsynced and renamed to `path`. UserError (one line) on a disk fault; nothing is left on any failure."""
    path = Path(path)
    _make_parent(path)
    tmp = _temporary(path)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        _raise_for(e, path)
        raise
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def open_atomic(path: str | Path, mode: str = "w", *, encoding: str = "utf-8", newline: str | None = None,
                sync: bool = True) -> Iterator[IO[Any]]:
    """A file object ("w" text or "wb" binary) whose content replaces `path` whole when the block ends.

    UserError (one line naming `path` and the fix) on a full disk, a file-size limit, a read-only or
    forbidden folder...; any failure leaves `path` as it was and no temporary file. `sync=False` skips
    the fsync (still whole after a crash of the process, not after a power cut): for bulk files that
    are cheap to make again."""
    if mode not in ("w", "wb"):
        raise ValueError(f"open_atomic writes whole files: mode 'w' or 'wb', not {mode!r}")
    path = Path(path)
    _make_parent(path)
    tmp = _temporary(path)
    guarded: _Guarded | None = None
    try:
        with open(tmp, "wb") as real:
            guarded = _Guarded(real)
            if mode == "wb":
                yield guarded
            else:
                text = io.TextIOWrapper(guarded, encoding=encoding, newline=newline, write_through=True)
                try:
                    yield text
                    text.flush()
                finally:
                    text.detach()  # also when the block raised: a wrapper left behind flushes a closed file later
            real.flush()
            if sync:
                os.fsync(real.fileno())
        os.replace(tmp, path)
    except OSError as e:
        _raise_for(e, path)
        raise
    except Exception:
        if guarded is not None and guarded.failure is not None:
            _raise_for(guarded.failure, path)
        raise
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(path: str | Path, data: bytes, *, sync: bool = True) -> Path:
    """Replace `path` with `data`, whole or not at all (see `open_atomic`). Returns `path`."""
    with open_atomic(path, "wb", sync=sync) as f:
        f.write(data)
    return Path(path)


def write_text(path: str | Path, text: str, encoding: str = "utf-8", *, sync: bool = True) -> Path:
    """Replace `path` with `text`, whole or not at all (see `open_atomic`). Returns `path`."""
    return write_bytes(path, text.encode(encoding), sync=sync)


def append_text(path: str | Path, text: str, encoding: str = "utf-8") -> None:
    """Append `text` to `path` (created if missing). On a failure the file is cut back to its old end,
    so earlier lines stay whole and readable, and a one-line UserError names the file and the fix."""
    path = Path(path)
    _make_parent(path)
    data = memoryview(text.encode(encoding))
    try:
        with open(path, "ab", buffering=0) as f:  # unbuffered: nothing is left to flush after a failure
            end = f.seek(0, os.SEEK_END)
            try:
                while data:  # a write may stop short at a size limit; the next one then fails
                    data = data[_raw_write(f, data):]
            except OSError:
                f.truncate(end)  # shrinking needs no space
                raise
    except OSError as e:
        _raise_for(e, path)
        raise
