"""osp-admin enroll list/approve/reject, cert revoke and audit, on both engines."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.admin_runner import Admin, write_config


@pytest.fixture
def admin(tmp_path: Path, database_url: str) -> Admin:
    a = Admin(write_config(tmp_path, database_url))
    a.json("ca", "init")
    a.json("customer", "add", "1000")
    a.json(
        "device",
        "add",
        "1000",
        "1000",
        "--username",
        "trans",
        "--password-stdin",
        "--policy",
        "manual",
        stdin="nexus\n",
    )
    return a


def test_approve_signs_once_and_revoke(admin: Admin) -> None:
    enrollment_id = admin.pending()
    listed = admin.json("enroll", "list")
    assert [e["id"] for e in listed] == [enrollment_id]
    approved = admin.json("enroll", "approve", str(enrollment_id))
    assert approved["newly_issued"] is True
    again = admin.json("enroll", "approve", str(enrollment_id))
    assert again["serial"] == approved["serial"] and again["newly_issued"] is False
    assert admin.json("enroll", "list") == []
    certs = admin.json("cert", "list", "--kind", "device")
    assert [c["serial"] for c in certs] == [approved["serial"]]
    revoked = admin.json("cert", "revoke", approved["serial"], "--reason", "keyCompromise")
    assert revoked["state"] == "revoked" and revoked["already_revoked"] is False
    # Again: said so, exit 0, the first revocation kept, no second audit event.
    again = admin.json("cert", "revoke", approved["serial"])
    assert again["already_revoked"] is True and again["revoked_at"] == revoked["revoked_at"]
    actions = [e["action"] for e in admin.json("audit")]
    assert actions.count("certificate.revoked") == 1 and "certificate.issued" in actions
    assert "certificate.sign-intent" in actions


def test_reject_then_approve_is_refused(admin: Admin) -> None:
    enrollment_id = admin.pending()
    rejected = admin.json("enroll", "reject", str(enrollment_id), "--reason", "unknown site")
    assert rejected["state"] == "rejected" and rejected["reject_status"] == 3
    code, _, err = admin("enroll", "approve", str(enrollment_id))
    assert code == 1 and "was rejected" in err
    code, _, err = admin("enroll", "reject", str(enrollment_id))
    assert code == 1 and "not pending" in err


def test_errors(admin: Admin) -> None:
    code, _, err = admin("enroll", "approve", "999")
    assert code == 1 and "enrollment 999 does not exist" in err
    code, _, err = admin("cert", "revoke", "abc123")
    assert code == 1 and "certificate abc123 does not exist" in err
    code, _, err = admin("enroll", "approve", "x")
    assert code == 2


def test_revoke_every_certificate_of_a_device(admin: Admin) -> None:
    """--device revokes what the device holds, with the reason the CRL will carry, and
    bumps the access version every node watches."""
    from osp_server.storage import changes

    admin.json("device", "add", "1000", "1001", "--username", "u", "--password-stdin", stdin="p\n")
    serials = [admin.json("enroll", "approve", str(admin.pending()))["serial"]]
    other = admin.json("enroll", "approve", str(admin.pending("1000", "1001")))["serial"]
    version = admin.transact(changes.current_version_txn)
    revoked = admin.json(
        "cert", "revoke", "--customer", "1000", "--device", "1000", "--reason", "affiliationChanged"
    )
    assert sorted(r["serial"] for r in revoked) == sorted(serials)
    assert {r["state"] for r in revoked} == {"revoked"}
    assert admin.transact(changes.current_version_txn) > version
    # Nothing left to revoke: an empty list, no error.
    assert admin.json("cert", "revoke", "--customer", "1000", "--device", "1000") == []
    audited = [e for e in admin.json("audit") if e["action"] == "certificate.revoked"]
    assert len(audited) == 1
    states = {c["serial"]: c["state"] for c in admin.json("cert", "list")}
    assert states[other] == "valid"
    code, _, err = admin("cert", "revoke", serials[0], "--customer", "1000", "--device", "1000")
    assert code == 1 and "not both" in err
    code, _, err = admin("cert", "revoke")
    assert code == 1 and "SERIAL" in err
    code, _, err = admin("cert", "revoke", "--device", "1000")
    assert code == 1 and "--customer" in err


def test_cert_list_expiring(admin: Admin, capsys: pytest.CaptureFixture[str]) -> None:
    """--expiring 30d: valid certificates that expire within 30 days, soonest first."""
    from datetime import UTC, datetime, timedelta

    from sqlalchemy import update

    from osp_server.storage.schema import certificates

    serial = admin.json("enroll", "approve", str(admin.pending()))["serial"]
    assert admin.json("cert", "list", "--expiring", "30d") == []
    soon = datetime.now(UTC) + timedelta(days=10)
    admin.transact(
        lambda conn: conn.execute(
            update(certificates).where(certificates.c.serial == serial).values(not_after=soon)
        )
    )
    (row,) = admin.json("cert", "list", "--expiring", "30d")
    assert row["serial"] == serial and 9.9 <= row["days_left"] <= 10.0
    assert admin.json("cert", "list", "--expiring", "1w") == []
    code, _, _ = admin("cert", "list", "--expiring", "soon")
    assert code == 2 and "not a period" in capsys.readouterr().err
