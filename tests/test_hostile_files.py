"""Hostile and absurd files end in a counted problem or one line, never a crash: an OpenPose frame
nested 200,000 deep, an xlsx sheet with a cell at XFD1048576, a skeleton .npy of Python objects, a
label row that starts after it ends, `--out` naming a file, a settings file nested too deep. The
inputs are built here, small."""
from __future__ import annotations

import json
import os
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from migfuse.cli import app
from migfuse.datasets import openpose
from migfuse.datasets.manifest import Clip, Manifest, write_skeleton
from migfuse.datasets.openpose import read_openpose_folder
from migfuse.datasets.xlsx import MAX_CELLS, read_xlsx, sheet_extent
from migfuse.errors import UserError

DEEP = b'{"people": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def one_line(result, text: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1, result.stderr
    assert text in result.stderr, result.stderr


def _frame(path: Path, people: list) -> None:
    path.write_text(json.dumps({"version": 1.3, "people": people}))


# ----- OpenPose JSON --------------------------------------------------------------------------------
def test_a_frame_nested_200000_deep_is_one_unreadable_frame(tmp_path):
    person = {"pose_keypoints_2d": [1.0, 2.0, 0.9] * 25, "face_keypoints_2d": [0.0] * 210,
              "hand_left_keypoints_2d": [0.0] * 63, "hand_right_keypoints_2d": [0.0] * 63}
    _frame(tmp_path / "v_000000000000_keypoints.json", [person])
    (tmp_path / "v_000000000001_keypoints.json").write_bytes(DEEP)
    _frame(tmp_path / "v_000000000002_keypoints.json", [person])
    points, mask, stats = read_openpose_folder(tmp_path, progress=False)
    assert mask.tolist() == [True, False, True] and points[1].sum() == 0
    assert stats.unreadable == ["v_000000000001_keypoints.json"]
    assert stats.reasons == {"v_000000000001_keypoints.json": "the JSON is nested too deeply to be an OpenPose frame"}


def test_a_frame_file_too_large_for_keypoints_is_unreadable_without_reading_it_whole(tmp_path, monkeypatch):
    monkeypatch.setattr(openpose, "MAX_FRAME_BYTES", 1 << 20)
    (tmp_path / "v_000000000000_keypoints.json").write_bytes(b'{"people": []}' + b" " * (1 << 20))
    _, mask, stats = read_openpose_folder(tmp_path, progress=False)
    assert mask.tolist() == [False]
    assert stats.reasons == {"v_000000000000_keypoints.json": "the file is over 1 MiB, too large for one frame's "
                                                               "keypoints"}


@pytest.fixture(scope="module")
def oulu(tmp_path_factory) -> Path:
    pytest.importorskip("av")
    root = tmp_path_factory.mktemp("oulu") / "ds"
    r = invoke("data", "synth", "--out", root, "--videos", "1", "--clips-per-video", "2", "--dataset-layout", "oulu")
    assert r.exit_code == 0, r.output
    return root


def test_data_prepare_counts_the_deep_frame_unreadable_and_goes_on(oulu, tmp_path):
    frame = next((oulu / "Data" / "skeleton" / "raw").rglob("*_000000000005_keypoints.json"))
    frame.write_bytes(DEEP)
    out = tmp_path / "prep"
    r = invoke("data", "prepare", "--root", oulu, "--out", out)
    assert r.exit_code == 0, r.output
    report = json.loads((out / "prepare_report.json").read_text())
    assert report["unreadable_frames"] == 1 and "1 unreadable skeleton frame files" in r.stdout
    problem = next(p for p in report["problems"] if p["kind"] == "unreadable_frames")
    assert problem["files"] == {frame.name: "the JSON is nested too deeply to be an OpenPose frame"}


# ----- xlsx sheets --------------------------------------------------------------------------------------
def _far_cell_openpyxl(path: Path) -> Path:
    from openpyxl import Workbook

    wb = Workbook()
    ws = wb.active
    ws.append([1.0] * 411)
    ws["XFD1048576"] = 1
    wb.save(path)
    return path


