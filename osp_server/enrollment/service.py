"""The enrollment use case: authenticate → throttle → replay check → CSR policy →
approval policy → record intent → sign → record → commit → answer.

Client mistakes become a TEP status (never an exception the resource must map);
storage failures become status 6 (temporary failure, nothing issued).  Every
decision is logged for the operator and written to the audit log.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from cryptography import x509
from sqlalchemy import Connection

from twisted.internet.defer import CancelledError, Deferred, DeferredSemaphore
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from osp_server import passwords
from osp_server.config import EnrollmentConfig, validity
from osp_server.enrollment.issuance import (
    EnrollmentStateError,
    Issued,
    SignedCertificateMismatch,
    device_subject,
    issue_enrollment,
    record_sign_intent,
)
from osp_server.enrollment.throttle import EnrollmentThrottle
from osp_server.enrollment.wire import EnrollmentRequest, TepOperation, TepStatus
from osp_server.interfaces import EnrollmentVerdict, IEnrollmentAuthorizer
from osp_server.pki.ca import CAError, CertificateAuthority, spki_der
from osp_server.pki.csr import CSRPolicyError, ValidatedCSR, validate_csr
from osp_server.pki.journal import CertificateJournal, JournalError
from osp_server.storage import audit
from osp_server.storage import certificates as cert_store
from osp_server.storage import devices as device_store
from osp_server.storage import enrollments as enrollment_store
from osp_server.storage.db import Database, StorageError
from osp_server.storage.errors import NotFoundError

log = Logger()

# argon2id uses 64 MiB per hash: bound how many run at once (also the CPU pool's size).
CONCURRENT_HASHES = 2


@dataclass(frozen=True)
class Outcome:
    """What the device is told, and why (for logs and metrics, never sent)."""

    status: TepStatus
    certificate_der: bytes | None = None
    reason: str = ""
    serial: str | None = None


AuthMethod = Literal["password", "secret", "certificate"]


@dataclass(frozen=True)
class _Auth:
    method: AuthMethod
    secret_hash: str | None = None  # the one-time secret's hash, to spend it exactly once
    renews: bytes | None = None  # a renewal: the DER of the certificate it renews
    renews_sha256: str | None = None  # ... and its fingerprint, as the database has it
    retrieve_only: bool = False
    """A renewal presenting the certificate its own earlier renewal superseded (the answer
    was lost): only that renewal's stored certificate may be fetched again."""


@dataclass(frozen=True)
class _Renewing:
    """The certificate a renewal presents, and its device."""

    certificate: cert_store.PresentedCertificate
    device: device_store.Device


def _renewing_txn(conn: Connection, sha256: str) -> _Renewing | None:
    presented = cert_store.presented_certificate_txn(conn, sha256)
    if presented is None:
        return None
    return _Renewing(presented, device_store.get_device_by_pk(conn, presented.device_pk))


def _renewal_refusal(
    found: _Renewing | None, request: EnrollmentRequest, now: datetime
) -> str | None:
    """Why a renewal is not authenticated (None: it is)."""
    if found is None:
        return "renewal without a client certificate this server issued"
    presented = found.certificate
    if presented.kind != "device":
        return "renewal with a certificate that is not a device certificate"
    if (presented.customer_id, presented.device_id) != (request.customer_id, request.device_id):
        return (
            f"renewal for customer {request.customer_id} device {request.device_id} with the "
            f"certificate of customer {presented.customer_id} device {presented.device_id}"
        )
    if presented.state != "valid" and presented.revocation_reason != "superseded":
        return f"renewal with revoked certificate {presented.serial}"
    if now > presented.not_after:
        return f"renewal with expired certificate {presented.serial}"
    if now < presented.not_before:
        return f"renewal with certificate {presented.serial}, not yet valid"
    if presented.device_state != "active":
        return "device disabled"
    return None


def _certificate_spki(der: bytes) -> bytes:
    return spki_der(x509.load_der_x509_certificate(der).public_key())


