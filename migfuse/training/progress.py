"""One progress display for every trainer: a bar per run, the per-epoch log lines printed above it.

The bar counts training steps over the whole run (or epochs, when the trainer does not know its steps
per epoch). It is shown only when stderr is a terminal (tqdm's `disable=None`), so batch logs (SLURM,
CI, a pipe) get the plain log lines and no bar. While the bar is shown, console log handlers write
through `tqdm.write` (tqdm.contrib.logging), so the lines appear above the bar instead of breaking it.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm


#: False in worker processes that train beside each other (their bars would garble one terminal).
SHOW_BARS = True


class Progress:
    """The run's bar. `step()` after each training step, `epoch_done(epoch)` after each epoch."""

    def __init__(self, bar: tqdm, steps_per_epoch: int | None):
        self.bar, self.steps_per_epoch = bar, steps_per_epoch

    def step(self, n: int = 1, **postfix: Any) -> None:
        """Advance by `n` training steps; `postfix` (e.g. loss=0.42) is shown at the bar's end."""
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
    """A bar from the end of epoch `start_epoch - 1` to the end of `epochs`; quiet off a terminal."""
    if not SHOW_BARS:
        disable = True
    unit_total = epochs * steps_per_epoch if steps_per_epoch else epochs
    done = (start_epoch - 1) * steps_per_epoch if steps_per_epoch else start_epoch - 1
    with tqdm(total=unit_total, initial=done, desc=desc, unit="step" if steps_per_epoch else "epoch",
              disable=disable, dynamic_ncols=True) as bar:
        if bar.disable:  # not a terminal: the log lines go out as configured, no bar
            yield Progress(bar, steps_per_epoch)
        else:
            with logging_redirect_tqdm():  # console log lines are written above the bar
                yield Progress(bar, steps_per_epoch)
