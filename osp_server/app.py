"""Composition root: builds every object, the listeners and the service tree.

``prepare()`` does the blocking start-up work (CA, migrations, TLS material) before
the reactor runs; ``build_components()`` wires sites and the TLS creator without
listening, so tests can listen on port 0; ``build_service()`` adds the listeners.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import InitVar, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import cast

from OpenSSL import SSL
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, DeferredLock
from twisted.internet.interfaces import IProtocolFactory
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool
from twisted.web.resource import Resource

from osp_server import __version__
from osp_server.change_watch import ChangeWatcher
from osp_server.config import CAConfig, Config
from osp_server.endpoints import (
    StartupError,
    check_endpoints,
    endpoint_for,
    listener_descriptions,
)
from osp_server.enrollment.resource import TepResource
from osp_server.enrollment.service import EnrollmentService
from osp_server.enrollment.throttle import EnrollmentThrottle
from osp_server.interfaces import (
    ExtensionLoadError,
    IEnrollmentAuthorizer,
    IRouteTablesConsumer,
    IRoutingPolicy,
    load_enrollment_authorizer,
    load_routing_policy,
)
from osp_server.inventory import InventoryProbe
from osp_server.maintenance import TransactionReaper
from osp_server.metrics import Metrics, MetricsResource
from osp_server.osp.authn import DeviceAuthenticator
from osp_server.osp.resource import OSPResource
from osp_server.osp.service import OSPService
from osp_server.osp.token_setup import TokenSetupError, build_token_factory, token_signer_files
from osp_server.osp.tokens import TokenFactory, TokenSigner
from osp_server.pki.ca import CAError, CertificateAuthority, load_configured_ca, open_ca
from osp_server.pki.files import make_private_directory
from osp_server.pki.journal import CertificateJournal, JournalError
from osp_server.pki.ocsp import Responder
from osp_server.pki.rollover import load_previous
from osp_server.pki.trust import TrustSet
from osp_server.reactor import IOSPReactor, IWorkerReactor
from osp_server.readiness import Readiness
from osp_server.routing.keeper import QualityKeeper, RoutingCollector
from osp_server.routing.policy import DefaultRoutingPolicy
from osp_server.routing.refresh import ReplaceableTables, RouteRefresher
from osp_server.services import ListenerService, ProcessService, freeze_long_lived_objects
from osp_server.storage import authorities
from osp_server.storage.changes import ACCESS, RELOAD
from osp_server.storage.db import (
    Database,
    StorageError,
    displayable_url,
    open_database,
    sqlite_path,
)
from osp_server.storage.errors import describe_error
from osp_server.storage.reconcile import reconcile_txn
from osp_server.tls.context import ReloadableServerTLS, TLSMaterial
from osp_server.tls.issued import IssuedFiles, MaterialError
from osp_server.tls.server import (
    RefusableTLSFactory,
    ServerCertificate,
    ocsp_responder_files,
    server_files,
)
from osp_server.web.crl import CRLResource
from osp_server.web.health import HealthResource, StorageProbe
from osp_server.web.ocsp import OCSPResource
from osp_server.web.ready import ReadyResource, WriteProbe
from osp_server.web.site import OSPSite, RootResource
from osp_server.workers.role import WorkerRole
from osp_server.workers.sockets import AdoptedListenerService

log = Logger()


CPU_THREADS = 2


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


@dataclass
class Core:
    """The objects every part of the server shares."""

    config: Config
    reactor: IOSPReactor
    db: Database
    ca: CertificateAuthority
    ca_created: bool
    clock: Callable[[], datetime] = utcnow
    worker: WorkerRole | None = None
    """Set in a worker process (``[server] workers`` > 1): the supervisor migrated and
    issued the certificates; this process only reads them."""
    initial_trust: InitVar[TrustSet | None] = None
    metrics: Metrics = field(default_factory=Metrics)
    readiness: Readiness = field(default_factory=Readiness)
    # CPU-heavy work (password hashing, CSR checks, signing) runs here, never on the
    # reactor thread and never on the reactor's shared pool (which callers may fill).
    cpu_pool: ThreadPool = field(
        default_factory=lambda: ThreadPool(minthreads=0, maxthreads=CPU_THREADS, name="osp-cpu")
    )

    def __post_init__(self, initial_trust: TrustSet | None) -> None:
        self.trust = initial_trust or TrustSet.build(self.ca)
        """The CAs every listener trusts (osp_server.pki.trust); replaced on reload."""
        self.journal = CertificateJournal.in_data_dir(self.config.data_dir)
        self.storage_probe = StorageProbe(self.db, self.reactor)
        self.write_probe = WriteProbe(
            self.db,
            self.reactor,
            node=socket.gethostname(),
            data_path=data_location(self.config),
            min_free_bytes=self.config.min_free_disk_mb * 1024 * 1024,
            clock=self.clock,
            run_blocking=lambda fn: deferToThreadPool(self.reactor, self.cpu_pool, fn),
            metrics=self.metrics,
        )
        self.inventory_probe = InventoryProbe(self.db, self.reactor, self.metrics, clock=self.clock)
        self.metrics.certificate_expiry.labels("ca").set_function(
            lambda: self.ca.certificate.not_valid_after_utc.timestamp()
        )
        self.db.observer = self.metrics.observe_transaction


def data_location(config: Config) -> Path:
    """Where the data is written: the SQLite file's directory, else the data directory
    (PostgreSQL's own disk is the database server's to watch)."""
    sqlite_file = sqlite_path(config.database.url)
    return sqlite_file.parent if sqlite_file is not None else config.data_dir


def prepare(
    config: Config,
    reactor: IOSPReactor,
    *,
    clock: Callable[[], datetime] = utcnow,
    worker: WorkerRole | None = None,
) -> Core:
    """Blocking start-up: CA, database, migrations.  Raises StartupError with a clear line."""
    if worker is None:
        # Before anything is created: a typo in a listener must not leave a CA behind.
        check_endpoints(config, reactor)
    try:
        # Keys, password hashes and call records live here: owner-only when we make it.
        make_private_directory(config.data_dir)
    except OSError as e:
        raise StartupError(f"data directory {config.data_dir}: {e.strerror or e}") from None
    try:
        db = open_database(config.database, reactor, migrate=worker is None)
    except Exception as e:
        raise StartupError(f"database {displayable_url(config.database.url)}: {e}") from None
    try:
        ca, created = _open_the_database_ca(config, db, clock(), claim=worker is None)
    except StartupError:
        db.stop()
        raise
    if worker is None:
        try:
            replay_journal(db, CertificateJournal.in_data_dir(config.data_dir), clock())
        except (JournalError, StorageError) as e:
            db.stop()
            raise StartupError(f"certificate journal: {e}") from None
    if ca.profile == "legacy" and worker is None:
        log.warn(
            "CA profile is LEGACY: the CA certificate and device certificates are signed with "
            "MD5 for stock OSP Toolkit enroll 4.33.1. Prefer the secure profile for new devices."
        )
    try:
        trust = read_trust(config, db, ca)
    except (StorageError, CAError) as e:
        db.stop()
        raise StartupError(f"trusted CAs: {e}") from None
    return Core(
        config=config,
        reactor=reactor,
        db=db,
        ca=ca,
        ca_created=created,
        clock=clock,
        worker=worker,
        initial_trust=trust,
    )


def read_trust(config: Config, db: Database, ca: CertificateAuthority) -> TrustSet:
    """The CAs to trust beside ``ca`` (blocking: start-up)."""
    recorded = db.transact_sync(authorities.recorded_authority_txn)
    superseded = db.transact_sync(authorities.superseded_authorities_txn, include_retired=True)
    return TrustSet.build(ca, recorded, superseded, kept_authorities(config.ca, superseded))


def kept_authorities(
    files: CAConfig, superseded: list[authorities.SupersededAuthority]
) -> dict[str, CertificateAuthority | None]:
    """The superseded CAs (not retired) whose key files this node kept (blocking)."""
    return {
        a.fingerprint_sha256: load_previous(files, a.fingerprint_sha256)
        for a in superseded
        if a.retired_at is None
    }


def _open_the_database_ca(
    config: Config, db: Database, now: datetime, *, claim: bool
) -> tuple[CertificateAuthority, bool]:
    """This node's CA, which must be the database's (storage.authorities): loaded, or
    created only when the database has none yet; the first node records its own."""
    try:
        recorded = db.transact_sync(authorities.recorded_authority_txn)
    except StorageError as e:
        raise StartupError(f"database: {e}") from None
    missing = not config.ca.cert_file.exists() and not config.ca.key_file.exists()
    if recorded is not None and missing:
        # Creating one would make a CA the other nodes do not trust.
        raise StartupError(
            f"CA: this database belongs to CA {recorded.subject} (SHA-256 "
            f"{recorded.fingerprint_sha256}), and this node has no CA at {config.ca.cert_file}: "
            "copy it from a node that has it (there: osp-admin ca export FILE; here: "
            "osp-admin ca import FILE), as the README's 'Several nodes' says"
        )
    try:
        ca, created = open_ca(config.ca, now=now)
    except CAError as e:
        raise StartupError(f"CA: {e}") from None
    except OSError as e:
        raise StartupError(f"CA: {e.filename or config.ca.key_file}: {e.strerror}") from None
    mine = ca.fingerprint_sha256()
    if recorded is None and claim:
        try:
            recorded = db.transact_sync(
                authorities.claim_authority_txn,
                fingerprint_sha256=mine,
                subject=ca.certificate.subject.rfc4514_string(),
                certificate=ca.certificate_der,
                now=now,
            )
        except StorageError as e:
            raise StartupError(f"database: {e}") from None
    if recorded is not None and recorded.fingerprint_sha256 != mine and created:
        # Another node started at the same moment and recorded its CA first.  The CA
        # made a moment ago here was never used: remove it, so that this node is left
        # as one that never had a CA (ca import, no --replace needed).
        for path in (config.ca.key_file, config.ca.cert_file):
            path.unlink(missing_ok=True)
        raise StartupError(
            f"CA: another node recorded its CA {recorded.subject} (SHA-256 "
            f"{recorded.fingerprint_sha256}) in this database while this node was "
            "starting; the CA this node had just created was removed. Copy the database's "
            "CA here (there: osp-admin ca export FILE; here: osp-admin ca import FILE)"
        )
    if recorded is not None and recorded.fingerprint_sha256 != mine:
        raise StartupError(
            f"CA: this node's CA {ca.certificate.subject.rfc4514_string()} (SHA-256 {mine}, "
            f"{config.ca.cert_file}) is not the CA of this database, {recorded.subject} "
            f"(SHA-256 {recorded.fingerprint_sha256}, recorded "
            f"{recorded.recorded_at:%Y-%m-%d %H:%M}Z): devices enrolled on the other nodes "
            "would be refused here. Use the same CA on every node (there: osp-admin ca "
            "export FILE; here: osp-admin ca import FILE)"
        )
    return ca, created


def replay_journal(db: Database, journal: CertificateJournal, now: datetime) -> None:
    """Put back into the database what the certificate journal holds and it lacks (a
    restore from backup), before anything is served (blocking; start-up)."""
    report = db.transact_sync(reconcile_txn, list(journal.events()), now=now)
    if report.changed:
        log.warn(
            "certificate journal replayed: {recorded} certificates recorded again and "
            "{revoked} revocations applied again (the database was behind the journal: "
            "restored from a backup?)",
            recorded=len(report.recorded),
            revoked=len(report.revoked),
        )


def _for_role(core: Core, files: IssuedFiles) -> IssuedFiles:
    # Workers read what their supervisor issued: N processes never renew the same files.
    if core.worker is not None:
        return replace(files, issues=False)
    return replace(files, journal=core.journal)


def token_signer(core: Core) -> TokenSigner:
    """The token signer as start-up reads (or issues) it."""
    return signer_of(token_signer_material(core))


def signer_of(material: ServerCertificate) -> TokenSigner:
    """The token signer of the token-signing key and certificate in use."""
    return TokenSigner(material.cert, material.key)


def token_signer_material(core: Core) -> ServerCertificate:
    """The token-signing key and certificate (osp_server.osp.token_setup), renewed on
    reload like the HTTPS certificate."""
    return build_issued_material(
        core, token_signer_files(core.config.data_dir, core.config.osp, core.ca)
    )


def token_factory(core: Core, signer: TokenSigner) -> TokenFactory:
    """The token factory, checked at start-up against ``[osp] max_token_bytes``
    (StartupError when the default format cannot fit)."""
    try:
        return build_token_factory(
            core.config.osp, signer, now=core.clock(), source=core.config.source
        )
    except TokenSetupError as e:
        raise StartupError(str(e)) from None


def build_server_certificate(core: Core) -> ServerCertificate:
    """The HTTPS listeners' certificate (osp_server.tls.server)."""
    return build_issued_material(core, server_files(core.config.tls, core.ca))


