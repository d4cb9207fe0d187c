"""Worker processes that end with the command that started them.

Every stage that runs tasks in parallel processes (`data prepare`, dataset generation, the skeleton
streams trained at once) takes its pool from `worker_pool`, so that none of them can outlive the
command:

* an exception or Ctrl-C in the parent terminates the workers at once (they are not waited for),
  and a task's exception is re-raised in the parent as soon as it is collected;
* each worker watches its parent and exits within `PARENT_POLL_S` seconds when the parent is gone
  (killed by SIGTERM or SIGKILL, e.g. `timeout`, a CI cancel or a scheduler preemption);
* workers ignore SIGINT: a Ctrl-C reaches the whole process group, and the parent alone decides;
* processes are spawned, not forked: forking a process whose OpenMP thread pool has started (torch)
  can hang the child.

The extraction runner's loader workers have their own pool (`extract.runner`: a pipe per worker, so
it knows which items a dead worker held); they start with the same `start_worker`.
"""
from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.pool
import os
import signal
import sys
import threading
import time
from typing import Any, Callable, Iterator

PARENT_POLL_S = 1.0


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, e.g. a container's or SLURM's share), not
    the host's count."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


@contextlib.contextmanager
def worker_pool(processes: int, *, threads: int | None = None) -> Iterator[multiprocessing.pool.Pool]:
    """A `multiprocessing` pool of `processes` spawned workers (see the module docstring), each
    started by `start_worker(threads=threads)`. Leaving the block normally waits for the workers to
    finish; leaving it by an exception (or Ctrl-C) terminates them."""
    pool = multiprocessing.get_context("spawn").Pool(processes, initializer=start_worker,
                                                     initargs=(os.getpid(), threads))
    try:
        yield pool
    except BaseException:
        pool.terminate()
        pool.join()
        raise
    pool.close()
    pool.join()


def start_worker(parent: int, threads: int | None = None) -> None:
    """The rules of every migfuse worker process, applied first thing in the worker.

    Args:
        parent: pid of the command's process (passed from it: a worker that starts after its parent
            died must not take init for its parent).
        threads: torch / OpenMP intra-op threads (None: the library default).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the parent decides
    # tqdm's default lock is a multiprocessing semaphore, registered with the resource tracker that
    # this worker shares with the parent; a worker terminated mid-task never unregisters it, and the
    # tracker reports it as leaked when the command exits. A worker draws no bars: a thread lock does.
    from tqdm import tqdm

    tqdm.set_lock(threading.RLock())
    if threads is not None:
        os.environ["OMP_NUM_THREADS"] = str(threads)  # read when torch is imported
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(threads)
    threading.Thread(target=_exit_with_parent, args=(parent,), name="migfuse-parent-watch", daemon=True).start()


def _exit_with_parent(parent: int) -> None:
    if os.getppid() != parent:
        os._exit(1)
    while True:
        time.sleep(PARENT_POLL_S)
        if os.getppid() != parent:
            os._exit(1)  # the parent is gone: nobody will collect this worker's result


def run_tasks(fn: Callable[..., Any], jobs: list[tuple], processes: int, *, ordered: bool = True,
              **pool_options: Any) -> Iterator[Any]:
    """`fn(*job)` for each job in `processes` workers (`fn` a module-level function, to be pickled).

    Yields the results in the order of `jobs`, or as they finish when not `ordered`. A task's
    exception is raised here when its result is reached, and the other workers are terminated.
    """
    with worker_pool(max(1, min(processes, len(jobs))), **pool_options) as pool:
        tasks = [(fn, job) for job in jobs]
        yield from (pool.imap(_call, tasks) if ordered else pool.imap_unordered(_call, tasks))


def _call(task: tuple[Callable[..., Any], tuple]) -> Any:
    fn, job = task
    return fn(*job)
