"""The run folder every migfuse trainer writes, with its rules: locked, resumed or refused, atomic.

    with RunFolder.open(out, "fuse", cfg, provenance, overwrite=False, resumable=("epochs",)) as run:
        run.resume_state       # last.pt of an earlier run of the same settings, or None (fresh start)
        ...                    # run.log_metrics(record), run.save_best(...), run.save_last(...)

Files (the same for every trainer):
  config.json    the resolved settings at the top level (so the file is itself a valid --config, and
                 `json.load(...)["lr"]` reads a setting), plus "run": {"trainer", "provenance": the
                 inputs, "versions": migfuse/torch/python, "git_commit", "started", "resumed": [times],
                 "ended", "command"}
  metrics.jsonl  one JSON object per finished epoch; metrics.csv the same as a table
  curves.png     loss, validation metric and learning rate per epoch (when matplotlib is installed)
  best.pt        the best epoch (checkpoint.py format, without optimizer state)
  last.pt        the last finished epoch, with optimizer and scheduler: what a rerun resumes from
  train.log      the log of every attempt (appended line by line, `atomic_write.append_text`)
  .lock          held while a trainer works in the folder (filelock)

Rules: only one trainer at a time (a second one is refused at once); a folder holding a run of other
settings or inputs is refused unless `overwrite` (which first deletes that run's files); the same
settings resume from last.pt (the settings in `resumable`, e.g. epochs or workers, may change, but not to
fewer epochs than the run was started with, which would bend its lr schedule; a run of
an earlier release is read in today's words, `recipe.upgrade_settings`); every
file is replaced atomically (`atomic_write`; metrics.jsonl too, rewritten whole each epoch), so a kill
leaves the previous consistent state, and a full disk ends in one line naming the file.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Mapping

from filelock import FileLock, Timeout

from migfuse.atomic_write import append_text, write_text
from migfuse.errors import UserError
from migfuse.training.checkpoint import (load_checkpoint, make_checkpoint, plain,
                                         save_checkpoint, versions)
from migfuse.training.recipe import upgrade_settings

log = logging.getLogger(__name__)

#: Files a run writes; `overwrite` deletes these (and the trainer's `extra_files`), nothing else.
def settings_of(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The resolved settings of a run folder's config.json (everything but its "run" record)."""
    return {k: v for k, v in doc.items() if k != "run"}


