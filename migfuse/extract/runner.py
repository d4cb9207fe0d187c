"""The extraction runner every track uses: ids -> loader workers -> batched forward -> token cache.

A track implements an `Extractor` (which rows, how to load one unit on the CPU, how to run a batch);
the runner owns everything else, once, for all tracks:

* resume: rows already done in the cache are skipped (failed rows too, unless `retry_failed`), as
  long as their stored row definition (a clip's video and frame range) is still the manifest's;
* scale-out: `--shard I/N` or torchrun's RANK/WORLD_SIZE pick whole work items `items[rank::world]`;
  each process writes its own rows straight into the store, nothing is gathered; two processes
  on the same rows (e.g. the same unsharded command twice) split the work item by item (claims);
* device and precision: `--device auto|cpu|cuda|cuda:N` resolved once (`cuda:LOCAL_RANK` under
  torchrun), `--precision fp32|bf16|fp16` autocast, both recorded in the group provenance with the
  forward batch: the model always runs on batches of exactly `batch_size` inputs (zero-padded), so a
  row's tokens do not depend on which rows share its batch (workers, shards, resume points);
* overlap: loaders run in spawned worker processes and stream samples through a bounded queue while
  the main process runs the batched forward;
* failures: bad input becomes a per-row failure record in the store (never a crash, never lost);
  a worker process that dies fails only the item it was loading and is replaced;
* progress: one tqdm bar per process over rows (rate and ETA), quiet when not on a terminal.

Interface details and rules: docs/contracts.md, "Extraction runner".
"""
from __future__ import annotations

import logging
import multiprocessing as mp
import multiprocessing.connection as mp_connection
import os
import queue
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Mapping

import numpy as np

from migfuse.errors import UserError
from migfuse.worker_pool import start_worker, usable_cpus

if TYPE_CHECKING:
    from migfuse.data_cache.store import ArraySpec, TokenCache, TokenGroup
    from migfuse.data_cache.tracks import Track

log = logging.getLogger(__name__)

# How often the main process looks for samples while loaders are busy.
_POLL_S = 0.5
# How long a half-full batch may wait for more samples when the loaders are slow. The model always
# runs on full (zero-padded) batches, so flushing at the first idle poll would spend a whole batch's
# compute on a few rows whenever loading is the bottleneck (faces on a CPU).
_IDLE_FLUSH_S = 5.0


class Precision(StrEnum):
    """Forward precision: fp32 (no autocast) or autocast to bf16 / fp16."""

    FP32 = "fp32"
    BF16 = "bf16"
    FP16 = "fp16"


@dataclass(frozen=True)
class Compute:
    """Where and how the forward runs; set on the extractor by the runner before `setup`.

    `batch` > 0: `in_fixed_batches` runs the model on exactly `batch` inputs per call (zero-padded),
    because kernels pick their reduction order by batch shape: the same row in a batch of 3 and of
    4 differs by an fp16 step. With one shape, a row's tokens depend on the row alone.
    """

    device: str = "cpu"
    precision: Precision = Precision.FP32
    batch: int = 0
    #: `torch.compile` the model in `setup` (not in the provenance: same maths, fused kernels)
    compile: bool = False

    @property
    def device_type(self) -> str:
        return str(self.device).split(":")[0]

    def autocast(self) -> AbstractContextManager:
        """The autocast context of the forward (none for fp32)."""
        if self.precision is Precision.FP32:
            return nullcontext()
        import torch

        dtype = torch.bfloat16 if self.precision is Precision.BF16 else torch.float16
        return torch.autocast(self.device_type, dtype=dtype)

    @property
    def on_gpu(self) -> bool:
        return self.device_type == "cuda"

    def to_device(self, x: np.ndarray) -> Any:
        """A CPU array as a tensor on the forward's device; on CUDA through pinned memory with a
        non-blocking copy, so the copy overlaps the kernels queued before it."""
        import torch

        t = torch.from_numpy(np.ascontiguousarray(x))
        if self.on_gpu:
            return t.pin_memory().to(self.device, non_blocking=True)
        return t

    def maybe_compile(self, fn: Callable) -> Callable:
        """`fn` through `torch.compile` when `compile` is set (static shapes: the batch is fixed)."""
        if not self.compile:
            return fn
        import torch

        log.info("torch.compile: the first batch compiles the model (tens of seconds); later ones run fused")
        return torch.compile(fn, dynamic=False)

    def record(self) -> dict[str, Any]:
        """What of this goes into the group provenance (tokens depend on it)."""
        return {"device": self.device_type, "precision": str(self.precision), "forward_batch": self.batch}

    def in_fixed_batches(self, fn: Callable[[np.ndarray], Any], x: np.ndarray) -> Any:
        """`fn` over `x` (N, ...) in calls of exactly `batch` rows (the last zero-padded); the outputs
        (an array or a dict of arrays, N first) concatenated and trimmed to N."""
        n, b = len(x), self.batch
        if b <= 0 or n == 0:
            return fn(x)
        parts = []
        for start in range(0, n, b):
            part = x[start:start + b]
            if len(part) < b:
                part = np.concatenate([part, np.zeros((b - len(part),) + part.shape[1:], part.dtype)])
            parts.append((fn(part), min(b, n - start)))
        if isinstance(parts[0][0], Mapping):
            return {k: np.concatenate([np.asarray(p[k])[:m] for p, m in parts]) for k in parts[0][0]}
        return np.concatenate([np.asarray(p)[:m] for p, m in parts])


