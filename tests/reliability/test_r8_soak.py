"""SECURITY.md R8: a soak.  A device authorizes a call and reports its usage, again and
again, against the real server on loopback TLS with real thread pools: no error, no
memory drift, no latency drift.  CI runs OSP_SOAK_SECONDS (default 20 s per engine);
the long version is the same test with a longer time:

    OSP_SOAK_SECONDS=1800 python -m pytest tests/reliability/test_r8_soak.py -n0 -s
"""

from __future__ import annotations

import os
import re
import statistics
import time

import pytest_twisted
from defusedxml import ElementTree

from twisted.internet.threads import deferToThread

from tests.integration.test_osp import OSP, Env, _env_fixture
from tests.integration.wire import split_vector
from tests.reliability.harness import p99, rss_mb

SOAK_SECONDS = float(os.environ.get("OSP_SOAK_SECONDS", "20"))
WARM_UP_SECONDS = min(5.0, SOAK_SECONDS / 4)
MAX_GROWTH_MB = 20.0

soak_env = _env_fixture(memory=False)


@pytest_twisted.ensureDeferred
async def test_r8_soak_has_no_errors_and_no_drift(soak_env: Env) -> None:
    env = soak_env
    _, usage_body = split_vector(OSP / "usage-indication.http")
    usage_head, _ = split_vector(OSP / "usage-indication.http")
    errors: list[str] = []
    latencies: list[tuple[float, float]] = []  # (seconds since start, ms)
    started = time.monotonic()
    rss_after_warm_up: float | None = None
    calls = 0
    retried = 0
    while (elapsed := time.monotonic() - started) < SOAK_SECONDS:
        if rss_after_warm_up is None and elapsed >= WARM_UP_SECONDS:
            rss_after_warm_up = rss_mb()
        sent = time.monotonic()
        answer, _ = await env.vector("authorization-request.http")
        latencies.append((elapsed, (time.monotonic() - sent) * 1000))
        if answer.code == 503:  # a device retries a temporary failure (a slow fsync)
            retried += 1
            answer, _ = await env.vector("authorization-request.http")
        if answer.code != 200:
            errors.append(f"authorization {answer.code}")
            continue
        txid = ElementTree.fromstring(answer.body).findtext("AuthorizationResponse/TransactionId")
        body = re.sub(
            rb"<TransactionId>\s*\d+", b"<TransactionId>\n" + (txid or "").encode(), usage_body
        )
        sent = time.monotonic()
        usage = await env.post(body, head=usage_head)
        latencies.append((elapsed, (time.monotonic() - sent) * 1000))
        if usage.code == 503:
            retried += 1
            usage = await env.post(body, head=usage_head)
        if usage.code != 200:
            errors.append(f"usage {usage.code}")
        calls += 1
    await deferToThread(time.sleep, 0)  # let the last answers' bookkeeping run
    growth = rss_mb() - (rss_after_warm_up or rss_mb())
    third = SOAK_SECONDS / 3
    first = [ms for at, ms in latencies if WARM_UP_SECONDS <= at < WARM_UP_SECONDS + third]
    last = [ms for at, ms in latencies if at >= SOAK_SECONDS - third]
    print(
        f"\nR8 soak {SOAK_SECONDS:.0f} s: {calls} calls ({len(latencies)} requests), "
        f"{len(errors)} errors, {retried} temporary failures retried; "
        f"RSS after warm-up +{growth:.1f} MB (target < "
        f"{MAX_GROWTH_MB:.0f} MB); p99 first third {p99(first):.1f} ms, last third "
        f"{p99(last):.1f} ms"
    )
    assert errors == [], errors[:10]
    assert retried <= max(3, calls // 100), f"{retried} temporary failures in {calls} calls"
    assert growth < MAX_GROWTH_MB
    # Drift, not speed: the last third's median may not be much above the first's (a
    # leak or a growing scan would show here); medians, as the machine is shared and
    # a single burst moves a p99.  The p99s are printed for the long run.
    assert statistics.median(last) <= 2 * statistics.median(first) + 10
