"""Files holding secrets are owner-only whatever the umask (SECURITY: the SQLite file
has password hashes and call records): the data directory 0700 when we create it, the
database 0600 and, through SQLite, its -wal and -shm files too."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from osp_server.app import prepare
from osp_server.pki.files import make_private_directory, make_private_file
from osp_server.storage.db import create_db_engine
from tests.conftest import make_config
from tests.memory import MemoryReactor


@pytest.fixture(autouse=True)
def permissive_umask() -> Iterator[None]:
    """The umask a shell usually has: files 0644 and directories 0755 by default."""
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_new_sqlite_database_and_its_wal_are_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "new" / "dir" / "osp.sqlite3"
    engine = create_db_engine(f"sqlite:///{path}")
    try:
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE t (x INTEGER)"))
            conn.execute(text("INSERT INTO t VALUES (1)"))
        with engine.connect() as conn:
            assert conn.execute(text("SELECT x FROM t")).scalar() == 1
            wal = path.with_name(path.name + "-wal")
            shm = path.with_name(path.name + "-shm")
            assert wal.exists() and shm.exists()
            assert {_mode(path), _mode(wal), _mode(shm)} == {0o600}
    finally:
        engine.dispose()
    assert _mode(path.parent) == 0o700
    assert _mode(path.parent.parent) == 0o700


def test_an_existing_database_loses_world_access_and_keeps_its_group(tmp_path: Path) -> None:
    path = tmp_path / "osp.sqlite3"
    wal = tmp_path / "osp.sqlite3-wal"
    for file in (path, wal):
        file.write_bytes(b"")
        file.chmod(0o664)
    create_db_engine(f"sqlite:///{path}").dispose()
    # Group access may be an operator's choice (a backup group); others' never is.
    assert _mode(path) == 0o660 and _mode(wal) == 0o660


def test_the_data_directory_is_created_owner_only(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    assert not config.data_dir.exists()
    core = prepare(config, MemoryReactor())
    core.db.stop()
    assert _mode(config.data_dir) == 0o700
    assert _mode(config.data_dir / "osp.sqlite3") == 0o600


def test_an_operators_existing_directory_is_left_as_it_is(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o750)
    shared.chmod(0o750)
    assert make_private_directory(shared) is False
    assert _mode(shared) == 0o750


def test_make_private_file_creates_owner_only_and_leaves_existing_files(tmp_path: Path) -> None:
    path = tmp_path / "f"
    assert make_private_file(path) is True
    assert _mode(path) == 0o600
    path.chmod(0o640)
    assert make_private_file(path) is False
    assert _mode(path) == 0o640
