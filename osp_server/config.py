"""Configuration: one TOML file read into frozen dataclasses.

Every key is checked: an unknown key or a bad value stops start-up with one
:class:`ConfigError` whose message names the key and the file.  Paths are
resolved relative to the directory of the config file (or the working
directory when running on built-in defaults).
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, cast, get_args

# Defined once, beside the code that gives them meaning. Both are pure modules that do
# not import this one (no cycle); TokenFormat stays importable from here.
from osp_server.osp.tokens import DEFAULT_MAX_TOKEN_BYTES, MAX_TOKEN_BYTES, MIN_TOKEN_LIMIT
from osp_server.osp.tokens import TokenFormat as TokenFormat
from osp_server.passwords import DEFAULT_PROFILE, PasswordProfile
from osp_server.pki.profile import KeyType, Profile

EnrollmentPolicy = Literal["auto", "manual"]
RenewalPolicy = Literal["keep", "revoke"]

_KEY_TYPES: tuple[KeyType, ...] = get_args(KeyType)
_PROFILES: tuple[Profile, ...] = get_args(Profile)
_RENEWAL: tuple[RenewalPolicy, ...] = get_args(RenewalPolicy)
_TOKEN_FORMATS: tuple[TokenFormat, ...] = get_args(TokenFormat)
_SIGNER_KEYS: tuple[str, ...] = ("ec-p256", "rsa2048")
# More processes than this is a typo, not a machine (each one holds its own route table).
MAX_WORKERS = 64


class ConfigError(Exception):
    """The configuration file is unreadable or has an unknown key or a bad value."""


@dataclass(frozen=True)
class ListenerConfig:
    """Where the server listens (Twisted endpoint descriptions, TLS added by us)."""

    http: str = "tcp:5045"
    https: str = "tcp:1443"
    osp_mtls: str | None = None
    legacy_osp: str | None = None
    metrics: str | None = "tcp:9090:interface=127.0.0.1"
    request_timeout_seconds: float = 30.0
    header_timeout_seconds: float = 10.0
    max_connections_per_address: int = 64
    max_connections: int = 10_000
    """Connections one listener (in one process) holds at once, from everyone."""
    trusted_networks: tuple[IPv4Network | IPv6Network, ...] = ()
    """``trusted_addresses``: peers (SBCs, NAT gateways carrying many devices) that the
    per-address limit does not apply to; they still count toward ``max_connections``."""


@dataclass(frozen=True)
class DatabaseConfig:
    """Where the data lives: SQLite inside the data directory unless a URL is given."""

    url: str
    threads: int = 4
    # Below R5's 5 s (a request fails within 5 s while the database stalls): a timeout
    # equal to it made failures arrive at 5.03-5.6 s.
    timeout_seconds: float = 3.0


@dataclass(frozen=True)
class PKCS11Config:
    """A PKCS#11 token (``[pkcs11]``): the module, the token's label, the user PIN's file."""

    module: Path
    token_label: str
    pin_file: Path


@dataclass(frozen=True)
class CAConfig:
    """The certificate authority: files, key type, names, validity, signing profile."""

    key_file: Path
    cert_file: Path
    key_type: KeyType = "rsa2048"
    common_name: str = "OSP Server CA"
    organization: str | None = "OSP Server"
    country: str | None = None
    validity_days: int = 3650
    profile: Profile = "secure"
    pkcs11_key_label: str | None = None
    """The CA key's label in the ``[pkcs11]`` token (then ``key_file`` is not used)."""
    pkcs11: PKCS11Config | None = None
    """The token, when ``pkcs11_key_label`` is set."""
    public_url: str | None = None
    """Where relying parties reach the plain listener (``http://host:5045``): issued
    certificates then name ``<public_url>/crl`` and ``<public_url>/ocsp``."""


