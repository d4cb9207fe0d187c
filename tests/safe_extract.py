"""Unpack a tar archive in a test fixture with the same protection on every Python migfuse supports.

`TarFile.extractall(filter="data")` only exists from Python 3.11.4 on: 3.11.0-3.11.3 (Debian 12 ships
3.11.2) raise TypeError on the keyword, and without a filter `extractall` writes wherever an absolute
name, a `..` or a link points. So this helper checks every member itself and writes regular files and
folders only, by the same code on every 3.11.x: it does not call `extractall` at all.

    with tarfile.open(path) as tar:
        extract_tar(tar, dest)                      # or members=[...] for a part of it

Every member is checked before anything is written: a refused archive leaves `dest` as it was.
"""
from __future__ import annotations

import os
import shutil
import tarfile
from collections.abc import Iterable
from pathlib import Path


class UnsafeArchiveError(ValueError):
    """A member that would land outside the folder, or is not a regular file or a folder."""


def _refusal(member: tarfile.TarInfo, root: str) -> str | None:
    """Why `member` may not be written under the real path `root`, or None when it may."""
    if member.issym():
        return f"is a symbolic link (to {member.linkname!r})"
    if member.islnk():
        return f"is a hard link (to {member.linkname!r})"
    if member.ischr() or member.isblk():
        return "is a device"
    if member.isfifo():
        return "is a FIFO"
    if not (member.isreg() or member.isdir()):
        return f"has tar type {member.type!r}, not a regular file or folder"
    if member.name.startswith("/") or os.path.isabs(member.name):
        return "has an absolute path"
    # realpath also follows links already in `dest`, so a planted `dest/x -> /elsewhere` is caught too.
    target = os.path.realpath(os.path.join(root, member.name))
    if os.path.commonpath([root, target]) != root:
        return f"would be written to {target}, outside {root}"
    return None


def extract_tar(tar: tarfile.TarFile, dest: str | os.PathLike, members: Iterable[tarfile.TarInfo] | None = None
                ) -> list[Path]:
    """Write `members` (default: all) of `tar` under `dest`; returns the files written.

    Raises UnsafeArchiveError naming the first member that escapes `dest` (absolute path, `..`, an
    existing link in `dest`) or is a link, device or FIFO; nothing is written then."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    root = os.path.realpath(dest)
    members = list(tar) if members is None else list(members)
    for m in members:
        why = _refusal(m, root)
        if why:
            raise UnsafeArchiveError(f"{tar.name or 'tar archive'}: member {m.name!r} {why}; "
                                     f"refusing to unpack it (nothing was written to {dest})")
    written = []
    for m in members:
        target = Path(os.path.realpath(os.path.join(root, m.name)))
        if m.isdir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        # Mode, owner and times of the archive are not kept: a test needs the bytes only (and running
        # as root, extractall would also chown to the archive's uid).
        with tar.extractfile(m) as src, open(target, "wb") as out:
            shutil.copyfileobj(src, out)
        written.append(target)
    return written
