"""Password strength and TOTP steps, table-driven and without a database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pyotp
import pytest

from lockbox.identity import credentials

NOW = datetime(2026, 3, 4, 10, 15, 7, tzinfo=UTC)
SECRET = credentials.new_totp_secret()
STEP = int(NOW.timestamp()) // 30


@pytest.mark.parametrize(("offset_s", "step"), [(0, STEP), (-30, STEP - 1), (30, STEP + 1), (-60, None), (60, None)])
def test_a_code_is_accepted_within_one_step_of_drift(offset_s: int, step: int | None) -> None:
    code = pyotp.TOTP(SECRET).at(NOW + timedelta(seconds=offset_s))
    assert credentials.totp_step(SECRET, code, at=NOW) == step


@pytest.mark.parametrize("code", ["", "12345", "1234567", "12a456", "١٢٣٤٥٦"])
def test_malformed_codes_match_nothing(code: str) -> None:
    assert credentials.totp_step(SECRET, code, at=NOW) is None


def test_a_code_typed_with_a_space_is_accepted() -> None:
    code = pyotp.TOTP(SECRET).at(NOW)
    assert credentials.totp_step(SECRET, f"{code[:3]} {code[3:]}", at=NOW) == STEP


@pytest.mark.parametrize(
    ("password", "inputs", "acceptable"),
    [
        ("plum-kettle-arbor-92-quietly", [], True),
        ("correct horse battery staple", [], True),
        ("password1", [], False),
        ("qwertyuiop", [], False),
        ("Short1!", [], False),
        ("marguerite.okafor", ["marguerite.okafor", "Marguerite Okafor"], False),
        ("okaformarguerite", ["m.okafor", "Marguerite Okafor"], False),
        ("okaformarguerite", [], True),  # weak only because they are the account's own names
        ("x" * credentials.MAX_PASSWORD_LENGTH, [], False),
        ("seven ravens fold maps under a quiet amber lighthouse near Oslo in 912" * 3, [], True),
        ("y" * (credentials.MAX_PASSWORD_LENGTH + 1), [], False),
    ],
)
def test_password_strength(password: str, inputs: list[str], acceptable: bool) -> None:
    reasons = credentials.weak_password_reasons(password, user_inputs=inputs)
    assert (reasons == []) is acceptable
    assert all(password not in reason for reason in reasons)