@dataclass(frozen=True)
class RunOptions:
    """The settings every extract track shares (the CLI's common options).

    device: "auto" (CUDA when torch has it, else CPU), "cpu", "cuda" or "cuda:N"; under torchrun
    "auto"/"cuda" mean `cuda:LOCAL_RANK`. precision: None = fp32 on CPU, bf16 on CUDA.
    batch_size / workers: None = the track's default for the resolved device
    (`Extractor.default_batch` / `default_workers`: small on a CPU, GPU-sized on CUDA).
    shard: "I/N" (SLURM arrays); None = torchrun's RANK/WORLD_SIZE, else the whole dataset.
    compile: run the model through `torch.compile` (one graph: the batch shape is fixed); pays back
    only on long runs (the first batch compiles), so it is opt-in.
    """

    device: str = "auto"
    precision: str | None = None
    batch_size: int | None = None
    workers: int | None = None
    shard: str | None = None
    retry_failed: bool = False
    prefetch: int = 2
    compile: bool = False


def resolve_device(requested: str = "auto", env: Mapping[str, str] | None = None) -> str:
    """The torch device of this process's forward, said in one log line.

    "auto": CUDA when torch has it, else CPU. "cuda" (or auto on a CUDA machine) under torchrun
    (LOCAL_RANK set): `cuda:LOCAL_RANK`, so each rank has its own GPU. "cuda:N" is taken as given.

    Raises:
        UserError: CUDA asked for on a torch without it, a LOCAL_RANK beyond the visible GPUs, or an
            unknown device name. Raised before anything is written to the cache.
    """
    import torch

    env = os.environ if env is None else env
    req = "auto" if requested is None else str(requested).strip().lower()
    if req not in ("auto", "cpu", "cuda") and not (req.startswith("cuda:") and req[5:].isdigit()):
        raise UserError(f"--device {requested!r} is not auto, cpu, cuda or cuda:N")
    has_cuda = torch.cuda.is_available()
    if req == "cpu" or (req == "auto" and not has_cuda):
        device = "cpu"
    elif not has_cuda:
        raise UserError(f"--device {requested} but this torch ({torch.__version__}) has no CUDA device; "
                        "use --device cpu (or auto), or install a CUDA build of torch")
    elif req.startswith("cuda:"):
        device = req
    elif "LOCAL_RANK" in env:
        local = int(env["LOCAL_RANK"])
        if local >= torch.cuda.device_count():
            raise UserError(f"LOCAL_RANK {local} but only {torch.cuda.device_count()} CUDA devices are visible; "
                            "start torchrun with --nproc_per_node at most the number of GPUs")
        device = f"cuda:{local}"
    else:
        device = "cuda"
    if req.startswith("cuda:") and int(req[5:]) >= torch.cuda.device_count():
        raise UserError(f"--device {requested}: only {torch.cuda.device_count()} CUDA devices are visible")
    # said when something was decided (auto, cuda -> cuda:N); an explicit "cpu" only with -v
    log.log(logging.DEBUG if device == req else logging.INFO, "device: %s (asked for %s%s)", device, req,
            f", LOCAL_RANK {env['LOCAL_RANK']}" if "LOCAL_RANK" in env else "")
    return device


def resolve_precision(precision: str | None, device: str) -> Precision:
    """None -> fp32 on CPU, bf16 on CUDA; else the named one (UserError when unknown)."""
    if precision is None:
        return Precision.BF16 if str(device).startswith("cuda") else Precision.FP32
    try:
        return Precision(str(precision).lower())
    except ValueError:
        raise UserError(f"--precision {precision!r} is not one of {', '.join(p.value for p in Precision)}") from None


