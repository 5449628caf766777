"""Smoke test of bench/token_formats.py: a --quick run completes and prints its table.

No timing is asserted (numbers depend on the machine); the sizes it reports are the
ones the README quotes, so the default format's rows must fit 1,024 bytes.
"""

from __future__ import annotations

from tests.unit.bench_runner import run_bench

SIGNED = ("signed-ascii", "signed-ascii-rsa", "signed-xml", "old-signed-xml")
VALUES = ("opensips", "reference", "test_app")


def test_quick_run_prints_every_row() -> None:
    result = run_bench("token_formats.py", "--quick", timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    # format, CA, values, raw B, b64 chars, fits, us/token
    rows = {
        (f[0], f[1], f[2]): f
        for f in map(str.split, lines)
        if len(f) == 7 and f[0] in ("xml", "ascii", *SIGNED)
    }
    expected = {(fmt, "-", v) for fmt in ("xml", "ascii") for v in VALUES}
    expected |= {(fmt, ca, v) for fmt in SIGNED for ca in ("rsa2048", "ec-p256") for v in VALUES}
    assert set(rows) == expected, result.stdout
    for key, fields in rows.items():
        raw, b64, fits, micros = int(fields[3]), int(fields[4]), fields[5], float(fields[6])
        assert b64 == 4 * ((raw + 2) // 3), key
        assert fits == ("yes" if raw <= 1024 else "NO"), key
        assert micros > 0, key  # parsed, not judged
    # What the server sends by default fits OpenSIPS/Kamailio under either CA.
    for ca in ("rsa2048", "ec-p256"):
        for values in VALUES:
            assert rows[("signed-ascii", ca, values)][5] == "yes"
    # The old default did not: the 1,517-byte token of the OpenSIPS capture.
    assert int(rows[("old-signed-xml", "rsa2048", "opensips")][3]) > 1500
    assert lines[-1] == f"RESULT ok: {len(expected)} rows"
