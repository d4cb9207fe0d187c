"""The extraction runner every track uses: ids -> loader workers -> batched forward -> token cache.

A track implements an `Extractor` (`interface.py`: which rows, how to load one unit on the CPU, how
to run a batch); the runner owns everything else, once, for all tracks:

* resume: rows already done in the cache are skipped (failed rows too, unless `retry_failed`), as
  long as their stored row definition (a clip's video and frame range) is still the manifest's;
* scale-out: `--shard I/N` or torchrun's RANK/WORLD_SIZE pick whole work items `items[rank::world]`;
  each process writes its own rows straight into the store, nothing is gathered; two processes
  on the same rows (e.g. the same unsharded command twice) split the work item by item
  (`claims.py`);
* device and precision come resolved in a `migfuse.runtime.Runtime`; both are recorded in the group
  provenance with the forward batch: the model always runs on batches of exactly `batch_size` inputs
  (zero-padded, `Extractor.in_fixed_batches`), so a row's tokens do not depend on which rows share
  its batch (workers, shards, resume points);
* overlap: loaders run in spawned worker processes (`loader_pool.py`) and stream samples through a
  bounded queue while the main process runs the batched forward;
* failures: bad input becomes a per-row failure record in the store (never a crash, never lost),
  written in batches (one write per array, not per row) and summarised by cause in the report, not
  logged row by row; a worker process that dies fails only the item it was loading and is
  replaced; a track whose input is missing for every row stops in one line before the cache is
  touched (`Extractor.check_inputs`);
* row selection: `--split` and `--only-available` narrow this run's rows; the group is still made
  for every row of the manifest, so later runs add the rest;
* progress: one bar per process over rows (rate and ETA); off a terminal a line at intervals (progress_bar).

Interface details and rules: docs/contracts.md, "Extraction runner".
"""
from __future__ import annotations

import logging
import queue
import time
from collections import Counter, deque
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Mapping


from migfuse.errors import UserError
from migfuse.extract.claims import Claims
from migfuse.extract.interface import (Extractor, Failure, Loader, LoaderContractError, RunOptions, Sample,
                                       WorkItem)
from migfuse.extract.loader_pool import POLL_S, LoaderPool, decode_threads
from migfuse.extract.report import RunSummary, format_timings
from migfuse.extract.row_writer import RowWriter
from migfuse.runtime import Runtime, launch_ranks

if TYPE_CHECKING:
    from migfuse.data_cache.store import TokenCache, TokenGroup

log = logging.getLogger(__name__)

# How long a half-full batch may wait for more samples when the loaders are slow. The model always
# runs on full (zero-padded) batches, so flushing at the first idle poll would spend a whole batch's
# compute on a few rows whenever loading is the bottleneck (faces on a CPU).
_IDLE_FLUSH_S = 5.0


def parse_shard(shard: str | None, env: Mapping[str, str] | None = None) -> tuple[int, int]:
    """`"I/N"` -> (I, N); without it, torchrun's RANK/WORLD_SIZE; else (0, 1).

    Raises:
        UserError: malformed or out-of-range shard, both --shard and a torchrun world given, or a
            torchrun RANK outside 0..WORLD_SIZE-1 (a run of 0 rows that exits 0 would hide it).
    """
    rank_env, world_env, _ = launch_ranks(env)
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


def run_extractor(extractor: Extractor, cache: "TokenCache | str | Path", runtime: Runtime | None = None,
                  options: RunOptions = RunOptions()) -> RunSummary:
    """Run one extractor as a command does: shard, batch and workers resolved (the track's defaults
    for the runtime's device), then `run_extraction`; under torchrun, all ranks' failed rows counted
    (inside `runtime.process_group()`) so that every rank exits alike.

    Everything a user can get wrong here (bad --shard, RANK >= WORLD_SIZE) is a UserError raised
    before the cache is touched.
    """
    runtime = runtime or Runtime()
    shard = parse_shard(options.shard)
    batch = options.batch_size if options.batch_size is not None else extractor.default_batch(runtime.device)
    workers = options.workers if options.workers is not None else extractor.default_workers(runtime.device)
    summary = run_extraction(extractor, cache, runtime=runtime, batch_size=batch, workers=workers, shard=shard,
                             retry_failed=options.retry_failed, prefetch=options.prefetch,
                             only_available=options.only_available, split=options.split, scheme=options.scheme)
    if options.shard is None and runtime.world > 1:
        summary.world_failed = int(runtime.all_sum([float(len(summary.failed))])[0])
    return summary


