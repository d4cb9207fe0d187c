"""xlsx reader/writer: round trips and the cell kinds other spreadsheet tools write."""
from __future__ import annotations

import zipfile

import numpy as np
import pytest

from migfuse.data_cache.xlsx import column_index, column_letters, read_xlsx, write_xlsx
from migfuse.errors import UserError


def test_column_letters():
    assert [column_letters(i) for i in (0, 25, 26, 410, 701, 702)] == ["A", "Z", "AA", "OU", "ZZ", "AAA"]
    assert all(column_index(column_letters(i)) == i for i in range(2000))


def test_round_trip_exact(tmp_path):
    rng = np.random.default_rng(0)
    a = (rng.random((50, 411)) * 1000).astype(np.float32)
    a[:, 7] = 0
    a[3] = 0
    a[4, 5] = np.nan  # written as an empty cell -> read as 0
    path = write_xlsx(tmp_path / "a.xlsx", a)
    b = read_xlsx(path)
    assert b.shape == (50, 411) and b.dtype == np.float32
    a[4, 5] = 0
    np.testing.assert_array_equal(a, b)
    with zipfile.ZipFile(path) as z:  # a valid package that spreadsheet tools accept
        assert {"[Content_Types].xml", "_rels/.rels", "xl/workbook.xml", "xl/styles.xml",
                "xl/worksheets/sheet1.xml"} <= set(z.namelist())
        assert b'<dimension ref="A1:OU50"/>' in z.read("xl/worksheets/sheet1.xml")[:300]


def _package(path, sheet: str, shared: str | None = None, sheet_name: str = "xl/worksheets/sheet7.xml"):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("xl/workbook.xml",
                   '<workbook xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main" '
                   'xmlns:r="http://schemas.openxmlformats.org/officeDocument/2006/relationships">'
                   '<sheets><sheet name="S" sheetId="1" r:id="rId3"/></sheets></workbook>')
        z.writestr("xl/_rels/workbook.xml.rels",
                   '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
                   f'<Relationship Id="rId3" Type="worksheet" Target="{sheet_name[3:]}"/></Relationships>')
        z.writestr(sheet_name, sheet)
        if shared is not None:
            z.writestr("xl/sharedStrings.xml", shared)
    return path


SHARED = ('<sst xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main"><si><t>1.5</t></si>'
          '<si><r><t>2</t></r><r><t>5</t></r></si><si><t>text</t></si></sst>')


@pytest.mark.parametrize("prefix", ["", "x:"])
def test_cell_kinds_sparse_rows_and_prefixed_namespace(tmp_path, prefix):
    ns = f'xmlns{":x" if prefix else ""}="http://schemas.openxmlformats.org/spreadsheetml/2006/main"'
    p = prefix
    sheet = (f'<{p}worksheet {ns}><{p}sheetData>'
             f'<{p}row r="1"><{p}c r="A1" t="s"><{p}v>0</{p}v></{p}c><{p}c r="B1" t="s"><{p}v>1</{p}v></{p}c>'
             f'<{p}c r="C1" t="inlineStr"><{p}is><{p}t>-3.25</{p}t></{p}is></{p}c></{p}row>'
             f'<{p}row r="3"><{p}c r="B3"><{p}v>7</{p}v></{p}c><{p}c r="D3" t="b"><{p}v>1</{p}v></{p}c></{p}row>'
             f'<{p}row r="4"><{p}c r="A4" t="s"><{p}v>2</{p}v></{p}c><{p}c r="B4" t="e"><{p}v>#DIV/0!</{p}v></{p}c>'
             f'<{p}c r="C4" s="1"/><{p}c r="D4" t="str"><{p}f>A1</{p}f><{p}v>4e2</{p}v></{p}c></{p}row>'
             f'</{p}sheetData></{p}worksheet>')
    b = read_xlsx(_package(tmp_path / "k.xlsx", sheet, SHARED))
    expected = np.array([[1.5, 25, -3.25, 0], [0, 0, 0, 0], [0, 7, 0, 1], [np.nan, np.nan, 0, 400]], np.float32)
    np.testing.assert_array_equal(b, expected)


def test_bad_files(tmp_path):
    with pytest.raises(UserError, match=r"missing\.xlsx does not exist"):
        read_xlsx(tmp_path / "missing.xlsx")
    (tmp_path / "empty.xlsx").write_bytes(b"")
    with pytest.raises(UserError, match=r"empty\.xlsx is not a readable xlsx file"):
        read_xlsx(tmp_path / "empty.xlsx")
    with zipfile.ZipFile(tmp_path / "nosheet.xlsx", "w") as z:
        z.writestr("hello.txt", "hi")
    with pytest.raises(UserError, match="nosheet.xlsx is not a readable xlsx"):
        read_xlsx(tmp_path / "nosheet.xlsx")
    assert read_xlsx(write_xlsx(tmp_path / "none.xlsx", np.zeros((0, 3)))).shape == (0, 0)