_STATE_FOR_VERDICT: dict[str, Literal["pending", "signing", "rejected"]] = {
    "issue": "signing",
    "pending": "pending",
    "reject": "rejected",
}


class RenewalRefused(Exception):
    """The renewing certificate changed while the renewal was under way (revoked, already
    renewed, its device disabled); the message says which."""


class SecretAlreadyUsed(Exception):
    """A concurrent request spent the one-time secret first."""


@dataclass(frozen=True)
class _Registered:
    enrollment: enrollment_store.Enrollment | None
    nonce_conflict: bool = False
    device_gone: bool = False


def _utcnow() -> datetime:
    return datetime.now(UTC)


class EnrollmentService:
    """Answers TEP request and retrieve operations."""

    def __init__(
        self,
        *,
        db: Database,
        ca: CertificateAuthority,
        config: EnrollmentConfig,
        reactor: IReactorFromThreads,
        throttle: EnrollmentThrottle,
        cpu_pool: ThreadPool,
        clock: Callable[[], datetime] = _utcnow,
        authorizer: IEnrollmentAuthorizer | None = None,
        journal: CertificateJournal | None = None,
        on_access_change: Callable[[], object] = lambda: None,
    ) -> None:
        # Called when an issue revoked the device's earlier certificates ([enrollment]
        # renewal = "revoke"): this node refuses them from the next request on.
        self._on_access_change = on_access_change
        # An integrator's extra approval step (IEnrollmentAuthorizer); None: the
        # device's own policy (auto or manual) decides.
        self.authorizer = authorizer
        self._db = db
        self._cpu_pool = cpu_pool
        self._ca = ca
        self._config = config
        self._reactor = reactor
        self._throttle = throttle
        self._clock = clock
        self._hashing = DeferredSemaphore(CONCURRENT_HASHES)
        self._journal = journal

    @property
    def ca_certificate_der(self) -> bytes:
        """The CA certificate served by getcacert."""
        return self._ca.certificate_der

    def _in_thread(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return deferToThreadPool(self._reactor, self._cpu_pool, fn, *args, **kwargs)

    async def enroll(
        self, request: EnrollmentRequest, *, source: str, client_certificate: bytes | None = None
    ) -> Outcome:
        """Handle a parsed request/retrieve from ``source`` (the peer address);
        ``client_certificate``: the DER the TLS client presented (renewals need it)."""
        try:
            outcome = await self._enroll(request, source, client_certificate)
        except StorageError as e:  # timeouts included (Database.transact)
            log.error(
                "enrollment of customer {customer} device {device} failed temporarily: {error}",
                customer=request.customer_id,
                device=request.device_id,
                error=str(e),
            )
            return Outcome(TepStatus.TEMPORARY_FAILURE, reason="storage unavailable")
        except CancelledError:
            raise
        log.info(
            "TEP {operation} customer {customer} device {device} from {source}: "
            "status {status} ({reason})",
            operation="renewal" if request.renewal else request.operation.value,
            customer=request.customer_id,
            device=request.device_id,
            source=source,
            status=int(outcome.status),
            reason=outcome.reason,
        )
        return outcome

    async def _audit(
        self, action: str, request: EnrollmentRequest, source: str, **detail: Any
    ) -> None:
        await self._db.transact(
            "tep_audit",
            audit.record_txn,
            at=self._clock(),
            actor=f"device@{source}",
            action=action,
            subject=f"customer {request.customer_id} device {request.device_id}",
            serial=detail.pop("serial", None),
            detail={
                "operation": "renewal" if request.renewal else request.operation.value,
                **detail,
            },
        )

    async def _enroll(
        self, request: EnrollmentRequest, source: str, client_certificate: bytes | None
    ) -> Outcome:
        customer, device_id = request.customer_id, request.device_id
        if not self._throttle.admit(customer_id=customer, device_id=device_id, address=source):
            return Outcome(TepStatus.THROTTLED, reason="throttled before authentication")
        checked: tuple[device_store.Device, _Auth] | Outcome
        if request.renewal:
            checked = await self._authenticate_renewal(request, source, client_certificate)
        else:
            checked = await self._authenticate_password(request, source)
        if isinstance(checked, Outcome):
            return checked
        device, auth = checked

        try:
            csr: ValidatedCSR = await self._in_thread(
                validate_csr, request.csr_der, profile=self._ca.profile
            )
        except CSRPolicyError as e:
            await self._audit("enrollment.csr-refused", request, source, reason=str(e))
            return Outcome(TepStatus.CSR_REFUSED, reason=f"CSR refused: {e}")

        if auth.renews is not None and csr.spki_der == _certificate_spki(auth.renews):
            reason = "the renewal CSR has the key of the certificate it renews; make a new key"
            await self._audit("enrollment.csr-refused", request, source, reason=reason)
            return Outcome(TepStatus.CSR_REFUSED, reason=reason)

        if auth.retrieve_only:
            known = await self._db.transact(
                "tep_find_enrollment",
                enrollment_store.find_txn,
                device_pk=device.pk,
                csr_sha256=csr.sha256_hex,
            )
            if known is None or known.state != "issued":
                reason = "renewal with a certificate already superseded by another renewal"
                await self._audit("enrollment.denied", request, source, reason=reason)
                return Outcome(TepStatus.DENIED, reason=reason)

        approval: EnrollmentVerdict | None = None
        if auth.renews is not None:
            # The device proved it holds a certificate we issued: renewals are signed
            # at once, whatever its first enrollment's approval policy.
            approval = "issue"
        elif self.authorizer is not None and request.operation is TepOperation.REQUEST:
            known = await self._db.transact(
                "tep_find_enrollment",
                enrollment_store.find_txn,
                device_pk=device.pk,
                csr_sha256=csr.sha256_hex,
            )
            if known is None:
                try:
                    approval = await self._ask_authorizer(request, csr.sha256_hex)
                except Exception:
                    log.failure("the enrollment authorizer failed")
                    return Outcome(TepStatus.TEMPORARY_FAILURE, reason="authorizer failed")

        now = self._clock()
        registered: _Registered = await self._db.transact(
            "tep_register",
            self._register_txn,
            device,
            request,
            csr.sha256_hex,
            source,
            now,
            approval,
        )
        if registered.device_gone:
            reason = "device deleted or disabled during the request"
            await self._audit("enrollment.denied", request, source, reason=reason)
            return Outcome(TepStatus.DENIED, reason=reason)
        if registered.nonce_conflict:
            await self._audit("enrollment.nonce-reused", request, source, csr_sha256=csr.sha256_hex)
            return Outcome(TepStatus.MALFORMED, reason="nonce reused with another CSR")
        enrollment = registered.enrollment
        if enrollment is None:
            return Outcome(TepStatus.NO_REQUEST, reason="retrieve without a matching request")
        if enrollment.state == "pending":
            return Outcome(TepStatus.PENDING, reason=f"enrollment {enrollment.id} awaits approval")
        if enrollment.state == "rejected":
            status = TepStatus(enrollment.reject_status or TepStatus.CSR_REFUSED)
            return Outcome(status, reason=f"enrollment {enrollment.id} was rejected")

        try:
            signed = None
            if enrollment.state == "signing":
                # Signed here, on the CPU pool: the RSA signature never holds the
                # database writer or the enrollment's row lock (issuance.py).
                signed = await self._in_thread(
                    self._ca.issue_device_certificate,
                    csr,
                    device_subject(device),
                    validity=validity(self._config.certificate_validity_days),
                    now=now,
                )
            issued: Issued = await self._db.transact(
                "tep_issue",
                self._issue_txn,
                enrollment.id,
                device.pk,
                auth.secret_hash,
                now,
                signed,
                None if auth.renews_sha256 is None else (auth.renews_sha256, csr),
            )
        except RenewalRefused as e:
            await self._audit("enrollment.denied", request, source, reason=str(e))
            return Outcome(TepStatus.DENIED, reason=str(e))
        except SecretAlreadyUsed:
            await self._audit("enrollment.denied", request, source, reason="secret already used")
            return Outcome(TepStatus.DENIED, reason="one-time secret already used")
        except SignedCertificateMismatch as e:
            log.error("enrollment {id}: {error}", id=enrollment.id, error=str(e))
            return Outcome(TepStatus.TEMPORARY_FAILURE, reason=str(e))
        except EnrollmentStateError as e:
            return Outcome(TepStatus.CSR_REFUSED, reason=str(e))
        except (CAError, CSRPolicyError) as e:
            log.error("signing enrollment {id} failed: {error}", id=enrollment.id, error=str(e))
            return Outcome(TepStatus.CSR_REFUSED, reason=f"cannot sign: {e}")
        if self._journal is not None:
            # Committed; journaled before the device sees it (osp_server.pki.journal).
            # Every time, a stored certificate too: a repeat costs one fsync, and a
            # journal write lost to an earlier failure is made good.
            try:
                await self._in_thread(self._journal.append, issued.journal_events(now))
            except JournalError as e:
                log.error("enrollment {id}: {error}", id=enrollment.id, error=str(e))
                return Outcome(TepStatus.TEMPORARY_FAILURE, reason="certificate journal failed")
        if issued.newly_issued and issued.revoked:
            self._on_access_change()
        reason = "issued" if issued.newly_issued else "stored certificate returned"
        return Outcome(TepStatus.ISSUED, issued.der, reason=reason, serial=issued.serial)

    async def _authenticate_password(
        self, request: EnrollmentRequest, source: str
    ) -> tuple[device_store.Device, _Auth] | Outcome:
        customer, device_id = request.customer_id, request.device_id
        verdict: bool | None = None  # None: no verdict (storage trouble), not a failure
        try:
            device = await self._db.transact(
                "tep_find_device", _find_device_txn, customer, device_id
            )
            auth: _Auth | None = await self._hashing.run(
                self._in_thread, self._authenticate, device, request
            )
            verdict = device is not None and auth is not None
        finally:
            self._throttle.finished(
                customer_id=customer, device_id=device_id, authenticated=verdict
            )
        if device is None or auth is None:
            reason = (
                "unknown device"
                if device is None
                else "device disabled"
                if device.state != "active"
                else "bad credentials"
            )
            await self._audit("enrollment.denied", request, source, reason=reason)
            return Outcome(TepStatus.DENIED, reason=reason)
        return device, auth

    async def _authenticate_renewal(
        self, request: EnrollmentRequest, source: str, client_certificate: bytes | None
    ) -> tuple[device_store.Device, _Auth] | Outcome:
        """The device's current certificate instead of its password: one we issued to
        this device, valid (unrevoked, unexpired), of an active device, and within the
        renewal window."""
        customer, device_id = request.customer_id, request.device_id
        verdict: bool | None = None
        presented = None if client_certificate is None else hashlib.sha256(client_certificate)
        try:
            found: _Renewing | None = None
            if presented is not None:
                found = await self._db.transact(
                    "tep_renewal_certificate", _renewing_txn, presented.hexdigest()
                )
            reason = _renewal_refusal(found, request, self._clock())
            verdict = reason is None
        finally:
            self._throttle.finished(
                customer_id=customer, device_id=device_id, authenticated=verdict
            )
        if reason is not None:
            await self._audit("enrollment.denied", request, source, reason=reason)
            return Outcome(TepStatus.DENIED, reason=reason)
        assert found is not None and client_certificate is not None and presented is not None
        window = timedelta(days=self._config.renewal_window_days)
        if found.certificate.not_after - self._clock() > window:
            return Outcome(
                TepStatus.NOT_DUE,
                reason=f"certificate {found.certificate.serial} expires "
                f"{found.certificate.not_after.isoformat()}, renewable "
                f"{self._config.renewal_window_days} days before",
            )
        return found.device, _Auth(
            "certificate",
            renews=client_certificate,
            renews_sha256=presented.hexdigest(),
            retrieve_only=found.certificate.state != "valid",
        )

    async def _ask_authorizer(
        self, request: EnrollmentRequest, csr_sha256: str
    ) -> EnrollmentVerdict:
        assert self.authorizer is not None
        answer = self.authorizer.authorize(request.customer_id, request.device_id, csr_sha256)
        verdict = await answer if isinstance(answer, Deferred) else answer
        if verdict not in ("issue", "pending", "reject"):
            raise ValueError(f"the enrollment authorizer answered {verdict!r}")
        return verdict

    def _authenticate(
        self, device: device_store.Device | None, request: EnrollmentRequest
    ) -> _Auth | None:
        """Password or unexpired one-time secret.

        Always exactly one argon2id verification for the password and one keyed hash
        for the one-time secret (dummy ones where nothing is stored), so unknown
        devices, devices without a secret and devices with one all cost the same
        (SECURITY.md P9).
        """
        now = self._clock()
        password_hash = device.password_hash if device is not None else None
        secret_hash = (
            device.secret_hash
            if device is not None
            and device.secret_expires_at is not None
            and device.secret_expires_at > now
            else None
        )
        profile = self._config.password_hashing
        password_ok = passwords.verify_secret(password_hash, request.password, profile)
        secret_ok = passwords.verify_one_time_secret(secret_hash, request.password)
        if device is None or device.state != "active":
            return None
        if not hmac.compare_digest(device.username.encode(), request.username.encode()):
            return None
        if password_ok:
            return _Auth("password")
        if secret_ok:
            return _Auth("secret", secret_hash)
        return None

    def _register_txn(
        self,
        conn: Connection,
        device: device_store.Device,
        request: EnrollmentRequest,
        csr_sha256: str,
        source: str,
        now: datetime,
        approval: EnrollmentVerdict | None = None,
    ) -> _Registered:
        """Replay check and enrollment lookup/creation, in one transaction."""
        # The device was read before the password hash (which takes a while): it may
        # have been deleted or disabled since.
        try:
            current = device_store.get_device_by_pk(conn, device.pk)
        except NotFoundError:
            return _Registered(None, device_gone=True)
        if current.state != "active" or (current.customer_id, current.device_id) != (
            device.customer_id,
            device.device_id,
        ):
            return _Registered(None, device_gone=True)
        if not enrollment_store.remember_nonce(
            conn, device_pk=device.pk, nonce=request.nonce, csr_sha256=csr_sha256, now=now
        ):
            return _Registered(None, nonce_conflict=True)
        existing = enrollment_store.find_txn(conn, device_pk=device.pk, csr_sha256=csr_sha256)
        if existing is not None or request.operation is TepOperation.RETRIEVE:
            return _Registered(existing)
        state: Literal["pending", "signing", "rejected"]
        if approval is not None:
            state = _STATE_FOR_VERDICT[approval]
        else:
            state = "pending" if device.enrollment_policy == "manual" else "signing"
        enrollment = enrollment_store.create(
            conn,
            device_pk=device.pk,
            csr_sha256=csr_sha256,
            csr_der=request.csr_der,
            state=state,
            source_address=source,
            now=now,
        )
        if state == "rejected":
            enrollment_store.set_state(
                conn,
                enrollment.id,
                state="rejected",
                now=now,
                by="authorizer",
                reject_status=int(TepStatus.CSR_REFUSED),
            )
            enrollment = enrollment_store.get(conn, enrollment.id)
        actions = {
            "pending": "enrollment.requested",
            "signing": "certificate.sign-intent",
            "rejected": "enrollment.rejected",
        }
        audit.record_txn(
            conn,
            at=now,
            actor=f"device@{source}",
            action=actions[state],
            subject=f"customer {device.customer_id} device {device.device_id}",
            detail={
                "enrollment": enrollment.id,
                "csr_sha256": csr_sha256,
                "policy": "renewal" if request.renewal else state,
                "authorizer": None if request.renewal else approval,
            },
        )
        return _Registered(enrollment)

    def _issue_txn(
        self,
        conn: Connection,
        enrollment_id: int,
        device_pk: int,
        secret_hash: str | None,
        now: datetime,
        signed: x509.Certificate | None = None,
        renewing: tuple[str, ValidatedCSR] | None = None,
    ) -> Issued:
        if renewing is not None:
            # Re-read under a row lock, in the transaction that issues: a revocation of
            # the presented certificate committed since it was checked is seen here.
            presented_sha256, csr = renewing
            state = cert_store.lock_for_renewal_txn(
                conn, presented_sha256, csr_sha256=csr.sha256_hex
            )
            enrollment = enrollment_store.get(conn, enrollment_id)
            if state is None or state.device_state != "active":
                raise RenewalRefused("the renewing certificate or its device is gone or disabled")
            if state.state != "valid" and not (
                state.revocation_reason == "superseded" and enrollment.state == "issued"
            ):
                raise RenewalRefused("the renewing certificate was revoked meanwhile")
            if state.renewed_by_another and enrollment.state != "issued":
                raise RenewalRefused(
                    "this certificate was already renewed (or the device enrolled again): "
                    "renew with the newer certificate"
                )
        issued = issue_enrollment(
            conn,
            enrollment_id,
            ca=self._ca,
            validity=validity(self._config.certificate_validity_days),
            renewal=self._config.renewal,
            now=now,
            actor="enrollment",
            signed=signed,
        )
        # One-time secrets are spent by the certificate they obtain, in the same
        # transaction; a concurrent request with the same secret then rolls back.
        if secret_hash is not None and not device_store.consume_secret(
            conn, device_pk, secret_hash, now=now
        ):
            raise SecretAlreadyUsed()
        return issued


def _find_device_txn(
    conn: Connection, customer_id: str, device_id: str
) -> device_store.Device | None:
    try:
        return device_store.get_device(conn, customer_id, device_id)
    except NotFoundError:
        return None


def approve(
    db: Database,
    enrollment_id: int,
    *,
    ca: CertificateAuthority,
    config: EnrollmentConfig,
    now: datetime,
    actor: str,
    journal: CertificateJournal | None = None,
) -> Issued:
    """Approve a pending enrollment and sign it now (``osp-admin enroll approve``); the
    certificate is journaled before this returns (JournalError if it cannot be)."""
    enrollment = db.transact_sync(enrollment_store.get, enrollment_id)
    if enrollment.state == "rejected":
        raise EnrollmentStateError(f"enrollment {enrollment_id} was rejected")
    db.transact_sync(record_sign_intent, enrollment_id, now=now, actor=actor)
    issued: Issued = db.transact_sync(
        issue_enrollment,
        enrollment_id,
        ca=ca,
        validity=validity(config.certificate_validity_days),
        renewal=config.renewal,
        now=now,
        actor=actor,
    )
    if journal is not None:
        journal.append(issued.journal_events(now))
    return issued


def reject(
    db: Database,
    enrollment_id: int,
    *,
    now: datetime,
    actor: str,
    status: TepStatus = TepStatus.CSR_REFUSED,
    reason: str = "",
) -> enrollment_store.Enrollment:
    """Reject a pending enrollment; retrieve then answers ``status``."""

    def work(conn: Connection) -> enrollment_store.Enrollment:
        enrollment = enrollment_store.get(conn, enrollment_id, for_update=True)
        if enrollment.state not in ("pending", "signing"):
            raise EnrollmentStateError(
                f"enrollment {enrollment_id} is {enrollment.state}, not pending"
            )
        enrollment_store.set_state(
            conn, enrollment_id, state="rejected", now=now, by=actor, reject_status=int(status)
        )
        audit.record_txn(
            conn,
            at=now,
            actor=actor,
            action="enrollment.rejected",
            subject=f"customer {enrollment.customer_id} device {enrollment.device_id}",
            detail={"enrollment": enrollment_id, "status": int(status), "reason": reason},
        )
        return enrollment_store.get(conn, enrollment_id)

    return db.transact_sync(work)
