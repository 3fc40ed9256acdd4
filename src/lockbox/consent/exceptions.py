"""Consent errors (rendered by the one handler in lockbox.http)."""

from __future__ import annotations

from lockbox.errors import Conflict


class NothingToWithdraw(Conflict):
    code = "nothing_to_withdraw"
    detail = "There is no consent in force for this scope to withdraw."