def build_issued_material(core: Core, files: IssuedFiles) -> ServerCertificate:
    """A key and certificate our CA issues for the server itself, read (or issued)
    now and refreshed on reload (osp_server.tls.server)."""
    try:
        return ServerCertificate(
            _for_role(core, files),
            ca=core.ca,
            trusted=lambda: core.trust.certificates,
            clock=core.clock,
            db=core.db,
            reactor=core.reactor,
            cpu_pool=core.cpu_pool,
        )
    except MaterialError as e:
        raise StartupError(str(e)) from None


@dataclass
class Components:
    """Sites and TLS creators, ready to listen (tests listen on port 0)."""

    core: Core
    http_site: OSPSite
    https_site: OSPSite
    https_tls: ReloadableServerTLS
    metrics_site: OSPSite
    enrollment: EnrollmentService
    osp: OSPService
    policy: IRoutingPolicy
    authenticator: DeviceAuthenticator
    osp_site: OSPSite
    server_certificate: ServerCertificate
    mtls_tls: ReloadableServerTLS
    legacy_tls: ReloadableServerTLS
    change_watcher: ChangeWatcher
    crl: CRLResource
    ocsp_responder: ServerCertificate
    token_signer: ServerCertificate
    tokens: TokenFactory
    _reload_lock: DeferredLock = field(default_factory=DeferredLock, init=False)

    def https_factory(self) -> IProtocolFactory:
        """The HTTPS listener's factory: TLS around the site (client certificate optional)."""
        return RefusableTLSFactory(self.https_tls, False, self.https_site)

    def osp_mtls_factory(self) -> IProtocolFactory:
        """/osp alone, where the handshake itself requires a client certificate."""
        return RefusableTLSFactory(self.mtls_tls, False, self.osp_site)

    def legacy_osp_factory(self) -> IProtocolFactory:
        """/osp alone at OpenSSL security level 0, for MD5-signed legacy certificates."""
        return RefusableTLSFactory(self.legacy_tls, False, self.osp_site)

    def reload_tls(self) -> Deferred[None]:
        """Re-read the certificate files, renewing ours that expire within 30 days (in
        threads), and rebuild every TLS context: SIGHUP, ``osp-admin reload`` and the
        periodic renewal check.  A file that cannot be used keeps what was in use and
        the log says why; the others are still reloaded.  One reload at a time (SIGHUP,
        osp-admin reload and the periodic check may coincide, and two renewals of the
        same files must not interleave); the Deferred never fails."""
        return self._reload_lock.run(lambda: Deferred.fromCoroutine(self._reload()))

    async def _reload(self) -> None:
        try:
            await self._reload_all()
        except Exception:
            log.failure("reload failed; the certificates in use stay")

    async def _reload_all(self) -> None:
        await self._reload_authorities()
        material = (
            ("TLS", self.server_certificate),
            ("OCSP responder", self.ocsp_responder),
            ("token signer", self.token_signer),
        )
        for what, held in material:
            try:
                await held.refresh()
            except Exception as e:
                log.error(
                    "{what} certificate reload failed; keeping the one in use: {error}",
                    what=what,
                    error=describe_error(e),
                )
        for creator in (self.https_tls, self.mtls_tls, self.legacy_tls):
            creator.reload()
        signer = self.tokens.signer
        if signer is not None and signer.certificate != self.token_signer.cert:
            self.tokens.replace_signer(signer_of(self.token_signer))

    async def _reload_authorities(self) -> None:
        """Adopt the CA in the ``[ca]`` files when a rollover replaced it (only when it
        is the database's), and read which CAs to trust.  Files on the CPU pool,
        storage on the database pool."""
        core = self.core
        files = core.config.ca

        try:
            loaded: CertificateAuthority = await deferToThreadPool(
                core.reactor, core.cpu_pool, load_configured_ca, files
            )
            recorded = await core.db.transact("ca_identity", authorities.recorded_authority_txn)
            superseded = await core.db.transact("ca_trust", authorities.superseded_authorities_txn)
            kept = await deferToThreadPool(
                core.reactor, core.cpu_pool, lambda: kept_authorities(files, superseded)
            )
        except (CAError, StorageError, OSError) as e:
            log.error("CA reload failed; keeping the CAs in use: {error}", error=describe_error(e))
            return
        if loaded.fingerprint_sha256() != core.ca.fingerprint_sha256():
            if recorded is None or recorded.fingerprint_sha256 != loaded.fingerprint_sha256():
                log.error(
                    "CA reload: {path} now holds CA {fp}, which is not this database's CA; "
                    "keeping the CA in use",
                    path=str(files.cert_file),
                    fp=loaded.fingerprint_sha256(),
                )
            else:
                previous = core.ca.fingerprint_sha256()
                core.ca.adopt(loaded)
                self.crl.invalidate()
                log.info(
                    "CA rolled over: issuing from {subject} (SHA-256 {fp}); {previous} "
                    "stays trusted until retired",
                    subject=loaded.certificate.subject.rfc4514_string(),
                    fp=loaded.fingerprint_sha256(),
                    previous=previous,
                )
        trust = TrustSet.build(core.ca, recorded, superseded, kept)
        if core.ca.certificate not in trust.certificates:
            log.error(
                "this node issues from CA {fp}, which the database has retired: its "
                "devices are refused everywhere. Import the database's CA (osp-admin ca "
                "import --replace) and reload",
                fp=core.ca.fingerprint_sha256(),
            )
        if trust.fingerprints() != core.trust.fingerprints():
            log.info("trusted CAs: {fps}", fps=", ".join(trust.fingerprints()))
        core.trust = trust


