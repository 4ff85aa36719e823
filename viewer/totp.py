"""Two-step sign-in: TOTP (RFC 6238) and one-time recovery codes.

The QR code is drawn here as inline SVG, so the secret never leaves the server for a
third-party QR service.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import time
import unicodedata

import pyotp
import qrcode
import qrcode.image.svg

STEP_SECONDS = 30
DIGITS = 6
# ASVS / security.md: accept at most one step of clock drift either way.
DRIFT_STEPS = 1

# RFC 4226 section 4: a shared secret of at least 128 bits.
MIN_SECRET_BYTES = 16

RECOVERY_CODE_BITS = 80
# Crockford's base32, lower-case: no i, l, o or u, so 1/l/i and 0/o cannot be confused.
_RECOVERY_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"
_RECOVERY_GROUP = 4
# Read the letters people mistake for digits as those digits (Crockford's decoding rules).
_RECOVERY_TYPOS = str.maketrans({"o": "0", "i": "1", "l": "1"})

_CODE_RE = re.compile(r"[0-9]{6}", re.ASCII)


def new_secret() -> str:
    """A new shared secret: 160 random bits (RFC 4226's recommended size), base32."""
    return base64.b32encode(secrets.token_bytes(20)).decode("ascii")


def _secret_is_usable(secret: str) -> bool:
    """True for base32 of at least 128 bits, so that an empty or damaged secret (whose codes
    anyone could compute) never lets a code through."""
    padded = secret + "=" * (-len(secret) % 8)
    try:
        return len(base64.b32decode(padded, casefold=True)) >= MIN_SECRET_BYTES
    except (ValueError, TypeError):
        return False


def provisioning_uri(secret: str, username: str, issuer: str = "Viewer") -> str:
    """The otpauth://totp/... URI an authenticator app reads from the QR code."""
    return pyotp.TOTP(secret, digits=DIGITS, interval=STEP_SECONDS).provisioning_uri(
        name=username, issuer_name=issuer
    )


def qr_svg(uri: str) -> str:
    """The URI as a QR code in an <svg> element string, to put straight into a page.

    Only a path and a white background: no script, no links, no XML declaration (which is
    not allowed inside HTML).
    """
    image = qrcode.make(
        uri,
        image_factory=qrcode.image.svg.SvgPathFillImage,
        error_correction=qrcode.constants.ERROR_CORRECT_M,
    )
    root = image.get_image()
    root.set("role", "img")
    root.set("aria-label", "QR code for your authenticator app")
    # encoding="unicode" gives a str with no XML declaration.
    return image.to_string(encoding="unicode")


def verify_code(
    secret: str, code: str, last_counter: int | None, at: float | None = None
) -> int | None:
    """Check a 6-digit code; return its time-step counter, or None if refused.

    Codes of the current step and one step either side are accepted. A code whose counter
    is not after last_counter is refused, so each code works once: the caller stores the
    returned counter (and logs a refused replay).
    """
    cleaned = "".join(code.split())
    if not _CODE_RE.fullmatch(cleaned) or not _secret_is_usable(secret):
        return None
    now = time.time() if at is None else at
    current = int(now // STEP_SECONDS)
    otp = pyotp.TOTP(secret, digits=DIGITS, interval=STEP_SECONDS)
    matched: int | None = None
    # Compare against every candidate (no early exit) so timing says nothing about which.
    for counter in range(current - DRIFT_STEPS, current + DRIFT_STEPS + 1):
        if counter < 0 or (last_counter is not None and counter <= last_counter):
            continue
        expected = otp.generate_otp(counter)
        if hmac.compare_digest(expected.encode("ascii"), cleaned.encode("ascii")):
            matched = counter
    return matched


def new_recovery_codes(count: int = 10) -> list[str]:
    """Fresh one-time recovery codes like ``k7q2-m9xd-4hta-x3vn`` (80 random bits each)."""
    length = -(-RECOVERY_CODE_BITS // 5)  # 5 bits per base32 character, rounded up
    codes: list[str] = []
    seen: set[str] = set()
    while len(codes) < count:
        raw = "".join(secrets.choice(_RECOVERY_ALPHABET) for _ in range(length))
        if raw in seen:
            continue
        seen.add(raw)
        groups = [raw[i : i + _RECOVERY_GROUP] for i in range(0, length, _RECOVERY_GROUP)]
        codes.append("-".join(groups))
    return codes


def _normalise_recovery_code(code: str) -> str:
    """Ignore case, dashes and spaces, and read o/i/l as 0/1, as people type codes."""
    text = unicodedata.normalize("NFKC", code).casefold()
    text = "".join(ch for ch in text if not ch.isspace() and ch not in "-_")
    return text.translate(_RECOVERY_TYPOS)


def hash_recovery_code(code: str) -> str:
    """SHA-256 hex of the normalised code, for storage.

    A fast hash is enough: the codes have 80 random bits, so they cannot be guessed from
    the hash the way a password can.
    """
    return hashlib.sha256(_normalise_recovery_code(code).encode("utf-8")).hexdigest()


def match_recovery_code(code: str, hashes: list[str]) -> int | None:
    """Index of the stored hash that matches the code, or None.

    Compares every entry in constant time. The caller then removes or blanks that entry
    (an empty string never matches) so the code works only once.
    """
    candidate = hash_recovery_code(code).encode("ascii")
    found: int | None = None
    for index, stored in enumerate(hashes):
        if not stored:
            continue
        if hmac.compare_digest(candidate, stored.encode("ascii", "replace")) and found is None:
            found = index
    return found
