"""The one new-file writer: create-only or replace, final mode, nothing left behind."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from osp_server.pki.files import FileWriteError, write_new_file


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _no_link(src: object, dst: object) -> None:
    raise OSError(errno.EPERM, "Operation not permitted")  # a file system without hard links


@pytest.mark.parametrize("mode", [0o600, 0o644])
def test_creates_with_the_mode_whatever_the_umask(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "f.pem"
    old_umask = os.umask(0o077 if mode == 0o644 else 0)
    try:
        write_new_file(path, b"data", mode, "test file")
    finally:
        os.umask(old_umask)
    assert path.read_bytes() == b"data"
    assert _mode(path) == mode
    assert [p.name for p in tmp_path.iterdir()] == ["f.pem"]


def test_never_overwrites_by_default(tmp_path: Path) -> None:
    path = tmp_path / "f.pem"
    path.write_bytes(b"precious")
    with pytest.raises(FileWriteError, match="test file already exists; refusing to overwrite"):
        write_new_file(path, b"new", 0o600, "test file")
    assert path.read_bytes() == b"precious"
    assert [p.name for p in tmp_path.iterdir()] == ["f.pem"]


def test_a_dangling_symlink_is_not_followed(tmp_path: Path) -> None:
    path = tmp_path / "f.pem"
    path.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(FileWriteError, match="already exists"):
        write_new_file(path, b"new", 0o600, "test file")
    assert not (tmp_path / "elsewhere").exists()


def test_replace_swaps_the_whole_file(tmp_path: Path) -> None:
    path = tmp_path / "f.pem"
    path.write_bytes(b"old contents, longer than the new ones")
    path.chmod(0o600)
    write_new_file(path, b"new", 0o644, "test file", replace=True)
    assert path.read_bytes() == b"new"
    assert _mode(path) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["f.pem"]


def test_without_hard_links_an_exclusive_create_is_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "link", _no_link)
    path = tmp_path / "f.pem"
    write_new_file(path, b"data", 0o600, "test file")
    assert path.read_bytes() == b"data"
    assert _mode(path) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["f.pem"]


def test_failures_name_the_file_and_leave_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "absent" / "f.pem"
    with pytest.raises(FileWriteError, match="cannot create the test file") as info:
        write_new_file(missing, b"data", 0o600, "test file")
    assert info.value.path == missing
    assert str(missing) in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_a_failed_replace_keeps_the_old_name_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "f.pem"
    target.mkdir()  # os.replace cannot put a file over a directory
    with pytest.raises(FileWriteError, match="cannot write the test file"):
        write_new_file(target, b"data", 0o644, "test file", replace=True)
    assert target.is_dir()
    assert [p.name for p in tmp_path.iterdir()] == ["f.pem"]


def test_a_failed_exclusive_create_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_fsync = os.fsync
    calls: list[int] = []

    def fsync_once(fd: int) -> None:
        calls.append(fd)
        if len(calls) > 1:  # the temporary file syncs; the fallback's copy does not
            raise OSError(errno.EIO, "Input/output error")
        real_fsync(fd)

    monkeypatch.setattr(os, "link", _no_link)
    monkeypatch.setattr(os, "fsync", fsync_once)
    with pytest.raises(FileWriteError, match="cannot write the test file: Input/output error"):
        write_new_file(tmp_path / "f.pem", b"data", 0o600, "test file")
    assert list(tmp_path.iterdir()) == []