def ocsp_responders(core: Core, delegated: ServerCertificate) -> list[Responder]:
    """Who answers OCSP for which CA: the issuing CA's delegated responder (the CA
    itself between a rollover and the responder's re-issue from the new CA), and each
    superseded CA whose key this node kept, for its own certificates."""
    issuing = core.ca.snapshot()
    first = (
        Responder.delegated(issuing.certificate, delegated.cert, delegated.file_key)
        if issuing.issued(delegated.cert)
        else Responder(issuing.certificate, issuing.certificate, issuing.sign_ocsp_response)
    )
    return [
        first,
        *(
            Responder(ca.certificate, ca.certificate, ca.sign_ocsp_response)
            for ca in core.trust.superseded.values()
        ),
    ]


def build_components(core: Core) -> Components:
    """Wire resources and sites (no listening)."""
    cfg = core.config.listeners

    server_certificate = build_server_certificate(core)
    # Read at each scrape: SIGHUP may have renewed it.
    core.metrics.certificate_expiry.labels("server").set_function(
        lambda: server_certificate.cert.not_valid_after_utc.timestamp()
    )

    def tls_loader(*, require: bool, legacy: bool = False) -> Callable[[], TLSMaterial]:
        def load() -> TLSMaterial:
            return TLSMaterial(
                private_key=server_certificate.file_key,
                certificate=server_certificate.cert,
                chain=core.trust.links,
                client_trust=core.trust.certificates,
                require_client_certificate=require,
                legacy_security_level=legacy,
            )

        return load

    # Client certificates are optional on the main HTTPS listener: the stock enroll
    # client sends none.  /osp enforces them in the application.
    https_tls = ReloadableServerTLS(tls_loader(require=False))

    change_watcher = ChangeWatcher(
        core.db, core.reactor, interval=core.config.osp.access_poll_seconds
    )
    enrollment = EnrollmentService(
        db=core.db,
        ca=core.ca,
        config=core.config.enrollment,
        reactor=core.reactor,
        cpu_pool=core.cpu_pool,
        throttle=EnrollmentThrottle(
            failures_per_device=core.config.enrollment.throttle_failures,
            requests_per_address=core.config.enrollment.throttle_per_address,
            window_seconds=core.config.enrollment.throttle_window_seconds,
            clock=core.reactor.seconds,
        ),
        clock=core.clock,
        authorizer=build_enrollment_authorizer(core),
        journal=core.journal,
        on_access_change=change_watcher.changed,
    )
    health = HealthResource(core.storage_probe, core.readiness)
    ready = ReadyResource(core.write_probe, core.readiness)
    plain_root = RootResource()
    plain_root.putChild(b"health", health)
    plain_root.putChild(b"ready", ready)
    crl = CRLResource(
        core.db,
        lambda: [core.ca, *core.trust.superseded.values()],
        core.reactor,
        core.clock,
        core.cpu_pool,
    )
    plain_root.putChild(b"crl", crl)
    plain_root.putChild(b"crl.pem", crl.pem())
    ocsp_responder = build_issued_material(
        core, ocsp_responder_files(core.config.data_dir, core.ca)
    )
    plain_root.putChild(
        b"ocsp",
        OCSPResource(
            core.db,
            lambda: ocsp_responders(core, ocsp_responder),
            core.reactor,
            core.clock,
            core.cpu_pool,
        ),
    )
    plain_root.putChild(
        b"tep",
        TepResource(
            enrollment,
            allow_enrollment=core.config.enrollment.allow_plain_http,
            listener="http",
            metrics=core.metrics,
        ),
    )
    policy = build_routing_policy(core)
    if isinstance(policy, DefaultRoutingPolicy):
        default_policy = policy
        core.metrics.registry.register(
            RoutingCollector(policy.quality, policy.fraud, monotonic=lambda: default_policy.clock())
        )
    authenticator = DeviceAuthenticator(core.db, clock=core.clock, monotonic=core.reactor.seconds)
    change_watcher.subscribe(ACCESS, authenticator.invalidate)
    change_watcher.subscribe(ACCESS, crl.invalidate)
    signer_material = token_signer_material(core)
    core.metrics.certificate_expiry.labels("token_signer").set_function(
        lambda: signer_material.cert.not_valid_after_utc.timestamp()
    )
    core.metrics.certificate_expiry.labels("ocsp_responder").set_function(
        lambda: ocsp_responder.cert.not_valid_after_utc.timestamp()
    )
    tokens = token_factory(core, signer_of(signer_material))
    osp_service = OSPService(
        db=core.db,
        policy=policy,
        tokens=tokens,
        config=core.config.osp,
        clock=core.clock,
    )
    osp_resource = OSPResource(
        osp_service,
        authenticator,
        metrics=core.metrics,
        answer_reauthorization=core.config.osp.reauthorization_fixed_clients,
        ready=core.readiness.is_ready,
    )

    https_root = RootResource()
    https_root.putChild(b"health", health)
    https_root.putChild(b"ready", ready)
    https_root.putChild(
        b"tep",
        TepResource(enrollment, allow_enrollment=True, listener="https", metrics=core.metrics),
    )
    https_root.putChild(b"osp", osp_resource)
    osp_root = RootResource()
    osp_root.putChild(b"osp", osp_resource)

    def site(root: Resource, name: str, *, tls: bool = False) -> OSPSite:
        return OSPSite(
            root,
            reactor=core.reactor,
            name=name,
            request_timeout=cfg.request_timeout_seconds,
            header_timeout=cfg.header_timeout_seconds,
            max_connections_per_address=cfg.max_connections_per_address,
            max_connections=cfg.max_connections,
            trusted_networks=cfg.trusted_networks,
            prefer_authenticated=tls,
        )

    metrics_root = RootResource()
    metrics_root.putChild(b"metrics", MetricsResource(core.metrics))
    return Components(
        core=core,
        http_site=site(plain_root, "http"),
        https_site=site(https_root, "https", tls=True),
        https_tls=https_tls,
        metrics_site=site(metrics_root, "metrics"),
        enrollment=enrollment,
        osp=osp_service,
        policy=policy,
        authenticator=authenticator,
        osp_site=site(osp_root, "osp", tls=True),
        server_certificate=server_certificate,
        mtls_tls=ReloadableServerTLS(tls_loader(require=True)),
        legacy_tls=ReloadableServerTLS(tls_loader(require=True, legacy=True)),
        change_watcher=change_watcher,
        crl=crl,
        ocsp_responder=ocsp_responder,
        token_signer=signer_material,
        tokens=tokens,
    )


