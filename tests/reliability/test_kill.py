"""Crash safety (SECURITY.md R1, R2, P8, P11, P15): the real server is killed with SIGKILL
while clients are in flight, restarted on the same data directory and database, and
the database must hold everything any client was given, once.

Kill moments come from a seeded RNG (``OSP_KILL_SEED`` overrides the default); the
seed is in every failure message.  Every loop is bounded in time and count, and every
server process is killed and reaped in a ``finally`` block.
"""

from __future__ import annotations

import hashlib
import os
import random
import sqlite3
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from defusedxml import ElementTree
from sqlalchemy.engine import make_url

from tests.conftest import VECTORS
from tests.integration.wire import build_request, split_vector
from tests.reliability.harness import (
    Interrupted,
    TwistdServer,
    add_devices,
    csr_der,
    enroll_device,
    exchange,
    parse_tep_answer,
    query,
    rsa_keys,
    tep_request,
    tls_context,
    write_config,
)

SEED = int(os.environ.get("OSP_KILL_SEED", "20261127"))
CUSTOMER = "1000"

# R1 shape: ROUNDS * THREADS * PER_THREAD fresh keys, spread over DEVICES devices.
ROUNDS = 3
THREADS = 8
PER_THREAD = 3
DEVICES = 4
ROUND_SECONDS = 45.0

# R2 shape: MESSAGES usage indications from CLIENTS threads, KILLS kills on the way.
MESSAGES = 48
CLIENTS = 4
KILLS = 3
R2_SECONDS = 90.0
MAX_ATTEMPTS = 400


def _engine(database_url: str) -> str:
    return make_url(database_url).get_backend_name()


def _sqlite_checks(database_url: str) -> None:
    """PRAGMA integrity_check and foreign_key_check on the file the server left behind."""
    if _engine(database_url) != "sqlite":
        return
    path = make_url(database_url).database
    assert path is not None
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
    conn.close()


# --- R1 -------------------------------------------------------------------------------


@dataclass
class Attempt:
    """One enrollment request (fixed bytes, so that a re-send is identical) and its fate."""

    device: str
    key: rsa.RSAPrivateKey
    csr_sha256: str
    raw: bytes
    outcome: str = "unsent"  # unsent|sending|received|interrupted|failed-alive|bad-answer
    status: int | None = None
    der: bytes | None = None
    problem: str = ""


def _attempts(round_no: int, keys: list[rsa.RSAPrivateKey]) -> list[list[Attempt]]:
    """Per thread, its requests for this round; each with a fresh key and nonce."""
    per_thread: list[list[Attempt]] = []
    for t in range(THREADS):
        mine = []
        for j in range(PER_THREAD):
            key = keys[(round_no * THREADS + t) * PER_THREAD + j]
            der = csr_der(key)
            device = str(1 + (t % DEVICES))
            # 16 bytes like the toolkit's nonce: two digit runs, each cut by a NUL.
            nonce = b"%08d\x00%06d\x00" % (round_no * 1000 + t, j)
            raw = tep_request(customer=CUSTOMER, device=device, nonce=nonce, csr_der=der)
            mine.append(Attempt(device, key, hashlib.sha256(der).hexdigest(), raw))
        per_thread.append(mine)
    return per_thread


KNOWN_OUTCOMES = ("unsent", "received", "interrupted")


def _serial(der: bytes) -> str:
    return format(x509.load_der_x509_certificate(der).serial_number, "x")