def cpu_has_amx() -> bool:
    """True when this CPU has Intel AMX (Sapphire Rapids and later), which does bf16 matrix products
    in hardware: there bf16 autocast runs MViTv2-S 2.4x faster than fp32 (0.60 against 1.46 s per
    clip on 2 cores, benchmarks/RESULTS.md "demo"). Asked of torch's CPU feature probe, which is
    private: False if it is missing or fails."""
    import torch

    try:
        return bool(torch.cpu._is_amx_tile_supported())
    except Exception:  # an older torch, or a probe that fails on an unusual CPU: the safe answer
        return False


@dataclass(frozen=True)
class WorkItem:
    """One unit a loader opens once (e.g. a video) and the cache rows it yields."""

    key: str
    ids: tuple[str, ...]


@dataclass(frozen=True)
class Failure:
    """Why one row could not be extracted. `stage`: open | decode | load | worker | forward | ..."""

    stage: str
    message: str


@dataclass
class Sample:
    """What a loader yields per row: model inputs (compact CPU arrays) or a failure.

    `size` is how many model inputs the sample holds (K windows -> K); batches fill up to
    `batch_size` in these units.
    """

    id: str
    inputs: dict[str, np.ndarray] | None = None
    failure: Failure | None = None
    size: int = 1


Loader = Callable[[WorkItem], Iterator[Sample]]


class LoaderContractError(Exception):
    """A loader broke the interface (yielded an id it was not asked for): a bug, so the run stops."""


class Extractor(ABC):
    """What a track implements. Construct cheaply; heavy work happens in `setup` and the loader."""

    #: "<track>/<backbone>", the cache group written
    group: str = ""
    #: what a row is, for the progress bar ("clip", "video"); tracks take it from the track table
    unit: str = "row"
    #: set by the runner before `setup`: device, precision and fixed forward batch
    compute: Compute = Compute()
    #: model inputs per forward when --batch-size is not given, on a CPU / on a GPU
    cpu_batch: int = 8
    gpu_batch: int = 32
    #: loader processes when --workers is not given on a CPU (on a GPU: one per core but one)
    cpu_workers: int = 2

    def default_batch(self, device: str) -> int:
        """--batch-size when not given: `gpu_batch` on CUDA (the GPU needs large batches to be
        busy), `cpu_batch` elsewhere."""
        return self.gpu_batch if str(device).startswith("cuda") else self.cpu_batch

    def default_workers(self, device: str) -> int:
        """--workers when not given: `cpu_workers` on a CPU (the cores run the model); on CUDA one
        loader per usable core but one (the main process feeds the GPU), since decoding sets the pace."""
        if str(device).startswith("cuda"):
            # torchrun ranks on one node share its cores
            ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
            return max(1, usable_cpus() // max(1, ranks) - 1)
        return self.cpu_workers

    def row_definitions(self, ids: list[str]) -> dict[str, str] | None:
        """What defines each row (`tracks.row_definition`), stored per row; None: not tracked."""
        return None

    @abstractmethod
    def ids(self) -> list[str]:
        """Every row id of the group, in the group's fixed order."""

    @abstractmethod
    def work_items(self, ids: list[str]) -> list[WorkItem]:
        """Group row ids into load units (e.g. one per video, clips in frame order)."""

    @abstractmethod
    def arrays(self) -> dict[str, "ArraySpec"]:
        """The named arrays each row stores."""

    @abstractmethod
    def provenance(self) -> dict[str, Any]:
        """JSON-able, deterministic description of how rows were made (compared on reopen)."""

    @abstractmethod
    def loader(self) -> Loader:
        """A picklable callable run in worker processes: WorkItem -> one Sample per id. No model."""

    @abstractmethod
    def setup(self, device: str) -> None:
        """Build the model on `device` in the main process (called once, before any forward)."""

    @abstractmethod
    def forward(self, inputs: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray] | Failure]:
        """Run one batch; return each sample's arrays (every name of `arrays()`) or a Failure."""


@dataclass
class RunSummary:
    """What one process did. `failed` covers this process's rows, earlier runs included."""

    group: str
    shard: tuple[int, int]
    total: int = 0  # rows of this shard
    done: int = 0  # rows written by this run
    skipped: int = 0  # rows already done (or already failed, without retry_failed) before this run
    failed: list[tuple[str, str, str]] = field(default_factory=list)  # (id, stage, message)
    seconds: float = 0.0
    redone: int = 0  # rows done or failed earlier whose definition changed since (extracted again)
    busy: int = 0  # rows left to another process that held their work item (see `_Claims`)
    world_failed: int | None = None  # under torchrun: failed rows of all ranks (see `extract`)
    #: where the main process's time went, seconds: "start" (cache, workers, model build), "loaders"
    #: (waiting for loader workers, or loading in this process with --workers 0), "forward" (the
    #: model, copies to and from the device included), "writes" (the cache)
    timings: dict[str, float] = field(default_factory=dict)
    #: the resolved settings of the run: batch, workers, decode threads per worker
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """No failed row: of this process, or under torchrun of any rank (so all ranks exit alike)."""
        return not self.failed if self.world_failed is None else self.world_failed == 0


