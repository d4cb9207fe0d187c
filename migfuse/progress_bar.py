"""The one progress rule of every long loop (training, extraction, prepare, views, synth).

    for item in progress_bar(items, desc="view video", unit="batch"): ...
    with progress_bar(total=n, desc="skeletons", unit="video") as bar: ... bar.update(1)

On a terminal: a tqdm bar. Anywhere else (a log file, CI, nohup, a pipe): no bar, but a plain line
such as `skeletons: 40% 143/359 [02:10<03:15, 1.1video/s]` at intervals: when at least
`LINE_SECONDS` (30 s) have passed since the last line and the count moved by at least
`LINE_FRACTION` (10 %) of the total, whichever comes later (a loop of unknown length: every 30 s),
plus a last line at the end when any line was printed. Loops shorter than 30 s print nothing.
`disable=True` (e.g. `progress=False`, or worker processes) hides both.
"""
from __future__ import annotations

import sys
import time
from typing import Any, Iterable, TextIO

from tqdm import tqdm

#: Off a terminal: the least time between two progress lines, and the least progress (share of the total).
LINE_SECONDS = 30.0
LINE_FRACTION = 0.10


def progress_bar(iterable: Iterable[Any] | None = None, *, total: int | float | None = None, desc: str = "",
                 unit: str = "it", disable: bool | None = None, file: TextIO | None = None,
                 line_seconds: float | None = None, **kwargs: Any) -> tqdm:
    """A tqdm bar on a terminal, `ProgressLines` elsewhere, a silent tqdm with `disable=True`.

    `kwargs` go to tqdm (leave, dynamic_ncols...). `line_seconds` overrides LINE_SECONDS (tests)."""
    stream = file if file is not None else sys.stderr
    if disable:
        return tqdm(iterable, total=total, desc=desc, unit=unit, disable=True, file=stream, **kwargs)
    if _is_terminal(stream):
        return tqdm(iterable, total=total, desc=desc, unit=unit, disable=False, file=stream, **kwargs)
    return ProgressLines(iterable, total=total, desc=desc, unit=unit, file=stream,
                         line_seconds=LINE_SECONDS if line_seconds is None else line_seconds, **kwargs)


def _is_terminal(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or not a real file
        return False


class ProgressLines(tqdm):
    """tqdm that, instead of redrawing a bar, writes a whole line at intervals (module docstring)."""

    def __init__(self, *args: Any, line_seconds: float = LINE_SECONDS, **kwargs: Any) -> None:
        self._line_seconds = line_seconds
        self._last_time = time.monotonic()
        self._last_n: float = 0
        self._printed = False
        self._closing = False
        kwargs.pop("dynamic_ncols", None)
        # tqdm calls display() at most every `mininterval`; the throttle below decides what is printed
        super().__init__(*args, mininterval=min(1.0, line_seconds), bar_format="{l_bar}{r_bar}", **kwargs)
        self._last_n = self.n  # a resumed count (initial=) is not progress

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        if self._closing or msg is not None:
            return True
        now = time.monotonic()
        moved = self.n - self._last_n
        enough = (moved >= LINE_FRACTION * self.total) if self.total else moved > 0
        if now - self._last_time >= self._line_seconds and enough:
            self._write_line()
        return True

    def clear(self, *args: Any, **kwargs: Any) -> None:
        """Nothing to clear: a written line stays (tqdm.write calls this before a log line)."""

    def _write_line(self) -> None:
        line = " ".join(self.format_meter(**self.format_dict).replace("|", " ").split())
        self.fp.write(line + "\n")
        self.fp.flush()
        self._last_time, self._last_n, self._printed = time.monotonic(), self.n, True

    def close(self) -> None:
        if not self._closing and not self.disable:
            if self._printed and self.n != self._last_n:
                self._write_line()  # the end, when the log shows the way there
            self._closing = True
            self.fp = _Discard()  # tqdm's own closing newline / carriage return are not lines
        super().close()


class _Discard:
    def write(self, text: str) -> None:
        pass

    def flush(self) -> None:
        pass