@dataclass(frozen=True)
class TLSConfig:
    """The HTTPS listener's own certificate (issued by the CA unless supplied)."""

    cert_file: Path
    key_file: Path
    server_names: tuple[str, ...] = ("localhost", "127.0.0.1")
    validity_days: int = 365  # Mozilla's TLS profiles want under 366 days


@dataclass(frozen=True)
class EnrollmentConfig:
    """Enrollment (TEP) policy."""

    certificate_validity_days: int = 365
    allow_plain_http: bool = False
    renewal: RenewalPolicy = "keep"
    renewal_window_days: int = 30
    """A device renews over mutual TLS only this close to its certificate's expiry."""
    secret_ttl_hours: int = 72
    throttle_failures: int = 5
    throttle_window_seconds: int = 300
    throttle_per_address: int = 30
    authorizer: str | None = None
    password_hashing: PasswordProfile = DEFAULT_PROFILE


@dataclass(frozen=True)
class OSPConfig:
    """OSP service behaviour: tokens, validity, limits."""

    token_format: TokenFormat = "signed"
    token_signer_key: str = "ec-p256"
    token_signer_pkcs11_key_label: str | None = None
    """The token signer's key label in the ``[pkcs11]`` token (not a file)."""
    token_signer_pkcs11: PKCS11Config | None = None
    token_validity_seconds: int = 300
    token_backdate_seconds: int = 60
    call_time_limit_seconds: int = 3600
    transaction_ttl_seconds: int = 86400
    rating_retention_days: int = 90
    """How long the rates recorded with each authorization are kept for usage export."""
    routing_policy: str = "default"
    route_refresh_seconds: float = 5.0
    access_poll_seconds: float = 0.5
    """How often each node polls for revocations and device state changes (PostgreSQL
    also notifies at once)."""
    reauthorization_fixed_clients: bool = False
    # Largest raw token sent; 1024 fits the OpenSIPS/Kamailio 2,048-byte base64 buffer.
    max_token_bytes: int = DEFAULT_MAX_TOKEN_BYTES


@dataclass(frozen=True)
class Config:
    """The whole configuration, as the composition root consumes it."""

    source: str
    data_dir: Path
    listeners: ListenerConfig
    database: DatabaseConfig
    ca: CAConfig
    tls: TLSConfig
    enrollment: EnrollmentConfig = field(default_factory=EnrollmentConfig)
    osp: OSPConfig = field(default_factory=OSPConfig)
    plugins: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """``[plugins.NAME]`` tables: the keyword arguments of the routing policy or
    enrollment authorizer registered as NAME (its factory validates them)."""
    workers: int = 1
    """``[server] workers``: 1 serves in the twistd process; N > 1 runs N worker
    processes that share the listening sockets (osp_server.workers)."""
    min_free_disk_mb: int = 256
    """``[server] min_free_disk_mb``: below this much free space where the data lives,
    ``/ready`` answers 503 (writes would soon fail)."""

    def __getstate__(self) -> dict[str, Any]:
        # Pickled for worker processes (osp_server.workers.role); read-only mapping
        # proxies do not pickle, so the plugin tables travel as plain dicts.
        state = dict(self.__dict__)
        state["plugins"] = {name: dict(options) for name, options in self.plugins.items()}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        plugins = state.pop("plugins")
        self.__dict__.update(state)
        self.__dict__["plugins"] = MappingProxyType(
            {name: MappingProxyType(options) for name, options in plugins.items()}
        )

    def plugin_options(self, name: str) -> dict[str, Any]:
        """The keyword arguments for the extension ``name`` (empty when not configured)."""
        return dict(self.plugins.get(name, {}))


