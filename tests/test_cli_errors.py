"""Mistakes a new user makes on the command line end in one line naming the fix (found by trying
every command as a newcomer would): paths in the way, mixed old and new spellings, a head of the
other task, a frame count the backbone cannot take, one file to fuse."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))

from migfuse.cli import app  # noqa: E402
from migfuse.synth.tokens import write_synthetic  # noqa: E402


def invoke(*args) -> object:
    return CliRunner().invoke(app, [str(a) for a in args])


def one_line(result, *parts: str) -> None:
    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    for part in parts:
        assert part in result.stderr, (part, result.stderr)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> tuple[Path, Path]:
    return write_synthetic(tmp_path_factory.mktemp("s"), n_videos=4, clips_per_video=4,
                           tracks=("video", "joint", "bone", "context", "face_context"))


def test_a_file_where_an_output_folder_or_file_goes_is_one_line(tmp_path, synthetic):
    prepared, cache = synthetic
    afile = tmp_path / "afile"
    afile.write_text("x")
    one_line(invoke("data", "synth", "--out", afile / "sub"), f"cannot use {afile}", "not a folder")
    one_line(invoke("extract", "video", "--data", prepared, "--cache", afile, "--workers", "0"),
             f"cannot use {afile}", "a file is in the way")
    one_line(invoke("cache", "export-views", cache, afile), f"cannot use {afile}")
    scores = tmp_path / "s.npz"
    from migfuse.fuse.scores import Scores
    from migfuse.datasets import classes

    Scores(["0001_0"], np.full((1, 32), 1 / 32, np.float32), "mg", "test", list(classes.CLASS_NAMES)).save(scores)
    one_line(invoke("fuse", "late", scores, scores, "--out", afile / "x.npz"), f"cannot use {afile}",
             "a file is in the way")


def test_the_data_folder_mixups_name_their_fix(tmp_path, synthetic):
    prepared, cache = synthetic
    afile = tmp_path / "afile"
    afile.write_text("x")
    one_line(invoke("extract", "video", "--data", afile, "--cache", tmp_path / "c.zarr"),
             "is a file, not a PREPARED folder")
    one_line(invoke("extract", "video", "--data", cache, "--cache", tmp_path / "c.zarr"),
             "is a token cache, not a PREPARED folder: did you swap --cache and --data?")


def test_old_and_new_spellings_together_are_refused(tmp_path):
    one_line(invoke("data", "synth", "--out", tmp_path / "d", "--layout", "oulu", "--dataset-layout", "miga2023"),
             "give --dataset-layout only (--layout is its old name here)")
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((1, 3, 16, 224, 224), np.float32))
    one_line(invoke("backbone", "run", "mvit_v2_s", "--input", x, "--output", tmp_path / "a.npz",
                    "--out", tmp_path / "b.npz"), "give --out only (--output is its old name)")
    assert not (tmp_path / "d").exists() and not (tmp_path / "a.npz").exists()


def test_a_head_of_the_other_task_is_named(tmp_path, synthetic):
    prepared, cache = synthetic
    r = invoke("fuse", "train", "--cache", cache, "--data", prepared, "--task", "mg", "--head", "interfusion",
               "--out", tmp_path / "r", "--epochs", "1")
    one_line(r, "head interfusion reads", "one row per video, but task mg needs one per clip: use --task emotion")


def test_a_frame_count_the_backbone_cannot_take_is_refused_before_anything_is_written(tmp_path, synthetic):
    prepared, _ = synthetic
    r = invoke("extract", "video", "--data", prepared, "--cache", tmp_path / "c.zarr", "--frames", "8")
    one_line(r, "mvit_v2_s takes 16 frames per window (its checkpoint's recipe), not 8: drop --frames")
    assert not (tmp_path / "c.zarr").exists()


def test_fuse_late_needs_two_files(tmp_path):
    from migfuse.datasets import classes
    from migfuse.fuse.scores import Scores

    scores = tmp_path / "s.npz"
    Scores(["0001_0"], np.full((1, 32), 1 / 32, np.float32), "mg", "test", list(classes.CLASS_NAMES)).save(scores)
    one_line(invoke("fuse", "late", scores, "--out", tmp_path / "f.npz"), "give two or more scores files to fuse")


def test_a_usage_error_is_one_line_naming_the_help():
    one_line(invoke("demo", "--precision", "fp8"),
             "error: Invalid value for '--precision': 'fp8' is not one of 'auto', 'fp32', 'bf16', 'fp16'",
             "(see `root demo -h`)")
    one_line(invoke("extract", "video", "--data", "x"), "Missing option '--cache'")


def test_backbone_run_without_a_checkpoint_is_seeded_like_extraction(tmp_path):
    x = tmp_path / "x.npy"
    rng = np.random.default_rng(0)
    np.save(x, rng.standard_normal((1, 3, 8, 25, 1)).astype(np.float32))
    outs = []
    for k in range(2):
        r = invoke("backbone", "run", "agcn", "--layout", "ntu-25", "--input", x, "--out", tmp_path / f"{k}.npz",
                   "--precision", "fp32", "--device", "cpu")
        assert r.exit_code == 0, r.output
        assert "RANDOM weights (seed 0)" in r.stderr
        with np.load(tmp_path / f"{k}.npz") as z:
            outs.append(z["logits"])
    np.testing.assert_array_equal(outs[0], outs[1])
