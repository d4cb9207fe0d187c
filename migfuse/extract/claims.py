"""Claims: two processes extracting the same rows split them item by item instead of both doing all.

One OS file lock (filelock) per work item under CACHE/.claims/<group>/, deleted when released.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any


class Claims:
    """One lock file per work item under CACHE/.claims/<group>/: a process loads an item only while
    it holds the item's claim, so two processes started on the same rows (the same unsharded
    command twice, overlapping shards) split the work item by item instead of both doing all of it.

    The locks are OS file locks (filelock): a killed process loses its claims at once, so nothing
    is left stuck. A claim is released once the item's rows are written (after the batch flush).
    Local disks and most cluster file systems honour them; a file system that ignores locks only
    loses the splitting (both processes write the same values).
    """

    def __init__(self, cache_path: Path, group: str):
        self.dir = Path(cache_path) / ".claims" / group.replace("/", "__")
        self.dir.mkdir(parents=True, exist_ok=True)
        self.held: dict[str, Any] = {}
        self.written: list[str] = []

    def take(self, key: str) -> bool:
        from filelock import FileLock, Timeout

        if key in self.held:  # ours already (an item given back by a dead worker)
            return True
        lock = FileLock(str(self.dir / f"{key.replace('/', '_')}.lock"))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            return False
        self.held[key] = lock
        return True

    def release(self, key: str) -> None:
        lock = self.held.pop(key, None)
        if lock is not None:
            # The lock file goes with the claim, so the cache does not keep one file per work item.
            # A process that opened it just before may then lock the unlinked file while a third
            # locks a new one: both load the item, and both write the same values (the runner
            # rechecks each row's status when it takes an item), so the cost is repeated work only.
            Path(lock.lock_file).unlink(missing_ok=True)
            lock.release()

    def release_when_written(self, key: str) -> None:
        self.written.append(key)

    def flushed(self) -> None:
        for key in self.written:
            self.release(key)
        self.written.clear()

    def close(self) -> None:
        for key in list(self.held):
            self.release(key)
