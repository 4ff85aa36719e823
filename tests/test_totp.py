"""TOTP (RFC 6238 vectors, drift, replay), provisioning URI, inline QR SVG, recovery codes."""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import re
import xml.etree.ElementTree as ET
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from viewer.totp import (
    hash_recovery_code,
    match_recovery_code,
    new_recovery_codes,
    new_secret,
    provisioning_uri,
    qr_svg,
    verify_code,
)

# RFC 6238 appendix B: SHA1 seed "12345678901234567890"; the 6-digit codes are the last six
# digits of the 8-digit ones in the table.
RFC_SECRET = base64.b32encode(b"12345678901234567890").decode("ascii")
RFC_VECTORS = [
    (59, "94287082"),
    (1111111109, "07081804"),
    (1111111111, "14050471"),
    (1234567890, "89005924"),
    (2000000000, "69279037"),
]


def test_rfc_secret_encoding() -> None:
    assert RFC_SECRET == "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"


@pytest.mark.parametrize(("at", "code8"), RFC_VECTORS)
def test_rfc6238_appendix_b_vectors(at: int, code8: str) -> None:
    assert verify_code(RFC_SECRET, code8[-6:], None, at=at) == at // 30


@pytest.mark.parametrize(("at", "code8"), RFC_VECTORS)
def test_wrong_code_refused(at: int, code8: str) -> None:
    wrong = f"{(int(code8[-6:]) + 1) % 1_000_000:06d}"
    assert verify_code(RFC_SECRET, wrong, None, at=at) is None


def test_spaces_ignored_and_format_enforced() -> None:
    assert verify_code(RFC_SECRET, "287 082", None, at=59) == 1
    assert verify_code(RFC_SECRET, " 287082\n", None, at=59) == 1
    for bad in [
        "94287082",
        "28708",
        "28708x",
        "",
        "\uff12\uff18\uff17\uff10\uff18\uff12",  # full-width digits are not ASCII digits
        "-287082",
    ]:
        assert verify_code(RFC_SECRET, bad, None, at=59) is None, bad


def test_one_step_of_drift_accepted_two_refused() -> None:
    at = 1111111109  # counter 37037036, code 081804
    counter = at // 30
    code = "081804"
    assert verify_code(RFC_SECRET, code, None, at=at) == counter
    assert verify_code(RFC_SECRET, code, None, at=at + 30) == counter  # clock one step ahead
    assert verify_code(RFC_SECRET, code, None, at=at - 30) == counter  # one step behind
    assert verify_code(RFC_SECRET, code, None, at=at + 60) is None
    assert verify_code(RFC_SECRET, code, None, at=at - 60) is None


def test_replay_refused_and_later_code_accepted() -> None:
    used = verify_code(RFC_SECRET, "081804", None, at=1111111109)
    assert used == 37037036
    # The same code again, even in the same step or from a drifted clock: refused.
    assert verify_code(RFC_SECRET, "081804", used, at=1111111109) is None
    assert verify_code(RFC_SECRET, "081804", used, at=1111111109 + 30) is None
    # An older code (a counter before the stored one) is refused too.
    assert verify_code(RFC_SECRET, "081804", used + 1, at=1111111109) is None
    # The code of the next step (RFC vector at 1111111111, counter 37037037) is accepted.
    assert verify_code(RFC_SECRET, "050471", used, at=1111111111) == used + 1


@pytest.mark.parametrize("secret", ["", "GEZDGNBV", "not base32!", RFC_SECRET[:24]])
def test_empty_short_or_damaged_secret_accepts_nothing(secret: str) -> None:
    # An empty key still yields HMAC codes anyone can compute: they must not be accepted.
    key = base64.b32decode(secret + "=" * (-len(secret) % 8)) if secret != "not base32!" else b""
    counter = 1111111109 // 30
    digest = hmac.new(key, counter.to_bytes(8, "big"), hashlib.sha1).digest()
    offset = digest[-1] & 0x0F
    code = (int.from_bytes(digest[offset : offset + 4], "big") & 0x7FFFFFFF) % 1_000_000
    assert verify_code(secret, f"{code:06d}", None, at=1111111109) is None


