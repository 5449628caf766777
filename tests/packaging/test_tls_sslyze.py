"""SECURITY.md P12: sslyze, presenting a device's client certificate, checks the HTTPS
listener against Mozilla's "intermediate" TLS configuration.

sslyze runs from a virtualenv of its own: it pins a cryptography release older than
the one pyOpenSSL (which the server uses) requires, so it cannot share the project's.
The one deliberate exception is certificate path validation: our certificates chain
to the server's own CA, which no public trust store holds.
"""

from __future__ import annotations

import re
import subprocess
import venv
from pathlib import Path

import pytest

from tests.packaging.test_wheel import _env
from tests.reliability.harness import TwistdServer, add_devices, enroll_device, write_config

pytestmark = pytest.mark.slow

# Not a gap in our TLS policy: devices trust our CA through enrollment.
EXPECTED_FAILURES = {"certificate_path_validation"}


@pytest.fixture(scope="module")
def sslyze(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("sslyze")
    venv.create(home, with_pip=True)
    subprocess.run(
        [str(home / "bin" / "python"), "-m", "pip", "install", "-q", "sslyze>=6,<7"],
        check=True,
        env=_env(),
        timeout=600,
    )
    return home / "bin" / "python"


def test_the_https_listener_meets_mozilla_intermediate(sslyze: Path, tmp_path: Path) -> None:
    config = write_config(tmp_path, f"sqlite:///{tmp_path / 'osp.sqlite3'}")
    add_devices(config, "1000", ["1000"], cwd=tmp_path)
    server = TwistdServer(config, tmp_path)
    try:
        server.start()
        cert_path, key_path = enroll_device(server, tmp_path, "1000", "1000")
        result = subprocess.run(
            [
                str(sslyze),
                "-m",
                "sslyze",
                "--cert",
                str(cert_path),
                "--key",
                str(key_path),
                "--mozilla_config",
                "intermediate",
                f"127.0.0.1:{server.https_port}",
            ],
            capture_output=True,
            text=True,
            env=_env(),
            timeout=300,
        )
    finally:
        server.stop()
    report = result.stdout
    assert "COMPLIANCE AGAINST TLS CONFIGURATION" in report, report + result.stderr
    compliance = report.split("COMPLIANCE AGAINST TLS CONFIGURATION", 1)[1]
    failures = set(re.findall(r"^\s+\* (\w+):", compliance, flags=re.MULTILINE))
    print(compliance.strip())
    assert failures <= EXPECTED_FAILURES, compliance
    # What the policy promises, as sslyze saw it.
    assert "X25519, secp256r1, secp384r1" in report
    assert "RSA cipher suites not supported" in report  # no static RSA key exchange
