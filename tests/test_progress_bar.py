"""The one progress rule: a bar on a terminal; off one (a log, CI, nohup) a line at intervals, none for
short loops; the training loop and the long loops all go through it."""
from __future__ import annotations

import io
import re

from migfuse.progress_bar import ProgressLines, progress_bar


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_off_a_terminal_a_line_every_tenth_and_none_when_the_interval_has_not_passed():
    log = io.StringIO()
    for _ in progress_bar(range(50), desc="rows", unit="row", file=log, line_seconds=0):
        pass
    lines = log.getvalue().splitlines()
    assert [re.match(r"rows: (\d+)% (\d+)/50 \[", line).groups() for line in lines] == [
        (str(p), str(p // 2)) for p in range(10, 101, 10)]
    assert "\r" not in log.getvalue() and "|" not in log.getvalue()

    quiet = io.StringIO()
    with progress_bar(total=50, desc="rows", unit="row", file=quiet) as bar:  # 30 s never pass here
        bar.update(50)
    assert quiet.getvalue() == ""


def test_a_loop_of_unknown_length_prints_its_count_and_postfix():
    log = io.StringIO()
    with progress_bar(desc="clips", unit="clip", file=log, line_seconds=0) as bar:
        for _ in range(3):
            bar.update(1)
            bar.set_postfix_str("failed=1", refresh=False)
    assert [line.split(" [")[0] for line in log.getvalue().splitlines()] == ["clips: 1/?", "clips: 2/?", "clips: 3/?"]
    assert log.getvalue().splitlines()[-1].endswith("failed=1]")


def test_on_a_terminal_a_bar_and_disabled_nothing():
    term = Terminal()
    with progress_bar(total=3, desc="x", file=term) as bar:
        bar.update(3)
    assert not isinstance(bar, ProgressLines) and "\r" in term.getvalue() and "100%|" in term.getvalue()
    off = io.StringIO()
    with progress_bar(total=3, desc="x", file=off, disable=True, line_seconds=0) as bar:
        bar.update(3)
    assert off.getvalue() == ""


def test_the_training_loop_prints_progress_lines_off_a_terminal(tmp_path, monkeypatch, capsys):
    import migfuse.progress_bar as pb
    from migfuse.training.progress import progress

    monkeypatch.setattr(pb, "LINE_SECONDS", 0.0)
    with progress("fuse mg cmtf", epochs=2, steps_per_epoch=5) as bar:
        for epoch in (1, 2):
            bar.epoch_started(epoch, 1e-3)
            for _ in range(5):
                bar.step(loss=0.5)
            bar.epoch_done(epoch)
    err = capsys.readouterr().err.splitlines()
    counts = [re.match(r"fuse mg cmtf: (\d+)% (\d+)/10", line).group(2) for line in err]
    assert counts == [str(n) for n in range(1, 11)]
