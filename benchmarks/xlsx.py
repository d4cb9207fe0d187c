"""xlsx skeleton reading: python-calamine (migfuse's reader) against the hand-written streaming
parser it replaced (kept below, only here, to compare).

    .venv/bin/python benchmarks/xlsx.py [--rows 21068] [--repeat 2] [--writer xlsxwriter|openpyxl]

Writes one T x 411 sheet of random skeleton-like values with XlsxWriter (the demo-data writer) or
openpyxl, then times both readers (best of --repeat, alternating) and checks they return the same
array. 21,068 rows is video 298's length (8.66 million cells). Prints a Markdown row for
benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import logging
import platform
import re
import tempfile
import time
import zipfile
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Iterator, Optional, Union
from xml.etree import ElementTree as ET

import numpy as np
from tqdm import tqdm

from migfuse.datasets.xlsx import read_xlsx, write_xlsx
from migfuse.errors import UserError


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=21068)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--sheet", type=Path, help="reuse (or write once to) this xlsx file")
    parser.add_argument("--writer", choices=("xlsxwriter", "openpyxl"), default="xlsxwriter",
                        help="the library that writes the sheet (their XML differs in detail)")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    # coordinates with 2 decimals and confidences with 4, about what OpenPose exports carry
    table = np.round(rng.random((args.rows, 411)) * 1280, 2)
    table[:, 2::3] = np.round(rng.random((args.rows, 137)), 4)
    expected = table.astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        path = args.sheet or Path(tmp) / "0298_openpose.xlsx"
        write_s = float("nan")
        if not path.is_file():
            t0 = time.perf_counter()
            _write_openpyxl(path, table) if args.writer == "openpyxl" else write_xlsx(path, table)
            write_s = time.perf_counter() - t0
        readers = (("python-calamine", read_xlsx), ("replaced parser", _old_read_xlsx))
        times = {name: float("inf") for name, _ in readers}
        for _ in range(args.repeat):  # alternate the readers: load on a shared machine drifts
            for name, reader in readers:
                t0 = time.perf_counter()
                got = reader(path)
                times[name] = min(times[name], time.perf_counter() - t0)
                np.testing.assert_array_equal(got, expected)
                del got
        size_mb = path.stat().st_size / 1e6
    cells = args.rows * 411
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"| {when} | {platform.processor() or platform.machine()} | {args.writer} | {args.rows} x 411 "
          f"({cells / 1e6:.2f} M cells, "
          f"{size_mb:.0f} MB) | {times['python-calamine']:.1f} s | {times['replaced parser']:.1f} s | "
          f"{times['replaced parser'] / times['python-calamine']:.2f}x | {write_s:.0f} s |")


def _write_openpyxl(path: Path, table: np.ndarray) -> None:
    from openpyxl import Workbook

    workbook = Workbook(write_only=True)
    sheet = workbook.create_sheet("Sheet1")
    for row in table.tolist():
        sheet.append(row)
    workbook.save(path)


# ----- the replaced reader (migfuse <= the calamine change), verbatim, for comparison only ------

log = logging.getLogger(__name__)

_REL_NS = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"
_PKG_REL_NS = "http://schemas.openxmlformats.org/package/2006/relationships"
_MAIN_NS = "http://schemas.openxmlformats.org/spreadsheetml/2006/main"

#: one row's values: a list when contiguous from column A, else column -> value
Cells = Union[list[float], dict[int, float]]
#: (0-based row index, cells, column count declared by <dimension> or None) per row
RowIterator = Iterator[tuple[int, Cells, Optional[int]]]


def column_index(letters: str) -> int:
    """0-based column index of spreadsheet column letters ("A" -> 0, "Z" -> 25, "AA" -> 26)."""
    n = 0
    for ch in letters:
        n = n * 26 + (ord(ch) - 64)
    return n - 1


def column_letters(index: int) -> str:
    """Spreadsheet column letters of a 0-based column index (inverse of `column_index`)."""
    letters = ""
    index += 1
    while index:
        index, rem = divmod(index - 1, 26)
        letters = chr(65 + rem) + letters
    return letters


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _first_sheet_part(z: zipfile.ZipFile) -> str:
    """Zip member name of the first worksheet (workbook order), following the workbook rels."""
    names = set(z.namelist())
    try:
        wb = ET.fromstring(z.read("xl/workbook.xml"))
        rels = ET.fromstring(z.read("xl/_rels/workbook.xml.rels"))
    except KeyError:
        wb = rels = None
    if wb is not None and rels is not None:
        sheet = next((e for e in wb.iter() if _local(e.tag) == "sheet"), None)
        if sheet is not None:
            rid = sheet.get(f"{{{_REL_NS}}}id") or next(
                (v for k, v in sheet.attrib.items() if _local(k) == "id"), None)
            for rel in rels:
                if rel.get("Id") == rid:
                    target = rel.get("Target", "").lstrip("/")
                    target = target if target.startswith("xl/") else f"xl/{target}"
                    if target in names:
                        return target
    candidates = sorted(n for n in names if n.startswith("xl/worksheets/") and n.endswith(".xml"))
    if not candidates:
        raise KeyError("no worksheet")
    return candidates[0]


def _shared_strings(z: zipfile.ZipFile) -> list[str]:
    try:
        handle = z.open("xl/sharedStrings.xml")
    except KeyError:
        return []
    out: list[str] = []
    with handle:
        for _, elem in ET.iterparse(handle, events=("end",)):
            if _local(elem.tag) == "si":
                # rich text splits one string into several <r><t> runs: join all <t> texts
                out.append("".join(t.text or "" for t in elem.iter() if _local(t.tag) == "t"))
                elem.clear()
    return out


def _to_float(text: str | None) -> float:
    if text is None or text.strip() == "":
        return 0.0
    try:
        return float(text)
    except ValueError:
        return float("nan")


def _row_cells(row: ET.Element, ns: str, strings: list[str], col_cache: dict[str, int]) -> Cells:
    """Values of one parsed <row>: a list when its cells run contiguously from column A (the common
    case), else a dict column -> value. ``ns`` is the "{namespace}" prefix of the tags."""
    c_tag, v_tag, is_tag, t_tag = ns + "c", ns + "v", ns + "is", ns + "t"
    values: list[float] = []
    sparse: dict[int, float] | None = None
    for pos, c in enumerate(row):
        if c.tag != c_tag:
            continue
        ref = c.get("r")
        if ref is None:
            col = pos
        else:
            letters = ref.rstrip("0123456789")
            col = col_cache.get(letters)
            if col is None:
                col = col_cache[letters] = column_index(letters)
        t = c.get("t")
        v = c.find(v_tag)
        if t is None or t == "n" or t == "str":
            value = _to_float(v.text if v is not None else None)
        elif t == "s":
            value = _to_float(strings[int(v.text)]) if v is not None and v.text else 0.0
        elif t == "inlineStr":
            node = c.find(is_tag)
            value = _to_float("".join(x.text or "" for x in node.iter(t_tag)) if node is not None else "")
        elif t == "b":
            value = 1.0 if v is not None and v.text == "1" else 0.0
        else:  # "e" (error) and anything unknown
            value = float("nan")
        if sparse is None and col == len(values):
            values.append(value)
        else:
            if sparse is None:
                sparse = dict(enumerate(values))
            sparse[col] = value
    return sparse if sparse is not None else values


def _iter_rows_xml(handle: IO[bytes], strings: list[str]) -> RowIterator:
    """Yield (0-based row index, cells, declared column count) per <row>, parsing with iterparse.

    The general path: any namespace prefix, any cell type.
    """
    ns: str | None = None
    next_row = 0
    width: int | None = None
    col_cache: dict[str, int] = {}
    for _, elem in ET.iterparse(handle, events=("end",)):
        tag = elem.tag
        if ns is None:
            ns = tag[: tag.index("}") + 1] if tag.startswith("{") else ""
        if tag == ns + "dimension":
            width = _dimension_width(elem.get("ref", ""))
        elif tag == ns + "row":
            r = elem.get("r")
            row_index = int(r) - 1 if r else next_row
            next_row = row_index + 1
            yield row_index, _row_cells(elem, ns, strings, col_cache), width
            elem.clear()  # keeps memory flat: processed rows stay as empty elements


def _dimension_width(ref: str) -> int | None:
    m = re.fullmatch(r"[A-Z]+\d+:([A-Z]+)\d+", ref)
    return column_index(m.group(1)) + 1 if m else None


_ROW_NUMBER = re.compile(rb'\br="(\d+)"')
_VALUE = re.compile(rb"<v>([^<]*)</v>")
_DIMENSION = re.compile(rb'<dimension ref="([^"]*)"')


def _iter_rows_fast(handle: IO[bytes], strings: list[str], head: bytes) -> RowIterator:
    """Like `_iter_rows_xml` for sheets written without namespace prefixes (Excel, LibreOffice,
    openpyxl, write_xlsx): the byte stream is cut at ``</row>``, and a row of plain numbers from
    column A on is converted without building XML elements (about 4x faster). Any other row is
    parsed as XML."""
    m = _DIMENSION.search(head)
    width = _dimension_width(m.group(1).decode()) if m else None
    col_cache: dict[str, int] = {}
    next_row = 0
    buf = head
    while True:
        chunk = handle.read(1 << 22)
        parts = (buf + chunk).split(b"</row>")
        buf = parts.pop()  # incomplete tail, completed by the next chunk
        for part in parts:
            start = part.rfind(b"<row")
            # earlier "<row" openings in the same part are empty rows written as <row .../>
            next_row += part.count(b"<row", 0, start)
            open_end = part.index(b">", start)
            rm = _ROW_NUMBER.search(part, start, open_end)
            row_index = int(rm.group(1)) - 1 if rm else next_row
            next_row = row_index + 1
            body = part[open_end + 1:]
            if b' t="' not in body and b"<f" not in body and body.startswith(b'<c r="A'):
                last_at = body.rfind(b'<c r="') + 6
                last = body[last_at: body.index(b'"', last_at)].rstrip(b"0123456789").decode()
                if last not in col_cache:
                    col_cache[last] = column_index(last)
                vals = _VALUE.findall(body)
                # refs strictly increase in a valid sheet, so A..last with that many cells is contiguous
                if len(vals) == body.count(b"<c ") == col_cache[last] + 1:
                    try:
                        cells = list(map(float, vals))
                    except ValueError:  # empty <v/> or odd text: the XML path handles it
                        cells = None
                    if cells is not None:
                        yield row_index, cells, width
                        continue
            yield row_index, _row_cells(ET.fromstring(b"<row>" + body + b"</row>"), "", strings, col_cache), width
        if not chunk:
            return


def _iter_rows(handle: IO[bytes], strings: list[str]) -> RowIterator:
    """Pick the fast path when the sheet's tags carry no namespace prefix, else full XML parsing."""
    head = handle.read(1 << 16)
    start = head.find(b"<sheetData")
    if start >= 0:
        yield from _iter_rows_fast(handle, strings, head)
        return
    yield from _iter_rows_xml(_Prepend(head, handle), strings)