def checked_components(core: Core) -> Components:
    """:func:`build_components`, its failures as :class:`StartupError`."""
    try:
        return build_components(core)
    except (CAError, StorageError, OSError, ValueError, SSL.Error) as e:
        raise StartupError(f"TLS and token certificates: {e}") from None


def build_enrollment_authorizer(core: Core) -> IEnrollmentAuthorizer | None:
    """The configured enrollment authorizer, if any, checked against its interface."""
    name = core.config.enrollment.authorizer
    if not name:
        return None
    try:
        return load_enrollment_authorizer(name, **core.config.plugin_options(name))
    except ExtensionLoadError as e:
        raise StartupError(
            f"{core.config.source}: enrollment.authorizer (options: [plugins.{name}]): {e}"
        ) from None


def build_routing_policy(core: Core) -> IRoutingPolicy:
    """The configured routing policy, checked against IRoutingPolicy."""
    name = core.config.osp.routing_policy
    try:
        return load_routing_policy(name, **core.config.plugin_options(name))
    except ExtensionLoadError as e:
        raise StartupError(
            f"{core.config.source}: osp.routing_policy (options: [plugins.{name}]): {e}"
        ) from None


class CoreService(Service):
    """Starts and stops the database and CPU pools and the storage probe; ``reload``
    is what SIGHUP does (the twistd process installs the handler: ProcessService)."""

    def __init__(self, components: Components, *, serves: bool = True) -> None:
        self.components = components
        # False in a supervisor of workers: it answers no request, so it neither
        # probes storage for /health nor writes heartbeats for /ready.
        self.serves = serves
        if serves and components.core.worker is None:
            # Workers re-read the files when their supervisor, which renews them,
            # signals them; a supervisor subscribes itself (workers.composition).
            components.change_watcher.subscribe(RELOAD, lambda: self.reload("osp-admin reload"))

    def privilegedStartService(self) -> None:
        # Before the listeners bind (they follow in the service tree), so the
        # fingerprints lead the start-up log.
        super().privilegedStartService()
        if self.components.core.worker is not None:
            return  # the supervisor logged them
        core = self.components.core
        ca = core.ca
        log.info(
            "osp-server {version}: data directory {data_dir}, database {database}",
            version=__version__,
            data_dir=str(core.config.data_dir),
            database=displayable_url(core.config.database.url),
        )
        log.info(
            "CA {subject} ({how} {path})",
            subject=ca.certificate.subject.rfc4514_string(),
            how="created at" if core.ca_created else "loaded from",
            path=str(core.config.ca.cert_file),
        )
        log.info("CA fingerprint SHA-256 {fp}", fp=ca.fingerprint_sha256())
        log.info("CA fingerprint MD5 (enroll -fprint) {fp}", fp=ca.fingerprint_md5())

    def startService(self) -> None:
        super().startService()
        core = self.components.core
        core.db.start()
        core.cpu_pool.start()
        if self.serves:
            self.components.change_watcher.startService()
            core.storage_probe.start()
            core.write_probe.start()
            core.inventory_probe.start()

    def reload(self, why: str = "SIGHUP") -> Deferred[None]:
        """Re-read the certificate files and rebuild the TLS contexts (SIGHUP, ``osp-admin
        reload``); ours are renewed when they expire within 30 days."""
        log.info("{why}: reloading TLS material", why=why)
        return self.components.reload_tls()

    def stopService(self) -> None:
        super().stopService()
        core = self.components.core
        if self.components.change_watcher.running:
            self.components.change_watcher.stopService()
        core.storage_probe.stop()
        core.inventory_probe.stop()
        # Queues the heartbeat's withdrawal on the database writer; stopping the pool
        # below runs the work queued before it, then joins the threads.  Synchronous on
        # purpose: a stop that waited for the reactor would leave the pools' threads
        # (and the process) alive wherever the reactor does not run again.
        core.write_probe.stop()
        core.cpu_pool.stop()
        core.db.stop()


