"""One progress display for every trainer: a bar per run, the per-epoch log lines printed above it.

The bar counts training steps over the whole run (or epochs, when the trainer does not know its steps
per epoch). It is drawn only when stderr is a terminal; batch logs (SLURM, CI, nohup, a pipe) get a
progress line at intervals instead (`migfuse.progress_bar`, the rule of every long loop). While the bar
is shown, console log handlers write through `tqdm.write` (tqdm.contrib.logging), so the lines appear
above the bar instead of breaking it.

Every trainer reports each step's loss through `Progress.step(loss=...)`: a loss that is NaN or
infinite stops the run there (`NonFiniteLoss`, one line), before the epoch's weights are saved.
"""
from __future__ import annotations

import contextlib
import math
from typing import Any, Iterator

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from migfuse.errors import UserError
from migfuse.progress_bar import ProgressLines, progress_bar


#: False in worker processes that train beside each other (their bars would garble one terminal).
SHOW_BARS = True


class NonFiniteLoss(UserError):
    """A training loss (or the weights) became NaN or infinite: the run stops, keeping what earlier epochs
    saved."""

    @classmethod
    def at(cls, what: str, epoch: int | str, lr: float) -> "NonFiniteLoss":
        """The one line: `what` happened (e.g. "the loss became nan") in `epoch`, trained at peak `lr`."""
        return cls(f"training stopped: {what} at epoch {epoch}; likely causes: a learning rate too high (peak lr "
                   f"{lr:.3g}) or NaN/inf values in the inputs. Nothing of this epoch was saved; lower the lr "
                   "(--lr or --set lr=...) and rerun with --overwrite")


class Progress:
    """The run's bar. `epoch_started(epoch, lr)` before each epoch, `step(loss=...)` after each training
    step, `epoch_done(epoch)` after each epoch."""

    def __init__(self, bar: tqdm, steps_per_epoch: int | None):
        self.bar, self.steps_per_epoch = bar, steps_per_epoch
        self.epoch, self.lr, self.epoch_steps = 0, float("nan"), 0

    def epoch_started(self, epoch: int, lr: float) -> None:
        """Count the steps of `epoch` from here; `lr`: the run's peak learning rate (both for the NaN message)."""
        self.epoch, self.lr, self.epoch_steps = epoch, lr, 0

    def step(self, n: int = 1, **postfix: Any) -> None:
        """Advance by `n` training steps; `postfix` (e.g. loss=0.42) is shown at the bar's end.

        Raises NonFiniteLoss when `postfix["loss"]` is NaN or infinite."""
        self.epoch_steps += n
        loss = postfix.get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            raise NonFiniteLoss.at(f"the loss became {float(loss)}", f"{self.epoch}, step {self.epoch_steps}",
                                   self.lr)
        if self.steps_per_epoch:
            self.bar.update(n)
        if postfix:
            self.bar.set_postfix({k: f"{v:.4g}" if isinstance(v, float) else v for k, v in postfix.items()},
                                 refresh=False)

    def epoch_done(self, epoch: int) -> None:
        """Move the bar to the end of `epoch` (also when the trainer's step count was off)."""
        target = epoch * self.steps_per_epoch if self.steps_per_epoch else epoch
        if target > self.bar.n:
            self.bar.update(target - self.bar.n)


@contextlib.contextmanager
def progress(desc: str, epochs: int, start_epoch: int = 1, steps_per_epoch: int | None = None,
             disable: bool | None = None) -> Iterator[Progress]:
    """A bar from the end of epoch `start_epoch - 1` to the end of `epochs`; lines at intervals off a terminal."""
    if not SHOW_BARS:
        disable = True
    unit_total = epochs * steps_per_epoch if steps_per_epoch else epochs
    done = (start_epoch - 1) * steps_per_epoch if steps_per_epoch else start_epoch - 1
    with progress_bar(total=unit_total, initial=done, desc=desc, unit="step" if steps_per_epoch else "epoch",
                      disable=disable, dynamic_ncols=True) as bar:
        if bar.disable or isinstance(bar, ProgressLines):  # no bar drawn: the log lines go out as configured
            yield Progress(bar, steps_per_epoch)
        else:
            with logging_redirect_tqdm():  # console log lines are written above the bar
                yield Progress(bar, steps_per_epoch)
