"""Password policy and argon2id hashing: parameters, verify, malformed hashes, timing helper."""

from __future__ import annotations

import time
import unicodedata

import pytest
from argon2 import PasswordHasher

from viewer import passwords
from viewer.passwords import (
    PasswordRejected,
    burn_time,
    check_policy,
    hash_password,
    needs_rehash,
    verify_password,
)

OWASP_PREFIX = "$argon2id$v=19$m=19456,t=2,p=1$"
GOOD = "correct horse battery staple"


def test_hash_has_owasp_argon2id_parameters_and_random_salt() -> None:
    first = hash_password(GOOD)
    second = hash_password(GOOD)
    assert first.startswith(OWASP_PREFIX)
    assert first != second  # a fresh salt each time
    assert not needs_rehash(first)


def test_verify_right_and_wrong_password() -> None:
    stored = hash_password(GOOD)
    assert verify_password(stored, GOOD) is True
    assert verify_password(stored, GOOD + "!") is False
    assert verify_password(stored, "") is False


def test_verify_nfkc_normalises_both_sides() -> None:
    composed = "Caf\u00e9-au-lait-2024"
    decomposed = unicodedata.normalize("NFD", composed)
    assert composed != decomposed
    assert verify_password(hash_password(composed), decomposed)
    # Full-width digits are the same password as ASCII digits after NFKC.
    assert verify_password(hash_password("pin\uff11\uff12\uff13\uff14abcd"), "pin1234abcd")


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "not a hash",
        "$2b$12$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW",  # bcrypt
        "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$",  # no digest
        "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$\u00e9\u00e9\u00e9",  # non-ASCII
    ],
)
def test_malformed_hash_is_false_not_an_error(bad: str) -> None:
    assert verify_password(bad, GOOD) is False
    assert needs_rehash(bad) is True


def test_hash_of_the_wrong_type_is_false() -> None:
    assert verify_password(None, GOOD) is False  # type: ignore[arg-type]


def test_weaker_parameters_need_rehash() -> None:
    weak = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1).hash(GOOD)
    assert verify_password(weak, GOOD)  # old hashes still sign in...
    assert needs_rehash(weak)  # ...and are upgraded afterwards


def test_burn_time_runs_a_real_verify() -> None:
    # The dummy hash must use the current parameters, or unknown users would be faster.
    assert passwords._DUMMY_HASH.startswith(OWASP_PREFIX)
    assert not needs_rehash(passwords._DUMMY_HASH)
    start = time.perf_counter()
    burn_time("whatever the person typed")
    elapsed = time.perf_counter() - start
    assert elapsed > 0.005, f"burn_time took only {elapsed * 1000:.2f} ms"


@pytest.mark.parametrize(
    ("password", "username", "message"),
    [
        ("", "", "Use at least 8 characters."),
        ("short12", "", "Use at least 8 characters."),
        ("x" * 129, "", "Use at most 128 characters."),
        ("password", "", "This password is too common; choose another."),
        ("PassWord", "", "This password is too common; choose another."),
        ("iloveyou", "", "This password is too common; choose another."),
        ("1qaz2wsx", "", "This password is too common; choose another."),
        ("Alice-Example", "alice-example", "Do not use your username as your password."),
        ("alice-example", " Alice-Example ", "Do not use your username as your password."),
    ],
)
def test_policy_refusals(password: str, username: str, message: str) -> None:
    with pytest.raises(PasswordRejected) as caught:
        check_policy(password, username)
    assert str(caught.value) == message
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize(
    "password",
    [
        "x" * 8,  # no composition rules: length alone
        "x" * 128,
        GOOD,
        "\u00e9t\u00e9 \u00e0 la plage",  # any Unicode is fine
    ],
)
def test_policy_accepts(password: str) -> None:
    check_policy(password, username="alice")


def test_length_counts_code_points_after_nfkc() -> None:
    # Seven characters, nine code points before NFKC (decomposed accents): still too short.
    decomposed = unicodedata.normalize("NFD", "\u00e9\u00e9abcde")
    assert len(decomposed) == 9
    with pytest.raises(PasswordRejected, match="at least 8"):
        check_policy(decomposed)
    # Eight emoji are eight code points, however many bytes they take.
    check_policy("\U0001f600" * 8)


def test_password_containing_username_is_allowed() -> None:
    # Only the username itself is refused; a longer passphrase that contains it is fine.
    check_policy("alice-likes-long-walks", username="alice")


def test_common_list_is_loaded_once_and_well_formed() -> None:
    words = passwords.common_passwords()
    assert passwords.common_passwords() is words  # cached
    assert 9000 <= len(words) <= 11000
    assert all(len(w) >= 8 and w == w.casefold() and not w.startswith("#") for w in words)
    assert {"password", "12345678", "baseball", "trustno1"} <= words
