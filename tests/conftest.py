"""Fixtures shared by every test package: vectors, database URLs for both engines, configs."""

from __future__ import annotations

import os
import secrets
import shutil
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from argon2 import PasswordHasher

from osp_server import passwords
from osp_server.config import Config, parse_config
from osp_server.pki.ca import generate_private_key as PRODUCTION_GENERATE_PRIVATE_KEY
from osp_server.storage.db import Database, create_db_engine, upgrade_schema

REPO = Path(__file__).resolve().parents[1]
POSTGRES_ADMIN_URL = os.environ.get(
    "OSP_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto``: two workers per core.  Much of the suite waits rather than computes
    (PostgreSQL's disk, subprocesses starting, TLS handshakes that must time out)."""
    return 2 * (os.cpu_count() or 1)


VECTORS = REPO / "tests" / "vectors"
"""The captured client traffic, kept in the repository (see tests/vectors/README.md)."""


@pytest.fixture
def vectors() -> Path:
    """The captured client traffic."""
    return VECTORS


class _PostgresServer:
    """Creates and drops test databases on the PostgreSQL server the tests use.

    Every test gets a database of its own, created before it and dropped after it.
    CREATE DATABASE is mostly waiting for PostgreSQL's disk (about 0.2 s here), so a
    background thread keeps the next ones ready and drops the used ones while the
    tests run.
    """

    PREFETCH = 2

    def __init__(self) -> None:
        from sqlalchemy import create_engine

        self.admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
        self._background = ThreadPoolExecutor(max_workers=1, thread_name_prefix="test-pg")
        self._ready: deque[Future[str]] = deque()
        self._pending: list[Future[None]] = []

    def url(self, name: str) -> str:
        return POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + "/" + name

    def _create(self) -> str:
        from sqlalchemy import text

        name = f"osp_test_{secrets.token_hex(6)}"
        with self.admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        return name

    def _drop(self, name: str) -> None:
        from sqlalchemy import text

        with self.admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

    @staticmethod
    def _reachable(make: Callable[[], str]) -> str:
        """``make()``, or skip (fail in CI) when the server is unreachable."""
        from sqlalchemy.exc import OperationalError

        try:
            return make()
        except OperationalError as e:
            if os.environ.get("CI"):
                pytest.fail(f"PostgreSQL is required in CI but unreachable: {e}")
            pytest.skip(f"PostgreSQL not reachable at {POSTGRES_ADMIN_URL} (set CI to require it)")

    def create(self) -> str:
        """A new, empty database."""
        return self._reachable(self._create)

    def create_migrated(self) -> str:
        """A new database (one of those created ahead of time) migrated to head.

        Alembic is not thread-safe (module-level ``op`` and ``context``), so the
        migrations run here, on the test's thread.  (Copying a migrated template
        database measured slower than migrating an empty one: 0.28 s against 0.15 s.)
        """
        if not self._ready:
            self._ready.append(self._background.submit(self._create))
        ready = self._ready.popleft()
        while len(self._ready) < self.PREFETCH:
            self._ready.append(self._background.submit(self._create))
        name = self._reachable(ready.result)
        engine = create_db_engine(self.url(name))
        try:
            upgrade_schema(engine)
        finally:
            engine.dispose()
        return name

    def drop(self, name: str) -> None:
        """Drop ``name`` in the background (forcibly closing what still uses it)."""
        self._pending.append(self._background.submit(self._drop, name))

    def close(self) -> None:
        """Drop what was made ahead and not used; wait for every drop."""
        for ready in self._ready:
            try:
                self.drop(ready.result())
            except Exception:
                pass
        self._background.shutdown(wait=True)
        for pending in self._pending:
            pending.result()
        self.admin.dispose()


@pytest.fixture(scope="session")
def _postgres() -> Iterator[_PostgresServer]:
    server = _PostgresServer()
    yield server
    server.close()


@pytest.fixture(scope="session")
def _sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file migrated to head once per session (WAL mode is kept in the file)."""
    path = tmp_path_factory.mktemp("template") / "osp.sqlite3"
    engine = create_db_engine(f"sqlite:///{path}")
    try:
        upgrade_schema(engine)
    finally:
        engine.dispose()  # the last connection to close checkpoints the WAL into the file
    wal = path.with_name(path.name + "-wal")
    assert not wal.exists() or wal.stat().st_size == 0, "template WAL not checkpointed"
    return path


def _engine_database(
    request: pytest.FixtureRequest, tmp_path: Path, *, migrated: bool
) -> Iterator[str]:
    if request.param == "sqlite":
        path = tmp_path / "osp.sqlite3"
        if migrated:
            shutil.copyfile(request.getfixturevalue("_sqlite_template"), path)
        yield f"sqlite:///{path}"
        return
    postgres: _PostgresServer = request.getfixturevalue("_postgres")
    name = postgres.create_migrated() if migrated else postgres.create()
    try:
        yield postgres.url(name)
    finally:
        postgres.drop(name)


ENGINES = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


@pytest.fixture(params=ENGINES)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh database per engine, already migrated to head: SQLite in tmp_path (a
    copy of a file migrated once per session); PostgreSQL created, migrated, and dropped
    around the test."""
    yield from _engine_database(request, tmp_path, migrated=True)


@pytest.fixture(params=ENGINES)
def empty_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh database per engine with no schema at all, for migration tests."""
    yield from _engine_database(request, tmp_path, migrated=False)


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    """A migrated database on each engine, used from the calling thread (no reactor)."""
    database = Database(create_db_engine(database_url), None)
    yield database
    database.stop()


def make_config(tmp_path: Path, database_url: str | None = None, **sections: Any) -> Config:
    """A config rooted in tmp_path with loopback port-0 listeners."""
    document: dict[str, Any] = {
        "server": {"data_dir": str(tmp_path / "data")},
        "listeners": {
            "http": "tcp:0:interface=127.0.0.1",
            "https": "tcp:0:interface=127.0.0.1",
            "metrics": "",
        },
    }
    if database_url is not None:
        document["database"] = {"url": database_url}
    for name, values in sections.items():
        document.setdefault(name, {}).update(values)
    return parse_config(document, source="<test>", base=tmp_path)


# --- test-speed fixtures: the same code paths, cheaper inputs --------------------------

PRODUCTION_PROFILES = dict(passwords.PROFILES)
"""The hashers the server uses; tests check their parameters (test_passwords_profile)."""

_TEST_HASHER = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)


@pytest.fixture(autouse=True)
def cheap_password_hashing(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """argon2id with small parameters under every profile name: every test that adds a
    device or enrolls one paid ~0.3 s for RFC 9106 parameters. The hashing and
    verifying code paths are unchanged; subprocess tests (reliability, packaging) keep
    real parameters."""
    monkeypatch.setattr(passwords, "PROFILES", dict.fromkeys(PRODUCTION_PROFILES, _TEST_HASHER))
    passwords._dummy_hash.cache_clear()
    yield
    passwords._dummy_hash.cache_clear()


_KEY_POOL_SIZE = 6
_key_pool: dict[str, list[Any]] = {}


@pytest.fixture(autouse=True)
def pooled_private_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    """Server-side keys (CA, HTTPS, token signer) from a per-session pool: RSA key
    generation dominated every server start-up in tests. Within one test, successive
    keys of a type are distinct (a round robin over the pool)."""
    from osp_server.pki import ca
    from osp_server.tls import issued

    generate = PRODUCTION_GENERATE_PRIVATE_KEY
    counters: dict[str, int] = {}

    def pooled(key_type: Any) -> Any:
        pool = _key_pool.setdefault(key_type, [])
        index = counters.get(key_type, 0) % _KEY_POOL_SIZE
        counters[key_type] = index + 1
        while len(pool) <= index:
            pool.append(generate(key_type))
        return pool[index]

    monkeypatch.setattr(ca, "generate_private_key", pooled)
    monkeypatch.setattr(issued, "generate_private_key", pooled)


# --- SoftHSM2: the PKCS#11 token the HSM tests use -------------------------------------

SOFTHSM_MODULES = (
    Path("/usr/lib/softhsm/libsofthsm2.so"),
    Path("/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so"),
    Path("/usr/local/lib/softhsm/libsofthsm2.so"),
)


@dataclass(frozen=True)
class SoftHSM:
    """A SoftHSM2 token initialised for this test process."""

    module: Path
    token_label: str
    pin_file: Path

    def config(self) -> dict[str, str]:
        """The ``[pkcs11]`` section for it."""
        return {
            "module": str(self.module),
            "token_label": self.token_label,
            "pin_file": str(self.pin_file),
        }


@pytest.fixture(scope="session")
def softhsm(tmp_path_factory: pytest.TempPathFactory) -> SoftHSM:
    """One token per test process (SoftHSM2 reads its token directory once, when the
    process first loads it): tests tell their keys apart by label.  Skipped with the
    reason where SoftHSM2 is not installed, but a failure in CI, which installs it."""
    import subprocess

    module = next((m for m in SOFTHSM_MODULES if m.exists()), None)
    util = shutil.which("softhsm2-util")
    if module is None or util is None:
        message = "SoftHSM2 is not installed (Debian: apt-get install softhsm2)"
        if os.environ.get("CI"):
            pytest.fail(message + "; .ci/run installs it")
        pytest.skip(message)
    directory = tmp_path_factory.mktemp("softhsm")
    (directory / "tokens").mkdir()
    conf = directory / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {directory / 'tokens'}\nobjectstore.backend = file\n"
        "log.level = ERROR\n"
    )
    os.environ["SOFTHSM2_CONF"] = str(conf)
    subprocess.run(
        [util, "--init-token", "--free", "--label", "osp-test", "--pin", "1234", "--so-pin",
         "5678"],
        check=True, capture_output=True, env=os.environ,
    )  # fmt: skip
    pin_file = directory / "pin"
    pin_file.write_text("1234\n")
    pin_file.chmod(0o600)
    return SoftHSM(module, "osp-test", pin_file)
