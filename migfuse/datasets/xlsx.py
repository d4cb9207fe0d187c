"""Read one big numeric xlsx sheet into a float32 array (python-calamine), and write one (XlsxWriter).

The MiGA 2025 skeletons come as ``<vid4>_openpose.xlsx``: one sheet, T rows x 411 numeric columns,
no header, i.e. millions of cells. Reading goes through python-calamine (the Rust ``calamine``
reader, the one pandas offers as ``read_excel(engine="calamine")``); writing through XlsxWriter,
one of the two writers pandas uses (the tests also read sheets written by openpyxl, the other).
``benchmarks/xlsx.py`` compares calamine with the hand-written streaming parser it replaced.

Cell rules of the reader: numbers as stored; text cells are parsed as numbers, text that is not a
number becomes NaN; booleans 0/1; dates NaN; empty or absent cells 0 (also leading empty rows and
columns, so column A is always column 0). Error cells (``#DIV/0!``) and formulas without a cached
value are empty cells to calamine, so they read as 0 (the replaced parser made error cells NaN).
"""
from __future__ import annotations

import datetime
import logging
import math
import re
import zipfile
from pathlib import Path
from typing import Iterator

import numpy as np

from migfuse.atomic_write import atomic_path
from migfuse.errors import UserError

log = logging.getLogger(__name__)