class PeriodicRenewal(Service):
    """Calls ``renew`` every ``interval`` seconds (not at start: start-up just did it),
    so the server's own certificates are renewed while it runs, not only at start."""

    name = "renewal"

    def __init__(
        self, reactor: IOSPReactor, renew: Callable[[], object], *, interval: float
    ) -> None:
        self._loop = LoopingCall(renew)
        self._loop.clock = reactor
        self._interval = interval

    def startService(self) -> None:
        super().startService()
        self._loop.start(self._interval, now=False)

    def stopService(self) -> None:
        super().stopService()
        if self._loop.running:
            self._loop.stop()


RENEWAL_CHECK_SECONDS = 6 * 3600.0
"""How often a running server checks whether its own certificates need renewing (they
are renewed 30 days before they expire)."""


def build_process_service(config: Config, reactor: IOSPReactor) -> MultiService:
    """What ``twistd osp`` runs: :func:`build_service` plus the process-wide set-up
    (SIGHUP handler, start-up objects frozen out of the garbage collector), which
    in-process users such as tests do not want.  (``[server] workers`` > 1 runs
    :func:`osp_server.workers.composition.build_supervisor_service` instead.)"""
    return _process_wide(build_service(config, reactor), reactor)


def build_worker_service(config: Config, reactor: IWorkerReactor, role: WorkerRole) -> MultiService:
    """What one worker process runs: the server on the sockets its supervisor bound
    (``role.listeners``), with the process-wide set-up of :func:`build_process_service`."""
    core = prepare(config, reactor, worker=role)
    top = assemble_or_release(
        core, lambda: _assemble(core, config, reactor, _adopted_listeners(reactor, role, core))
    )
    return _process_wide(top, reactor)


