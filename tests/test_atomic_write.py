"""Every file migfuse writes outside the token cache is whole or absent, and a full disk, a file-size
limit or a read-only folder ends in one line naming the file and the fix: the helper itself, then
each command's writers under a simulated full disk, then real runs under `ulimit -f`."""
from __future__ import annotations

import errno
import json
import os
import re
import resource
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from migfuse import atomic_write
from migfuse.atomic_write import append_text, is_leftover, open_atomic, write_error, write_text
from migfuse.cli import app
from migfuse.datasets import classes
from migfuse.datasets.manifest import Manifest
from migfuse.errors import UserError
from migfuse.fuse.scores import Scores
from migfuse.synth.tokens import write_synthetic

ROOT = Path(__file__).resolve().parents[1]
FULL = "no space left on the device holding it: free space or write elsewhere (No space left on device)"
TMP_NAME = re.compile(r"\.(.+)\.\d+\.tmp(\.[^.]*)?")


def final_name(path: str) -> str:
    """The name a file being written will have: its own, or the final name of a temporary file."""
    name = Path(path).name
    m = TMP_NAME.fullmatch(name)
    return m.group(1) + (m.group(2) or "") if m else name


@pytest.fixture
def disk_full(monkeypatch):
    """`disk_full(name, after=0, nth=1)`: the `nth` write session of the file `name` fails with ENOSPC
    once `after` bytes of it are on the disk (every other file is written normally)."""
    real = atomic_write._raw_write

    def arm(name: str, after: int = 0, nth: int = 1) -> None:
        sessions: list[list] = []  # [open file, bytes written] (the file kept, so no id is reused)

        def write(file, data):
            if final_name(file.name) == name:
                if not sessions or sessions[-1][0] is not file:
                    sessions.append([file, 0])
                n = len(memoryview(data).cast("B"))
                if len(sessions) >= nth and sessions[-1][1] + n > after:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                sessions[-1][1] += n
            return real(file, data)
        monkeypatch.setattr(atomic_write, "_raw_write", write)

    return arm


def leftovers(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.rglob("*") if is_leftover(p.name))


