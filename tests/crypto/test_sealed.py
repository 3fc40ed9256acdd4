"""One registry of the columns the key provider seals: every ``*_sealed`` column is in it; rotation re-seals
all of them (the email gateway's recipient addresses and unsent links and codes too), and a version is
retired only once none of them uses it. On both backends."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from sqlalchemy import Column, LargeBinary, MetaData, String, Table, select, update
from sqlalchemy.orm import Session

from lockbox.app import build_database
from lockbox.audit.models import AuditRow
from lockbox.clock import FrozenClock
from lockbox.config import Settings
from lockbox.crypto.exceptions import CryptoError, KeyFileError
from lockbox.crypto.keys import Keyring, LocalKeyFile
from lockbox.crypto.sealed import SealedSecrets, sealed_secrets, sealed_under_data_keys
from lockbox.crypto.service import _reseal_secrets, _rewrap_threads, retire_version, rotate_keys, still_using
from lockbox.db import Database
from lockbox.db.all_models import metadata
from lockbox.gateway import service as gateway
from lockbox.gateway.exceptions import CodeRefused
from lockbox.gateway.models import SecureDelivery, SecureNotice
from lockbox.retention import service as retention
from tests.crypto.test_rotation import _cli
from tests.factories import make_user

FRIEND = "friend@partner.example"
REASON = "Matter 2026-114, request of counsel"

# -- the registry --------------------------------------------------------------------------------------


def _registered() -> set[str]:
    columns = [s.column for s in sealed_secrets()] + list(sealed_under_data_keys())
    return {f"{c.class_.__tablename__}.{c.key}" for c in columns}


def _unregistered(meta: MetaData) -> set[str]:
    found = {f"{t.name}.{c.name}" for t in meta.tables.values() for c in t.columns if c.name.endswith("_sealed")}
    return found - _registered()


def test_every_sealed_column_is_registered() -> None:
    assert _unregistered(metadata) == set(), "add the column to lockbox/crypto/sealed.py"
    # A domain that seals something new is caught, not forgotten.
    other = MetaData()
    Table("referral_letters", other, Column("id", String(32), primary_key=True), Column("letter_sealed", LargeBinary))
    assert _unregistered(other) == {"referral_letters.letter_sealed"}


def test_the_registry_names_real_binary_columns_once() -> None:
    tables = metadata.tables
    registered = [f"{s.column.class_.__tablename__}.{s.column.key}" for s in sealed_secrets()]
    registered += [f"{c.class_.__tablename__}.{c.key}" for c in sealed_under_data_keys()]
    assert len(registered) == len(set(registered))
    for name in registered:
        table, column = name.split(".")
        assert isinstance(tables[table].c[column].type, LargeBinary), name
    for sealed in sealed_secrets():  # rotation pages by the row's id, the owner the secret is bound to
        assert [c.name for c in tables[sealed.model.__tablename__].primary_key] == ["id"]
    assert {s.name for s in sealed_secrets()} >= {"totp secrets", "legal-hold reasons", "gateway addresses",
                                                  "gateway notices"}


# -- the gateway's sealed values through rotation and retirement -------------------------------------------


@dataclass
class Mailed:
    delivery_id: str
    thread_id: str
    link: str
    code: str
    notices: dict[str, str]  # kind -> notice id
    blobs: dict[str, bytes]  # what version 1 sealed, as a backup taken now holds it


def _opened(keyring: Keyring, session: Session) -> tuple[str, dict[str, str]]:
    d = session.scalars(select(SecureDelivery)).one()
    address = keyring.open_secret(gateway.ADDRESS_PURPOSE, d.id, d.address_sealed).decode()
    secrets = {}
    for n in session.scalars(select(SecureNotice)):
        purpose = gateway.LINK_PURPOSE if n.kind == "link" else gateway.CODE_PURPOSE
        assert n.secret_sealed is not None
        secrets[n.kind] = keyring.open_secret(purpose, n.id, n.secret_sealed).decode()
    return address, secrets


def _secure_mail(db: Database) -> Mailed:
    """A secured email to an external recipient (address and link sealed), who then asks for a code."""
    doctor = make_user(db, "physician", sign_in=False)
    accepted = db.write_sync(gateway.take_in, sender_id=doctor.id, recipients=[FRIEND], subject="Biopsy results",
                             body="Please call the patient.", files=[], trigger="keyword")
    (thread_id,) = accepted.thread_ids
    _, first = db.read_sync(lambda s: _opened(db.runtime.keyring, s))
    db.write_sync(gateway.request_code, token=first["link"])
    db.write_sync(retention.place_hold, actor=None, thread_id=thread_id, reason=REASON)
    address, secrets = db.read_sync(lambda s: _opened(db.runtime.keyring, s))
    assert address == FRIEND
    notices = db.read_sync(lambda s: {n.kind: n.id for n in s.scalars(select(SecureNotice))})
    blobs = db.read_sync(lambda s: {"address": s.scalars(select(SecureDelivery.address_sealed)).one()})
    return Mailed(db.read_sync(lambda s: s.scalars(select(SecureDelivery.id)).one()), thread_id, secrets["link"],
                  secrets["code"], notices, blobs)


def _versions(db: Database) -> dict[str, set[int]]:
    def read(session: Session) -> dict[str, set[int]]:
        return {s.name: {Keyring.secret_version(b) for b in session.scalars(select(s.column)) if b}
                for s in sealed_secrets()}

    return db.read_sync(read)


def _provider(db: Database) -> LocalKeyFile:
    provider = db.runtime.keyring.provider
    assert isinstance(provider, LocalKeyFile)
    return provider


def _fresh_keyring(settings: Settings) -> Keyring:
    # The key file as a newly started process reads it: no subkey of a retired version cached in memory.
    return Keyring(LocalKeyFile(settings.resolved_key_file, create=False))


def test_rotation_reseals_gateway_values_and_they_open_after_retirement(standalone_db: Database,
                                                                       settings: Settings) -> None:
    db = standalone_db
    mailed = _secure_mail(db)
    assert _versions(db) == {name: {1} for name in ("totp secrets", "legal-hold reasons", "gateway addresses",
                                                    "gateway notices")}
    calls: list[tuple[str, int, int]] = []
    result = rotate_keys(db, _provider(db), lambda *a: calls.append(a), batch_size=1)
    assert (result.version, result.resumed, result.threads, result.unreadable) == (2, False, 1, [])
    assert result.resealed == {"totp secrets": 1, "legal-hold reasons": 1, "gateway addresses": 1,
                               "gateway notices": 2}
    assert result.secrets == 5
    # Batched (one per commit here) and reported per column, as the CLI's progress bars show them.
    assert [c for c in calls if c[0] == "gateway notices"] == [("gateway notices", 1, 2), ("gateway notices", 2, 2),
                                                               ("gateway notices", 2, 2)]
    assert ("gateway addresses", 1, 1) in calls
    assert all(v == {2} for v in _versions(db).values())
    reseals = db.read_sync(lambda s: sorted(r["column"] for r in s.scalars(
        select(AuditRow.details).where(AuditRow.action == "crypto.key.rotate")) if r.get("phase") == "reseal"))
    assert reseals == ["legal_holds.reason_sealed", "secure_deliveries.address_sealed",
                       "secure_notices.secret_sealed", "secure_notices.secret_sealed", "users.totp_secret_sealed"]

    assert db.read_sync(still_using, version=1) == {}
    retire_version(db, _provider(db), 1)
    keyring = _fresh_keyring(settings)
    assert keyring.provider.versions() == [2]  # type: ignore[attr-defined]
    # The recipient's address, link and code still open; what version 1 sealed (an old backup) does not.
    assert db.read_sync(lambda s: _opened(keyring, s)) == (FRIEND, {"link": mailed.link, "code": mailed.code})
    with pytest.raises(KeyFileError, match="retired"):
        keyring.open_secret(gateway.ADDRESS_PURPOSE, mailed.delivery_id, mailed.blobs["address"])
    # The gateway itself sends the code to the address, and the hold's reason reads.
    out = db.write_sync(gateway._begin_notice, notice_id=mailed.notices["code"])
    assert out.to == FRIEND and mailed.code in out.text
    assert [h.reason for h in db.read_sync(retention.list_holds, actor=None)] == [REASON]


def test_retire_refuses_until_rotation_has_resealed_the_gateway_values(standalone_db: Database,
                                                                       settings: Settings, clock: FrozenClock) -> None:
    db = standalone_db
    mailed = _secure_mail(db)
    provider = _provider(db)
    provider.add_version()
    # A rotation that stopped after the thread keys and the TOTP secrets.
    keyring = db.runtime.keyring
    assert db.write_sync(_rewrap_threads, keyring=keyring, version=2, after="", limit=100)[0] == 1
    totp = next(s for s in sealed_secrets() if s.name == "totp secrets")
    assert db.write_sync(_reseal_secrets, keyring=keyring, version=2, after="", limit=100, sealed=totp)[0] == 1

    with pytest.raises(CryptoError, match="still protects 1 legal-hold reasons, 1 gateway addresses, "
                                          "2 gateway notices: run `lockbox keys rotate` first"):
        retire_version(db, provider, 1)
    refused = _cli(settings, "keys", "retire")
    assert refused.returncode == 2 and "1 gateway addresses, 2 gateway notices" in refused.stderr
    assert FRIEND not in refused.stderr + refused.stdout
    assert provider.retired_versions() == [] and provider.versions() == [1, 2]

    done = _cli(settings, "keys", "rotate", "--batch-size", "1", "--retire-old")
    assert done.returncode == 0, done.stderr
    assert ("finished the interrupted rotation to key version 2: 0 thread keys re-wrapped, 4 secrets re-sealed "
            "(1 legal-hold reasons, 1 gateway addresses, 2 gateway notices)") in done.stdout
    assert "retired key version 1" in done.stdout
    assert FRIEND not in done.stdout + done.stderr
    fresh = _fresh_keyring(settings)
    assert fresh.provider.retired_versions() == [1]  # type: ignore[attr-defined]
    assert db.read_sync(lambda s: _opened(fresh, s)) == (FRIEND, {"link": mailed.link, "code": mailed.code})

    # A server started after retirement cannot check the code MAC'd under version 1: the recipient is
    # told to ask for a new code (not a server error), and the new one works.
    restarted = build_database(settings, clock=clock)
    try:
        refused = restarted.write_sync(gateway.verify_code, token=mailed.link, code=mailed.code)
        assert isinstance(refused, gateway.Refused) and isinstance(refused.error, CodeRefused)
        clock.advance(gateway.CODE_INTERVAL_S)
        restarted.write_sync(gateway.request_code, token=mailed.link)

        def new_code(session: Session) -> str:
            n = session.scalars(select(SecureNotice).where(SecureNotice.kind == "code",
                                                           SecureNotice.id != mailed.notices["code"])).one()
            assert n.secret_sealed is not None and Keyring.secret_version(n.secret_sealed) == 2
            return restarted.runtime.keyring.open_secret(gateway.CODE_PURPOSE, n.id, n.secret_sealed).decode()

        access = restarted.write_sync(gateway.verify_code, token=mailed.link, code=restarted.read_sync(new_code))
        assert isinstance(access, str)
    finally:
        restarted.close()


def test_an_unreadable_sealed_value_is_reported_and_blocks_retirement(standalone_db: Database) -> None:
    db = standalone_db
    mailed = _secure_mail(db)
    link_notice = mailed.notices["link"]
    # The link notice's blob swapped for the code notice's: bound to another row, it no longer opens.
    db.write_sync(lambda s: s.execute(update(SecureNotice).where(SecureNotice.id == link_notice).values(
        secret_sealed=s.scalars(select(SecureNotice.secret_sealed).where(SecureNotice.kind == "code")).one())))
    result = rotate_keys(db, _provider(db), None)
    assert result.unreadable == [link_notice]
    assert result.resealed["gateway notices"] == 1
    failures = db.read_sync(lambda s: s.scalars(select(AuditRow.details).where(AuditRow.outcome == "failure")
                                                .where(AuditRow.action == "crypto.key.rotate")).all())
    assert failures == [{"phase": "reseal", "count": 1, "column": "secure_notices.secret_sealed",
                         "rows": [link_notice]}]
    with pytest.raises(CryptoError, match="still protects 1 gateway notices"):
        retire_version(db, _provider(db), 1)
    # A notice sent since (its secret dropped) no longer holds the version back.
    db.write_sync(gateway._notice_sent, notice_id=link_notice, provider_id=None)
    assert retire_version(db, _provider(db), 1).version == 1


def test_sealed_secrets_purpose_follows_the_notice_kind() -> None:
    notices = next(s for s in sealed_secrets() if s.name == "gateway notices")
    assert isinstance(notices, SealedSecrets)
    assert notices.purpose_for("link") == gateway.LINK_PURPOSE
    assert notices.purpose_for("code") == gateway.CODE_PURPOSE