def _run_round(
    server: TwistdServer, per_thread: list[list[Attempt]], rng: random.Random
) -> tuple[int, int]:
    """Clients in flight, SIGKILL after a random number of answers plus a random delay.

    Returns (answers before the kill, requests in flight at the kill).
    """
    port = server.https_port
    context = tls_context()
    killing = threading.Event()
    lock = threading.Lock()
    answered = [0]

    def client(attempts: list[Attempt]) -> None:
        for attempt in attempts:
            if killing.is_set():
                return  # the rest stay unsent: never seen by the server
            attempt.outcome = "sending"
            try:
                code, body = exchange(port, attempt.raw, context)
                attempt.status, attempt.der = parse_tep_answer(code, body)
            except Interrupted:
                attempt.outcome = "interrupted" if killing.is_set() else "failed-alive"
                continue
            except AssertionError as e:
                attempt.outcome, attempt.problem = "bad-answer", str(e)
                continue
            attempt.outcome = "received"
            with lock:
                answered[0] += 1

    total = THREADS * PER_THREAD
    # Kill while at least THREADS requests remain, so every thread is still busy.
    kill_after = rng.randint(1, total - THREADS)
    delay = rng.uniform(0.0, 0.15)
    threads = [threading.Thread(target=client, args=(a,), daemon=True) for a in per_thread]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + ROUND_SECONDS
    try:
        while answered[0] < kill_after and time.monotonic() < deadline:
            time.sleep(0.005)
        assert answered[0] >= kill_after, f"only {answered[0]} answers in {ROUND_SECONDS} s"
        time.sleep(delay)
        killing.set()
        in_flight = sum(a.outcome == "sending" for batch in per_thread for a in batch)
        before = answered[0]
        server.kill()
    finally:
        killing.set()
        server.stop()
        for thread in threads:
            thread.join(ROUND_SECONDS)
    assert not any(t.is_alive() for t in threads), "a client thread did not finish"
    return before, in_flight


def test_r1_enrollments_survive_kill_9(database_url: str, tmp_path: Path) -> None:
    """R1/P8/P11: what a client received is stored; an interrupted request completes on
    re-send with the serial that was stored before; no serial twice; integrity ok."""
    seed = SEED + (1 if _engine(database_url) == "postgresql" else 0)
    rng = random.Random(seed)
    why = f"(seed {seed}, {_engine(database_url)})"
    config = write_config(tmp_path, database_url)
    add_devices(config, CUSTOMER, [str(d) for d in range(1, DEVICES + 1)], cwd=tmp_path)
    keys = rsa_keys(ROUNDS * THREADS * PER_THREAD)
    rounds = [_attempts(r, keys) for r in range(ROUNDS)]
    attempts = [a for per_thread in rounds for batch in per_thread for a in batch]

    server = TwistdServer(config, tmp_path)
    kill_points: list[tuple[int, int]] = []
    resent: dict[str, str] = {}
    try:
        for per_thread in rounds:
            server.start()
            kill_points.append(_run_round(server, per_thread, rng))
        assert server.kills == ROUNDS

        # With the server down: what each interrupted request had reached.
        stored_before = {
            sha: (state, serial)
            for sha, state, serial in query(
                database_url, "SELECT csr_sha256, state, certificate_serial FROM enrollments"
            )
        }
        server.start()
        context = tls_context()
        interrupted = [a for a in attempts if a.outcome == "interrupted"]
        received = [a for a in attempts if a.outcome == "received"]
        # Every interrupted request, plus a few received ones (P11: same answer again).
        for attempt in interrupted + received[:4]:
            code, body = exchange(server.https_port, attempt.raw, context)
            status, der = parse_tep_answer(code, body)
            assert status == 0 and der is not None, f"re-send got status {status} {why}"
            resent[attempt.csr_sha256] = _serial(der)
            if attempt.der is not None:
                assert der == attempt.der, f"a replay returned another certificate {why}"
            state, serial = stored_before.get(attempt.csr_sha256, (None, None))
            if state == "issued":
                assert resent[attempt.csr_sha256] == serial, f"issued twice {why}"
            else:
                assert state in (None, "signing"), f"stuck in {state} {why}"
            if attempt.outcome == "interrupted":
                attempt.der = der
        server.kill()
    finally:
        server.stop()

    log = server.log_text()
    assert "Traceback" not in log, log
    assert [a for a in attempts if a.outcome == "failed-alive"] == [], f"failed while up {why}"
    odd = [(a.outcome, a.problem) for a in attempts if a.outcome not in KNOWN_OUTCOMES]
    assert odd == [], f"answers off the TEP spec {why}"
    answers = [a for a in attempts if a.outcome == "received"]
    assert [a.status for a in answers if a.status != 0] == [], f"non-zero statuses {why}"
    assert len(interrupted) >= 1, f"no kill hit a request in flight {kill_points} {why}"

    certificates = dict(
        query(database_url, "SELECT serial, der FROM certificates WHERE kind = 'device'")
    )
    enrollments = query(
        database_url, "SELECT csr_sha256, state, certificate_serial FROM enrollments"
    )
    # P8: every certificate a client holds is stored, byte for byte.
    holders = [a for a in attempts if a.der is not None]
    missing = [a.csr_sha256 for a in holders if certificates.get(_serial(a.der or b"")) != a.der]
    assert missing == [], f"received but not stored {why}"
    for attempt in holders:
        cert = x509.load_der_x509_certificate(attempt.der or b"")
        assert cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ) == attempt.key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    # One certificate per CSR: no serial twice, no signature without its enrollment.
    serials = [_serial(a.der or b"") for a in holders]
    assert len(set(serials)) == len(serials), f"duplicate serials {why}"
    # Nothing stuck, and exactly the requests that were sent left a trace.
    assert {state for _, state, _ in enrollments} == {"issued"}, f"stuck rows {why}"
    issued = [serial for _, _, serial in enrollments]
    assert len(set(issued)) == len(issued) == len(certificates), f"orphans or twins {why}"
    assert set(issued) == set(certificates)
    sent = {a.csr_sha256 for a in attempts if a.outcome != "unsent"}
    assert {sha for sha, _, _ in enrollments} == sent
    _sqlite_checks(database_url)
    reached = Counter(
        str(stored_before.get(a.csr_sha256, ("nothing", None))[0]) for a in interrupted
    )
    print(
        f"R1 {_engine(database_url)} seed {seed}: {ROUNDS} rounds killed under load "
        f"(answers before the kill, requests in flight): {kill_points}, "
        f"{server.kills} kills and {server.starts} starts in all, {len(attempts)} prepared, "
        f"{len(sent)} sent, {len(answers)} received, {len(interrupted)} interrupted and "
        f"re-sent (state they had reached: {reached}), {len(resent) - len(interrupted)} "
        f"replays of received ones, {len(certificates)} device certificates stored"
    )


