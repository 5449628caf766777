"""Runs osp-admin in-process against one config file (shared by the CLI tests)."""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from osp_server.admin.cli import main
from osp_server.admin.context import Context
from osp_server.config import load_config
from osp_server.storage import devices, enrollments

T = TypeVar("T")


def write_config(tmp_path: Path, database_url: str) -> Path:
    """A config file with a data directory in tmp_path and the given database."""
    path = tmp_path / "osp.toml"
    path.write_text(f'[server]\ndata_dir = "data"\n[database]\nurl = "{database_url}"\n')
    return path


class AdminRunner:
    """``runner(*argv)`` → (exit status, stdout, stderr); ``runner.json(*argv)`` → parsed."""

    def __init__(self, config_path: Path) -> None:
        self.config_path = config_path

    def __call__(self, *argv: str, stdin: str = "") -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        code = main(
            ["--config", str(self.config_path), *argv],
            stdout=out,
            stderr=err,
            stdin=io.StringIO(stdin),
        )
        return code, out.getvalue(), err.getvalue()

    def json(self, *argv: str, stdin: str = "") -> Any:
        code, out, err = self("--json", *argv, stdin=stdin)
        assert code == 0, err
        return json.loads(out)


@cache
def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _csr(common_name: str) -> bytes:
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .sign(_key(), hashes.SHA256())
        .public_bytes(serialization.Encoding.DER)
    )


class Admin(AdminRunner):
    """osp-admin plus direct storage access: pending enrollments and other fixtures."""

    @contextmanager
    def context(self) -> Iterator[Context]:
        """The `Context` a command would get (for storage the CLI cannot create)."""
        ctx = Context(
            config=load_config(self.config_path),
            out=io.StringIO(),
            as_json=True,
            stdin=io.StringIO(),
        )
        try:
            yield ctx
        finally:
            ctx.close()

    def transact(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(connection, *args, **kwargs)`` in one transaction on the database."""
        with self.context() as ctx:
            return ctx.db.transact_sync(fn, *args, **kwargs)

    def pending(self, customer_id: str = "1000", device_id: str = "1000") -> int:
        """A pending enrollment of the device (a CSR as a device would post it)."""
        device = self.transact(devices.get_device, customer_id, device_id)
        csr = _csr(f"gw{device_id}")
        enrollment = self.transact(
            enrollments.create,
            device_pk=device.pk,
            csr_sha256=hashlib.sha256(csr).hexdigest(),
            csr_der=csr,
            state="pending",
            source_address="127.0.0.1",
            now=datetime.now(UTC),
        )
        return enrollment.id

    def issue(self, customer_id: str = "1000", device_id: str = "1000") -> str:
        """Issue the device a certificate (pending enrollment, approved); its serial."""
        approved = self.json("enroll", "approve", str(self.pending(customer_id, device_id)))
        return str(approved["serial"])
