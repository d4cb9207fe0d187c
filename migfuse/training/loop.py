"""The epoch loop every migfuse trainer runs: train, validate, keep the best, stop early, save, resume.

The trainer owns its model, data and steps; the loop owns the order of things and the run folder:

    for epoch in range(start, epochs + 1):
        seed_epoch(seed, epoch)                       # dropout, shuffling: the same on a resumed run
        record = {"epoch", "lr", **train_epoch(epoch, bar), **validate(epoch), "seconds"}
        run.log_metrics(record)                       # metrics.jsonl + metrics.csv
        better? -> run.save_best(...)                 # best.pt
        run.save_last(...)                            # last.pt (weights, optimizer, scheduler, loop state)
        early stop after `patience` epochs without a better `select.metric`
    curves.png, config.json "ended"

Resuming: when the run folder found a last.pt of the same settings, the model, optimizer, scheduler and
the loop's best/stale counters are restored from it and the loop goes on after its epoch. Because the
RNG is reseeded from (seed, epoch) at the start of every epoch, a resumed CPU run gives the same
metrics as an uninterrupted one (tests/test_training.py checks it).
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch

from migfuse.training.curves import plot_curves
from migfuse.training.progress import NonFiniteLoss, Progress, progress
from migfuse.training.run_folder import RunFolder

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Selection:
    """How the best epoch is chosen: `metric` (a key of the epoch record) is maximised or minimised.

    Ties go to the lower `tie_break` column when it is set (e.g. "val_loss"), else to the earlier epoch.
    An epoch whose record lacks `metric` (no validation set) always counts as better: the last one is kept
    (`fit` then says once that there is no best epoch, and marks none "(best)")."""

    metric: str = "val_loss"
    mode: str = "min"  # "min" or "max"
    tie_break: str | None = None

    def better(self, record: Mapping[str, Any], best: Mapping[str, Any] | None) -> bool:
        """Is `record` a better epoch than `best`? NaN / None never beat a number."""
        if best is None or self.metric not in record:
            return True
        new, old = _num(record.get(self.metric)), _num(best.get(self.metric))
        if math.isnan(old):
            return not math.isnan(new)
        if math.isnan(new):
            return False
        if new == old:
            if self.tie_break is None:
                return False
            return _num(record.get(self.tie_break)) < _num(best.get(self.tie_break))
        return new < old if self.mode == "min" else new > old


def _outputs_overflow(record: Mapping[str, Any]) -> bool:
    """A NaN/inf val_loss beside validation metrics that were computed: the model's outputs are not finite.
    (Every val_* NaN is a trainer's way of saying nothing was validated, not a broken model.)"""
    loss = record.get("val_loss")
    scored = [v for k, v in record.items() if k.startswith("val_") and k != "val_loss" and isinstance(v, float)]
    return isinstance(loss, float) and not math.isfinite(loss) and any(math.isfinite(v) for v in scored)


def _num(v: Any) -> float:
    return float("nan") if v is None else float(v)


@dataclass
class FitResult:
    """What `fit` did: the best epoch's record, every epoch's record, and how many epochs ran now."""

    best: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    epochs_run: int = 0
    stopped_early: bool = False

    @property
    def best_epoch(self) -> int:
        return int(self.best["epoch"])


def seed_epoch(seed: int, epoch: int) -> int:
    """Reseed torch's global RNG (all devices) for `epoch`; returns the seed used."""
    s = int(seed) * 100003 + int(epoch)
    torch.manual_seed(s)
    return s


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A CPU generator for shuffling / sampling in `epoch`, independent of the global RNG."""
    return torch.Generator().manual_seed(int(seed) * 100003 + int(epoch) + 7)


def fit(run: RunFolder, model: torch.nn.Module, optimizer: torch.optim.Optimizer, *, epochs: int,
        train_epoch: Callable[[int, Progress], Mapping[str, Any]],
        validate: Callable[[int], Mapping[str, Any]] | None = None, scheduler: Any = None,
        select: Selection = Selection(), patience: int = 0, seed: int = 0,
        steps_per_epoch: int | None = None, desc: str = "train") -> FitResult:
    """Run epochs `start..epochs` (start = 1, or after last.pt's epoch when resuming) in `run`.

    train_epoch(epoch, bar) trains one epoch (calling bar.step() per step, stepping `scheduler` itself
    per step or per epoch) and returns e.g. {"train_loss": 0.7}; validate(epoch) returns e.g.
    {"val_loss": .., "val_top1": ..}. The record also gets "epoch", "lr" (at the epoch's start) and
    "seconds". `patience` > 0 stops after that many epochs without a better `select.metric`.
    Without `validate` there is no best epoch: best.pt holds the last finished one (said once).
    Returns the best record (kept in best.pt) and the whole history (metrics.jsonl).
    Raises NonFiniteLoss (one line) when a step's loss is NaN/inf: that epoch is not saved."""
    best: dict[str, Any] | None = None
    stale, stopped, start = 0, False, 1
    state = run.resume_state
    if state is not None:
        model.load_state_dict(state["state_dict"])
        if state.get("optimizer"):
            optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state.get("scheduler"):
            scheduler.load_state_dict(state["scheduler"])
        loop = state.get("loop", {})
        best, stale, stopped = loop.get("best"), int(loop.get("stale", 0)), bool(loop.get("stopped", False))
        start = int(state["epoch"]) + 1
    history = run.keep_metrics_upto(start - 1)
    if stopped or start > epochs:
        log.info("%s: nothing to do (%s after epoch %d)", run.path,
                 "stopped early" if stopped else "finished", start - 1)
    ran = 0
    if validate is None and start <= epochs and not stopped:
        log.info("no validation set: no epoch is 'best'; best.pt holds the last finished epoch, like last.pt")
    try:
        with progress(desc, epochs, start, steps_per_epoch) as bar:
            for epoch in range(start, epochs + 1):
                if stopped:
                    break
                t0 = time.perf_counter()
                seed_epoch(seed, epoch)
                record: dict[str, Any] = {"epoch": epoch, "lr": optimizer.param_groups[0]["lr"]}
                # the peak lr as configured (schedulers keep it as "initial_lr"), for the NaN message
                bar.epoch_started(epoch, max(g.get("initial_lr", g["lr"]) for g in optimizer.param_groups))
                model.train()
                record.update(train_epoch(epoch, bar))
                if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
                    # the last step's update can break the weights after a finite loss: never save them
                    raise NonFiniteLoss.at("the weights became NaN or infinite", epoch, bar.lr)
                if validate is not None:
                    record.update(validate(epoch))
                    if _outputs_overflow(record):
                        raise NonFiniteLoss.at(f"the validation loss became {record['val_loss']} (the model's "
                                               "outputs overflow)", epoch, bar.lr)
                record["seconds"] = round(time.perf_counter() - t0, 3)
                run.log_metrics(record)
                bar.epoch_done(epoch)
                ran += 1
                improved = select.better(record, best)
                log.info("epoch %d/%d: %s%s", epoch, epochs,
                         ", ".join(f"{k}={v:.4g}" for k, v in record.items()
                                   if isinstance(v, float) and k != "seconds"),
                         " (best)" if improved and validate is not None else "")
                if improved:
                    best, stale = record, 0
                    run.save_best(model, epoch, record)
                else:
                    stale += 1
                    if patience and stale >= patience:
                        stopped = True
                        log.info("early stop after epoch %d: no better %s for %d epochs", epoch, select.metric,
                                 stale)
                run.save_last(model, epoch, optimizer, scheduler,
                              {"best": best, "stale": stale, "stopped": stopped})
                history.append(record)
    except BaseException:
        # the curves of the epochs that ran are still drawn, but never at the cost of the error that
        # stopped the run (a full disk would otherwise be reported as curves.png, not as the file it hit)
        if ran:
            try:
                _plot(history, run, select)
            except Exception as e:  # noqa: BLE001 - the first error is the one to report
                log.warning("curves.png not written: %s", e)
        raise
    if ran:
        _plot(history, run, select)
    run.finish()
    if best is None:
        raise RuntimeError("fit ran no epoch and resumed none")  # epochs >= 1 is checked by the trainers
    return FitResult(best=dict(best), history=history, epochs_run=ran, stopped_early=stopped)


def _plot(history: list[dict], run: Any, select: Any) -> None:
    plot_curves(history, run.path / "curves.png", select.metric, title=f"{run.trainer}: {run.path.name}")
