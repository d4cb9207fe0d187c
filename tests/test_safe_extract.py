"""tests/safe_extract.py: archives unpacked by the tests keep their protection on Python 3.11.0-3.11.3,
where `extractall(filter="data")` does not exist. A bad member is planted in a tar made here, and the
refusal names it before anything is written, inside or outside the folder."""
from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from safe_extract import UnsafeArchiveError, extract_tar


def _tar(path: Path, *members: tarfile.TarInfo, data: bytes = b"{}") -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for m in members:
            if m.isreg():
                m.size = len(data)
                tar.addfile(m, io.BytesIO(data))
            else:
                tar.addfile(m)
    return path


def _member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    m = tarfile.TarInfo(name)
    m.type = kind
    m.linkname = linkname
    return m


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_regular_files_and_folders_are_written_and_a_part_can_be_chosen(tmp_path):
    archive = _tar(tmp_path / "ok.tar.gz", _member("298", tarfile.DIRTYPE), _member("298/a.json"),
                   _member("298/sub/b.json"), _member("298/../298/c.json"), data=b'{"people": []}')
    dest = tmp_path / "dest"
    with tarfile.open(archive) as tar:
        written = extract_tar(tar, dest)
    assert _files(dest) == ["298", "298/a.json", "298/c.json", "298/sub", "298/sub/b.json"]
    assert [p.name for p in written] == ["a.json", "b.json", "c.json"]
    assert (dest / "298" / "sub" / "b.json").read_bytes() == b'{"people": []}'
    with tarfile.open(archive) as tar:
        extract_tar(tar, tmp_path / "part", members=[m for m in tar if m.name.endswith("a.json")])
    assert _files(tmp_path / "part") == ["298", "298/a.json"]


@pytest.mark.parametrize("bad, why", [
    (_member("../escape.json"), "would be written to {tmp}/escape.json, outside {tmp}/dest"),
    (_member("298/../../escape.json"), "would be written to {tmp}/escape.json, outside {tmp}/dest"),
    (_member("{tmp}/escape.json"), "has an absolute path"),
    (_member("298/link", tarfile.SYMTYPE, "../../escape.json"), "is a symbolic link (to '../../escape.json')"),
    (_member("298/inside-link", tarfile.SYMTYPE, "a.json"), "is a symbolic link (to 'a.json')"),
    (_member("298/hard", tarfile.LNKTYPE, "298/a.json"), "is a hard link (to '298/a.json')"),
    (_member("298/null", tarfile.CHRTYPE), "is a device"),
    (_member("298/disk", tarfile.BLKTYPE), "is a device"),
    (_member("298/pipe", tarfile.FIFOTYPE), "is a FIFO"),
], ids=["dotdot", "nested-dotdot", "absolute", "symlink-out", "symlink-in", "hardlink", "chr", "blk", "fifo"])
def test_an_unsafe_member_is_refused_by_name_and_nothing_is_written(tmp_path, bad, why):
    tmp = os.path.realpath(tmp_path)
    bad.name = bad.name.format(tmp=tmp)
    # the bad member comes after a good one: the check must run before the first file is written
    archive = _tar(tmp_path / "bad.tar.gz", _member("298/a.json"), bad)
    dest = tmp_path / "dest"
    with tarfile.open(archive) as tar, pytest.raises(UnsafeArchiveError) as err:
        extract_tar(tar, dest)
    assert str(err.value) == (f"{archive}: member {bad.name!r} {why.format(tmp=tmp)}; "
                              f"refusing to unpack it (nothing was written to {dest})")
    assert _files(dest) == []
    assert _files(tmp_path) == ["bad.tar.gz", "dest"]


def test_a_link_already_in_the_folder_does_not_lead_a_member_outside(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "298").symlink_to(outside, target_is_directory=True)
    archive = _tar(tmp_path / "a.tar.gz", _member("298/a.json"))
    with tarfile.open(archive) as tar, pytest.raises(UnsafeArchiveError, match=r"member '298/a.json' would be "
                                                                                 r"written to .*/outside/a.json"):
        extract_tar(tar, dest)
    assert _files(outside) == []


def test_extraction_does_not_depend_on_extractall_or_its_filter_keyword(tmp_path, monkeypatch):
    """On 3.11.0-3.11.3 `extractall(filter=...)` is a TypeError: the helper must not need it."""
    def absent(*args, **kwargs):
        raise AssertionError("extract_tar called TarFile.extract/extractall")

    monkeypatch.setattr(tarfile.TarFile, "extractall", absent)
    monkeypatch.setattr(tarfile.TarFile, "extract", absent)
    archive = _tar(tmp_path / "a.tar.gz", _member("298/a.json"))
    with tarfile.open(archive) as tar:
        extract_tar(tar, tmp_path / "dest")
    assert _files(tmp_path / "dest") == ["298", "298/a.json"]