class TrackExtractor(Extractor):
    """An extractor of one track of the table over a manifest: rows, work items and row definitions
    follow from the track's unit (clips are grouped per video; a video row is its own item)."""

    track: "Track"
    manifest: Any
    _row_ids: list[str] | None = None

    def ids(self) -> list[str]:
        from migfuse.data_cache.tracks import row_ids

        return list(self._row_ids) if self._row_ids is not None else row_ids(self.track, self.manifest)

    def work_items(self, ids: list[str]) -> list[WorkItem]:
        if self.track.per_video:
            return [WorkItem(v, (v,)) for v in ids]
        return clips_by_video(self.manifest, ids)

    def row_definitions(self, ids: list[str]) -> dict[str, str]:
        from migfuse.data_cache.tracks import row_definition

        return {i: row_definition(self.track, self.manifest, i) for i in ids}


def clips_by_video(manifest: Any, clip_ids: Iterable[str]) -> list[WorkItem]:
    """One work item per video holding its clips in frame order: each video is decoded once."""
    by_video: dict[str, list] = {}
    for cid in clip_ids:
        clip = manifest.clip(cid)
        by_video.setdefault(clip.video_id, []).append(clip)
    return [WorkItem(v, tuple(c.clip_id for c in sorted(cs, key=lambda c: (c.start_frame, c.k))))
            for v, cs in by_video.items()]


def video_files(manifest: Any, video_root: str | Path | None = None) -> dict[str, str | None]:
    """Video id -> video file for every video of the manifest (None where `data prepare` found none),
    resolved under ``video_root`` / ``$MIGFUSE_VIDEO_ROOT`` / the recorded root (`Manifest.video_paths`;
    UserError naming ``--video-root`` when no video is found at all)."""
    paths = {v: (str(p) if p else None) for v, p in manifest.video_paths(video_root).items()}
    for c in manifest.clips:  # clips of videos missing from videos.csv still get a (failing) entry
        paths.setdefault(c.video_id, None)
    return paths


def parse_shard(shard: str | None, env: Mapping[str, str] | None = None) -> tuple[int, int]:
    """`"I/N"` -> (I, N); without it, torchrun's RANK/WORLD_SIZE; else (0, 1).

    Raises:
        UserError: malformed or out-of-range shard, both --shard and a torchrun world given, or a
            torchrun RANK outside 0..WORLD_SIZE-1 (a run of 0 rows that exits 0 would hide it).
    """
    env = os.environ if env is None else env
    try:
        world_env = int(env.get("WORLD_SIZE", "1") or 1)
        rank_env = int(env.get("RANK", "0") or 0)
    except ValueError:
        raise UserError(f"RANK={env.get('RANK')!r} / WORLD_SIZE={env.get('WORLD_SIZE')!r} in the environment "
                        "are not integers; check the launcher") from None
    if world_env < 1 or not 0 <= rank_env < world_env:
        raise UserError(f"RANK={rank_env} is outside 0..WORLD_SIZE-1 (WORLD_SIZE={world_env}) in the environment; "
                        "check the launcher (torchrun sets both)")
    if shard:
        try:
            i, n = (int(x) for x in shard.split("/"))
        except ValueError:
            raise UserError(f"--shard {shard!r} is not I/N (e.g. --shard 0/4 for the first of four)") from None
        if not 0 <= i < n:
            raise UserError(f"--shard {shard!r}: I must be in 0..N-1 (e.g. --shard $SLURM_ARRAY_TASK_ID/N)")
        if world_env > 1:
            raise UserError("--shard given under torchrun (WORLD_SIZE>1): use one of them, not both")
        return i, n
    return rank_env, world_env


def shard_items(items: list[WorkItem], rank: int, world: int) -> list[WorkItem]:
    """The items of one process: sorted by key, then `[rank::world]` (disjoint, covering, deterministic)."""
    return sorted(items, key=lambda it: it.key)[rank::world]


# ------------------------------------------------------------------------------------------------
# worker processes
# ------------------------------------------------------------------------------------------------
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