def run_extraction(
    extractor: Extractor,
    cache: "TokenCache | str | Path",
    *,
    runtime: Runtime | None = None,
    batch_size: int = 8,
    workers: int = 2,
    shard: tuple[int, int] = (0, 1),
    retry_failed: bool = False,
    prefetch: int = 2,
    only_available: bool = False,
    split: str | None = None,
    scheme: str | None = None,
) -> RunSummary:
    """Extract this process's pending rows of `extractor.group` into `cache`; resumable and sharded.

    Args:
        extractor: the track (see `Extractor`).
        cache: a TokenCache or the path of CACHE.zarr (created if absent).
        runtime: where and how the model runs (device, precision, compile); None = the CPU in fp32.
            Device and precision are recorded in the group provenance.
        batch_size: model inputs per forward (in `Sample.size` units); the model always runs on
            exactly this many (zero-padded), and it is recorded in the provenance.
        workers: spawned loader processes; 0 loads in the main process (no overlap; for debugging).
        shard: (rank, world) from `parse_shard`; this process takes work items `[rank::world]`.
        retry_failed: also redo rows recorded as failed by an earlier run.
        prefetch: work items queued per worker ahead of the one it is loading.
        only_available: leave out rows whose input file is missing (`Extractor.rows_with_input`):
            they are neither extracted nor failed, and stay missing in the cache.
        split / scheme: only the rows of this split (`Extractor.rows_in_split`).

    Returns:
        RunSummary of this process's rows (failures include those of earlier runs).
    """
    from migfuse.progress_bar import progress_bar

    t0 = time.monotonic()
    run = TrackRun(extractor, cache, runtime=runtime, batch_size=batch_size, shard=shard, retry_failed=retry_failed,
                   only_available=only_available, split=split, scheme=scheme)
    n_workers = run.resolve_workers(workers)
    if run.items:
        bar = progress_bar(total=run.pending, desc=f"{extractor.group} [{shard[0]}/{shard[1]}]",
                           unit=extractor.unit, dynamic_ncols=True)
        try:
            load_and_write(extractor.loader(), run.items, run.writer(bar), run.take, n_workers, prefetch,
                           out_size=max(4, 2 * batch_size), setup=extractor.setup)
        finally:
            run.close()
            bar.close()
    return run.finish(t0)


