"""The loader workers of an extraction: spawned processes that decode while the model runs.

Each worker takes work items from its own task queue and sends one message per sample over its own
pipe, so the main process knows which items every worker holds and notices at once when one dies:
a worker that dies fails only the item it was loading and is replaced. Workers follow
`migfuse.worker_pool`'s rules (SIGINT ignored, one thread, exit with the main process).
"""
from __future__ import annotations

import logging
import multiprocessing as mp
import multiprocessing.connection as mp_connection
import os
import queue
import threading
import time
from collections import deque
from typing import Any, Callable

from migfuse.extract.interface import Loader, WorkItem
from migfuse.worker_pool import start_worker, usable_cpus

log = logging.getLogger(__name__)

# How often the reader thread looks at the pipes (and the stop flag).
POLL_S = 0.5


def decode_threads(workers: int, cpus: int | None = None) -> int:
    """FFmpeg threads per loader worker: the usable cores shared out among the workers (at least 1),
    so that W workers x T threads do not oversubscribe the machine (each FFmpeg would otherwise
    start one thread per core)."""
    cpus = usable_cpus() if cpus is None else cpus
    return max(1, cpus // max(1, workers))


def _worker_main(wid: int, parent: int, loader: Loader, tasks: "mp.Queue", conn: Any, ready: Any,
                 threads: int = 0) -> None:
    """Loop of one spawned worker: take (n, item) from `tasks`, send its samples over `conn`.

    `conn` is this worker's own pipe: a send completes synchronously (nothing buffered dies with
    the process) and a worker that crashes cannot leave a lock shared with the others held.
    """
    # One thread per worker: the cores belong to the forward pass and the other workers. SIGINT
    # ignored and exit with the main process: migfuse.worker_pool's rules.
    start_worker(parent, threads=1)
    if threads:
        from migfuse.extract import decode

        decode.set_threads(threads)
    ready.set()
    while True:
        task = tasks.get()
        if task is None:
            return
        n, item = task
        try:
            for sample in loader(item):
                conn.send(("sample", wid, n, sample))
            conn.send(("end", wid, n, None))
        except (BrokenPipeError, ConnectionResetError):
            return  # the main process is gone (killed): nobody to report to
        except Exception as e:  # noqa: BLE001 - bad input must not stop the run; reported per row
            try:
                conn.send(("end", wid, n, f"{type(e).__name__}: {e}"))
            except (BrokenPipeError, ConnectionResetError):
                return


class LoaderPool:
    """Spawned loader workers with a task queue and a result pipe each, so the main process knows
    which items every worker holds and notices at once when one dies.

    A reader thread moves messages from the pipes into `out` (a bounded in-process queue): it keeps
    receiving while the main thread runs the forward pass (torch releases the GIL), so decoding
    overlaps compute, and the bound stops workers from running far ahead.
    """

    def __init__(self, loader: Loader, workers: int, prefetch: int, out_size: int, decode_threads: int = 0):
        self.ctx = mp.get_context("spawn")
        self.decode_threads = decode_threads
        self.loader = loader
        self.out: "queue.Queue[tuple]" = queue.Queue(maxsize=out_size)
        self.prefetch = prefetch
        self.procs: dict[int, Any] = {}
        self.tasks: dict[int, Any] = {}
        self.assigned: dict[int, deque[int]] = {}
        self.ready: dict[int, Any] = {}
        self._conns: dict[Any, int] = {}  # read end of each live worker's pipe -> worker id
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._next_wid = 0
        for _ in range(workers):
            self._spawn()
        self._reader = threading.Thread(target=self._read_loop, name="migfuse-loader-reader", daemon=True)
        self._reader.start()

    def _spawn(self) -> int:
        wid = self._next_wid
        self._next_wid += 1
        tasks = self.ctx.Queue()
        self.ready[wid] = self.ctx.Event()
        recv, send = self.ctx.Pipe(duplex=False)
        p = self.ctx.Process(target=_worker_main, args=(wid, os.getpid(), self.loader, tasks, send, self.ready[wid],
                                                                 self.decode_threads),
                             daemon=True)
        p.start()
        send.close()  # only the worker writes; closing ours lets a dead worker show up as EOF
        with self._lock:
            self._conns[recv] = wid
        self.procs[wid], self.tasks[wid], self.assigned[wid] = p, tasks, deque()
        return wid

    def _read_loop(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                conns = list(self._conns)
            for conn in mp_connection.wait(conns, timeout=POLL_S):
                try:
                    msg = conn.recv()
                except (EOFError, OSError):
                    with self._lock:
                        wid = self._conns.pop(conn)
                    conn.close()
                    msg = ("dead", wid, -1, None)
                while not self._stop.is_set():
                    try:
                        self.out.put(msg, timeout=POLL_S)
                        break
                    except queue.Full:
                        continue

    def feed(self, todo: deque[int], items: list[WorkItem], take: Callable[[int], bool] = lambda n: True) -> None:
        """Top up every worker to `prefetch` assigned items; `take(n)` False skips item n."""
        for wid in list(self.procs):
            while todo and len(self.assigned[wid]) < self.prefetch:
                n = todo.popleft()
                if not take(n):
                    continue
                self.assigned[wid].append(n)
                self.tasks[wid].put((n, items[n]))

    def finished(self, wid: int, n: int) -> None:
        if wid in self.assigned and n in self.assigned[wid]:
            self.assigned[wid].remove(n)

    def reap(self, wid: int, todo: deque[int]) -> tuple[int, str] | None:
        """Replace the dead worker `wid`. Returns (item n, reason) for the item it was loading (all
        its earlier messages have been handled: the pipe delivers in order); items it had not
        started go back to the front of `todo`."""
        p = self.procs.pop(wid)
        p.join(timeout=5)
        if not self.ready[wid].is_set():
            # Not bad input: the loader cannot even start (environment or bug). Stop the run.
            raise RuntimeError(f"loader worker {wid} exited with code {p.exitcode} before it started; "
                               "see its traceback above")
        held = list(self.assigned.pop(wid))
        del self.tasks[wid]
        log.warning("loader worker %d died (exit code %s); starting another", wid, p.exitcode)
        self._spawn()
        if not held:
            return None
        todo.extendleft(reversed(held[1:]))
        return held[0], f"worker process died (exit code {p.exitcode}) while loading"

    def close(self, abort: bool = False) -> None:
        """Stop the workers: each after its current item, or all at once when `abort` (an error or an
        interrupt in the main process: a worker may be half-way through decoding a long video)."""
        for wid, p in self.procs.items():
            if abort:
                p.terminate()
            elif p.is_alive():
                self.tasks[wid].put(None)
        deadline = time.monotonic() + (1 if abort else 5)
        for p in self.procs.values():
            p.join(timeout=max(0.0, deadline - time.monotonic()))
            if p.is_alive():  # blocked sending to a reader that stopped: it holds nothing we need
                p.terminate()
                p.join(timeout=1)
        self._stop.set()
        self._reader.join(timeout=2)