class _Pool:
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
            for conn in mp_connection.wait(conns, timeout=_POLL_S):
                try:
                    msg = conn.recv()
                except (EOFError, OSError):
                    with self._lock:
                        wid = self._conns.pop(conn)
                    conn.close()
                    msg = ("dead", wid, -1, None)
                while not self._stop.is_set():
                    try:
                        self.out.put(msg, timeout=_POLL_S)
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


# ------------------------------------------------------------------------------------------------
# the run
# ------------------------------------------------------------------------------------------------
class _Claims:
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


class _Writer:
    """Batches samples, runs the forward, writes rows and failures, counts, updates the bar."""

    def __init__(self, extractor: Extractor, group: "TokenGroup", batch_size: int, bar: Any, summary: RunSummary,
                 rowdefs: Mapping[str, str] | None = None, claims: _Claims | None = None):
        self.ex, self.g, self.batch_size, self.bar, self.summary = extractor, group, batch_size, bar, summary
        self.rowdefs = rowdefs or {}
        self.claims = claims
        self.specs = extractor.arrays()
        self.batch: list[Sample] = []
        self.batch_units = 0
        self.batch_since = 0.0
        self.t0 = time.monotonic()
        self.timings = summary.timings
        self.timings.update(start=0.0, loaders=0.0, forward=0.0, writes=0.0)

    def started(self) -> None:
        """The model is built: what came before is the run's fixed start cost."""
        self.timings["start"] = time.monotonic() - self.t0

    def timed(self, key: str, since: float) -> None:
        self.timings[key] += time.monotonic() - since

    def add(self, sample: Sample) -> None:
        if sample.failure is not None or sample.inputs is None:
            self.fail(sample.id, sample.failure or Failure("load", "loader returned no inputs"))
            return
        if not self.batch:
            self.batch_since = time.monotonic()
        self.batch.append(sample)
        self.batch_units += max(1, sample.size)
        if self.batch_units >= self.batch_size:
            self.flush()

    def fail(self, row: str, failure: Failure) -> None:
        log.warning("%s %s failed at %s: %s", self.ex.group, row, failure.stage, failure.message)
        t = time.monotonic()
        self.g.write_failure(row, failure.stage, failure.message, rowdef=self.rowdefs.get(row))
        self.timed("writes", t)
        self.summary.failed.append((row, failure.stage, failure.message))
        self._tick()

    def flush(self) -> None:
        if not self.batch:
            if self.claims is not None:
                self.claims.flushed()
            return
        batch, self.batch, self.batch_units = self.batch, [], 0
        t = time.monotonic()
        results = self.ex.forward([s.inputs for s in batch])
        self.timed("forward", t)
        if len(results) != len(batch):
            raise RuntimeError(f"{type(self.ex).__name__}.forward returned {len(results)} results for {len(batch)} inputs")
        for s, res in zip(batch, results):
            if isinstance(res, Failure):
                self.fail(s.id, res)
                continue
            arrays = {}
            for name, spec in self.specs.items():
                arrays[name] = np.asarray(res[name]).astype(spec.dtype, copy=False)
            t = time.monotonic()
            self.g.write(s.id, arrays, rowdef=self.rowdefs.get(s.id))
            self.timed("writes", t)
            self.summary.done += 1
            self._tick()
        if self.claims is not None:
            self.claims.flushed()

    def _tick(self) -> None:
        self.bar.update(1)
        if self.summary.failed:
            self.bar.set_postfix_str(f"failed={len(self.summary.failed)}", refresh=False)


def _open_group(extractor: Extractor, cache: "TokenCache | str | Path") -> "TokenGroup":
    from migfuse.data_cache.store import GroupSpec, TokenCache

    if not isinstance(cache, TokenCache):
        cache = TokenCache(cache)
    return cache.require_group(
        GroupSpec(name=extractor.group, ids=extractor.ids(), arrays=extractor.arrays(),
                  provenance={**extractor.provenance(), "compute": extractor.compute.record()})
    )


def extract(extractor: Extractor, cache: "TokenCache | str | Path", options: RunOptions = RunOptions()) -> RunSummary:
    """The entry point of every extract track: resolve shard, device and precision once, then run.

    Everything a user can get wrong here (bad --shard, RANK >= WORLD_SIZE, --device cuda without
    CUDA, an unknown --precision) is a UserError raised before the cache is touched.
    """
    shard = parse_shard(options.shard)
    device = resolve_device(options.device)
    batch = options.batch_size if options.batch_size is not None else extractor.default_batch(device)
    workers = options.workers if options.workers is not None else extractor.default_workers(device)
    summary = run_extraction(extractor, cache, device=device, precision=options.precision,
                             batch_size=batch, workers=workers, shard=shard,
                             retry_failed=options.retry_failed, prefetch=options.prefetch, compile=options.compile)
    if options.shard is None and shard[1] > 1 and "LOCAL_RANK" in os.environ:
        summary.world_failed = _join_ranks(len(summary.failed))
    return summary