class TrackRun:
    """One track's part of a run: its group opened, this process's pending work items, resume,
    claims, row definitions and summary. `run_extraction` runs one; `multi_run` several at once
    over one decode per video."""

    def __init__(self, extractor: Extractor, cache: "TokenCache | str | Path", *, runtime: Runtime | None,
                 batch_size: int, shard: tuple[int, int], retry_failed: bool, only_available: bool,
                 split: str | None, scheme: str | None):
        from migfuse.data_cache.store import DONE, FAILED, MISSING, TokenCache

        rank, world = shard
        self.extractor = extractor
        extractor.runtime, extractor.batch = runtime or Runtime(), int(batch_size)
        self.cache = cache = cache if isinstance(cache, TokenCache) else TokenCache(cache)
        extractor.check_inputs()  # no input at all: one line, before the cache is touched
        in_split = extractor.rows_in_split(split, scheme) if split else None
        self.g = g = _open_group(extractor, cache)
        all_ids = list(g.ids)
        mine = shard_items(extractor.work_items(all_ids), rank, world)
        outside = unavailable = 0
        if in_split is not None:
            mine, outside = _narrow(mine, in_split)
        wanted = [i for it in mine for i in it.ids]
        if only_available:
            mine, unavailable = _narrow(mine, extractor.rows_with_input(wanted))
        self.my_ids = my_ids = [i for it in mine for i in it.ids]
        self.status = status = dict(zip(all_ids, g.status().tolist()))
        kept = set(my_ids)
        # what the rows left out hold from earlier runs: they keep it (a failed row stays failed)
        left_out = Counter(status[i] for i in wanted if i not in kept) if unavailable else Counter()
        self.rowdefs = rowdefs = extractor.row_definitions(my_ids) or {}
        self.changed = changed = _changed_rows(g, rowdefs, [i for i in my_ids if status[i] != MISSING])
        skip = {DONE} if retry_failed else {DONE, FAILED}
        items = [WorkItem(it.key, tuple(i for i in it.ids if status[i] not in skip or i in changed)) for it in mine]
        self.items = [it for it in items if it.ids]
        self.pending = sum(len(it.ids) for it in self.items)
        self.summary = RunSummary(group=extractor.group, shard=shard, total=len(my_ids),
                                  skipped=len(my_ids) - self.pending, redone=len(changed), unavailable=unavailable,
                                  outside_split=outside, unavailable_failed=left_out[FAILED],
                                  unavailable_done=left_out[DONE], unit=str(extractor.unit), cache=str(cache.path))
        self.batch_size = int(batch_size)
        self.claims = Claims(cache.path, extractor.group) if self.items else None

    def resolve_workers(self, workers: int, items: int | None = None) -> int:
        """The loader processes this run starts (never more than the `items` loaded: its own work
        items by default), recorded with the batch in the summary's settings and logged."""
        ex, s = self.extractor, self.summary
        n_workers = min(workers, len(self.items) if items is None else items)
        s.settings = {"batch": self.batch_size, "workers": n_workers,
                      "decode_threads": decode_threads(n_workers) if n_workers else 0}
        log.info("%s shard %d/%d: %d rows, %d already done or failed, %d to extract (%d work items) on %s in %s",
                 ex.group, s.shard[0], s.shard[1], s.total, s.skipped, self.pending, len(self.items),
                 ex.runtime.device, ex.runtime.precision)
        return n_workers

    def writer(self, bar: Any) -> RowWriter:
        return RowWriter(self.extractor, self.g, self.batch_size, bar, self.summary, self.rowdefs, self.claims)

    def take(self, item: WorkItem) -> WorkItem | None:
        """Claim an item, then keep only its rows nobody else has handled since the start."""
        from migfuse.data_cache.tracks import same_row

        g, status, changed, rowdefs = self.g, self.status, self.changed, self.rowdefs
        if not self.claims.take(item.key):
            self.summary.busy += len(item.ids)
            return None
        now = dict(zip(item.ids, g.status_of(item.ids).tolist()))
        stored = dict(zip(item.ids, g.rowdefs(item.ids))) if changed else {}
        keep = tuple(i for i in item.ids
                     if now[i] == status[i] and (i not in changed or not same_row(stored[i], rowdefs[i])))
        if not keep:
            self.claims.release(item.key)
            self.summary.skipped += len(item.ids)
            return None
        self.summary.skipped += len(item.ids) - len(keep)
        return WorkItem(item.key, keep)

    def close(self) -> None:
        """Give back every claim still held (the run ended, or stopped on an error)."""
        if self.claims is not None:
            self.claims.close()
        if self.summary.busy:
            log.warning("%s: %d rows were being extracted by another process on this cache and were left to it; "
                        "rerun this command after it ends to check that the group is complete",
                        self.extractor.group, self.summary.busy)

    def finish(self, t0: float) -> RunSummary:
        """The summary, with every failure of this process's rows, those kept from earlier runs too."""
        summary = self.summary
        seen = {f[0] for f in summary.failed}
        failures = {f["clip_id"]: f for f in self.g.failures()}  # rows whose status is FAILED now
        for row in self.my_ids:
            if row not in seen and row in failures:
                f = failures[row]
                summary.failed.append((row, str(f.get("stage", "?")), str(f.get("message", "?"))))
        summary.seconds = time.monotonic() - t0
        log.debug("%s", format_timings(summary))  # the report (`format_summary`) prints it
        return summary


def load_and_write(loader: Loader, items: list[WorkItem], writer: Any, take: Callable[[WorkItem], WorkItem | None],
                   workers: int, prefetch: int, out_size: int, setup: Callable[[], None]) -> None:
    """Load `items` (in `workers` spawned processes, or here when 0) while `writer` runs the forward
    and writes; `setup` builds the model(s) once the loaders have started. On an error or an
    interrupt the loaders are stopped at once (their unfinished items are not wanted)."""
    from tqdm.contrib.logging import logging_redirect_tqdm

    pool = None
    try:
        with logging_redirect_tqdm():
            if workers > 0:
                # Start the loaders first: they decode while the model is being built.
                pool = LoaderPool(loader, workers, prefetch, out_size=out_size,
                                  decode_threads=decode_threads(workers))
                setup()
                writer.started()
                _run_pool(pool, items, writer, take)
            else:
                setup()
                writer.started()
                _run_inline(loader, items, writer, take)
            writer.flush()
    except BaseException:
        if pool is not None:
            pool.close(abort=True)
            pool = None
        raise
    finally:
        if pool is not None:
            pool.close()