def run_record(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The "run" record of a run folder's config.json: trainer, provenance, versions, times, command."""
    return dict(doc["run"])


RUN_FILES = ("config.json", "metrics.jsonl", "metrics.csv", "curves.png", "best.pt", "last.pt", "train.log")
#: Files that hold results: a folder with none of them has nothing to resume or to protect.
RESULT_FILES = ("best.pt", "last.pt", "metrics.jsonl")
LOCK_NAME = ".lock"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def git_commit() -> str | None:
    """The commit of the migfuse source tree when it is a git checkout, else None."""
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return None
    try:
        r = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return (r.stdout.strip() or None) if r.returncode == 0 else None


def _first_difference(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> str | None:
    for key in list(old) + [k for k in new if k not in old]:
        a, b = old.get(key, "<unset>"), new.get(key, "<unset>")
        if isinstance(a, dict) and isinstance(b, dict):
            diff = _first_difference(a, b, f"{prefix}{key}.")
            if diff:
                return diff
        elif a != b:
            return f"{prefix}{key}={a!r}, not {b!r}"
    return None


class RunFolder:
    """An open, locked run folder (use `RunFolder.open` as a context manager)."""

    def __init__(self, path: Path, trainer: str, config: dict[str, Any], provenance: dict[str, Any],
                 lock: FileLock, resume_state: dict[str, Any] | None):
        self.path, self.trainer, self.config, self.provenance = path, trainer, config, provenance
        self.lock = lock
        self.resume_state = resume_state
        self._log_handler: logging.Handler | None = None

    # ----- opening: lock, then resume / refuse / overwrite ---------------------------------------------
    @classmethod
    def open(cls, path: str | Path, trainer: str, config: Mapping[str, Any], provenance: Mapping[str, Any],
             *, overwrite: bool = False, resumable: Iterable[str] = ("epochs",),
             extra_files: Iterable[str] = ()) -> "RunFolder":
        """Lock `path` and decide: fresh run, resume (same settings), refuse, or overwrite.

        `config` and `provenance` must be JSON values. UserError (one line) when another trainer holds
        the folder, when it holds a run of other settings/inputs (unless `overwrite`), or when its
        config.json or last.pt is damaged or unsafe."""
        path = Path(path)
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot create run folder {path} ({e.strerror}); choose another --out") from None
        if not path.is_dir():
            raise UserError(f"{path} is a file, not a run folder; choose another --out")
        config, provenance = plain(dict(config)), plain(dict(provenance))
        lock = FileLock(str(path / LOCK_NAME))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            raise UserError(f"run folder {path} is in use by another training run (lock {path / LOCK_NAME}); "
                            f"wait for it to finish or choose another --out") from None
        except OSError as e:
            raise UserError(f"cannot write in run folder {path} ({e.strerror or e}); choose another --out") from None
        try:
            state = cls._decide(path, trainer, config, provenance, overwrite, tuple(resumable), tuple(extra_files))
        except BaseException:
            lock.release()
            raise
        run = cls(path, trainer, config, provenance, lock, state)
        run._write_config(resumed=state is not None)
        return run

    @staticmethod
    def _decide(path: Path, trainer: str, config: dict, provenance: dict, overwrite: bool,
                resumable: tuple[str, ...], extra_files: tuple[str, ...]) -> dict[str, Any] | None:
        cfg_path, last = path / "config.json", path / "last.pt"
        present = [n for n in RUN_FILES + extra_files if (path / n).exists()]
        if overwrite:
            for name in present:
                (path / name).unlink()
            if present:
                log.info("--overwrite: deleted the earlier run's %s in %s", ", ".join(present), path)
            return None
        if not any(n in present for n in RESULT_FILES):
            return None  # nothing trained yet (an attempt that failed before its first epoch): start afresh
        if not cfg_path.is_file():
            raise UserError(f"{path} holds {', '.join(present)} but no config.json of a migfuse run; choose another "
                            f"--out, or pass --overwrite to delete them")
        try:
            old = json.loads(cfg_path.read_text(encoding="utf-8"))
            old_run = old["run"]
            # a run of an earlier release resumes: its settings in today's words (balance "weights" is "loss";
            # device and precision are command options now, and a run may resume on another device)
            old_cfg, notes = upgrade_settings(settings_of(old), config)
            old_prov, _ = upgrade_settings(old_run.get("provenance", {}), provenance)  # the skeleton's has balance
        except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError):
            raise UserError(f"{cfg_path} is damaged or not a migfuse run file; pass --overwrite to start the run "
                            f"again, or choose another --out") from None
        if old_run.get("trainer") != trainer:
            raise UserError(f"{path} holds a {old_run.get('trainer')!r} run, not {trainer!r}; choose another --out, or "
                            f"pass --overwrite to replace it")
        if notes:
            log.warning("%s was written by an earlier release: %s", cfg_path, "; ".join(notes))
        strip = lambda c: {k: v for k, v in c.items() if k not in resumable}  # noqa: E731
        diff = _first_difference(strip(old_cfg), strip(config))
        what = "settings"
        if diff is None:  # provenance added after opening (update_provenance) is not compared
            diff, what = _first_difference({k: old_prov.get(k, "<unset>") for k in provenance}, provenance), "inputs"
        if diff is not None:
            raise UserError(f"{path} holds a run with other {what} ({diff}); rerun with the same settings to resume, "
                            f"choose another --out, or pass --overwrite to replace it")
        if not last.exists():
            return None  # the earlier attempt stopped before its first epoch ended: start again
        before, now = old_cfg.get("epochs"), config.get("epochs")
        if isinstance(before, int) and isinstance(now, int) and now < before:
            # the lr schedule spans the epochs the run was started with: fewer would bend it mid-run
            raise UserError(f"{path} holds a run of epochs={before}; resuming it with fewer (--epochs {now}) would "
                            f"change its learning-rate schedule: rerun with --epochs {before} or more, or pass "
                            f"--overwrite to train {now} epochs from scratch")
        state = load_checkpoint(last)
        log.info("resuming %s after epoch %d", path, state["epoch"])
        return state

    # ----- files ---------------------------------------------------------------------------------------
    def _write_config(self, resumed: bool) -> None:
        old: dict[str, Any] = {}
        if resumed:  # keep the first start time; a fresh start forgets an earlier attempt's file
            try:
                old = json.loads((self.path / "config.json").read_text(encoding="utf-8"))["run"]
            except (OSError, ValueError, KeyError, TypeError):
                old = {}
        run = {"trainer": self.trainer, "provenance": self.provenance,
               "versions": versions(), "git_commit": git_commit(),
               "started": old.get("started", _now()), "resumed": old.get("resumed", []), "ended": None,
               "command": sys.argv[:]}
        if old:
            run["resumed"] = [*run["resumed"], _now()]
        doc = {**self.config, "run": run}
        self._config_doc = doc
        write_text(self.path / "config.json", json.dumps(doc, indent=2) + "\n")

    def update_provenance(self, extra: Mapping[str, Any]) -> None:
        """Add what the trainer learned after opening (shapes, sample counts...) to config.json and to the
        provenance of the checkpoints still to be written. Only the provenance given to `open` decides
        whether a rerun resumes."""
        self.provenance = {**self.provenance, **plain(dict(extra))}
        self._config_doc["run"]["provenance"] = self.provenance
        write_text(self.path / "config.json", json.dumps(self._config_doc, indent=2) + "\n")

    def finish(self) -> None:
        """Record the end time in config.json."""
        self._config_doc["run"]["ended"] = _now()
        write_text(self.path / "config.json", json.dumps(self._config_doc, indent=2) + "\n")

    def metrics(self) -> list[dict[str, Any]]:
        """The rows of metrics.jsonl (one per finished epoch)."""
        p = self.path / "metrics.jsonl"
        if not p.is_file():
            return []
        try:
            return [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
        except (ValueError, UnicodeDecodeError):
            raise UserError(f"{p} is damaged (not one JSON object per line); pass --overwrite to start the run "
                            f"again, or choose another --out") from None

    def keep_metrics_upto(self, epoch: int) -> list[dict[str, Any]]:
        """Drop rows after `epoch` (an epoch whose last.pt was never written is redone); return the rest."""
        rows = [r for r in self.metrics() if r.get("epoch", 0) <= epoch]
        self._write_metrics(rows)
        return rows

    def log_metrics(self, record: Mapping[str, Any]) -> None:
        """Append one epoch's record to metrics.jsonl and metrics.csv (both rewritten atomically)."""
        self._write_metrics([*self.metrics(), plain(dict(record))])

    def _write_metrics(self, rows: list[dict[str, Any]]) -> None:
        write_text(self.path / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
        columns: list[str] = []
        for r in rows:
            columns += [k for k in r if k not in columns]
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
        write_text(self.path / "metrics.csv", buf.getvalue())

    def save_last(self, model: Any, epoch: int, optimizer: Any, scheduler: Any, loop: Mapping[str, Any]) -> None:
        """last.pt: everything a rerun needs to go on after `epoch`."""
        save_checkpoint(make_checkpoint(self.trainer, model, epoch, self.config, self.provenance, optimizer,
                                        scheduler, loop), self.path / "last.pt")

    def save_best(self, model: Any, epoch: int, record: Mapping[str, Any]) -> None:
        """best.pt: the weights of `epoch` (no optimizer state); meta["migfuse"] = provenance + "epoch",
        "metrics" (the epoch's record) and its val_* values at the top (e.g. "val_top1")."""
        prov = {**self.provenance, "epoch": epoch, "metrics": dict(record),
                **{k: v for k, v in record.items() if k.startswith("val_")}}
        save_checkpoint(make_checkpoint(self.trainer, model, epoch, self.config, prov, loop={"best": record}),
                        self.path / "best.pt")

    # ----- train.log and closing -----------------------------------------------------------------------
    def __enter__(self) -> "RunFolder":
        """Start appending the `migfuse` log (INFO and up) to train.log."""
        handler = _AppendHandler(self.path / "train.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handler.setLevel(logging.INFO)
        pkg = logging.getLogger("migfuse")
        self._level_before = pkg.level
        if pkg.level == logging.NOTSET or pkg.level > logging.INFO:
            pkg.setLevel(logging.INFO)  # train.log gets INFO even when the caller configured no logging
        pkg.addHandler(handler)
        self._log_handler = handler
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Stop logging to train.log and release the lock."""
        if self._log_handler is not None:
            pkg = logging.getLogger("migfuse")
            pkg.removeHandler(self._log_handler)
            pkg.setLevel(self._level_before)
            self._log_handler.close()
            self._log_handler = None
        if self.lock.is_locked:
            self.lock.release()



class _AppendHandler(logging.Handler):
    """Appends each record to train.log as one whole line (`append_text`). A failed append (full disk)
    raises its one-line UserError at the logging call, once: logging's own FileHandler would print a
    "--- Logging error ---" traceback instead and go on writing half lines."""

    def __init__(self, path: Path):
        super().__init__()
        self.path = path
        self.failed = False

    def emit(self, record: logging.LogRecord) -> None:
        if self.failed:
            return
        line = self.format(record) + "\n"
        try:
            append_text(self.path, line)
        except UserError:
            self.failed = True
            raise