def test_new_secret_is_160_bit_base32_and_random() -> None:
    secret = new_secret()
    assert re.fullmatch(r"[A-Z2-7]{32}", secret)
    assert len(base64.b32decode(secret)) == 20
    assert new_secret() != secret


def test_provisioning_uri_parses() -> None:
    secret = new_secret()
    uri = provisioning_uri(secret, "alice@example.org", issuer="Demo Viewer")
    parts = urlsplit(uri)
    assert parts.scheme == "otpauth"
    assert parts.netloc == "totp"
    assert unquote(parts.path) == "/Demo Viewer:alice@example.org"
    query = parse_qs(parts.query)
    assert query["secret"] == [secret]
    assert query["issuer"] == ["Demo Viewer"]
    # Defaults (SHA1, 6 digits, 30 s) are what every authenticator app assumes.
    assert "algorithm" not in query or query["algorithm"] == ["SHA1"]
    assert "period" not in query or query["period"] == ["30"]


def test_qr_svg_is_safe_inline_svg() -> None:
    svg = qr_svg(provisioning_uri(RFC_SECRET, "alice"))
    assert svg.startswith("<svg")  # no XML declaration, so it can sit inside HTML
    root = ET.fromstring(svg)  # well-formed XML
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    tags = {el.tag.rsplit("}", 1)[-1].lower() for el in root.iter()}
    assert "script" not in tags and "foreignobject" not in tags and "image" not in tags
    assert "<script" not in svg.lower()
    for el in root.iter():
        for name, value in el.attrib.items():
            local = name.rsplit("}", 1)[-1].lower()
            assert not local.startswith("on"), name
            if local == "href":
                assert not value.lower().startswith(("http", "//", "javascript:")), value
            assert "url(http" not in value.replace(" ", "").lower()
    assert any(el.tag.endswith("path") for el in root.iter())


def test_recovery_codes_unique_formatted_and_80_bits() -> None:
    codes = new_recovery_codes()
    assert len(codes) == 10
    assert len(set(codes)) == 10
    assert len(new_recovery_codes(3)) == 3
    for code in codes:
        assert re.fullmatch(r"[0-9a-hjkmnp-tv-z]{4}(-[0-9a-hjkmnp-tv-z]{4})+", code), code
        symbols = code.replace("-", "")
        assert not set(symbols) & set("ilou")  # no ambiguous letters
        assert len(symbols) * math.log2(32) >= 80


def test_recovery_code_matches_once_by_index() -> None:
    codes = new_recovery_codes(5)
    hashes = [hash_recovery_code(c) for c in codes]
    assert all(re.fullmatch(r"[0-9a-f]{64}", h) for h in hashes)
    assert match_recovery_code(codes[3], hashes) == 3
    hashes[3] = ""  # the caller blanks (or deletes) the used entry
    assert match_recovery_code(codes[3], hashes) is None
    assert match_recovery_code(codes[0], hashes) == 0
    assert match_recovery_code("aaaa-bbbb-cccc-dddd", hashes) is None
    assert match_recovery_code(codes[1], []) is None


def test_recovery_code_normalisation() -> None:
    code = "k7q2-m9xd-4hta-0p1z"
    expected = hashlib.sha256(b"k7q2m9xd4hta0p1z").hexdigest()
    assert hash_recovery_code(code) == expected
    for typed in [
        "K7Q2-M9XD-4HTA-0P1Z",
        "k7q2 m9xd 4hta 0p1z",
        "k7q2m9xd4hta0p1z",
        " k7q2 - m9xd - 4hta - 0p1z ",
        "k7q2-m9xd-4hta-OPIZ",  # O typed for 0, I for 1
        "k7q2-m9xd-4hta-oplz",  # o and l
    ]:
        assert hash_recovery_code(typed) == expected, typed
    assert match_recovery_code("K7Q2 M9XD 4HTA 0P1Z", ["", expected]) == 1
    assert hash_recovery_code("k7q2-m9xd-4hta-0p1y") != expected