def _narrow(items: list[WorkItem], keep: set[str]) -> tuple[list[WorkItem], int]:
    """`items` with only the rows in `keep` (items left empty dropped), and how many rows went."""
    narrowed = [WorkItem(it.key, tuple(i for i in it.ids if i in keep)) for it in items]
    dropped = sum(len(it.ids) for it in items) - sum(len(it.ids) for it in narrowed)
    return [it for it in narrowed if it.ids], dropped


def _changed_rows(g: "TokenGroup", rowdefs: Mapping[str, str], written: list[str]) -> set[str]:
    """Rows written (done or failed) under another definition than the manifest's now, e.g. a clip
    whose frame range was corrected under the same id. Rows stored without one are kept as they are."""
    from migfuse.data_cache.tracks import same_row

    if not rowdefs or not written:
        return set()
    changed = {i: old for i, old in zip(written, g.rowdefs(written)) if old and not same_row(old, rowdefs.get(i, old))}
    if changed:
        first = next(iter(changed))
        log.warning("%s: %d rows were written for another definition than the manifest's now (e.g. %s: %s, now %s); "
                    "extracting them again", g.name, len(changed), first, changed[first], rowdefs[first])
    return set(changed)


def _deliver(item: WorkItem, samples: Iterable[Sample], writer: "RowWriter", seen: set[str]) -> None:
    for s in samples:
        if s.id not in item.ids or s.id in seen:
            raise LoaderContractError(f"loader yielded row {s.id!r} that is not (or no longer) "
                                      f"pending in item {item.key}")
        seen.add(s.id)
        writer.add(s)


def _fail_rest(item: WorkItem, seen: set[str], failure: Failure, writer: "RowWriter") -> None:
    for row in item.ids:
        if row not in seen:
            seen.add(row)
            writer.fail(row, failure)


def _timed_loading(samples: Iterator[Sample], writer: "RowWriter") -> Iterator[Sample]:
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


def _run_inline(loader: Loader, items: list[WorkItem], writer: "RowWriter",
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


def _run_pool(pool: LoaderPool, items: list[WorkItem], writer: "RowWriter",
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
            kind, wid, n, payload = pool.out.get(timeout=POLL_S)
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


def _open_group(extractor: Extractor, cache: "TokenCache | str | Path") -> "TokenGroup":
    from migfuse.data_cache.store import GroupSpec, TokenCache

    if not isinstance(cache, TokenCache):
        cache = TokenCache(cache)
    compute = {**extractor.runtime.record(), "forward_batch": extractor.batch}
    if cache.has_group(extractor.group):
        _check_compute(cache.group(extractor.group), compute)
    return cache.require_group(
        GroupSpec(name=extractor.group, ids=extractor.ids(), arrays=extractor.arrays(),
                  provenance={**extractor.provenance(), "compute": compute}, environment=extractor.environment())
    )


# the option that sets each key of provenance["compute"]
_COMPUTE_OPTIONS = {"precision": "--precision", "forward_batch": "--batch-size", "device": "--device"}


def _check_compute(group: "TokenGroup", compute: Mapping[str, Any]) -> None:
    """A group written with another device, precision or forward batch is refused in one line that
    names the options which resume it (e.g. a cache extracted in fp32 before `--precision auto`
    chose bf16 on this machine)."""
    stored = group.provenance.get("compute") or {}
    differ = [k for k in _COMPUTE_OPTIONS if k in stored and stored[k] != compute.get(k)]
    if differ:
        was = ", ".join(f"{k}={stored[k]!r}" for k in differ)
        now = ", ".join(f"{k}={compute.get(k)!r}" for k in differ)
        resume = " ".join(f"{_COMPUTE_OPTIONS[k]} {stored[k]}" for k in differ)
        raise UserError(f"cache group '{group.name}' in {group.cache.path} was written with {was}, but this run has "
                        f"{now}: rerun with {resume} to resume it, or use another --cache")
