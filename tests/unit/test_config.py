"""Configuration: defaults, the example file, unknown keys and bad values."""

from __future__ import annotations

from pathlib import Path

import pytest

from osp_server.config import (
    CAConfig,
    ConfigError,
    DatabaseConfig,
    EnrollmentConfig,
    ListenerConfig,
    OSPConfig,
    TLSConfig,
    load_config,
    parse_config,
)
from osp_server.osp.tokens import DEFAULT_MAX_TOKEN_BYTES, MAX_TOKEN_BYTES, MIN_TOKEN_LIMIT

REPO = Path(__file__).resolve().parents[2]


def test_builtin_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = load_config(None)
    assert config.data_dir == tmp_path / "osp-data"
    assert config.database.url == f"sqlite:///{tmp_path / 'osp-data' / 'osp.sqlite3'}"
    assert config.listeners.http == "tcp:5045"
    assert config.listeners.https == "tcp:1443"
    assert (
        config.listeners.metrics is not None and "interface=127.0.0.1" in config.listeners.metrics
    )
    assert config.ca.profile == "secure"
    assert config.ca.key_type == "rsa2048"
    assert config.enrollment.allow_plain_http is False
    assert config.osp.max_token_bytes == DEFAULT_MAX_TOKEN_BYTES == 1024


def test_example_config_parses_and_documents_every_key() -> None:
    example = REPO / "etc" / "osp.toml"
    config = load_config(example)
    assert config.data_dir.is_absolute()
    text = example.read_text()
    # Every key the loader knows appears in the example (commented or not).
    for section in ("server", "listeners", "database", "ca", "tls", "enrollment", "osp"):
        assert f"[{section}]" in text
    for key in (
        "data_dir",
        "http",
        "https",
        "url",
        "key_type",
        "profile",
        "server_names",
        "allow_plain_http",
        "token_format",
        "max_token_bytes",
        "request_timeout_seconds",
        "public_url",
        "renewal_window_days",
        "access_poll_seconds",
        "pkcs11_key_label",
        "token_signer_pkcs11_key_label",
        "token_label",
        "pin_file",
    ):
        assert f"{key} =" in text, key
    # Paths derive from data_dir: editing only data_dir moves all of them.
    assert config.database.url == f"sqlite:///{config.data_dir / 'osp.sqlite3'}"
    assert config.ca.key_file == config.data_dir / "ca" / "ca.key"
    assert config.tls.cert_file == config.data_dir / "tls" / "server.pem"
    # No other key repeats the data directory (a copy would not follow an edit of it).
    settings = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    assert [line for line in settings if "/var/lib/osp-server" in line] == [
        'data_dir = "/var/lib/osp-server"'
    ]


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "osp.toml"
    path.write_text(text)
    return path