class _Prepend:
    """A read-only stream: ``head`` bytes already read, then the rest of ``handle``."""

    def __init__(self, head: bytes, handle: IO[bytes]):
        self._head, self._handle = head, handle

    def read(self, n: int = -1) -> bytes:
        if self._head:
            out, self._head = (self._head, b"") if n < 0 or n >= len(self._head) else (self._head[:n], self._head[n:])
            return out
        return self._handle.read(n)


def _old_read_xlsx(path: str | Path, *, progress: bool = False, expected_rows: int | None = None) -> np.ndarray:
    """Read the first sheet of an xlsx file into a (T, C) float32 array.

    T = last non-empty row, C = the sheet's declared width (``<dimension>``) or the widest row.
    Missing rows and cells are 0. A file with no rows gives a (0, 0) array. UserError when the file
    is not a readable xlsx. ``expected_rows`` only sizes the progress bar.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"xlsx file {path} does not exist; check the path")
    try:
        with zipfile.ZipFile(path) as z:
            strings = _shared_strings(z)
            part = _first_sheet_part(z)
            rows: list[tuple[int, Cells]] = []
            width = 0
            declared: int | None = None
            with z.open(part) as handle, tqdm(total=expected_rows, disable=None if progress else True,
                                              unit="row", desc=path.name, leave=False) as bar:
                for row_index, cells, declared in _iter_rows(handle, strings):
                    if cells:
                        rows.append((row_index, cells))
                        width = max(width, (max(cells) + 1) if isinstance(cells, dict) else len(cells))
                    bar.update(1)
    except (zipfile.BadZipFile, KeyError, ET.ParseError, OSError, ValueError, IndexError) as e:
        raise UserError(f"{path} is not a readable xlsx file ({type(e).__name__}: {e}); "
                        f"re-download or re-export it") from None
    if not rows:
        return np.zeros((0, 0), dtype=np.float32)
    width = max(width, declared or 0)
    out = np.zeros((max(r for r, _ in rows) + 1, width), dtype=np.float32)
    for row_index, cells in rows:
        if isinstance(cells, dict):
            for col, value in cells.items():
                out[row_index, col] = value
        else:
            out[row_index, : len(cells)] = cells
    return out


# ----- writer ------------------------------------------------------------------------------------

_CONTENT_TYPES = """<?xml version="1.0" encoding="UTF-8" standalone="yes"?>
<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">
<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>
<Default Extension="xml" ContentType="application/xml"/>
<Override PartName="/xl/workbook.xml" \
ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml"/>
<Override PartName="/xl/worksheets/sheet1.xml" \
ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.worksheet+xml"/>
<Override PartName="/xl/styles.xml" \
ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.styles+xml"/>
<Override PartName="/docProps/core.xml" ContentType="application/vnd.openxmlformats-package.core-properties+xml"/>
<Override PartName="/docProps/app.xml" \
ContentType="application/vnd.openxmlformats-officedocument.extended-properties+xml"/>
</Types>"""
_ROOT_RELS = f"""<?xml version="1.0" encoding="UTF-8" standalone="yes"?>
<Relationships xmlns="{_PKG_REL_NS}">
<Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument" \
Target="xl/workbook.xml"/>
<Relationship Id="rId2" Type="http://schemas.openxmlformats.org/package/2006/relationships/metadata/core-properties" \
Target="docProps/core.xml"/>
<Relationship Id="rId3" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/extended-properties" \
Target="docProps/app.xml"/>
</Relationships>"""
_WORKBOOK = f"""<?xml version="1.0" encoding="UTF-8" standalone="yes"?>
<workbook xmlns="{_MAIN_NS}" xmlns:r="{_REL_NS}">
<sheets><sheet name="{{name}}" sheetId="1" r:id="rId1"/></sheets>
</workbook>"""
_WORKBOOK_RELS = f"""<?xml version="1.0" encoding="UTF-8" standalone="yes"?>
<Relationships xmlns="{_PKG_REL_NS}">
<Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/worksheet" \
Target="worksheets/sheet1.xml"/>
<Relationship Id="rId2" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/styles" \
Target="styles.xml"/>
</Relationships>"""
# The smallest style sheet Excel accepts: one font, the two mandatory fills, one border, one format.
_STYLES = f"""<?xml version="1.0" encoding="UTF-8" standalone="yes"?>
<styleSheet xmlns="{_MAIN_NS}">
<fonts count="1"><font><sz val="11"/><name val="Calibri"/></font></fonts>
<fills count="2"><fill><patternFill patternType="none"/></fill><fill><patternFill patternType="gray125"/></fill></fills>
<borders count="1"><border><left/><right/><top/><bottom/><diagonal/></border></borders>
<cellStyleXfs count="1"><xf numFmtId="0" fontId="0" fillId="0" borderId="0"/></cellStyleXfs>
<cellXfs count="1"><xf numFmtId="0" fontId="0" fillId="0" borderId="0" xfId="0"/></cellXfs>
<cellStyles count="1"><cellStyle name="Normal" xfId="0" builtinId="0"/></cellStyles>
</styleSheet>"""
_CORE = """<?xml version="1.0" encoding="UTF-8" standalone="yes"?>
<cp:coreProperties xmlns:cp="http://schemas.openxmlformats.org/package/2006/metadata/core-properties" xmlns:dc="http://purl.org/dc/elements/1.1/"><dc:creator>migfuse</dc:creator></cp:coreProperties>"""
_APP = """<?xml version="1.0" encoding="UTF-8" standalone="yes"?>
<Properties xmlns="http://schemas.openxmlformats.org/officeDocument/2006/extended-properties"><Application>migfuse</Application></Properties>"""



if __name__ == "__main__":
    main()
