"""osp-admin on both engines: customers, devices, certificates, CA, and error paths."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from osp_server import passwords
from osp_server.admin.cli import main
from tests.unit.admin_runner import AdminRunner, write_config

Run = AdminRunner


@pytest.fixture
def run(tmp_path: Path, database_url: str) -> Run:
    path = tmp_path / "osp.toml"
    path.write_text(f'[server]\ndata_dir = "data"\n[database]\nurl = "{database_url}"\n')
    return Run(path)


def test_customer_and_device_lifecycle(run: Run) -> None:
    assert run.json("customer", "add", "1000", "--name", "Acme")["customer_id"] == "1000"
    device = run.json(
        "device",
        "add",
        "1000",
        "1000",
        "--username",
        "trans",
        "--password-stdin",
        stdin="nexus\n",
    )
    assert device["state"] == "active" and device["password_set"] is True
    listed = run.json("device", "list")
    assert [(d["customer_id"], d["device_id"]) for d in listed] == [("1000", "1000")]
    assert run.json("device", "disable", "1000", "1000")["state"] == "disabled"
    assert run.json("device", "enable", "1000", "1000")["state"] == "active"
    shown = run.json("device", "show", "1000", "1000")
    assert shown["certificates"] == []
    code, out, _ = run("device", "list")
    assert code == 0 and "CUSTOMER_ID" in out and "trans" in out
    code, out, _ = run("customer", "list")
    assert code == 0 and "Acme" in out


def test_password_is_hashed_with_argon2id(run: Run, tmp_path: Path) -> None:
    run.json("customer", "add", "1")
    run.json("device", "add", "1", "2", "--username", "u", "--password-stdin", stdin="s3cret\n")
    from osp_server.admin.context import Context
    from osp_server.config import load_config
    from osp_server.storage import devices

    ctx = Context(
        config=load_config(run.config_path), out=io.StringIO(), as_json=True, stdin=io.StringIO()
    )
    device = ctx.db.transact_sync(devices.get_device, "1", "2")
    ctx.close()
    assert device.password_hash is not None and device.password_hash.startswith("$argon2id$")
    assert passwords.verify_secret(device.password_hash, "s3cret")
    assert not passwords.verify_secret(device.password_hash, "wrong")


def test_generated_secret_is_shown_once(run: Run) -> None:
    run.json("customer", "add", "1")
    device = run.json("device", "add", "1", "5", "--username", "gw", "--generate-secret")
    secret = device["one_time_secret"]
    assert len(secret) == 20 and secret.isalnum()
    assert device["one_time_secret_expires"] is not None
    assert "one_time_secret" not in run.json("device", "show", "1", "5")
    from osp_server.admin.context import Context
    from osp_server.config import load_config
    from osp_server.storage import devices

    ctx = Context(
        config=load_config(run.config_path), out=io.StringIO(), as_json=True, stdin=io.StringIO()
    )
    stored = ctx.db.transact_sync(devices.get_device, "1", "5").secret_hash
    ctx.close()
    # A keyed hash, not argon2id: the secret is random, and checking it must be cheap.
    assert stored is not None and stored.startswith("hmac-sha256$")
    assert passwords.verify_one_time_secret(stored, secret)
    wrong = secret[:-1] + ("y" if secret[-1] != "y" else "z")  # differs in its last letter
    assert not passwords.verify_one_time_secret(stored, wrong)


@pytest.mark.parametrize(
    ("argv", "stdin", "message"),
    [
        (("customer", "add", "12x"), "", "customer id must be 1 to 20 digits"),
        (("device", "add", "1", "2", "--username", "u", "--password-stdin"), "", "no password"),
        (
            ("device", "add", "9", "2", "--username", "u", "--password-stdin"),
            "pw\n",
            "customer 9 does not exist",
        ),
        (
            ("device", "add", "1", "2x", "--username", "u", "--password-stdin"),
            "pw\n",
            "device id must be 1 to 20 digits",
        ),
        (("device", "add", "1", "2", "--username", "u"), "", "no terminal"),
        (
            ("device", "add", "1", "2", "--username", "u", "--password-stdin"),
            "p w\n",
            "printable ASCII",
        ),
        (("device", "show", "1", "77"), "", "device 77 of customer 1 does not exist"),
        (("device", "disable", "1", "77"), "", "does not exist"),
        (("customer", "add", "1"), "", "customer 1 already exists"),
    ],
)
def test_errors_are_one_line_and_non_zero(
    run: Run, argv: tuple[str, ...], stdin: str, message: str
) -> None:
    run.json("customer", "add", "1")
    code, out, err = run(*argv, stdin=stdin)
    assert code == 1
    assert message in err
    assert err.count("\n") == 1 and err.startswith("osp-admin: error: ")
    assert "Traceback" not in err + out


def test_bad_config_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "osp.toml"
    path.write_text("[ca]\nkey_type = 'dsa'\n")
    err = io.StringIO()
    assert main(["--config", str(path), "customer", "list"], stderr=err) == 1
    assert "ca.key_type" in err.getvalue() and str(path) in err.getvalue()


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["nonsense"]) == 2
    assert "invalid choice" in capsys.readouterr().err


def test_ca_init_show_and_cert_list(run: Run) -> None:
    created = run.json("ca", "init")
    assert created["created"] is True
    md5 = created["md5_fingerprint"]
    assert len(md5) == 32 and all(c in "0123456789abcdef" for c in md5)
    assert created["sha256_fingerprint"].count(":") == 31
    again = run.json("ca", "init")
    assert again["created"] is False and again["md5_fingerprint"] == md5
    shown = run.json("ca", "show")
    assert shown["sha256_fingerprint"] == created["sha256_fingerprint"]
    assert run.json("cert", "list") == []


def test_db_upgrade_and_status(tmp_path: Path, empty_database_url: str) -> None:
    run = Run(write_config(tmp_path, empty_database_url))
    upgraded = run.json("db", "upgrade")
    assert upgraded == {
        "schema_revision": "0009",
        "applied": ["0001", "0002", "0003", "0004", "0005", "0006", "0007", "0008", "0009"],
    }
    assert run.json("db", "upgrade") == {"schema_revision": "0009", "applied": []}
    status = run.json("db", "status")
    assert status["up_to_date"] is True


class _ClosedPipe(io.StringIO):
    """stdout of `osp-admin … | head` once head has exited."""

    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")


def test_a_closed_pipe_ends_quietly(run: Run) -> None:
    run.json("customer", "add", "1000")
    err = io.StringIO()
    code = main(
        ["--config", str(run.config_path), "customer", "list"], stdout=_ClosedPipe(), stderr=err
    )
    assert code == 0 and err.getvalue() == ""


def test_json_is_accepted_after_the_command_and_version_is_shown(
    run: Run, capsys: pytest.CaptureFixture[str]
) -> None:
    run.json("customer", "add", "1000")
    code, out, _ = run("customer", "list", "--json")
    assert code == 0 and out.lstrip().startswith("[")
    from osp_server import __version__

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"osp-admin {__version__}"


def test_every_administrative_change_is_audited_with_the_os_user(run: Run) -> None:
    import os
    import pwd

    run.json("customer", "add", "1000")
    run.json("device", "add", "1000", "1000", "--username", "gw", "--password-stdin", stdin="pw\n")
    run.json("device", "disable", "1000", "1000")
    run.json("device", "enable", "1000", "1000")
    run.json("device", "password", "1000", "1000", "--generate-secret")
    entries = run.json("audit")
    assert [e["action"] for e in entries][:5] == [
        "device.secret_issued",
        "device.enabled",
        "device.disabled",
        "device.added",
        "customer.added",
    ]
    assert {e["actor"] for e in entries} == {f"osp-admin ({pwd.getpwuid(os.getuid()).pw_name})"}
    assert entries[3]["subject"] == "customer 1000 device 1000"
    assert entries[3]["detail"] == {"credential": "password", "policy": "auto"}
    # The table shows details as key=value.
    code, out, _ = run("audit", "--limit", "2")
    assert code == 0 and "credential=password policy=auto" not in out  # not among the 2 newest
    code, out, _ = run("audit")
    assert "credential=password policy=auto" in out and "{'" not in out
    # logfmt: text with spaces quoted, booleans lower-case; no line ends in padding.
    run.json("device", "add", "1000", "2000", "--username", "gw2", "--generate-secret")
    assert 'credential="one-time secret" policy=auto' in run("audit", "--limit", "1")[1]
    run.json("device", "delete", "1000", "1000")
    code, out, _ = run("audit", "--limit", "1")
    assert "revoke=false" in out and "with_usage=false" in out
    assert all(line == line.rstrip() for line in out.splitlines())


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_password_stdin_refuses_a_terminal(run: Run) -> None:
    run.json("customer", "add", "1000")
    err = io.StringIO()
    code = main(
        [
            "--config",
            str(run.config_path),
            "device",
            "add",
            "1000",
            "1000",
            "--username",
            "gw",
            "--password-stdin",
        ],
        stdout=io.StringIO(),
        stderr=err,
        stdin=_Terminal("typed in clear\n"),
    )
    assert code == 1 and "--password-stdin reads a pipe" in err.getvalue()


def test_without_config_the_server_s_file_is_used(
    tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """$OSP_CONFIG, then ./osp.toml: osp-admin finds the file the server would use."""
    from osp_server.config import find_config

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OSP_CONFIG", raising=False)
    here = tmp_path / "osp.toml"
    here.write_text(f'[server]\ndata_dir = "here"\n[database]\nurl = "{database_url}"\n')
    assert find_config(None) == Path("osp.toml")
    elsewhere = tmp_path / "elsewhere.toml"
    elsewhere.write_text('[server]\ndata_dir = "elsewhere"\n')
    monkeypatch.setenv("OSP_CONFIG", str(elsewhere))
    assert find_config(None) == elsewhere
    assert find_config(here) == here  # --config wins
    out = io.StringIO()
    assert main(["--json", "config", "check"], stdout=out) == 0
    settings = json.loads(out.getvalue())
    assert settings["file"] == str(elsewhere)
    assert settings["server.data_dir"] == str(tmp_path / "elsewhere")


def test_config_check_shows_effective_settings_with_secrets_hidden(tmp_path: Path) -> None:
    path = tmp_path / "osp.toml"
    path.write_text(
        '[server]\ndata_dir = "state"\n[database]\nurl = "postgresql://osp:s3cret@db/osp"\n'
    )
    out = io.StringIO()
    assert main(["--json", "config", "check", str(path)], stdout=out) == 0
    settings = json.loads(out.getvalue())
    assert settings["database.url"] == "postgresql://osp:***@db/osp"
    assert "s3cret" not in out.getvalue()
    assert settings["ca.key_file"] == str(tmp_path / "state" / "ca" / "ca.key")
    assert settings["listeners.max_connections_per_address"] == 64
    path.write_text("[server]\nworkers = 0\n")
    err = io.StringIO()
    assert main(["config", "check", str(path)], stdout=io.StringIO(), stderr=err) == 1
    assert "server.workers" in err.getvalue() and err.getvalue().count("\n") == 1
    # Endpoints are parsed as the server parses them before it creates anything;
    # systemd sockets exist only under systemd, so they are left to the start.
    path.write_text('[listeners]\nhttps = "tcp:port=notaport"\n')
    err = io.StringIO()
    assert main(["config", "check", str(path)], stdout=io.StringIO(), stderr=err) == 1
    assert "listeners.https: bad endpoint description 'tcp:port=notaport'" in err.getvalue()
    path.write_text('[listeners]\nhttps = "systemd:domain=INET:index=0"\n')
    assert main(["config", "check", str(path)], stdout=io.StringIO()) == 0


def test_a_missing_database_is_created_only_when_asked(
    tmp_path: Path, empty_database_url: str
) -> None:
    """A mistyped --config, or a command run before the server's first start, used to
    make a new empty database silently."""
    from osp_server.storage.db import displayable_url, sqlite_path

    path = tmp_path / "osp.toml"
    path.write_text(f'[server]\ndata_dir = "data"\n[database]\nurl = "{empty_database_url}"\n')
    run = Run(path)
    code, _, err = run("customer", "list")
    assert code == 1 and "no osp-server database at" in err and "db upgrade" in err
    file = sqlite_path(empty_database_url)
    assert file is None or not file.exists()
    # --create (or db upgrade) makes it; -v says which database is used.
    code, _, err = run("--create", "-v", "customer", "list")
    assert code == 0, err
    assert err == f"osp-admin: config {path}, database {displayable_url(empty_database_url)}\n"
    code, _, err = run("-v", "db", "status")  # commands that open their own engine too
    assert code == 0 and "osp-admin: config " in err
    assert run("customer", "list")[0] == 0


def test_json_and_table_values_are_written_alike_everywhere() -> None:
    """write_json: exact decimals as numbers, bytes as hex (not decoded as text), times
    in ISO 8601 UTC; the table shows lists comma-separated, not as Python lists."""
    from datetime import UTC, datetime
    from decimal import Decimal

    from osp_server.admin.context import Context, emit_one, write_json

    out = io.StringIO()
    write_json(
        out,
        {
            "cost": Decimal("99999999999.123456"),
            "digest": b"\xff\x00",
            "at": datetime(2026, 11, 30, 8, 0, tzinfo=UTC),
            "none": None,
        },
        indent=None,
    )
    assert out.getvalue() == (
        '{"cost": 99999999999.123456, "digest": "ff00", "at": "2026-11-30T08:00:00Z", '
        '"none": null}\n'
    )
    table = io.StringIO()
    ctx = Context(config=None, out=table, as_json=False, stdin=io.StringIO())  # type: ignore[arg-type]
    emit_one(ctx, {"revoked_serials": ["ab", "cd"], "applied": [], "set": True})
    assert table.getvalue().splitlines() == [
        "revoked_serials  ab, cd",
        "applied          -",
        "set              yes",
    ]