def _without_dimension(src: Path, dst: Path) -> Path:
    """The same workbook with the sheet's <dimension> element removed (it is optional)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for name in zin.namelist():
            data = zin.read(name)
            if name.startswith("xl/worksheets/"):
                data = re.sub(rb"<dimension[^>]*/>", b"", data)
            zout.writestr(name, data)
    return dst


def _declaring(src: Path, dst: Path, ref: bytes) -> Path:
    """The same workbook whose sheet declares `ref` as its dimension (whatever cells it holds)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for name in zin.namelist():
            data = zin.read(name)
            if name.startswith("xl/worksheets/"):
                data = re.sub(rb'<dimension ref="[^"]*"', b'<dimension ref="' + ref + b'"', data)
            zout.writestr(name, data)
    return dst


def test_a_sheet_with_a_cell_at_xfd1048576_is_refused_before_it_is_loaded(tmp_path):
    declared = _far_cell_openpyxl(tmp_path / "0001_openpose.xlsx")
    undeclared = _without_dimension(declared, tmp_path / "0002_openpose.xlsx")
    lying = _declaring(declared, tmp_path / "0003_openpose.xlsx", b"A1:OU2")  # declares 2 x 411, holds the far cell
    for path in (declared, undeclared, lying):
        assert sheet_extent(path) == (1_048_576, 16_384)
        with pytest.raises(UserError) as e:
            read_xlsx(path)
        assert str(e.value) == (f"{path} spans 1,048,576 rows x 16,384 columns (17,179,869,184 cells from A1), more "
                                f"than a skeleton sheet (411 columns, a row per frame; at most {MAX_CELLS:,} cells "
                                f"are read): delete the stray cells far from the data and save it again, or "
                                f"re-export it")


def test_a_real_sized_sheet_passes_the_size_check_and_reads(tmp_path):
    from migfuse.datasets.xlsx import write_xlsx

    array = np.arange(30 * 411, dtype=np.float32).reshape(30, 411)
    path = write_xlsx(tmp_path / "a.xlsx", array)
    assert sheet_extent(path) == (30, 411)
    assert sheet_extent(_without_dimension(path, tmp_path / "b.xlsx")) == (30, 411)
    assert sheet_extent(_declaring(path, tmp_path / "c.xlsx", b"A1:OU30")) == (30, 411)  # declared, nothing past it
    np.testing.assert_array_equal(read_xlsx(tmp_path / "b.xlsx"), array)


def test_data_prepare_lists_the_absurd_sheet_as_a_problem_and_goes_on(tmp_path):
    pytest.importorskip("av")
    root = tmp_path / "ds"
    assert invoke("data", "synth", "--out", root, "--videos", "2", "--clips-per-video", "1").exit_code == 0
    sheet = next(root.rglob("0026_openpose.xlsx"))
    _far_cell_openpyxl(sheet)
    r = invoke("data", "prepare", "--root", root, "--out", tmp_path / "prep")
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "prep" / "prepare_report.json").read_text())
    problem = next(p for p in report["problems"] if p.get("video_id") == "0026")
    assert problem["kind"] == "unreadable_skeleton" and "spans 1,048,576 rows x 16,384 columns" in problem["detail"]
    assert report["videos_with_skeleton"] == 1


# ----- skeleton arrays of Python objects ---------------------------------------------------------------
def _prepared(root: Path) -> Path:
    clips = [Clip.make("0054", 0, 0, 9, raw_class=5, subject=1, win_lose="Win"),
             Clip.make("0001", 0, 0, 9, raw_class=2, subject=2, win_lose="Win")]
    m = Manifest(clips=clips)
    rng = np.random.default_rng(0)
    for vid in ("0054", "0001"):
        m.videos[vid].skeleton = write_skeleton(root, vid, rng.uniform(0, 1, (12, 137, 3)).astype(np.float32))
    return m.save(root)


