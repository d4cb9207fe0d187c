"""Worker processes end with the command: a failing task stops the others, a killed parent leaves no orphan."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from migfuse.errors import UserError
from migfuse.worker_pool import run_tasks, usable_cpus


def task(kind: str, pid_file: str) -> int:
    """'sleep': note the pid, then sleep far longer than any test; 'fail': raise a UserError."""
    if kind == "bar":  # what a trainer in a worker does: a (hidden) progress bar, then work
        from tqdm import tqdm

        tqdm(total=1, disable=True).close()
        kind = "sleep"
    if kind == "fail":
        time.sleep(0.5)  # let the other task start first
        raise UserError("bad input in task 2")
    Path(pid_file).write_text(str(os.getpid()))
    time.sleep(600)
    return 1


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for init to reap it has ended)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return not stat.parent.parent.is_dir()  # no /proc (macOS): kill(pid, 0) is all we know


def test_results_come_in_job_order_or_as_finished():
    assert list(run_tasks(divmod, [(7, 2), (9, 4), (1, 1)], 2)) == [(3, 1), (2, 1), (1, 0)]
    assert sorted(run_tasks(divmod, [(7, 2), (9, 4)], 2, ordered=False)) == [(2, 1), (3, 1)]


def test_a_failing_task_raises_its_error_and_terminates_the_other_workers(tmp_path):
    pid_file = tmp_path / "sleeper.pid"

    def waited_for_the_sleeper(signum, frame):
        raise AssertionError("the pool waited for the sleeping task instead of terminating it")

    before = signal.signal(signal.SIGALRM, waited_for_the_sleeper)
    signal.alarm(60)
    try:
        with pytest.raises(UserError, match="bad input in task 2"):
            list(run_tasks(task, [("sleep", str(pid_file)), ("fail", "")], 2, ordered=False))
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, before)
    sleeper = int(pid_file.read_text())
    assert not _alive(sleeper)  # terminated and reaped, not waited for (it sleeps 600 s)


def test_workers_exit_when_the_command_is_killed(tmp_path):
    """SIGTERM (what `timeout`, `kill` and CI cancels send) ends the parent without any cleanup of
    its own; its workers notice within about a second and exit instead of running on as orphans."""
    pid_file = tmp_path / "sleeper.pid"
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_worker_pool import task
        from migfuse.worker_pool import run_tasks
        list(run_tasks(task, [("sleep", {str(pid_file)!r})], 1))
    """)
    parent = subprocess.Popen([sys.executable, "-c", script])
    try:
        for _ in range(600):  # the worker is up once it wrote its pid
            if pid_file.exists() and pid_file.read_text():
                break
            time.sleep(0.1)
        worker = int(pid_file.read_text())
        parent.send_signal(signal.SIGTERM)
        parent.wait(timeout=30)
        for _ in range(100):
            if not _alive(worker):
                break
            time.sleep(0.1)
        assert not _alive(worker), "the worker outlived its parent"
    finally:
        parent.kill()
        if pid_file.exists() and pid_file.read_text() and _alive(int(pid_file.read_text())):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)


def test_usable_cpus_is_the_affinity_mask_when_there_is_one():
    expected = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert usable_cpus() == expected


def test_a_terminated_worker_leaves_no_leaked_semaphore_warning(tmp_path):
    """tqdm's default lock is a multiprocessing semaphore: a worker terminated mid-task used to leave
    it registered, and the command ended with a resource_tracker "leaked semaphore" warning."""
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_worker_pool import task
        from migfuse.worker_pool import run_tasks
        if __name__ == "__main__":
            try:
                list(run_tasks(task, [("bar", {str(tmp_path / "w.pid")!r}), ("fail", "")], 2, ordered=False))
            except Exception as e:
                print("failed:", e)
    """)
    (tmp_path / "main.py").write_text(script)
    r = subprocess.run([sys.executable, str(tmp_path / "main.py")], capture_output=True, text=True, timeout=120)
    assert r.stdout.strip() == "failed: bad input in task 2"
    assert "leaked" not in r.stderr, r.stderr
