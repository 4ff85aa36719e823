"""Password policy and hashing (OWASP ASVS: argon2id, length only, no common passwords).

Every password is NFKC-normalised before it is counted, compared or hashed, so that the same
characters typed on two keyboards (composed or decomposed accents, full-width digits) give
the same password.
"""

from __future__ import annotations

import functools
import unicodedata
from importlib import resources

from argon2 import PasswordHasher, Type
from argon2.exceptions import Argon2Error

MIN_LENGTH = 8
MAX_LENGTH = 128

# OWASP Password Storage Cheat Sheet minimum for argon2id: m=19 MiB, t=2, p=1.
_HASHER = PasswordHasher(
    time_cost=2,
    memory_cost=19456,
    parallelism=1,
    hash_len=32,
    salt_len=16,
    type=Type.ID,
)

# A real hash with the parameters above (of a password nobody uses), so that burn_time costs
# what a real verify costs. tests/test_passwords.py checks it stays in step with _HASHER.
_DUMMY_HASH = (
    "$argon2id$v=19$m=19456,t=2,p=1$EmM4mhw1jRbEkl+pX+7rPg"
    "$6wGHgg0tPqDelA5pT1/r69qnylJi343LCknxpljnaV8"
)


class PasswordRejected(ValueError):
    """A password the policy refuses; str(exc) is a sentence to show to the person."""


def _normalise(text: str) -> str:
    """NFKC so that visually identical input hashes and counts the same."""
    return unicodedata.normalize("NFKC", text)


@functools.cache
def common_passwords() -> frozenset[str]:
    """The shipped list of common passwords (lower-case), read once per process."""
    text = (
        resources.files("viewer")
        .joinpath("data", "common-passwords.txt")
        .read_text(encoding="utf-8")
    )
    return frozenset(
        line.strip().casefold()
        for line in text.splitlines()
        if line.strip() and not line.startswith("#")
    )


def check_policy(password: str, username: str = "") -> None:
    """Raise PasswordRejected unless the password is acceptable.

    Length is the only rule (ASVS 2.1: no composition rules); the common-password and
    username checks refuse what an attacker would try first.
    """
    normalised = _normalise(password)
    length = len(normalised)
    if length < MIN_LENGTH:
        raise PasswordRejected(f"Use at least {MIN_LENGTH} characters.")
    if length > MAX_LENGTH:
        raise PasswordRejected(f"Use at most {MAX_LENGTH} characters.")
    folded = normalised.casefold()
    if username and folded == _normalise(username).strip().casefold():
        raise PasswordRejected("Do not use your username as your password.")
    if folded in common_passwords():
        raise PasswordRejected("This password is too common; choose another.")


def hash_password(password: str) -> str:
    """Hash for storage: argon2id with a random salt, parameters encoded in the string."""
    return _HASHER.hash(_normalise(password))


def verify_password(stored_hash: str, password: str) -> bool:
    """True if the password matches; False for a wrong password or an unreadable hash.

    Never raises, so a damaged row cannot turn a sign-in into a server error.
    """
    if not isinstance(stored_hash, str):
        return False
    try:
        return _HASHER.verify(stored_hash, _normalise(password))
    except (Argon2Error, ValueError):
        # Argon2Error: mismatch or verification failure; ValueError: InvalidHashError and
        # hashes that are not ASCII.
        return False


def needs_rehash(stored_hash: str) -> bool:
    """True if the hash was made with other parameters (or cannot be read).

    Call after a successful verify and store hash_password(password) if True.
    """
    if not isinstance(stored_hash, str):
        return True
    try:
        return _HASHER.check_needs_rehash(stored_hash)
    except (Argon2Error, ValueError):
        return True


def burn_time(password: str) -> None:
    """Spend the time of one real verify, for a username that does not exist.

    Sign-in then takes as long for an unknown user as for a wrong password, so timing does
    not reveal which usernames exist.
    """
    verify_password(_DUMMY_HASH, password)