def test_relative_paths_resolve_from_the_file(tmp_path: Path) -> None:
    path = _write(tmp_path, '[server]\ndata_dir = "state"\n[ca]\nkey_file = "keys/ca.key"\n')
    config = load_config(path)
    assert config.data_dir == tmp_path / "state"
    assert config.ca.key_file == tmp_path / "keys" / "ca.key"
    assert config.ca.cert_file == tmp_path / "state" / "ca" / "ca.pem"


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("[server]\ndata_dirr = 'x'\n", "server.data_dirr: unknown key"),
        ("[serverz]\n", "serverz: unknown section"),
        ("[ca]\nkey_type = 'rsa1024'\n", "ca.key_type: must be one of"),
        ("[ca]\nprofile = 'md5'\n", "ca.profile"),
        ("[ca]\nvalidity_days = 0\n", "ca.validity_days: must be between"),
        ("[ca]\nvalidity_days = '10'\n", "ca.validity_days: must be an integer"),
        ("[ca]\ncountry = 'USA'\n", "ca.country"),
        ("[ca]\nprofile = 'legacy'\nkey_type = 'ec-p256'\n", "ca.profile"),
        ("[enrollment]\nallow_plain_http = 'yes'\n", "enrollment.allow_plain_http"),
        ("[database]\nurl = 'mysql://x'\n", "database.url"),
        ("[tls]\nserver_names = []\n", "tls.server_names"),
        ("[listeners]\nhttp = ''\n", "listeners.http"),
        ("[osp]\ntoken_format = 'jwt'\n", "osp.token_format"),
        ("[osp]\nmax_token_bytes = 255\n", "osp.max_token_bytes: must be between 256 and 3000"),
        ("[osp]\nmax_token_bytes = 3001\n", "osp.max_token_bytes: must be between 256 and 3000"),
        ("[osp]\nmax_token_bytes = '1024'\n", "osp.max_token_bytes: must be an integer"),
        ("[osp]\nmax_token_bytes = true\n", "osp.max_token_bytes: must be an integer"),
        ("[osp]\nmax_token_bytes = 1024.0\n", "osp.max_token_bytes: must be an integer"),
        ("[ca]\npkcs11_key_label = 'ca'\n", "ca.pkcs11_key_label: needs a [pkcs11] section"),
        ("[osp]\ntoken_signer_pkcs11_key_label = 't'\n", "osp.token_signer_pkcs11_key_label"),
        ("[pkcs11]\npin_file = 'pin'\n", "pkcs11.token_label: is required"),
        ("[pkcs11]\ntoken_label = 'osp'\n", "pkcs11.pin_file: is required"),
        ("[pkcs11]\ntoken_label = 'osp'\npin_file = 'p'\nslot = 1\n", "pkcs11.slot: unknown key"),
        ("[ca]\npublic_url = 'ftp://x'\n", "ca.public_url"),
        ("[ca]\npublic_url = 'http://x/?a=1'\n", "ca.public_url: must not have a query"),
        ("[enrollment]\nrenewal_window_days = 0\n", "enrollment.renewal_window_days"),
        ("[osp]\naccess_poll_seconds = 0\n", "osp.access_poll_seconds"),
        ("listeners = 3\n", "[listeners] must be a table"),
        ("[server\n", "invalid TOML"),
    ],
)
def test_bad_values_name_the_key_and_the_file(tmp_path: Path, text: str, named: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message
    assert named in message
    assert "\n" not in message


def test_missing_and_non_utf8_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.toml")
    path = tmp_path / "bad.toml"
    path.write_bytes(b"[server]\ndata_dir = '\xff'\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(path)


@pytest.mark.parametrize("value", [256, 1024, 3000])
def test_max_token_bytes_range_matches_the_token_factory(tmp_path: Path, value: int) -> None:
    # The config range is the factory's: nothing the file accepts is refused later.
    assert (MIN_TOKEN_LIMIT, MAX_TOKEN_BYTES) == (256, 3000)
    config = load_config(_write(tmp_path, f"[osp]\nmax_token_bytes = {value}\n"))
    assert config.osp.max_token_bytes == value


def test_builtin_defaults_are_the_dataclass_defaults(tmp_path: Path) -> None:
    # Each default is written once, in its dataclass; the parser falls back to it.
    config = parse_config({}, source="test", base=tmp_path)
    assert config.listeners == ListenerConfig()
    assert config.database == DatabaseConfig(url=config.database.url)
    assert config.ca == CAConfig(key_file=config.ca.key_file, cert_file=config.ca.cert_file)
    assert config.tls == TLSConfig(cert_file=config.tls.cert_file, key_file=config.tls.key_file)
    assert config.enrollment == EnrollmentConfig()
    assert config.osp == OSPConfig()


def test_database_timeout_leaves_room_under_the_r5_target() -> None:
    """SECURITY.md R5: requests fail within 5 s while the database stalls; the database
    timeout must be below that, not equal to it (failures then came at 5.03-5.6 s)."""
    timeout = load_config(None).database.timeout_seconds
    assert timeout == 3.0
    assert timeout + 1.0 < 5.0