def _cell(value: object) -> float:
    """One calamine cell value as a float by the rules in the module docstring."""
    if value == "" or value is None:
        return 0.0
    if isinstance(value, (bool, int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            pass  # text that is not a number
    return float("nan")  # also dates and times


def read_xlsx(path: str | Path) -> np.ndarray:
    """Read the first worksheet of an xlsx file into a (rows, columns) float32 array.

    Rows and columns count from cell A1. A sheet with no cells gives a (0, 0) array. Memory peaks
    at the Python objects of all cells (about 35 bytes per cell) while converting.

    Raises:
        UserError: the file is missing or is not a readable xlsx file.
    """
    from python_calamine import CalamineError, CalamineWorkbook

    path = Path(path)
    if not path.is_file():
        raise UserError(f"xlsx file {path} does not exist; check the path")
    _refuse_absurd_sheet(path)
    try:
        with CalamineWorkbook.from_path(str(path)) as workbook:
            if not workbook.sheet_names:
                raise CalamineError("the workbook has no worksheet")
            # skip_empty_area=False: rows and columns from A1, even when the first ones are empty
            rows = workbook.get_sheet_by_index(0).to_python(skip_empty_area=False)
    except (CalamineError, OSError, ValueError) as e:
        raise UserError(f"{path} is not a readable xlsx file ({type(e).__name__}: {e}); "
                        f"re-download or re-export it") from None
    width = max(map(len, rows), default=0)
    if width == 0:
        return np.zeros((0, 0), dtype=np.float32)
    try:  # the usual case, one conversion: every row as wide and every cell a number
        return np.array(rows, dtype=np.float32).reshape(len(rows), width)
    except (TypeError, ValueError):
        pass
    out = np.zeros((len(rows), width), dtype=np.float32)
    for i, row in enumerate(rows):
        try:
            out[i, :len(row)] = np.asarray(row, dtype=np.float64)
        except (TypeError, ValueError):
            out[i, :len(row)] = [_cell(v) for v in row]
    return out


#: The most cells (rows x columns, counted from A1) a sheet may span. calamine allocates a dense grid
#: of that size (about 32 bytes a cell, plus ~35 bytes of Python object while converting), so one stray
#: cell at XFD1048576 asks for 512 GB and aborts the process. A real MiGA skeleton sheet has 411 columns
#: and one row per frame: 64 million cells is 155,000 frames (1.7 hours at 25 fps), about 4 GB at peak.
MAX_CELLS = 64_000_000
_REF = re.compile(rb'\br="([A-Z]{1,3})?(\d{1,7})"')  # a row's r="12" or a cell's r="AB12"


def _column_number(letters: bytes) -> int:
    """A -> 1, Z -> 26, AA -> 27, XFD -> 16384."""
    number = 0
    for ch in letters:
        number = number * 26 + ch - 64
    return number


def _first_sheet(zf: zipfile.ZipFile) -> str | None:
    """The zip member of the first worksheet, as calamine opens it (workbook order, then its rels)."""
    try:
        book = zf.read("xl/workbook.xml")[:1 << 20]
        rels = zf.read("xl/_rels/workbook.xml.rels")[:1 << 20]
        rid = re.search(rb'<(?:\w+:)?sheet\b[^>]*?\br:id="([^"]+)"', book)
        target = rid and re.search(rb'<Relationship\b[^>]*?\bId="' + re.escape(rid.group(1)) + rb'"[^>]*?'
                                   rb'\bTarget="([^"]+)"', rels)
        if target:
            name = target.group(1).decode("utf-8", "replace").lstrip("/")
            return name if name.startswith("xl/") else f"xl/{name}"
    except (KeyError, zipfile.BadZipFile, OSError):
        pass
    sheets = sorted(n for n in zf.namelist() if n.startswith("xl/worksheets/") and n.endswith(".xml"))
    return sheets[0] if sheets else None


def sheet_extent(path: Path) -> tuple[int, int] | None:
    """(rows, columns) from A1 that the first sheet spans, read without loading it: its declared
    ``<dimension ref="A1:OU3000"/>`` when that is within `MAX_CELLS` and no cell lies past it, else
    the largest row and cell references found streaming the sheet XML (a wrong declaration alone
    does not refuse a sheet). None when the file is not a zip of a sheet (calamine
    then says why)."""
    try:
        with zipfile.ZipFile(path) as zf:
            member = _first_sheet(zf)
            if member is None or member not in zf.namelist():
                return None
            with zf.open(member) as f:
                head = f.read(1 << 16)
            declared = re.search(rb'<(?:\w+:)?dimension\b[^>]*?\bref="[A-Z]*\d*:?([A-Z]{1,3})(\d{1,7})"', head)
            if declared:
                letters, digits = declared.groups()
                # calamine sizes its grid from the cells, not from this declaration: a file may declare
                # a small sheet and hold a far cell, or declare A1:XFD1048576 over a small one (then the
                # cells are counted below). A reference with more letters or digits than the declared
                # corner lies past it (one regex search per block, no per-cell work); within the same
                # lengths the grid stays near the declared one (ZZ x 99,999 for OU30000).
                size = int(digits) * _column_number(letters)
                past = re.compile(rb'\br="(?:[A-Z]{%d,}|[A-Z]*\d{%d,})"' % (len(letters) + 1, len(digits) + 1))
                if size <= MAX_CELLS and not any(past.search(block) for block in _blocks(zf, member)):
                    return int(digits), _column_number(letters)
            rows = columns = 0
            for block in _blocks(zf, member):
                for letters, row in _REF.findall(block):
                    rows = max(rows, int(row))
                    if letters:
                        columns = max(columns, _column_number(letters))
            return rows, columns
    except (zipfile.BadZipFile, OSError, RuntimeError, ValueError):  # RuntimeError: an encrypted member
        return None


def _blocks(zf: zipfile.ZipFile, member: str) -> Iterator[bytes]:
    """The sheet XML in 4 MB blocks, each starting with the last 32 bytes of the one before (so a
    reference cut at a block's end is whole in the next)."""
    tail = b""
    with zf.open(member) as f:
        while chunk := f.read(1 << 22):
            yield tail + chunk
            tail = chunk[-32:]


def _refuse_absurd_sheet(path: Path) -> None:
    extent = sheet_extent(path)
    if extent is not None and extent[0] * extent[1] > MAX_CELLS:
        rows, columns = extent
        raise UserError(f"{path} spans {rows:,} rows x {columns:,} columns ({rows * columns:,} cells from A1), more "
                        f"than a skeleton sheet (411 columns, a row per frame; at most {MAX_CELLS:,} cells are "
                        f"read): delete the stray cells far from the data and save it again, or re-export it")


def write_xlsx(path: str | Path, array: np.ndarray, *, sheet_name: str = "Sheet1") -> Path:
    """Write a (rows, columns) numeric array as a one-sheet xlsx file (XlsxWriter, streamed).

    NaN and infinite cells are written empty (read back as 0). Returns ``path``. Needs XlsxWriter (in the
    ``test`` and ``extract`` extras; ``migfuse data synth`` uses it): it writes the 411-column
    sheets about 2.5 times faster than openpyxl, which matters for the demo data and the tests.
    """
    try:
        import xlsxwriter
    except ImportError:
        raise UserError("writing xlsx files needs XlsxWriter: pip install xlsxwriter") from None
    array = np.asarray(array, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"write_xlsx needs a 2-D array, got shape {array.shape}")
    path = Path(path)
    with atomic_path(path) as tmp:
        workbook = xlsxwriter.Workbook(str(tmp), {"constant_memory": True})
        workbook.set_properties({"created": datetime.datetime(2000, 1, 1)})  # same array -> same bytes
        sheet = workbook.add_worksheet(sheet_name)
        for i, row in enumerate(array.tolist()):
            # NaN / infinite as an empty cell (XlsxWriter refuses them as numbers)
            sheet.write_row(i, 0, [v if math.isfinite(v) else None for v in row])
        workbook.close()
    return path