# Ranks wait for each other at the end for as long as the slowest takes (a gloo barrier's default
# timeout of 30 min would fail a rank that finished early).
_RANKS_TIMEOUT_S = 14 * 24 * 3600


def _join_ranks(failed: int) -> int:
    """Under torchrun: wait until every rank has finished its rows; return all ranks' failed rows.

    torchrun tears the whole group down as soon as one rank exits non-zero, so a rank whose rows
    partly failed must not exit (status 1) while others are still extracting. A gloo process group
    (CPU, torchrun's store) is used for this barrier only; `end_ranks` closes it after the report.
    """
    import datetime

    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=_RANKS_TIMEOUT_S))
    total = torch.tensor([failed], dtype=torch.int64)
    dist.all_reduce(total)
    return int(total.item())


def end_ranks() -> None:
    """After each rank has printed its report: a last barrier, then close the process group (no-op
    outside torchrun), so no rank is torn down while another is still writing its report."""
    import sys as _sys

    dist = getattr(_sys.modules.get("torch"), "distributed", None)
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def run_extraction(
    extractor: Extractor,
    cache: "TokenCache | str | Path",
    *,
    device: str = "cpu",
    precision: str | None = None,
    batch_size: int = 8,
    workers: int = 2,
    shard: tuple[int, int] = (0, 1),
    retry_failed: bool = False,
    prefetch: int = 2,
    compile: bool = False,
) -> RunSummary:
    """Extract this process's pending rows of `extractor.group` into `cache`; resumable and sharded.

    Args:
        extractor: the track (see `Extractor`).
        cache: a TokenCache or the path of CACHE.zarr (created if absent).
        device: a resolved torch device, "cpu", "cuda" or "cuda:N" (`extract` resolves "auto").
        precision: "fp32", "bf16", "fp16"; None = fp32 on CPU, bf16 on CUDA (recorded in provenance).
        batch_size: model inputs per forward (in `Sample.size` units); the model always runs on
            exactly this many (zero-padded), and it is recorded in the provenance.
        workers: spawned loader processes; 0 loads in the main process (no overlap; for debugging).
        shard: (rank, world) from `parse_shard`; this process takes work items `[rank::world]`.
        retry_failed: also redo rows recorded as failed by an earlier run.
        prefetch: work items queued per worker ahead of the one it is loading.
        compile: `torch.compile` the model (`Compute.maybe_compile`).

    Returns:
        RunSummary of this process's rows (failures include those of earlier runs).
    """
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    from migfuse.data_cache.store import DONE, FAILED, MISSING, TokenCache

    t0 = time.monotonic()
    rank, world = shard
    extractor.compute = Compute(device, resolve_precision(precision, device), int(batch_size), bool(compile))
    cache = cache if isinstance(cache, TokenCache) else TokenCache(cache)
    g = _open_group(extractor, cache)
    all_ids = list(g.ids)
    mine = shard_items(extractor.work_items(all_ids), rank, world)
    my_ids = [i for it in mine for i in it.ids]
    status = dict(zip(all_ids, g.status().tolist()))
    rowdefs = extractor.row_definitions(my_ids) or {}
    changed = _changed_rows(g, rowdefs, [i for i in my_ids if status[i] != MISSING])
    skip = {DONE} if retry_failed else {DONE, FAILED}
    items = [WorkItem(it.key, tuple(i for i in it.ids if status[i] not in skip or i in changed)) for it in mine]
    items = [it for it in items if it.ids]
    pending = sum(len(it.ids) for it in items)
    summary = RunSummary(group=extractor.group, shard=shard, total=len(my_ids), skipped=len(my_ids) - pending,
                         redone=len(changed))
    n_workers = min(workers, len(items))
    summary.settings = {"batch": int(batch_size), "workers": n_workers,
                        "decode_threads": decode_threads(n_workers) if n_workers else 0}
    log.info("%s shard %d/%d: %d rows, %d already done or failed, %d to extract (%d work items)",
             extractor.group, rank, world, len(my_ids), summary.skipped, pending, len(items))

    if items:
        claims = _Claims(cache.path, extractor.group)

        def take(item: WorkItem) -> WorkItem | None:
            """Claim an item, then keep only its rows nobody else has handled since the start."""
            if not claims.take(item.key):
                summary.busy += len(item.ids)
                return None
            now = dict(zip(item.ids, g.status_of(item.ids).tolist()))
            stored = dict(zip(item.ids, g.rowdefs(item.ids))) if changed else {}
            keep = tuple(i for i in item.ids if now[i] == status[i] and (i not in changed or stored[i] != rowdefs[i]))
            if not keep:
                claims.release(item.key)
                summary.skipped += len(item.ids)
                return None
            summary.skipped += len(item.ids) - len(keep)
            return WorkItem(item.key, keep)

        bar = tqdm(total=pending, desc=f"{extractor.group} [{rank}/{world}]", unit=extractor.unit, disable=None,
                   dynamic_ncols=True)
        writer = _Writer(extractor, g, batch_size, bar, summary, rowdefs, claims)
        pool = None
        try:
            with logging_redirect_tqdm():
                if n_workers > 0:
                    # Start the loaders first: they decode while the model is being built.
                    pool = _Pool(extractor.loader(), n_workers, prefetch, out_size=max(4, 2 * batch_size),
                                 decode_threads=summary.settings["decode_threads"])
                    extractor.setup(device)
                    writer.started()
                    _run_pool(pool, items, writer, take)
                else:
                    extractor.setup(device)
                    writer.started()
                    _run_inline(extractor.loader(), items, writer, take)
                writer.flush()
        except BaseException:  # an error or an interrupt: the loaders' unfinished items are not wanted
            if pool is not None:
                pool.close(abort=True)
                pool = None
            raise
        finally:
            if pool is not None:
                pool.close()
            claims.close()
            bar.close()
        if summary.busy:
            log.warning("%s: %d rows were being extracted by another process on this cache and were left to it; "
                        "rerun this command after it ends to check that the group is complete",
                        extractor.group, summary.busy)

    # Report every failure of this process's rows, including those kept from earlier runs.
    seen = {f[0] for f in summary.failed}
    failures = {f["clip_id"]: f for f in g.failures()}  # rows whose status is FAILED now
    for row in my_ids:
        if row not in seen and row in failures:
            f = failures[row]
            summary.failed.append((row, str(f.get("stage", "?")), str(f.get("message", "?"))))
    summary.seconds = time.monotonic() - t0
    log.debug("%s", format_timings(summary))  # the report (`format_summary`) prints it
    log.info("%s shard %d/%d: %d written, %d skipped, %d failed in %.1f s", extractor.group, rank, world,
             summary.done, summary.skipped, len(summary.failed), summary.seconds)
    return summary


