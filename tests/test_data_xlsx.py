"""xlsx reading (python-calamine) of sheets as openpyxl and XlsxWriter write them, in the real
411-column skeleton layout, and the cell kinds spreadsheet tools produce."""
from __future__ import annotations

import datetime
import zipfile

import numpy as np
import pytest
from openpyxl import Workbook

from migfuse.datasets.layouts.skeletons import OpenPoseXlsx
from migfuse.datasets.xlsx import read_xlsx, write_xlsx
from migfuse.errors import UserError


def _openpyxl_sheet(path, rows, title="Sheet1"):
    """A workbook as openpyxl (pandas' other writer, LibreOffice-like output) saves it."""
    wb = Workbook()
    ws = wb.active
    ws.title = title
    for row in rows:
        ws.append(row)
    wb.save(path)
    return path


def test_openpyxl_written_411_column_skeleton_reads_exactly(tmp_path):
    rng = np.random.default_rng(0)
    points = (rng.random((12, 137, 3)) * 1000).astype(np.float32)
    points[3] = 0                      # a frame without a person
    points[5, 100:] = 0                # undetected hand points
    table = points.reshape(12, 411)
    path = _openpyxl_sheet(tmp_path / "0298_openpose.xlsx", table.astype(np.float64).tolist())
    got = read_xlsx(path)
    assert got.shape == (12, 411) and got.dtype == np.float32
    np.testing.assert_array_equal(got, table)
    read = OpenPoseXlsx(path).read()
    np.testing.assert_array_equal(read.points, points)
    assert read.mask.tolist() == [True, True, True, False] + [True] * 8
    header = [f"{axis}{j}" for j in range(137) for axis in ("x", "y", "c")]  # a re-export with a header
    again = OpenPoseXlsx(_openpyxl_sheet(tmp_path / "h.xlsx", [header] + table.astype(np.float64).tolist())).read()
    assert again.info == {"header_row_dropped": True}
    np.testing.assert_array_equal(again.points, points)


def test_cell_kinds_and_cells_counted_from_a1(tmp_path):
    wb = Workbook()
    ws = wb.active
    ws["B2"] = 1.5                       # row 1 and column A empty: still row 0 / column 0
    ws["C2"] = "-3.25"                   # a number stored as text
    ws["D2"] = "text"
    ws["B3"] = True
    ws["C3"] = datetime.date(2020, 8, 31)
    ws["D3"] = "#DIV/0!"
    ws["D3"].data_type = "e"             # an error cell: calamine returns it empty
    ws["E4"] = 7
    wb.save(tmp_path / "k.xlsx")
    expected = np.array([[0, 0, 0, 0, 0], [0, 1.5, -3.25, np.nan, 0], [0, 1, np.nan, 0, 0], [0, 0, 0, 0, 7]],
                        np.float32)
    np.testing.assert_array_equal(read_xlsx(tmp_path / "k.xlsx"), expected)


def test_writer_round_trip_is_exact_and_reproducible_with_nan_as_empty_cell(tmp_path):
    rng = np.random.default_rng(1)
    a = (rng.random((30, 411)) * 1000).astype(np.float32)
    a[:, 7] = 0
    a[4, 5] = np.nan
    path = write_xlsx(tmp_path / "a.xlsx", a)
    assert write_xlsx(tmp_path / "again.xlsx", a).read_bytes() == path.read_bytes()  # reproducible demo data
    b = read_xlsx(path)
    a[4, 5] = 0
    np.testing.assert_array_equal(a, b)
    with zipfile.ZipFile(path) as z:  # a valid package that spreadsheet tools accept
        assert {"[Content_Types].xml", "xl/workbook.xml", "xl/worksheets/sheet1.xml"} <= set(z.namelist())
    assert read_xlsx(write_xlsx(tmp_path / "none.xlsx", np.zeros((0, 3)))).shape == (0, 0)


def test_bad_files_are_one_line_errors(tmp_path):
    with pytest.raises(UserError, match=r"missing\.xlsx does not exist"):
        read_xlsx(tmp_path / "missing.xlsx")
    (tmp_path / "empty.xlsx").write_bytes(b"")
    with pytest.raises(UserError, match=r"empty\.xlsx is not a readable xlsx file"):
        read_xlsx(tmp_path / "empty.xlsx")
    with zipfile.ZipFile(tmp_path / "nosheet.xlsx", "w") as z:
        z.writestr("hello.txt", "hi")
    with pytest.raises(UserError, match=r"nosheet\.xlsx is not a readable xlsx"):
        read_xlsx(tmp_path / "nosheet.xlsx")
    (tmp_path / "text.xlsx").write_text("video,frame\n1,2\n")  # a CSV renamed
    with pytest.raises(UserError, match=r"text\.xlsx is not a readable xlsx"):
        read_xlsx(tmp_path / "text.xlsx")