def _process_wide(top: MultiService, reactor: IOSPReactor) -> MultiService:
    core_service = top.getServiceNamed("core")
    assert isinstance(core_service, CoreService)
    process = ProcessService(reactor, reload=core_service.reload)
    process.setName("process")
    process.setServiceParent(top)
    refresher = _named(top, "routes")
    if isinstance(refresher, RouteRefresher):
        refresher.after_load.append(freeze_long_lived_objects)
    return top


def _named(top: MultiService, name: str) -> object:
    try:
        return top.getServiceNamed(name)
    except KeyError:
        return None


def build_service(config: Config, reactor: IOSPReactor) -> MultiService:
    """The whole server as one MultiService, without process-wide side effects."""
    core = prepare(config, reactor)
    return assemble_or_release(
        core, lambda: _assemble(core, config, reactor, _bound_listeners(config, reactor))
    )


def assemble_or_release(core: Core, assemble: Callable[[], MultiService]) -> MultiService:
    """``assemble()``; should it fail, the database's connections are released
    (nothing has started yet) before the error goes on."""
    try:
        return assemble()
    except BaseException:
        core.db.stop()
        raise


MakeListener = Callable[[str, str, IProtocolFactory], Service | None]
"""``(name, endpoint description, factory)`` -> the service that listens, or None."""


