"""Writing key and certificate files: complete or not at all, durable, never readable early.

One writer for the server's CA, TLS and token-signer files (:mod:`osp_server.pki.ca`) and
the device files ``osp-enroll`` saves (:mod:`osp_server.client.enroll`). The data goes
to a private temporary file beside the target (``mkstemp`` creates it 0600), which gets
its final mode, is written and fsynced, and only then takes the target's name; the
directory is fsynced last, so the name survives a crash too. Stdlib only, no Twisted.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

__all__ = [
    "FileWriteError",
    "fsync_directory",
    "make_private_directory",
    "make_private_file",
    "remove_world_access",
    "write_new_file",
]

PRIVATE_DIRECTORY_MODE = 0o700
PRIVATE_FILE_MODE = 0o600


class FileWriteError(Exception):
    """*path* was not written; the message names the file, what it is and why."""

    def __init__(self, message: str, path: Path) -> None:
        super().__init__(message)
        self.path = path


def _exists(path: Path, what: str) -> FileWriteError:
    return FileWriteError(f"{path}: {what} already exists; refusing to overwrite it", path)


def make_private_directory(directory: Path) -> bool:
    """Create ``directory`` (and missing parents) owner-only, whatever the umask; an
    existing one is left as the operator made it.  True when it was created."""
    if directory.is_dir():
        return False
    missing = [directory, *(p for p in directory.parents if not p.exists())]
    directory.mkdir(mode=PRIVATE_DIRECTORY_MODE, parents=True, exist_ok=True)
    for created in missing:
        if created.is_dir():
            os.chmod(created, PRIVATE_DIRECTORY_MODE)
    return True


def make_private_file(path: Path) -> bool:
    """Create the file ``path`` owner-only (0600) whatever the umask, unless it exists
    (then it is left alone: see :func:`remove_world_access`).  True when created."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, PRIVATE_FILE_MODE)
    except FileExistsError:
        return False
    os.close(fd)
    # The umask may have dropped owner bits from the requested mode.
    os.chmod(path, PRIVATE_FILE_MODE)
    return True


def remove_world_access(path: Path) -> bool:
    """Take other users' access to an existing ``path`` away; group bits stay (an
    operator may share the file with a backup group on purpose).  True when changed;
    PermissionError when this process does not own the file."""
    mode = path.stat().st_mode & 0o777
    if mode & 0o007 == 0:
        return False
    os.chmod(path, mode & ~0o007)
    return True


def fsync_directory(directory: Path) -> None:
    """Make a new name in ``directory`` durable (errors ignored: not every file
    system can fsync a directory)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_new_file(path: Path, data: bytes, mode: int, what: str, *, replace: bool = False) -> None:
    """Write *data* to *path* with *mode*; *what* names the file in error messages.

    By default *path* is created, never replaced: the temporary file is hard-linked
    into place, which fails when the name exists (where the file system has no hard
    links, an ``O_EXCL`` create refuses the same way). With ``replace=True`` an existing
    *path* is atomically replaced (``os.replace``): readers see the old file or the new
    one, never a mix. Raises :class:`FileWriteError`, and nothing is left behind.
    """
    if not replace and (path.exists() or path.is_symlink()):
        raise _exists(path, what)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise FileWriteError(f"{path}: cannot create the {what}: {exc.strerror}", path) from exc
    tmp: Path | None = Path(tmp_name)
    try:
        _write_and_sync(fd, data, mode)
        if replace:
            os.replace(tmp_name, path)
            tmp = None
        else:
            try:
                os.link(tmp_name, path)
            except FileExistsError:
                raise _exists(path, what) from None
            except OSError:
                # No hard links on this file system: O_EXCL still refuses to overwrite
                # and creates the file with *mode* at most.
                _write_exclusive(path, data, mode, what)
    except OSError as exc:
        raise FileWriteError(f"{path}: cannot write the {what}: {exc.strerror}", path) from exc
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                tmp.unlink()
    fsync_directory(path.parent)


def _write_exclusive(path: Path, data: bytes, mode: int, what: str) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise _exists(path, what) from None
    try:
        _write_and_sync(fd, data, mode)
    except BaseException:
        with contextlib.suppress(OSError):
            path.unlink()  # ours: O_EXCL created it
        raise


def _write_and_sync(fd: int, data: bytes, mode: int) -> None:
    """Give the open file *mode*, write *data*, flush it to disk and close it."""
    with os.fdopen(fd, "wb") as handle:
        os.fchmod(handle.fileno(), mode)
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