@pytest.mark.parametrize("bad", ["objects", "float64"])
def test_export_pyskl_refuses_a_skeleton_npy_it_cannot_trust(tmp_path, bad):
    prep = _prepared(tmp_path / "prep")
    path = prep / "skeletons" / "0054.npy"
    if bad == "objects":
        array = np.empty((12, 137, 3), dtype=object)
        array[...] = 0.5
        np.save(path, array, allow_pickle=True)
        why = "Array can't be memory-mapped: Python objects in dtype"
    else:
        np.save(path, np.zeros((12, 137, 3)))
        why = "holds float64 / mask bool, not float32 / bool"
    r = invoke("data", "export-pyskl", prep, tmp_path / "o.pkl")
    one_line(r, str(path))
    assert why in r.stderr and "re-run `migfuse data prepare`" in r.stderr
    assert not (tmp_path / "o.pkl").exists()


# ----- label rows and --out ------------------------------------------------------------------------------
def test_a_label_row_that_starts_after_it_ends_is_left_out_and_named(tmp_path):
    pytest.importorskip("av")
    root = tmp_path / "ds"
    assert invoke("data", "synth", "--out", root, "--videos", "1", "--clips-per-video", "2").exit_code == 0
    labels = next(root.rglob("0026_label.csv"))
    rows = labels.read_text().splitlines()
    raw, start, end = rows[1].split(",")
    labels.write_text("\n".join([rows[0], f"{raw},{end},{start}"]) + "\n")
    r = invoke("data", "prepare", "--root", root, "--out", tmp_path / "prep")
    assert r.exit_code == 0, r.output
    manifest = Manifest.load(tmp_path / "prep")
    assert manifest.ids() == ["0026_0"]
    report = json.loads((tmp_path / "prep" / "prepare_report.json").read_text())
    problem = next(p for p in report["problems"] if p["kind"] == "start_after_end")
    assert problem["clip_ids"] == ["0026_1"]
    detail = (f"1 label rows start after they end and were left out: 0026_1 (start {end} > end {start}); "
              f"fix the label file")
    assert problem["detail"] == detail and f"problem start_after_end: {detail}" in r.stdout
    assert not [p for p in report["problems"] if p["kind"] == "clip_outside_skeleton"]


@pytest.mark.parametrize("content, why", [
    (b"1,2,3\n4," + b"x" * 200_000 + b",5\n", "is not a readable CSV file (field larger than field limit (131072))"),
    (b"\xff\xfe1,2,3\n", "is not UTF-8 text (invalid start byte at byte 0)"),
])
def test_a_label_file_that_is_not_a_text_table_is_one_line(tmp_path, content, why):
    pytest.importorskip("av")
    root = tmp_path / "ds"
    assert invoke("data", "synth", "--out", root, "--videos", "1", "--clips-per-video", "1").exit_code == 0
    labels = next(root.rglob("0026_label.csv"))
    labels.write_bytes(content)
    one_line(invoke("data", "prepare", "--root", root, "--out", tmp_path / "prep"),
             f"{labels} {why}; fix or re-download it")


def test_a_manifest_that_is_not_a_text_table_is_one_line(tmp_path):
    prep = _prepared(tmp_path / "prep")
    (prep / "manifest.csv").write_bytes(b"clip_id\n" + b"\x80" * 10)
    with pytest.raises(UserError, match=re.escape(f"{prep / 'manifest.csv'} is not UTF-8 text (invalid start byte at "
                                                  f"byte 8); re-run `migfuse data prepare`")):
        Manifest.load(prep)