def _changed_rows(g: "TokenGroup", rowdefs: Mapping[str, str], written: list[str]) -> set[str]:
    """Rows written (done or failed) under another definition than the manifest's now, e.g. a clip
    whose frame range was corrected under the same id. Rows stored without one are kept as they are."""
    if not rowdefs or not written:
        return set()
    changed = {i: old for i, old in zip(written, g.rowdefs(written)) if old and old != rowdefs.get(i, old)}
    if changed:
        first = next(iter(changed))
        log.warning("%s: %d rows were written for another definition than the manifest's now (e.g. %s: %s, now %s); "
                    "extracting them again", g.name, len(changed), first, changed[first], rowdefs[first])
    return set(changed)


def _deliver(item: WorkItem, samples: Iterable[Sample], writer: _Writer, seen: set[str]) -> None:
    for s in samples:
        if s.id not in item.ids or s.id in seen:
            raise LoaderContractError(f"loader yielded row {s.id!r} that is not (or no longer) pending in item {item.key}")
        seen.add(s.id)
        writer.add(s)


def _fail_rest(item: WorkItem, seen: set[str], failure: Failure, writer: _Writer) -> None:
    for row in item.ids:
        if row not in seen:
            seen.add(row)
            writer.fail(row, failure)


def _timed_loading(samples: Iterator[Sample], writer: _Writer) -> Iterator[Sample]:
    """`samples`, the time spent producing them counted as the run's "loaders" time."""
    while True:
        t = time.monotonic()
        try:
            sample = next(samples)
        except StopIteration:
            writer.timed("loaders", t)
            return
        writer.timed("loaders", t)
        yield sample


def _run_inline(loader: Loader, items: list[WorkItem], writer: _Writer,
                take: Callable[[WorkItem], WorkItem | None] = lambda it: it) -> None:
    for item in items:
        item = take(item)
        if item is None:
            continue
        seen: set[str] = set()
        error = "loader ended without yielding this row"
        try:
            _deliver(item, _timed_loading(loader(item), writer), writer, seen)
        except LoaderContractError:
            raise
        except Exception as e:  # noqa: BLE001 - bad input must not stop the run; reported per row
            error = f"{type(e).__name__}: {e}"
            log.debug("loader failed on %s", item.key, exc_info=True)
        _fail_rest(item, seen, Failure("load", error), writer)
        if writer.claims is not None:
            writer.claims.release_when_written(item.key)


