"""Both skeleton streams end to end: train a joint and a bone backbone, then extract both into the cache.

What `migfuse demo` (and a user with a prepared folder) calls to fill `joint/<arch>` and `bone/<arch>`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

from migfuse.finetune.skeleton import TrainConfig, TrainResult, train_skeleton
from migfuse.runtime import Runtime
from migfuse.worker_pool import run_tasks, usable_cpus

log = logging.getLogger(__name__)


@dataclass
class StreamRun:
    """One stream: its training result and the extraction runner's summary."""

    stream: str
    train: TrainResult
    extract: object  # migfuse.extract.report.RunSummary


def train_and_extract(prepared: str | Path, cache: str | Path, out: str | Path,
                      config: TrainConfig | None = None, *, streams: tuple[str, ...] = ("joint", "bone"),
                      batch_size: int = 64, processes: int = 1, runtime: Runtime | None = None) -> dict[str, StreamRun]:
    """Train each stream into `out/<stream>/` (resumable) and extract it into `cache`.

    `config` gives every training setting but the stream (default: TrainConfig(), the published
    width; pass e.g. TrainConfig(epochs=3, base_channels=8, length=32) for a quick CPU run).
    `processes` > 1 trains that many streams at once, each in its own worker process
    (`migfuse.worker_pool`: stopped with the command) with an equal share of the usable CPUs as
    torch threads. That is how a CPU run uses every core: a narrow 2s-AGCN gains little from a
    second intra-op thread, a second stream beside it halves the stage. The workers log their
    epoch lines tagged with the stream and show no progress bar (two bars from two processes
    garble one terminal). Extraction stays in this process, one stream after the other (the
    cache has one writer). Training and extraction run on `runtime` (None: the CPU in fp32).
    """
    from migfuse.extract.entry import extract
    from migfuse.extract.interface import RunOptions

    config = config or TrainConfig()
    runtime = runtime or Runtime()
    configs = {stream: replace(config, stream=stream) for stream in streams}
    processes = max(1, min(int(processes), len(streams)))
    if processes == 1:
        results = {stream: train_skeleton(prepared, Path(out) / stream, c, runtime=runtime)
                   for stream, c in configs.items()}
    else:
        threads = max(1, usable_cpus() // processes)
        log.info("training (or reusing finished runs of) the %s streams at once: %d processes, %d torch thread(s) each",
                 " and ".join(streams), processes, threads)
        levels = {name: logging.getLogger(name).getEffectiveLevel() for name in _WORKER_LOGGERS}
        jobs = [(prepared, Path(out) / stream, c, runtime, levels) for stream, c in configs.items()]
        # as they finish: a failing stream raises here at once, and the other one is stopped
        done = dict(run_tasks(_train_in_worker, jobs, processes, ordered=False, threads=threads))
        results = {stream: done[stream] for stream in streams}
    runs = {}
    for stream, result in results.items():
        summary = extract(stream, prepared, cache, runtime, RunOptions(batch_size=batch_size),
                          checkpoint=result.best_checkpoint)
        log.info("%s stream: best epoch %d (top-1 %.3f), %d clips extracted, %d failed", stream,
                 result.best_epoch, result.best_top1, summary.done, len(summary.failed))
        runs[stream] = StreamRun(stream, result, summary)
    return runs


# loggers whose levels a worker takes from the command ("" = root; -v sets "migfuse"; the demo quiets the loop)
_WORKER_LOGGERS = ("", "migfuse", "migfuse.training.loop")


def _train_in_worker(prepared: str | Path, out: Path, config: TrainConfig, runtime: Runtime,
                     levels: dict[str, int]) -> tuple[str, TrainResult]:
    """One stream's training in a worker process: the command's log levels, lines tagged, no bar."""
    from migfuse.training import progress

    logging.basicConfig(format=f"%(levelname)s %(name)s [{config.stream}]: %(message)s", force=True)
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    progress.SHOW_BARS = False
    return config.stream, train_skeleton(prepared, out, config, runtime=runtime)