def test_prepare_out_naming_a_file_is_one_line_before_any_work(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    one_line(invoke("data", "prepare", "--root", tmp_path / "nowhere", "--out", afile),
             f"Invalid value for '--out': cannot use {afile}: a file is in the way: name a folder, or move that file")
    assert afile.read_text() == "x"
    from migfuse.datasets.prepare import prepare  # the library call says it too, before reading the dataset

    with pytest.raises(UserError, match=r"--out .*afile is a file, not a folder: name a folder for the PREPARED files"):
        prepare(tmp_path / "nowhere", afile)


@pytest.mark.parametrize("suffix", [".json", ".toml"])
def test_a_settings_file_nested_too_deep_is_one_line(tmp_path, suffix):
    from migfuse.training.config import load_config_file, parse_value

    path = tmp_path / f"c{suffix}"
    path.write_text('{"lr": ' + "[" * 200_000 + "]" * 200_000 + "}" if suffix == ".json" else
                    "lr = " + "[" * 200_000 + "]" * 200_000 + "\n")
    with pytest.raises(UserError) as e:
        load_config_file(path)
    assert str(e.value) == f"config file {path} is nested too deeply to be a settings file; fix it"
    deep = "[" * 5000 + "]" * 5000
    assert parse_value(deep) == deep  # a --set value that is not a setting stays text (refused by its check)


@pytest.mark.parametrize("rows, why", [
    ("", "it has a header but no label rows"),
    ("26,0,0.0,0,0.08,2,5,3,F,X,Win\n", "every row has a label_id below 1 (label_id is 1-based)"),
])
def test_a_label_csv_without_clips_is_one_line(tmp_path, rows, why):
    root = tmp_path / "ds"
    (root / "Label").mkdir(parents=True)
    labels = root / "Label" / "labels_20200831.csv"
    labels.write_text("video_id,label_id,start_time,start_frame,end_time,end_frame,class,subject_id,"
                      "subject_gender,subject_nationality,win_or_lose\n" + rows)
    one_line(invoke("data", "prepare", "--root", root, "--out", tmp_path / "prep"),
             f"error: {labels} holds no clips: {why}; pass the official Label/labels_20200831.csv (18,498 rows) "
             f"or fix the file")
    assert not (tmp_path / "prep" / "manifest.csv").exists()


def test_miga_label_files_without_clips_are_one_line(tmp_path):
    label = tmp_path / "ds" / "train" / "0026" / "0026_label.csv"
    label.parent.mkdir(parents=True)
    label.write_text("")
    one_line(invoke("data", "prepare", "--root", tmp_path / "ds", "--out", tmp_path / "prep"),
             f"error: the label files under {tmp_path / 'ds'} ({label}) hold no clips; fix them or pass the "
             f"folder of the full download")
    assert not (tmp_path / "prep" / "manifest.csv").exists()


_READ_UNDER_4_GB = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))
from migfuse.datasets.xlsx import read_xlsx
print(read_xlsx(sys.argv[1]).shape)
"""


def test_a_sheet_whose_declared_size_alone_is_absurd_reads_normally_within_4_gb(tmp_path):
    import subprocess
    import sys

    from migfuse.datasets.xlsx import write_xlsx

    array = np.arange(2 * 411, dtype=np.float32).reshape(2, 411)
    path = _declaring(write_xlsx(tmp_path / "a.xlsx", array), tmp_path / "0001_openpose.xlsx", b"A1:XFD1048576")
    assert b'<dimension ref="A1:XFD1048576"' in zipfile.ZipFile(path).read("xl/worksheets/sheet1.xml")
    assert sheet_extent(path) == (2, 411)  # the cells are counted, the declaration is not believed
    np.testing.assert_array_equal(read_xlsx(path), array)
    # calamine sizes its grid from the cells, not the declaration: 17 billion cells would need 512 GB
    import migfuse

    env = {**os.environ, "PYTHONPATH": str(Path(migfuse.__file__).parents[1])}  # this checkout's migfuse
    run = subprocess.run([sys.executable, "-c", _READ_UNDER_4_GB, str(path)], capture_output=True, text=True,
                         timeout=120, env=env)
    assert (run.returncode, run.stdout) == (0, "(2, 411)\n"), run.stderr