class _Section:
    """Reads one table of the TOML document, remembering which keys were used."""

    def __init__(self, source: str, name: str, data: object) -> None:
        self.source = source
        self.name = name
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: [{name}] must be a table")
        self.data: dict[str, Any] = data
        self.used: set[str] = set()

    def _key(self, key: str) -> str:
        return f"{self.name}.{key}" if self.name else key

    def error(self, key: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.source}: {self._key(key)}: {problem}")

    def _get(self, key: str) -> Any:
        self.used.add(key)
        return self.data.get(key)

    def string(self, key: str, default: str) -> str:
        value = self._get(key)
        if value is None:
            return default
        if not isinstance(value, str) or not value.strip():
            raise self.error(key, "must be a non-empty string")
        return value

    def optional_string(self, key: str, default: str | None) -> str | None:
        value = self._get(key)
        if value is None:
            return default
        if not isinstance(value, str):
            raise self.error(key, "must be a string")
        return value or None

    def integer(self, key: str, default: int, *, minimum: int, maximum: int) -> int:
        value = self._get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(key, f"must be an integer, got {value!r}")
        if not minimum <= value <= maximum:
            raise self.error(key, f"must be between {minimum} and {maximum}, got {value}")
        return value

    def number(self, key: str, default: float, *, minimum: float, maximum: float) -> float:
        value = self._get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(key, f"must be a number, got {value!r}")
        if not minimum <= value <= maximum:
            raise self.error(key, f"must be between {minimum} and {maximum}, got {value}")
        return float(value)

    def boolean(self, key: str, default: bool) -> bool:
        value = self._get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self.error(key, f"must be true or false, got {value!r}")
        return value

    def choice(self, key: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.string(key, default)
        if value not in choices:
            raise self.error(key, f"must be one of {', '.join(choices)}, got {value!r}")
        return value

    def path(self, key: str, default: Path, base: Path) -> Path:
        value = self._get(key)
        if value is None:
            return default
        if not isinstance(value, str) or not value:
            raise self.error(key, "must be a non-empty path string")
        candidate = Path(value).expanduser()
        return candidate if candidate.is_absolute() else base / candidate

    def string_list(self, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
        value = self._get(key)
        if value is None:
            return default
        if (
            not isinstance(value, list)
            or not value
            or not all(isinstance(v, str) and v for v in value)
        ):
            raise self.error(key, "must be a non-empty list of strings")
        return tuple(value)

    def finish(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            raise self.error(unknown[0], "unknown key")


_SECTIONS = (
    "server",
    "listeners",
    "database",
    "ca",
    "tls",
    "enrollment",
    "osp",
    "pkcs11",
    "plugins",
)


CONFIG_ENV = "OSP_CONFIG"
SEARCHED_CONFIG_FILES = (Path("osp.toml"), Path("/etc/osp-server/osp.toml"))
"""Where the server and osp-admin look, in order, without --config or $OSP_CONFIG."""


def find_config(explicit: Path | None = None) -> Path | None:
    """The configuration file the server and ``osp-admin`` use: ``explicit`` (--config),
    else $OSP_CONFIG, else ``./osp.toml``, else ``/etc/osp-server/osp.toml``; None when
    there is none (the built-in defaults)."""
    if explicit is not None:
        return explicit
    from_env = os.environ.get(CONFIG_ENV, "").strip()
    if from_env:
        return Path(from_env)
    for candidate in SEARCHED_CONFIG_FILES:
        if candidate.is_file():
            return candidate
    return None


def load_config(path: Path | None = None) -> Config:
    """Read ``path`` (or use built-in defaults when ``None``) into a :class:`Config`."""
    if path is None:
        return parse_config({}, source="<built-in defaults>", base=Path.cwd())
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read configuration file: {e.strerror}") from None
    try:
        document = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: configuration file is not UTF-8") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML: {e}") from None
    return parse_config(document, source=str(path), base=path.resolve().parent)


def parse_config(document: dict[str, Any], *, source: str, base: Path) -> Config:
    """Build a :class:`Config` from a parsed TOML document; ``base`` resolves relative paths."""
    unknown = sorted(set(document) - set(_SECTIONS))
    if unknown:
        raise ConfigError(f"{source}: {unknown[0]}: unknown section or key")

    def section(name: str) -> _Section:
        return _Section(source, name, document.get(name, {}))

    server = section("server")
    data_dir = server.path("data_dir", base / "osp-data", base)
    workers = server.integer("workers", Config.workers, minimum=1, maximum=MAX_WORKERS)
    min_free_disk_mb = server.integer(
        "min_free_disk_mb", Config.min_free_disk_mb, minimum=0, maximum=10_000_000
    )
    server.finish()

    hsm = section("pkcs11")
    pkcs11: PKCS11Config | None = None
    if hsm.data:
        module = hsm.path("module", Path("/usr/lib/softhsm/libsofthsm2.so"), base)
        token_label = hsm.string("token_label", "")
        pin_file = hsm.optional_string("pin_file", None)
        if not token_label:
            raise hsm.error("token_label", "is required (the token's label)")
        if pin_file is None:
            raise hsm.error("pin_file", "is required (a file holding the user PIN, mode 0600)")
        pkcs11 = PKCS11Config(
            module=module, token_label=token_label, pin_file=hsm.path("pin_file", Path(), base)
        )
    hsm.finish()

    lst = section("listeners")
    listeners = ListenerConfig(
        http=lst.string("http", ListenerConfig.http),
        https=lst.string("https", ListenerConfig.https),
        osp_mtls=lst.optional_string("osp_mtls", ListenerConfig.osp_mtls),
        legacy_osp=lst.optional_string("legacy_osp", ListenerConfig.legacy_osp),
        metrics=lst.optional_string("metrics", ListenerConfig.metrics),
        request_timeout_seconds=lst.number(
            "request_timeout_seconds",
            ListenerConfig.request_timeout_seconds,
            minimum=1.0,
            maximum=3600.0,
        ),
        header_timeout_seconds=lst.number(
            "header_timeout_seconds",
            ListenerConfig.header_timeout_seconds,
            minimum=1.0,
            maximum=3600.0,
        ),
        max_connections_per_address=lst.integer(
            "max_connections_per_address",
            ListenerConfig.max_connections_per_address,
            minimum=1,
            maximum=100000,
        ),
        max_connections=lst.integer(
            "max_connections", ListenerConfig.max_connections, minimum=1, maximum=1_000_000
        ),
        trusted_networks=_networks(lst, "trusted_addresses"),
    )
    lst.finish()

    db = section("database")
    url = db.string("url", f"sqlite:///{data_dir / 'osp.sqlite3'}")
    if not url.startswith(("sqlite:", "postgresql:", "postgresql+psycopg:")):
        raise db.error("url", f"must be a sqlite:/// or postgresql:// URL, got {url!r}")
    database = DatabaseConfig(
        url=url,
        threads=db.integer("threads", DatabaseConfig.threads, minimum=1, maximum=64),
        timeout_seconds=db.number(
            "timeout_seconds", DatabaseConfig.timeout_seconds, minimum=0.5, maximum=600.0
        ),
    )
    db.finish()

    ca_s = section("ca")
    ca = CAConfig(
        key_file=ca_s.path("key_file", data_dir / "ca" / "ca.key", base),
        cert_file=ca_s.path("cert_file", data_dir / "ca" / "ca.pem", base),
        key_type=cast(KeyType, ca_s.choice("key_type", CAConfig.key_type, _KEY_TYPES)),
        common_name=ca_s.string("common_name", CAConfig.common_name),
        organization=ca_s.optional_string("organization", CAConfig.organization),
        country=ca_s.optional_string("country", CAConfig.country),
        validity_days=ca_s.integer(
            "validity_days", CAConfig.validity_days, minimum=1, maximum=36500
        ),
        profile=cast(Profile, ca_s.choice("profile", CAConfig.profile, _PROFILES)),
        public_url=(ca_s.optional_string("public_url", CAConfig.public_url) or "").rstrip("/")
        or None,
        pkcs11_key_label=ca_s.optional_string("pkcs11_key_label", None),
        pkcs11=pkcs11,
    )
    if ca.pkcs11_key_label is not None and pkcs11 is None:
        raise ca_s.error(
            "pkcs11_key_label", "needs a [pkcs11] section (module, token_label, pin_file)"
        )
    if ca.country is not None and (len(ca.country) != 2 or not ca.country.isalpha()):
        raise ca_s.error("country", f"must be a two-letter country code, got {ca.country!r}")
    if ca.profile == "legacy" and ca.key_type == "ec-p256":
        raise ca_s.error("profile", "the legacy (MD5) profile needs an RSA key_type")
    if ca.public_url is not None:
        problem = _public_url_problem(ca.public_url)
        if problem is not None:
            raise ca_s.error("public_url", problem)
    ca_s.finish()

    tls_s = section("tls")
    tls = TLSConfig(
        cert_file=tls_s.path("cert_file", data_dir / "tls" / "server.pem", base),
        key_file=tls_s.path("key_file", data_dir / "tls" / "server.key", base),
        server_names=tls_s.string_list("server_names", TLSConfig.server_names),
        validity_days=tls_s.integer(
            "validity_days", TLSConfig.validity_days, minimum=1, maximum=3650
        ),
    )
    tls_s.finish()

    en = section("enrollment")
    enrollment = EnrollmentConfig(
        certificate_validity_days=en.integer(
            "certificate_validity_days",
            EnrollmentConfig.certificate_validity_days,
            minimum=1,
            maximum=3650,
        ),
        allow_plain_http=en.boolean("allow_plain_http", EnrollmentConfig.allow_plain_http),
        renewal=cast(RenewalPolicy, en.choice("renewal", EnrollmentConfig.renewal, _RENEWAL)),
        renewal_window_days=en.integer(
            "renewal_window_days", EnrollmentConfig.renewal_window_days, minimum=1, maximum=3650
        ),
        password_hashing=cast(
            PasswordProfile,
            en.choice(
                "password_hashing", EnrollmentConfig.password_hashing, get_args(PasswordProfile)
            ),
        ),
        secret_ttl_hours=en.integer(
            "secret_ttl_hours", EnrollmentConfig.secret_ttl_hours, minimum=1, maximum=24 * 365
        ),
        throttle_failures=en.integer(
            "throttle_failures", EnrollmentConfig.throttle_failures, minimum=1, maximum=1000
        ),
        throttle_window_seconds=en.integer(
            "throttle_window_seconds",
            EnrollmentConfig.throttle_window_seconds,
            minimum=1,
            maximum=86400,
        ),
        throttle_per_address=en.integer(
            "throttle_per_address",
            EnrollmentConfig.throttle_per_address,
            minimum=1,
            maximum=100000,
        ),
        authorizer=en.optional_string("authorizer", EnrollmentConfig.authorizer),
    )
    en.finish()

    osp_s = section("osp")
    osp = OSPConfig(
        token_format=cast(
            TokenFormat, osp_s.choice("token_format", OSPConfig.token_format, _TOKEN_FORMATS)
        ),
        token_signer_key=osp_s.choice("token_signer_key", OSPConfig.token_signer_key, _SIGNER_KEYS),
        token_signer_pkcs11_key_label=osp_s.optional_string("token_signer_pkcs11_key_label", None),
        token_signer_pkcs11=pkcs11,
        token_validity_seconds=osp_s.integer(
            "token_validity_seconds", OSPConfig.token_validity_seconds, minimum=10, maximum=86400
        ),
        token_backdate_seconds=osp_s.integer(
            "token_backdate_seconds", OSPConfig.token_backdate_seconds, minimum=0, maximum=3600
        ),
        call_time_limit_seconds=osp_s.integer(
            "call_time_limit_seconds",
            OSPConfig.call_time_limit_seconds,
            minimum=1,
            maximum=7 * 86400,
        ),
        transaction_ttl_seconds=osp_s.integer(
            "transaction_ttl_seconds",
            OSPConfig.transaction_ttl_seconds,
            minimum=60,
            maximum=90 * 86400,
        ),
        rating_retention_days=osp_s.integer(
            "rating_retention_days", OSPConfig.rating_retention_days, minimum=1, maximum=3660
        ),
        routing_policy=osp_s.string("routing_policy", OSPConfig.routing_policy),
        route_refresh_seconds=osp_s.number(
            "route_refresh_seconds", OSPConfig.route_refresh_seconds, minimum=0.5, maximum=3600.0
        ),
        access_poll_seconds=osp_s.number(
            "access_poll_seconds", OSPConfig.access_poll_seconds, minimum=0.05, maximum=60.0
        ),
        reauthorization_fixed_clients=osp_s.boolean(
            "reauthorization_fixed_clients", OSPConfig.reauthorization_fixed_clients
        ),
        # The token factory's own range: nothing the file accepts is refused later. The
        # hard cap is Asterisk's 4,096-byte buffer; the floor fits an unsigned ASCII token.
        max_token_bytes=osp_s.integer(
            "max_token_bytes",
            OSPConfig.max_token_bytes,
            minimum=MIN_TOKEN_LIMIT,
            maximum=MAX_TOKEN_BYTES,
        ),
    )
    if osp.token_signer_pkcs11_key_label is not None and pkcs11 is None:
        raise osp_s.error(
            "token_signer_pkcs11_key_label",
            "needs a [pkcs11] section (module, token_label, pin_file)",
        )
    osp_s.finish()

    plugins = _plugin_tables(source, document.get("plugins", {}))

    return Config(
        source=source,
        data_dir=data_dir,
        listeners=listeners,
        database=database,
        ca=ca,
        tls=tls,
        enrollment=enrollment,
        osp=osp,
        plugins=plugins,
        workers=workers,
        min_free_disk_mb=min_free_disk_mb,
    )


def _plugin_tables(source: str, data: object) -> Mapping[str, Mapping[str, Any]]:
    """``[plugins.NAME]`` tables, kept as TOML gave them; each extension's factory
    checks its own keys and values at start-up."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: [plugins] must hold one table per extension")
    tables: dict[str, Mapping[str, Any]] = {}
    for name, options in data.items():
        if not isinstance(options, dict):
            raise ConfigError(
                f"{source}: plugins.{name}: must be a table of the extension's options"
            )
        for key in options:
            if not key.isidentifier():
                raise ConfigError(f"{source}: plugins.{name}.{key}: not a valid option name")
        tables[name] = MappingProxyType(dict(options))
    return MappingProxyType(tables)


def _networks(section: _Section, key: str) -> tuple[IPv4Network | IPv6Network, ...]:
    """A list of addresses or CIDR networks (``10.0.0.0/8``, ``2001:db8::1``)."""
    value = section._get(key)
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise section.error(key, "must be a list of addresses or networks, as strings")
    networks = []
    for text in value:
        try:
            networks.append(ip_network(text, strict=False))
        except ValueError as e:
            raise section.error(key, f"{text!r} is not an address or network: {e}") from None
    return tuple(networks)


def validity(days: int) -> timedelta:
    """A validity period of ``days`` days."""
    return timedelta(days=days)


def _public_url_problem(url: str) -> str | None:
    """Why ``url`` cannot be named in certificates (None: it can)."""
    from urllib.parse import urlsplit

    if not url.isascii() or any(c.isspace() or ord(c) < 0x20 for c in url):
        return f"must be an ASCII URL without spaces, got {url!r}"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as e:
        return f"is not a URL ({e}): {url!r}"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"must be an http:// URL with a host (the plain listener), got {url!r}"
    if parts.query or parts.fragment:
        return f"must not have a query or fragment, got {url!r}"
    return None
