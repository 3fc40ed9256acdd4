"""Every column sealed by the key provider, in one list: rotation re-seals each, retirement checks each.

A new ``*_sealed`` column belongs here (tests/crypto/test_sealed_registry.py fails until it is).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

from sqlalchemy import ColumnElement, LargeBinary, func, literal
from sqlalchemy.orm import InstrumentedAttribute


@dataclass(frozen=True)
class SealedSecrets:
    """A column of ``Keyring.seal_secret`` blobs, each bound to a purpose and to its row's ``id``."""

    name: str  # what an operator reads: "gateway addresses"
    column: InstrumentedAttribute[Any]
    purpose: str
    # When the purpose depends on the row (a link or a code): that row's value of ``purpose_from``.
    purpose_from: InstrumentedAttribute[Any] | None = None
    purpose_of: Callable[[Any], str] | None = None

    @property
    def model(self) -> Any:
        return self.column.class_

    @property
    def row_id(self) -> InstrumentedAttribute[Any]:
        return self.model.id

    def purpose_for(self, selector: Any) -> str:
        return self.purpose if self.purpose_of is None else self.purpose_of(selector)

    def version_is(self, version: int) -> ColumnElement[bool]:
        """SQL: the blob was sealed with ``version`` (its first four bytes, as ``Keyring.seal_secret`` writes)."""
        return func.substr(self.column, 1, 4) == _version_bytes(version)

    def version_is_not(self, version: int) -> ColumnElement[bool]:
        return func.substr(self.column, 1, 4) != _version_bytes(version)


def _version_bytes(version: int) -> ColumnElement[bytes]:
    return literal(version.to_bytes(4, "big"), LargeBinary)


@cache
def sealed_secrets() -> tuple[SealedSecrets, ...]:
    """The list. Imported late: the domains' services import ``crypto.service`` themselves."""
    from lockbox.gateway.models import SecureDelivery, SecureNotice
    from lockbox.gateway.service import ADDRESS_PURPOSE, CODE_PURPOSE, LINK_PURPOSE
    from lockbox.identity.credentials import TOTP_PURPOSE
    from lockbox.identity.models import User
    from lockbox.retention.models import LegalHold
    from lockbox.retention.service import REASON_PURPOSE

    return (
        SealedSecrets("totp secrets", User.totp_secret_sealed, TOTP_PURPOSE),
        SealedSecrets("legal-hold reasons", LegalHold.reason_sealed, REASON_PURPOSE),
        SealedSecrets("gateway addresses", SecureDelivery.address_sealed, ADDRESS_PURPOSE),
        # Mirrors gateway.service._queue_notice: a link notice seals the link, any other the code.
        SealedSecrets("gateway notices", SecureNotice.secret_sealed, CODE_PURPOSE, purpose_from=SecureNotice.kind,
                      purpose_of=lambda kind: LINK_PURPOSE if kind == "link" else CODE_PURPOSE),
    )


@cache
def sealed_under_data_keys() -> tuple[InstrumentedAttribute[Any], ...]:
    """Columns sealed with a thread's own data key, not the provider: rotation re-wraps that key
    (``threads.data_key_wrapped``) and leaves them as they are."""
    from lockbox.messaging.models import Attachment, Message, Thread

    return (Thread.subject_sealed, Message.body_sealed, Attachment.name_sealed, Attachment.data_sealed)
