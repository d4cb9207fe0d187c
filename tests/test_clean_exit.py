"""A command that succeeded ends without a traceback: Zarr's I/O thread is stopped before the
interpreter exits (its own exit hook waits 0.2 s, then closes a loop that may still be running)."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from migfuse.synth.tokens import write_synthetic

ROOT = Path(__file__).resolve().parents[1]


def _python(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env,
                          timeout=300)


def test_zarrs_exit_hook_fails_on_a_busy_loop_and_close_zarr_io_does_not():
    """The cause, reproduced: the I/O thread is busy for longer than the hook's 0.2 s wait."""
    r = _python("""
        import asyncio, time
        import zarr.core.sync as sync
        from migfuse.data_cache.cache import close_zarr_io

        async def busy():
            time.sleep(0.6)  # a read that blocks the loop's thread

        for stop in (sync.cleanup_resources, close_zarr_io):
            asyncio.run_coroutine_threadsafe(busy(), sync._get_loop())
            time.sleep(0.05)
            try:
                stop()
                print(stop.__name__, "ok", sync.loop[0], sync.iothread[0])
            except RuntimeError as e:
                print(stop.__name__, "failed:", e)
                time.sleep(1)
                close_zarr_io()  # tidy up: the stop asked for above has happened by now
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["cleanup_resources failed: Cannot close a running event loop",
                                     "close_zarr_io ok None None"]


def test_close_zarr_io_without_zarr_and_twice_is_harmless():
    r = _python("""
        import sys
        from migfuse.data_cache.cache import close_zarr_io
        close_zarr_io(); print("zarr" in sys.modules)
        import zarr, numpy as np
        z = zarr.create_array(store={}, shape=(2,), dtype="f4"); z[:] = np.ones(2)
        close_zarr_io(); close_zarr_io()
        z[:] = np.zeros(2); print(float(z[:].sum()))  # Zarr starts a new loop when used again
    """)
    assert r.returncode == 0 and r.stdout.split() == ["False", "0.0"], r.stderr


def test_a_finished_fuse_train_exits_0_without_a_traceback(tmp_path):
    prepared, cache = write_synthetic(tmp_path / "s", n_videos=4, clips_per_video=4, tracks=("video", "joint", "bone"))
    r = subprocess.run([sys.executable, "-m", "migfuse", "fuse", "train", "--cache", str(cache), "--data",
                        str(prepared), "--task", "mg", "--out", str(tmp_path / "run"), "--epochs", "1"],
                       capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300,
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr and "Error" not in r.stderr, r.stderr
    assert r.stdout.startswith("best epoch 1: ")