# --- R2 -------------------------------------------------------------------------------


def _usage_messages() -> list[tuple[int, bytes]]:
    """The captured UsageIndication (2 components) with a distinct TransactionId each."""
    head, body = split_vector(VECTORS / "osp" / "usage-indication.http")
    marker = b"\n1000000001</TransactionId>"
    assert body.count(marker) == 2, "the vector changed: two components of one transaction"
    messages = []
    for i in range(MESSAGES):
        transaction_id = 3_000_000_000 + i
        changed = body.replace(marker, b"\n%d</TransactionId>" % transaction_id)
        messages.append((transaction_id, build_request(head, changed)))
    return messages


def _confirmed(code: int, body: bytes) -> bool:
    """200 with one 200 UsageConfirmation per component, in order."""
    if code != 200:
        return False
    try:
        root = ElementTree.fromstring(body)
    except ElementTree.ParseError:
        return False
    confirmations = root.findall("UsageConfirmation")
    return [c.get("componentId") for c in confirmations] == ["10000000012", "10000000014"] and all(
        (c.findtext("Status/Code") or "").strip() == "200" for c in confirmations
    )


def test_r2_usage_retried_through_kills_is_stored_once(database_url: str, tmp_path: Path) -> None:
    """R2/P15: usage retried until confirmed while the server is killed: 0 lost, 0 twice."""
    seed = SEED + (3 if _engine(database_url) == "postgresql" else 2)
    rng = random.Random(seed)
    why = f"(seed {seed}, {_engine(database_url)})"
    config = write_config(tmp_path, database_url)
    add_devices(config, CUSTOMER, [CUSTOMER], cwd=tmp_path)
    messages = _usage_messages()

    server = TwistdServer(config, tmp_path)
    lock = threading.Lock()
    confirmed: list[int] = []
    retries: Counter[str] = Counter()
    refusals: list[str] = []
    stop = threading.Event()
    threads: list[threading.Thread] = []
    kill_points: list[int] = []
    try:
        server.start()
        context = tls_context(enroll_device(server, tmp_path, CUSTOMER, CUSTOMER))
        deadline = time.monotonic() + R2_SECONDS

        def client(mine: list[tuple[int, bytes]]) -> None:
            for transaction_id, raw in mine:
                for _ in range(MAX_ATTEMPTS):
                    if stop.is_set() or time.monotonic() > deadline:
                        return
                    try:
                        code, body = exchange(server.https_port, raw, context, timeout=10.0)
                    except AssertionError as e:
                        code, body = 0, str(e).encode()
                    except Interrupted as e:
                        code, body = -1, str(e).encode()
                    if code >= 0:
                        if _confirmed(code, body):
                            with lock:
                                confirmed.append(transaction_id)
                            break
                        with lock:
                            refusals.append(f"{code} {body[:200]!r}")
                        why_retry = "not a confirmation"
                    else:
                        why_retry = "refused" if b"ConnectionRefused" in body else "cut"
                    with lock:
                        retries[why_retry] += 1
                    time.sleep(0.02)

        threads = [
            threading.Thread(target=client, args=(messages[c::CLIENTS],), daemon=True)
            for c in range(CLIENTS)
        ]
        for thread in threads:
            thread.start()
        for _ in range(KILLS):
            # Kill after a random number of further confirmations, plus a random delay.
            target = len(confirmed) + rng.randint(2, 9)
            while len(confirmed) < target and time.monotonic() < deadline:
                time.sleep(0.005)
            assert len(confirmed) >= target, f"stalled at {len(confirmed)} confirmed {why}"
            time.sleep(rng.uniform(0.0, 0.05))
            kill_points.append(len(confirmed))
            server.kill()
            server.start()
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        assert not any(t.is_alive() for t in threads), f"clients still retrying {why}"
        server.kill()
    finally:
        stop.set()
        server.stop()
        for thread in threads:
            thread.join(30)

    log = server.log_text()
    assert "Traceback" not in log, log
    assert sorted(confirmed) == [t for t, _ in messages], f"unconfirmed messages {why}"
    rows = query(
        database_url,
        "SELECT transaction_id, component_id, destination FROM usage_records",
    )
    per_transaction: dict[int, list[tuple[str, str]]] = {}
    for transaction_id, component_id, destination in rows:
        per_transaction.setdefault(int(transaction_id), []).append((component_id, destination))
    lost = [t for t, _ in messages if t not in per_transaction]
    twice = {t: len(r) for t, r in per_transaction.items() if len(r) != 2}
    assert lost == [], f"lost usage {why}"
    assert twice == {}, f"usage stored other than twice {why}"
    assert set(per_transaction) == {t for t, _ in messages}
    for records in per_transaction.values():
        assert sorted(records) == [
            ("10000000012", "[1.1.1.1]:5060"),
            ("10000000014", "[2.2.2.2]:5060"),
        ]
    _sqlite_checks(database_url)
    print(
        f"R2 {_engine(database_url)} seed {seed}: {MESSAGES} messages from {CLIENTS} clients, "
        f"kills under load after confirmations {kill_points}, {server.kills} kills and "
        f"{server.starts} starts in all, retries {dict(retries)}, "
        f"{len(refusals)} answers that were not confirmations, {len(rows)} usage rows"
    )
    # A kill cuts an answer off; it never turns one into an error: any complete answer
    # that is not a full confirmation is a failure.
    assert refusals == [], refusals