def one_line_error(result, name: str, fix: str = FULL) -> str:
    """The CLI ended in exit status 2 and one line naming `name` and the fix, without a traceback."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1, result.stderr
    line = result.stderr.strip()
    assert line.startswith("error: cannot write ") and f"{name}: {fix}" in line, line
    return line


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


# ----- the helper ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("after", [0, 3, 5000])
def test_a_full_disk_leaves_the_previous_file_intact_and_no_temporary_file(tmp_path, disk_full, after):
    path = tmp_path / "metrics.json"
    write_text(path, "old\n")
    disk_full("metrics.json", after=after)
    with pytest.raises(UserError) as e:
        write_text(path, "x" * 10_000)
    assert str(e.value) == f"cannot write {path}: {FULL}; nothing was written under that name"
    assert path.read_text() == "old\n" and os.listdir(tmp_path) == ["metrics.json"]


def test_a_writer_that_wraps_the_disk_error_still_ends_as_the_disk_error(tmp_path, disk_full):
    torch = pytest.importorskip("torch")
    path = tmp_path / "best.pt"
    disk_full("best.pt", after=300)  # torch.save turns the failed write into "RuntimeError: unexpected pos"
    with pytest.raises(UserError, match=re.escape(f"cannot write {path}: {FULL}")):
        with open_atomic(path, "wb") as f:
            torch.save({"w": torch.zeros(1000)}, f)
    assert os.listdir(tmp_path) == []


def test_a_failure_that_is_not_the_disk_keeps_its_type_and_leaves_nothing(tmp_path):
    path = tmp_path / "a.csv"
    write_text(path, "old")
    with pytest.raises(ZeroDivisionError):
        with open_atomic(path) as f:
            f.write("half")
            1 / 0
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["a.csv"]


def test_an_os_error_that_is_not_about_the_disk_keeps_its_traceback_and_leaves_nothing(tmp_path, monkeypatch):
    def encoder_bug(file, data):
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(atomic_write, "_raw_write", encoder_bug)
    with pytest.raises(OSError, match="Invalid argument") as e:
        write_text(tmp_path / "a.json", "{}")
    assert not isinstance(e.value, UserError) and os.listdir(tmp_path) == []


def test_text_binary_and_numpy_writes_round_trip(tmp_path):
    with open_atomic(tmp_path / "t.csv", "w", newline="") as f:
        f.write("é,1\r\n")
    assert (tmp_path / "t.csv").read_bytes() == "é,1\r\n".encode()
    with open_atomic(tmp_path / "a.npz", "wb") as f:
        np.savez(f, a=np.arange(3))
    assert np.load(tmp_path / "a.npz")["a"].tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="mode 'w' or 'wb'"):
        with open_atomic(tmp_path / "x", "a"):
            pass


def test_a_failed_append_is_cut_back_so_earlier_lines_stay_whole(tmp_path, disk_full):
    log = tmp_path / "train.log"
    append_text(log, "line 1\n")
    disk_full("train.log", after=4)
    with pytest.raises(UserError, match=re.escape(f"cannot write {log}: {FULL}")):
        append_text(log, "line 2 is long\n")
    assert log.read_text() == "line 1\n"


@pytest.mark.parametrize("code, fix", [
    (errno.EFBIG, "it would pass the largest file size allowed here (the shell's `ulimit -f`, or the file system's "
                  "limit): raise the limit (ulimit -f unlimited) or write to another disk"),
    (errno.EDQUOT, "the disk quota is used up on the device holding it: free space or write elsewhere"),
    (errno.EROFS, "the file system is read-only: choose another path"),
    (errno.EACCES, "permission denied: choose a path you may write to"),
    (errno.ENAMETOOLONG, "the name is too long: choose a shorter path"),
    (errno.ESPIPE, "check the disk and the path, or write elsewhere"),
])
def test_each_errno_names_its_fix(code, fix):
    e = write_error(OSError(code, os.strerror(code)), Path("out/x.npz"))
    assert str(e) == f"cannot write out/x.npz: {fix} ({os.strerror(code)}); nothing was written under that name"


def test_a_parent_that_is_a_file_is_one_line(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(UserError, match=re.escape(f"cannot use {tmp_path / 'f' / 'sub'}: a part of the path is a file, "
                                                  f"not a folder: choose another path (Not a directory)")):
        write_text(tmp_path / "f" / "sub" / "a.json", "{}")


def test_a_name_near_the_length_limit_is_written_through_a_shorter_temporary_name(tmp_path):
    path = tmp_path / ("a" * 250 + ".json")
    write_text(path, "{}")
    assert os.listdir(tmp_path) == [path.name] and path.read_text() == "{}"


def test_leftover_names_are_only_temporary_files():
    assert is_leftover(".best.123.tmp.pt") and is_leftover(".metrics.9.tmp")
    assert not is_leftover("best.pt") and not is_leftover(".lock") and not is_leftover("demo.json")


# ----- every command's writers under a full disk ----------------------------------------------------
@pytest.fixture(scope="module")
def tokens(tmp_path_factory):
    from migfuse.data_cache.views import default_views

    prepared, cache = write_synthetic(tmp_path_factory.mktemp("tok"), n_videos=4, clips_per_video=4, num_classes=4,
                                      tracks=("video",), seed=3)
    default_views(cache)
    config = prepared.parent / "c.json"
    config.write_text(json.dumps({"epochs": 2, "batch_size": 8, "patience": 2, "threads": 1,
                                  "inputs": {"video": "views/video"}}))
    return prepared, cache, config


def _train(tokens, run):
    prepared, cache, config = tokens
    return invoke("fuse", "train", "--cache", cache, "--data", prepared, "--task", "mg", "--head", "video",
                  "--config", config, "--out", run)


@pytest.fixture(scope="module")
def trained(tokens, tmp_path_factory):
    run = tmp_path_factory.mktemp("run") / "run"
    r = _train(tokens, run)
    assert r.exit_code == 0, r.output
    return run


RUN_FILES = ["config.json", "train.log", "metrics.jsonl", "metrics.csv", "best.pt", "last.pt", "curves.png",
             "splits.json", "summary.json"]


@pytest.mark.parametrize("name", RUN_FILES)
def test_fuse_train_on_a_full_disk_is_one_line_for_every_file_it_writes(tokens, tmp_path, disk_full, name):
    pytest.importorskip("matplotlib")
    run = tmp_path / "run"
    disk_full(name, after=10)
    line = one_line_error(_train(tokens, run), str(run / name))
    assert "nothing was written under that name" in line
    assert leftovers(run) == []
    # the run's files hold what they held before the failed write: here, no finished epoch
    empty = {"train.log": "", "metrics.jsonl": "", "metrics.csv": "\n"}  # written empty at the start
    if name in empty:
        assert (run / name).read_text() == empty[name]
    else:
        assert not (run / name).exists()
    log = (run / "train.log").read_text() if (run / "train.log").exists() else ""
    assert log == "" or log.endswith("\n")  # whole lines only, whatever failed


def test_a_full_disk_at_the_second_epoch_keeps_the_first_epochs_metrics_and_the_rerun_resumes(tokens, tmp_path,
                                                                                               disk_full, monkeypatch):
    run = tmp_path / "run"
    disk_full("metrics.jsonl", after=0, nth=3)  # written empty at the start, then after each epoch
    one_line_error(_train(tokens, run), str(run / "metrics.jsonl"))
    assert [json.loads(row)["epoch"] for row in (run / "metrics.jsonl").read_text().splitlines()] == [1]
    monkeypatch.undo()
    r = _train(tokens, run)
    assert r.exit_code == 0, r.output
    assert [json.loads(row)["epoch"] for row in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_a_disk_full_for_every_file_names_the_file_that_stopped_training_not_the_curves(tokens, tmp_path,
                                                                                        monkeypatch):
    pytest.importorskip("matplotlib")
    run, real, sessions = tmp_path / "run", atomic_write._raw_write, []

    def write(file, data):  # metrics.jsonl fails at its third write session, curves.png always
        name = final_name(file.name)
        if name == "metrics.jsonl" and (not sessions or sessions[-1] is not file):
            sessions.append(file)
        if name == "curves.png" or (name == "metrics.jsonl" and len(sessions) >= 3):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(file, data)

    monkeypatch.setattr(atomic_write, "_raw_write", write)
    one_line_error(_train(tokens, run), str(run / "metrics.jsonl"))
    assert "curves.png not written" in (run / "train.log").read_text()


@pytest.mark.parametrize("name", ["metrics.json", "per_class.csv", "confusion.png", "per_class.png"])
def test_fuse_eval_on_a_full_disk_is_one_line_and_keeps_the_earlier_evaluation(trained, disk_full, name):
    pytest.importorskip("matplotlib")
    assert invoke("fuse", "eval", trained, "--split", "validation").exit_code == 0
    out = trained / "eval_validation"
    before = (out / name).read_bytes()
    disk_full(name, after=10)
    one_line_error(invoke("fuse", "eval", trained, "--split", "validation"), str(out / name))
    assert (out / name).read_bytes() == before and leftovers(trained) == []


def test_fuse_predict_on_a_full_disk_leaves_no_npz(trained, tmp_path, disk_full):
    disk_full("s.npz", after=100)
    one_line_error(invoke("fuse", "predict", trained, "--split", "test", "--out", tmp_path / "s.npz"),
                   str(tmp_path / "s.npz"))
    assert os.listdir(tmp_path) == []


@pytest.fixture(scope="module")
def mg_scores(tokens, tmp_path_factory) -> Path:
    """Scores of the 32 micro-gesture classes for the test split of the synthetic manifest."""
    prepared = tokens[0]
    ids = Manifest.load(prepared).ids("test")
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("scores") / "s.npz"
    Scores(ids, rng.dirichlet(np.ones(classes.NUM_CLASSES), len(ids)).astype(np.float32), "mg", "test",
           list(classes.CLASS_NAMES)).save(path)
    return path


@pytest.mark.parametrize("out, name", [("prediction.zip", "prediction.zip"), ("p.csv", "p.zip"), ("p.csv", "p.csv")])
def test_export_on_a_full_disk_leaves_no_zip_and_no_csv(tokens, mg_scores, tmp_path, disk_full, out, name):
    disk_full(name, after=20)
    one_line_error(invoke("export", "miga2025", mg_scores, "--data", tokens[0], "--out", tmp_path / out),
                   str(tmp_path / name))
    assert not (tmp_path / name).exists() and leftovers(tmp_path) == []


def test_fuse_late_on_a_full_disk_keeps_the_earlier_fused_file(mg_scores, tmp_path, disk_full):
    out = tmp_path / "fused.npz"
    assert invoke("fuse", "late", mg_scores, mg_scores, "--out", out).exit_code == 0
    before = out.read_bytes()
    disk_full("fused.npz", after=100)
    one_line_error(invoke("fuse", "late", mg_scores, mg_scores, "--weights", "1,2", "--out", out), str(out))
    assert out.read_bytes() == before and os.listdir(tmp_path) == ["fused.npz"]


@pytest.mark.parametrize("name", ["metrics.json", "per_class.csv", "confusion.png"])
def test_score_on_a_full_disk_is_one_line(tokens, mg_scores, tmp_path, disk_full, name):
    if name.endswith(".png"):
        pytest.importorskip("matplotlib")
    disk_full(name, after=10)
    one_line_error(invoke("score", mg_scores, "--data", tokens[0], "--out", tmp_path / "o"), str(tmp_path / "o" / name))
    assert not (tmp_path / "o" / name).exists() and leftovers(tmp_path) == []


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    pytest.importorskip("av")
    root = tmp_path_factory.mktemp("ds") / "ds"
    r = invoke("data", "synth", "--out", root, "--videos", "2", "--clips-per-video", "2", "--dataset-layout", "oulu")
    assert r.exit_code == 0, r.output
    return root


@pytest.mark.parametrize("name", ["manifest.csv", "videos.csv", "prepare_report.json", "0026.npy", "0026.mask.npy",
                                  "0026.json"])
def test_data_prepare_on_a_full_disk_is_one_line_for_every_file(dataset, tmp_path, disk_full, name):
    out = tmp_path / "prep"
    disk_full(name, after=10)
    line = one_line_error(invoke("data", "prepare", "--root", dataset, "--out", out), name)
    assert str(out) in line and leftovers(out) == []
    assert not list(out.rglob(name))
    if name in ("0026.npy", "0026.mask.npy"):  # no record describes arrays that are not whole
        assert not (out / "skeletons" / "0026.json").exists()


def test_data_export_pyskl_on_a_full_disk_leaves_no_pickle(dataset, tmp_path, disk_full):
    prep = tmp_path / "prep"
    assert invoke("data", "prepare", "--root", dataset, "--out", prep).exit_code == 0
    disk_full("a.pkl", after=50)
    one_line_error(invoke("data", "export-pyskl", prep, tmp_path / "a.pkl"), str(tmp_path / "a.pkl"))
    assert not (tmp_path / "a.pkl").exists() and leftovers(tmp_path) == []


@pytest.mark.parametrize("name", ["labels_20200831.csv", "ground_truth.json", "000000000003_keypoints.json"])
def test_data_synth_on_a_full_disk_is_one_line(tmp_path, disk_full, name):
    pytest.importorskip("av")
    disk_full(name if not name[0].isdigit() else f"26_{name}", after=10)
    r = invoke("data", "synth", "--out", tmp_path / "ds", "--videos", "1", "--clips-per-video", "1",
               "--dataset-layout", "oulu")
    one_line_error(r, name)
    assert leftovers(tmp_path) == []


def test_backbone_train_skeleton_on_a_full_disk_keeps_no_half_checkpoint(tmp_path, disk_full):
    pytest.importorskip("torch")
    from migfuse.synth.skeletons import make_toy_dataset

    small = make_toy_dataset(tmp_path / "toy", videos=2, clips_per_video=3, val_videos=1).root
    run = tmp_path / "run"
    disk_full("best.pt", after=1000)
    r = invoke("backbone", "train", "skeleton", "--data", small, "--out", run, "--stream", "bone", "--epochs", "1",
               "--base-channels", "4", "--length", "16")
    one_line_error(r, str(run / "best.pt"))
    assert not (run / "best.pt").exists() and leftovers(run) == []


def test_backbone_run_on_a_full_disk_leaves_no_npz(tmp_path, disk_full):
    pytest.importorskip("torch")
    x = tmp_path / "x.npy"
    np.save(x, np.random.default_rng(0).standard_normal((1, 3, 8, 25, 1)).astype(np.float32))
    disk_full("o.npz", after=100)
    r = invoke("backbone", "run", "agcn", "--layout", "ntu-25", "--input", x, "--out", tmp_path / "o.npz",
               "--precision", "fp32", "--device", "cpu")
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert r.exit_code == 2 and "Traceback" not in r.stderr and len(errors) == 1, r.stderr
    assert errors[0] == f"error: cannot write {tmp_path / 'o.npz'}: {FULL}; nothing was written under that name"
    assert sorted(os.listdir(tmp_path)) == ["x.npy"]


def test_the_demo_folder_record_on_a_full_disk_is_one_line_and_the_rerun_starts_clean(tmp_path, disk_full,
                                                                                       monkeypatch):
    from migfuse.demo import open_out_folder

    disk_full("demo.json", after=5)
    with pytest.raises(UserError, match=re.escape(f"cannot write {tmp_path / 'demo' / 'demo.json'}: {FULL}")):
        open_out_folder(tmp_path / "demo", {"seed": 0, "precision": "fp32"})
    assert os.listdir(tmp_path / "demo") == []
    monkeypatch.undo()
    open_out_folder(tmp_path / "demo", {"seed": 0, "precision": "fp32"})
    assert json.loads((tmp_path / "demo" / "demo.json").read_text()) == {"seed": 0, "precision": "fp32"}


# ----- real runs under a file-size limit (ulimit -f): the kernel answers EFBIG -------------------------------
def _limited(limit: int, *args) -> subprocess.CompletedProcess:
    def preexec() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of being killed

    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run([sys.executable, "-m", "migfuse", *map(str, args)], capture_output=True, text=True,
                          env=env, preexec_fn=preexec, timeout=300)


def _efbig_line(r: subprocess.CompletedProcess, *paths: Path) -> Path:
    """The one error line of a run under `ulimit -f`: names one of `paths`, which it returns."""
    assert r.returncode == 2, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert "Traceback" not in r.stderr and len(errors) == 1, r.stderr
    named = [p for p in paths if errors[0].startswith(f"error: cannot write {p}: it would pass the largest file "
                                                      f"size allowed here (the shell's `ulimit -f`")]
    assert len(named) == 1, errors[0]
    return named[0]


def test_fuse_train_under_a_file_size_limit_keeps_no_half_checkpoint(tokens, tmp_path):
    run = tmp_path / "run"
    prepared, cache, config = tokens
    r = _limited(20_000, "fuse", "train", "--cache", cache, "--data", prepared, "--task", "mg", "--head", "video",
                 "--config", config, "--out", run)
    checkpoint = _efbig_line(r, run / "best.pt", run / "last.pt")  # the small files fit, a checkpoint does not
    assert not checkpoint.exists() and leftovers(run) == []
    assert json.loads((run / "config.json").read_text())["run"]["trainer"] == "fuse"


def test_data_prepare_under_a_file_size_limit_is_one_line(dataset, tmp_path):
    out = tmp_path / "prep"
    r = _limited(4096, "data", "prepare", "--root", dataset, "--out", out)
    _efbig_line(r, out / "skeletons" / "0026.npy")
    assert leftovers(out) == [] and not (out / "skeletons" / "0026.npy").exists()


def test_data_synth_under_a_file_size_limit_is_one_line(tmp_path):
    pytest.importorskip("av")
    out = tmp_path / "ds"
    r = _limited(20_000, "data", "synth", "--out", out, "--videos", "1", "--clips-per-video", "1")
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(errors) == 1, r.stderr
    assert "it would pass the largest file size allowed here" in errors[0]
    assert leftovers(out) == []


def test_export_under_a_file_size_limit_leaves_no_zip(tokens, mg_scores, tmp_path):
    r = _limited(100, "export", "miga2025", mg_scores, "--data", tokens[0], "--out", tmp_path / "p.zip")
    _efbig_line(r, tmp_path / "p.zip")
    assert os.listdir(tmp_path) == []


def test_a_block_that_raises_leaves_nothing_to_flush_later(tmp_path):
    code = ("import gc\nfrom migfuse.atomic_write import open_atomic\n"
            f"for mode, data in (('w', 'abc'), ('wb', b'abc')):\n"
            f"    try:\n        with open_atomic({str(tmp_path / 'f.txt')!r}, mode) as f:\n"
            "            f.write(data)\n            raise KeyError('stop')\n    except KeyError:\n        pass\n"
            "gc.collect()\n")
    r = subprocess.run([sys.executable, "-X", "dev", "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and r.stderr == "", r.stderr  # no "Exception ignored ... flush of closed file"
    assert not (tmp_path / "f.txt").exists() and leftovers(tmp_path) == []
