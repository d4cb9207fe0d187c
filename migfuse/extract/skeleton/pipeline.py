"""Both skeleton streams end to end: train a joint and a bone backbone, then extract both into the cache.

What `migfuse demo` (and a user with a prepared folder) calls to fill `joint/<arch>` and `bone/<arch>`.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

from migfuse.extract.skeleton.train import TrainConfig, TrainResult, train_skeleton

log = logging.getLogger(__name__)


@dataclass
class StreamRun:
    """One stream: its training result and the extraction runner's summary."""

    stream: str
    train: TrainResult
    extract: object  # migfuse.extract.runner.RunSummary


def train_and_extract(prepared: str | Path, cache: str | Path, out: str | Path,
                      config: TrainConfig | None = None, *, streams: tuple[str, ...] = ("joint", "bone"),
                      batch_size: int = 64, processes: int = 1) -> dict[str, StreamRun]:
    """Train each stream into `out/<stream>/` (resumable) and extract it into `cache`.

    `config` gives every training setting but the stream (default: TrainConfig(), the published
    width; pass e.g. TrainConfig(epochs=3, base_channels=8, length=32) for a quick CPU run).
    `processes` > 1 trains that many streams at once, each in its own process with an equal share
    of the CPU cores as torch threads. That is how a CPU run uses every core: a narrow 2s-AGCN
    gains little from a second intra-op thread, a second stream beside it halves the stage. The
    processes log their epoch lines prefixed with the stream and show no progress bar (two bars
    from two processes garble one terminal). Extraction stays in this process, one stream after
    the other (the cache has one writer).
    """
    from migfuse.extract.skeleton.extractor import extract_skeleton

    config = config or TrainConfig()
    configs = {stream: replace(config, stream=stream) for stream in streams}
    processes = max(1, min(int(processes), len(streams)))
    if processes == 1:
        results = {stream: train_skeleton(prepared, Path(out) / stream, c) for stream, c in configs.items()}
    else:
        threads = max(1, (os.cpu_count() or 1) // processes)
        log.info("training the %s streams at once: %d processes, %d torch thread(s) each",
                 " and ".join(streams), processes, threads)
        # spawn, not fork: forking a process whose OpenMP pool has started can hang the child
        with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {stream: pool.submit(_train_in_child, prepared, Path(out) / stream, c, threads,
                                           logging.getLogger().getEffectiveLevel())
                       for stream, c in configs.items()}
            results = {stream: f.result() for stream, f in futures.items()}  # re-raises a child's UserError
    runs = {}
    for stream, result in results.items():
        summary = extract_skeleton(prepared, cache, result.best_checkpoint, stream, device=config.device,
                                   batch_size=batch_size)
        log.info("%s stream: best epoch %d (top-1 %.3f), %d clips extracted, %d failed", stream,
                 result.best_epoch, result.best_top1, summary.done, len(summary.failed))
        runs[stream] = StreamRun(stream, result, summary)
    return runs


def _train_in_child(prepared: str | Path, out: Path, config: TrainConfig, threads: int, level: int) -> TrainResult:
    """One stream's training in a worker process: its threads, its log lines tagged, no bar."""
    import torch

    from migfuse.training import progress

    torch.set_num_threads(threads)
    logging.basicConfig(level=level, format=f"%(levelname)s %(name)s [{config.stream}]: %(message)s", force=True)
    progress.SHOW_BARS = False
    return train_skeleton(prepared, out, config)