def _run_pool(pool: _Pool, items: list[WorkItem], writer: _Writer,
              take: Callable[[WorkItem], WorkItem | None] = lambda it: it) -> None:
    items = list(items)
    todo = deque(range(len(items)))
    seen: dict[int, set[str]] = {}
    open_items = set(range(len(items)))

    def take_n(n: int) -> bool:
        item = take(items[n])
        if item is None:
            open_items.discard(n)
            return False
        items[n] = item
        return True

    def closed(n: int) -> None:
        open_items.discard(n)
        if writer.claims is not None:
            writer.claims.release_when_written(items[n].key)

    pool.feed(todo, items, take_n)
    while open_items:
        t = time.monotonic()
        try:
            kind, wid, n, payload = pool.out.get(timeout=_POLL_S)
        except queue.Empty:
            writer.timed("loaders", t)
            if not writer.batch or time.monotonic() - writer.batch_since >= _IDLE_FLUSH_S:
                writer.flush()  # loaders are slow: do not sit on a half-full batch for ever
            continue
        writer.timed("loaders", t)
        if kind == "dead":
            lost = pool.reap(wid, todo)
            if lost is not None and lost[0] in open_items:
                _fail_rest(items[lost[0]], seen.setdefault(lost[0], set()), Failure("worker", lost[1]), writer)
                closed(lost[0])
            pool.feed(todo, items, take_n)
        elif kind == "sample":
            _deliver(items[n], [payload], writer, seen.setdefault(n, set()))
        else:  # "end" of an item
            error = payload or "loader ended without yielding this row"
            _fail_rest(items[n], seen.setdefault(n, set()), Failure("load", error), writer)
            closed(n)
            pool.finished(wid, n)
            pool.feed(todo, items, take_n)


def format_timings(summary: RunSummary) -> str:
    """One line: where the main process's time went, and the settings that explain it.

    "waiting for loaders" large against "forward": decoding sets the pace (raise --workers, or
    decode on the GPU); "forward" near the whole run: the model does (a larger --batch-size).
    """
    t = summary.timings
    total = max(summary.seconds, 1e-9)
    cfg = summary.settings
    parts = [f"start {t.get('start', 0):.1f} s (cache, workers, model build)",
             f"waiting for loaders {t.get('loaders', 0):.1f} s",
             f"forward {t.get('forward', 0):.1f} s ({100 * t.get('forward', 0) / total:.0f} % of the run)",
             f"writes {t.get('writes', 0):.1f} s"]
    workers = f"{cfg['workers']} loader worker{'s' if cfg['workers'] != 1 else ''}" if cfg else ""
    where = f"; batch {cfg['batch']}, {workers} x {cfg['decode_threads']} decode threads" if cfg else ""
    return "time: " + ", ".join(parts) + where


def format_summary(summary: RunSummary, max_rows: int = 50) -> str:
    """A plain-text report: counts, then one line per failed row (id, stage, reason)."""
    rank, world = summary.shard
    lines = [f"{summary.group} shard {rank}/{world}: {summary.total} rows, {summary.done} written now, "
             f"{summary.skipped} skipped (done or failed earlier), {len(summary.failed)} failed, {summary.seconds:.1f} s"]
    if summary.timings:
        lines.append(format_timings(summary))
    if summary.redone:
        lines.append(f"{summary.redone} rows were extracted again: their clip changed (frame range) since they were written")
    if summary.busy:
        lines.append(f"{summary.busy} rows left to another process extracting the same group; rerun after it ends")
    if summary.world_failed:
        lines.append(f"all torchrun ranks: {summary.world_failed} rows failed")
    if summary.failed:
        w_id = max(len("id"), *(len(f[0]) for f in summary.failed))
        w_st = max(len("stage"), *(len(f[1]) for f in summary.failed))
        lines.append(f"{'id':<{w_id}}  {'stage':<{w_st}}  reason")
        for row, stage, message in summary.failed[:max_rows]:
            lines.append(f"{row:<{w_id}}  {stage:<{w_st}}  {message}")
        if len(summary.failed) > max_rows:
            lines.append(f"... and {len(summary.failed) - max_rows} more (see `failure` in the cache group)")
        lines.append("rerun with --retry-failed after fixing the inputs to redo failed rows")
    return "\n".join(lines)