def _bound_listeners(config: Config, reactor: IOSPReactor) -> MakeListener:
    def make(name: str, description: str, factory: IProtocolFactory) -> Service:
        endpoint = endpoint_for(config, reactor, name, description)
        return ListenerService(reactor, description, endpoint, factory)

    return make


def _adopted_listeners(reactor: IWorkerReactor, role: WorkerRole, core: Core) -> MakeListener:
    def make(name: str, description: str, factory: IProtocolFactory) -> Service | None:
        fd = role.listeners.get(name)
        if fd is None:
            return None
        # The metrics listener is this worker's own: it answers from the start.
        hold = role.accept_when_ready and name != "metrics"
        gate = core.readiness.when_ready if hold else None
        return AdoptedListenerService(reactor, fd, factory, accept_after=gate)

    return make


def _assemble(
    core: Core, config: Config, reactor: IOSPReactor, make_listener: MakeListener
) -> MultiService:
    components = checked_components(core)
    top = MultiService()
    core_service = CoreService(components)
    core_service.setName("core")
    core_service.setServiceParent(top)
    if IRouteTablesConsumer.providedBy(components.policy):
        refresher = RouteRefresher(
            core.db,
            cast(ReplaceableTables, components.policy),
            reactor,
            interval=config.osp.route_refresh_seconds,
        )
        refresher.setName("routes")
        refresher.setServiceParent(top)
        refresher.after_load.append(lambda: _route_gauges(core.metrics, refresher))
        # Listeners bind before the first load: until it is done /osp answers 503.
        core.readiness.wait_for("routes", refresher.when_loaded())
    if isinstance(components.policy, DefaultRoutingPolicy):
        worker = "" if core.worker is None else f"/worker{core.worker.index}"
        policy = components.policy
        QualityKeeper(
            core.db,
            policy.quality,
            reactor,
            node=socket.gethostname() + worker,
            clock=core.clock,
            monotonic=lambda: policy.clock(),
        ).setServiceParent(top)
    if core.worker is None:
        PeriodicRenewal(
            reactor, lambda: components.reload_tls(), interval=RENEWAL_CHECK_SECONDS
        ).setServiceParent(top)
    if core.worker is None or core.worker.runs_housekeeping:
        reaper = TransactionReaper(
            core.db,
            reactor,
            clock=core.clock,
            rating_retention=timedelta(days=config.osp.rating_retention_days),
        )
        reaper.setName("reaper")
        reaper.setServiceParent(top)
    if core.worker is None:
        warn_about_settings(config)
    factories: dict[str, Callable[[], IProtocolFactory]] = {
        "http": lambda: components.http_site,
        "https": components.https_factory,
        "osp-mtls": components.osp_mtls_factory,
        "legacy-osp": components.legacy_osp_factory,
        "metrics": lambda: components.metrics_site,
    }
    for name, description in listener_descriptions(config):
        svc = make_listener(name, description, factories[name]())
        if svc is not None:
            svc.setName(name)
            svc.setServiceParent(top)
    return top


def _route_gauges(metrics: Metrics, refresher: RouteRefresher) -> None:
    if refresher.loaded_counts is not None and refresher.version is not None:
        metrics.route_version.set(refresher.version)
        for kind, count in refresher.loaded_counts.items():
            metrics.route_table.labels(kind).set(count)


def warn_about_settings(config: Config) -> None:
    """Log the start-up warnings about risky settings (once per server, not per worker)."""
    if config.osp.reauthorization_fixed_clients:
        log.warn(
            "osp.reauthorization_fixed_clients is on: ReauthorizationRequest gets a "
            "ReauthorizationResponse, which crashes stock OSP Toolkit 4.33.1 clients"
        )
    if config.listeners.legacy_osp:
        log.warn(
            "legacy-osp listener {description}: TLS at OpenSSL security level 0 so that "
            "MD5-signed legacy device certificates verify; only certificates this server "
            "issued are accepted, but prefer SHA-256 certificates for new devices",
            description=config.listeners.legacy_osp,
        )
