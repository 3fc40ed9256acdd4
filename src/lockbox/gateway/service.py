"""The gateway's logic: staff app passwords, taking a secured email into the message center, and the
external recipient's way in (link, one-time code, access session, read, reply).

Who a mail goes to, per envelope recipient (each gets a thread of their own, so recipients never see
each other): a registered patient (their email on file) gets it in their portal thread with the sender,
consent permitting; a colleague gets a staff thread; anyone else is an external recipient, who gets a
PHI-free email with an opaque link. Everything for one mail happens in one unit of work: a refusal for
any recipient stores nothing and bounces the whole mail.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import Table, bindparam, func, select, update
from sqlalchemy.orm import Session

from lockbox.access import policy
from lockbox.access.actor import Actor
from lockbox.audit.service import record
from lockbox.consent import service as consent
from lockbox.crypto.exceptions import CryptoError
from lockbox.crypto.service import count_seal
from lockbox.db.base import new_id
from lockbox.db.uow import publish, runtime_of
from lockbox.errors import (
    ConsentRequired,
    InvalidInput,
    LockboxError,
    NotFound,
    PayloadTooLarge,
    Throttled,
    UnsupportedMediaType,
)
from lockbox.gateway import schemas
from lockbox.gateway.exceptions import (
    Bounce,
    CodeRefused,
    DeliveryExpired,
    LinkExpired,
    NotVerified,
    TooManyResends,
)
from lockbox.gateway.mime import MAX_SUBJECT_CHARS, File
from lockbox.gateway.models import GatewayPassword, SecureDelivery, SecureNotice
from lockbox.identity import throttle
from lockbox.identity.models import User
from lockbox.identity.roles import NO_CONTENT_ROLES, STAFF_ROLES, Role
from lockbox.jobs import service as jobs
from lockbox.messaging import schemas as msg_schemas
from lockbox.messaging import service as messaging
from lockbox.messaging.models import Attachment, Message, Participant, Thread
from lockbox.messaging.sealing import ThreadCipher
from lockbox.notify import service as notify

if TYPE_CHECKING:
    from lockbox.db import Database

SEND_NOTICE = "gateway.send_notice"
ADDRESS_PURPOSE = "gateway-address"
LINK_PURPOSE = "gateway-link"
CODE_PURPOSE = "gateway-code"
CSRF_PURPOSE = "gateway-csrf"
CODE_DIGITS = 8
MAX_CODE_FAILURES = 5  # per code; a new code starts again
MAX_CODES = 10  # per link: past that the recipient asks the sender to send the message again
CODE_INTERVAL_S = 30
MAX_RESENDS = 5  # new links per delivery, on top of the first: past that the sender writes again
DELIVERY_FAILED = "delivery_failed"  # the notify kind that tells a sender their link email failed for good
EXTERNAL_KIND = "external"  # Thread.kind of a thread with an external recipient
EXTERNAL_REPLY = "external"  # Message.kind of the external recipient's reply (sender_id is None)
_RE_PREFIX = re.compile(r"^\s*((re|fw|fwd|aw|wg|tr)\s*:\s*)+", re.IGNORECASE)


def _sha256(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def _new_secret() -> str:
    return secrets.token_urlsafe(32)  # 256 bits


def _is_sending_staff(role: str) -> bool:
    return role in STAFF_ROLES and role not in NO_CONTENT_ROLES


def _actor(user: User) -> Actor:
    return Actor(user_id=user.id, username=user.username, role=Role(user.role), display_name=user.display_name)


# -- app passwords -------------------------------------------------------------------------------


def issue_password(session: Session, *, actor: Actor, label: str) -> schemas.PasswordCreated:
    """A new app password for the caller's mail client, shown once."""
    if not _is_sending_staff(actor.role):
        raise NotFound()
    rt = runtime_of(session)
    password = _new_secret()
    label = re.sub(r"[^\w .,()@+-]", "", label).strip()[:64]
    row = GatewayPassword(user_id=actor.user_id, token_hash=_sha256(password), label=label,
                          created_at=rt.clock.now())
    session.add(row)
    session.flush()
    record(session, action="gateway.password.issue", actor=actor, subject_type="gateway_password",
           subject_id=row.id)
    s = rt.settings
    return schemas.PasswordCreated(id=row.id, label=row.label, created_at=row.created_at, last_used_at=None,
                                   username=actor.username, password=password, smtp_host=s.smtp_gateway_host,
                                   smtp_port=s.smtp_gateway_port, starttls=s.smtp_gateway_tls_cert is not None)


def list_passwords(session: Session, *, actor: Actor) -> list[schemas.PasswordOut]:
    if not _is_sending_staff(actor.role):
        raise NotFound()
    rows = session.scalars(select(GatewayPassword).where(GatewayPassword.user_id == actor.user_id,
                                                         GatewayPassword.revoked_at.is_(None))
                           .order_by(GatewayPassword.created_at.desc()))
    return [schemas.PasswordOut(id=r.id, label=r.label, created_at=r.created_at, last_used_at=r.last_used_at)
            for r in rows]


def revoke_password(session: Session, *, actor: Actor, password_id: str) -> None:
    row = session.get(GatewayPassword, password_id)
    if row is None or row.user_id != actor.user_id or row.revoked_at is not None:
        raise NotFound()
    row.revoked_at = runtime_of(session).clock.now()
    record(session, action="gateway.password.revoke", actor=actor, subject_type="gateway_password",
           subject_id=row.id)


# -- who is sending --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sender:
    user_id: str
    username: str


def _smtp_key(client_addr: str) -> str:
    return throttle.address_key(f"smtp:{client_addr}")


def authenticate(session: Session, *, username: str, password: str, client_addr: str) -> Sender | None:
    """SMTP AUTH with an app password. Failures count against the client's address like sign-in
    failures and are audited; the answer is the same whatever was wrong."""
    now = runtime_of(session).clock.now()
    key = _smtp_key(client_addr)
    if throttle.lock_of(session, [(key, throttle.ADDRESS)], now) is not None:
        record(session, action="gateway.auth.fail", outcome="failure", reason="throttled")
        return None
    row = session.execute(
        select(GatewayPassword, User).join(User, User.id == GatewayPassword.user_id)
        .where(GatewayPassword.token_hash == _sha256(password), GatewayPassword.revoked_at.is_(None))).first()
    if row is None or row[1].username != username or not row[1].active or not _is_sending_staff(row[1].role):
        throttle.record_failure(session, key, throttle.ADDRESS, now)
        record(session, action="gateway.auth.fail", outcome="failure", reason="bad_credentials")
        return None
    pw, user = row
    pw.last_used_at = now
    throttle.reset(session, key)
    record(session, action="gateway.auth.succeed", actor_id=user.id, subject_type="gateway_password",
           subject_id=pw.id)
    return Sender(user.id, user.username)


def relay_sender(session: Session, *, address: str) -> Sender | None:
    """The staff member whose address on file is the envelope sender of a mail from an allowed relay."""
    users = list(session.scalars(select(User).where(func.lower(User.email) == address.strip().lower(),
                                                    User.active.is_(True))))
    if len(users) != 1 or not _is_sending_staff(users[0].role):
        return None
    return Sender(users[0].id, users[0].username)


# -- taking a mail in ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Accepted:
    thread_ids: list[str]


def _match_recipient(session: Session, address: str) -> User | None:
    users = list(session.scalars(select(User).where(func.lower(User.email) == address.lower(),
                                                    User.active.is_(True))))
    if len(users) > 1:
        # A family sharing one address: we cannot tell which patient is meant.
        raise Bounce("550 5.1.1 A recipient address belongs to more than one person at the clinic; write to "
                     "them from the message center instead. Nothing was sent.", "ambiguous_recipient")
    return users[0] if users else None


def _normal_subject(subject: str) -> str:
    return " ".join(_RE_PREFIX.sub("", subject).split()).casefold()


def _existing_patient_thread(session: Session, actor: Actor, patient_id: str, subject: str) -> str | None:
    """An open thread of this patient with this sender under the same subject (a reply by email)."""
    wanted = _normal_subject(subject)
    threads = session.scalars(
        select(Thread).join(Participant, (Participant.thread_id == Thread.id)
                            & (Participant.user_id == actor.user_id) & (Participant.kind == "member"))
        .where(Thread.patient_id == patient_id, Thread.status == "open")
        .order_by(Thread.last_message_at.desc()).limit(50))
    keyring = runtime_of(session).keyring
    for t in threads:
        cipher = ThreadCipher.open(keyring, t.id, t.key_version, t.data_key_wrapped)
        if _normal_subject(cipher.open_subject(t.subject_sealed)) == wanted:
            return t.id
    return None


def _bounce_for(exc: LockboxError) -> Bounce:
    if isinstance(exc, ConsentRequired):
        return Bounce("550 5.7.1 A recipient is a patient who has not agreed to secure messaging or has opted "
                      "out; nothing was sent to anyone.", "consent")
    if isinstance(exc, PayloadTooLarge):
        return Bounce("552 5.3.4 An attachment is too large; nothing was stored.", "attachment_too_large")
    if isinstance(exc, UnsupportedMediaType):
        return Bounce("554 5.6.1 Attach images (PNG, JPEG, GIF, WebP) or PDF documents only; nothing was stored.",
                      "attachment_type")
    return Bounce("550 5.7.1 The clinic's rules do not allow this message (a recipient you cannot write to); "
                  "nothing was stored.", exc.code)


def take_in(session: Session, *, sender_id: str, recipients: list[str], subject: str, body: str,
            files: list[File], trigger: str) -> Accepted:
    """Store a secured email for every recipient, or nothing (raises Bounce)."""
    sender = session.get(User, sender_id)
    if sender is None or not sender.active or not _is_sending_staff(sender.role):
        raise Bounce("550 5.7.1 Only the clinic's staff may send secure mail.", "not_staff")
    actor = _actor(sender)
    subject = (subject or "(no subject)")[:MAX_SUBJECT_CHARS]
    body = body or ("(attachment)" if files else "(no text)")
    thread_ids: list[str] = []
    try:
        for address in dict.fromkeys(a.strip().lower() for a in recipients):
            user = _match_recipient(session, address)
            if user is not None and user.id == actor.user_id:
                continue  # a copy to oneself: the sender is in every thread anyway
            if user is not None and user.role == Role.patient:
                thread_ids.append(_to_patient(session, actor, user, subject, body, files))
            elif user is not None and _is_sending_staff(user.role):
                created = messaging.create_thread(session, actor=actor, data=msg_schemas.ThreadCreate(
                    subject=subject, body=body, to=[user.username], confirm_recipients=True))
                _attach(session, actor, created.id, files)
                thread_ids.append(created.id)
            else:
                thread_ids.append(_to_external(session, actor, address, subject, body, files))
    except LockboxError as exc:
        raise _bounce_for(exc) from None
    if not thread_ids:
        raise Bounce("550 5.1.1 The message has no recipient besides you; nothing was stored.", "no_recipient")
    record(session, action="gateway.mail.accept", actor=actor, subject_type="user", subject_id=actor.user_id,
           threads=thread_ids, files=len(files), trigger=trigger)
    return Accepted(thread_ids)


def _attach(session: Session, actor: Actor, thread_id: str, files: list[File]) -> None:
    for f in files:
        messaging.add_attachment(session, actor=actor, thread_id=thread_id, filename=f.name, data=f.data)


def _to_patient(session: Session, actor: Actor, patient: User, subject: str, body: str, files: list[File]) -> str:
    # Checked here for both paths: a reply to an existing thread must respect an opt-out too.
    if not consent.has_consent(session, patient_id=patient.id):
        raise ConsentRequired()
    thread_id = _existing_patient_thread(session, actor, patient.id, subject)
    if thread_id is not None:
        messaging.reply(session, actor=actor, thread_id=thread_id, body=body)
    else:
        thread_id = messaging.create_thread(session, actor=actor, data=msg_schemas.ThreadCreate(
            subject=subject, body=body, patient=patient.username, confirm_recipients=True)).id
    _attach(session, actor, thread_id, files)
    return thread_id


def _to_external(session: Session, actor: Actor, address: str, subject: str, body: str, files: list[File]) -> str:
    """A thread of the sender's own (the recipient has no account) and the way in for the recipient."""
    rt = runtime_of(session)
    now = rt.clock.now()
    thread_id, message_id = new_id(), new_id()
    cipher, key_version, wrapped = ThreadCipher.new(rt.keyring, thread_id)
    count_seal(session, key_version=key_version)
    session.add(Thread(id=thread_id, kind=EXTERNAL_KIND, created_by=actor.user_id, created_at=now,
                       last_message_at=now, status="open", urgent=False, emergency=False,
                       subject_sealed=cipher.seal_subject(subject), message_count=1, data_key_wrapped=wrapped,
                       key_version=key_version, data_key_uses=2 + 2 * len(files)))
    session.flush()
    session.add(Message(id=message_id, thread_id=thread_id, seq=1, sender_id=actor.user_id, created_at=now,
                        kind="message", body_sealed=cipher.seal_body(message_id, body)))
    session.add(Participant(thread_id=thread_id, user_id=actor.user_id, kind="member", joined_at=now,
                            last_read_seq=1, last_delivered_seq=1, last_read_at=now))
    session.flush()
    for f in files:
        att_id = new_id()
        name_sealed, data_sealed = cipher.seal_file(att_id, f.name, f.data)
        session.add(Attachment(id=att_id, thread_id=thread_id, message_id=message_id, content_type=f.content_type,
                               size=len(f.data), name_sealed=name_sealed, data_sealed=data_sealed))
    delivery_id = new_id()
    link = _new_secret()
    session.add(SecureDelivery(
        id=delivery_id, thread_id=thread_id, sender_id=actor.user_id,
        address_sealed=rt.keyring.seal_secret(ADDRESS_PURPOSE, delivery_id, address.encode()),
        link_hash=_sha256(link), created_at=now, expires_at=now + timedelta(seconds=rt.settings.secure_link_ttl_s),
        code_failures=0, codes_sent=0))
    session.flush()
    _queue_notice(session, delivery_id, "link", link)
    record(session, action="messaging.thread.create", actor=actor, subject_type="thread", subject_id=thread_id,
           message_id=message_id, kind=EXTERNAL_KIND)
    record(session, action="gateway.delivery.create", actor=actor, subject_type="secure_delivery",
           subject_id=delivery_id, thread_id=thread_id)
    return thread_id


def _queue_notice(session: Session, delivery_id: str, kind: str, secret: str) -> None:
    rt = runtime_of(session)
    notice_id = new_id()
    purpose = LINK_PURPOSE if kind == "link" else CODE_PURPOSE
    session.add(SecureNotice(id=notice_id, delivery_id=delivery_id, kind=kind, status="queued",
                             secret_sealed=rt.keyring.seal_secret(purpose, notice_id, secret.encode()),
                             created_at=rt.clock.now(), attempts=0))
    session.flush()
    jobs.enqueue(session, kind=SEND_NOTICE, payload={"notice_id": notice_id},
                 max_attempts=rt.settings.notify_max_attempts)


def record_bounce(session: Session, *, sender_id: str | None, reason: str, recipients: int) -> None:
    """The audit trace of a refused mail (nothing else was stored)."""
    record(session, action="gateway.mail.reject", actor_id=sender_id, outcome="failure", reason=reason,
           recipients=recipients)


def record_relay(session: Session, *, sender_id: str, recipients: int) -> None:
    record(session, action="gateway.mail.relay", actor_id=sender_id, subject_type="user", subject_id=sender_id,
           recipients=recipients)


def relay_allowed(session: Session, *, recipients: list[str]) -> bool:
    """Ordinary (unsecured) mail may not reach a patient who opted out of email."""
    for address in recipients:
        user = _match_recipient(session, address.strip().lower())
        if user is not None and user.role == Role.patient and not consent.allows_notification(
                session, user_id=user.id, channel="email"):
            return False
    return True


# -- the PHI-free emails to external recipients ----------------------------------------------------


def _notice_text(kind: str, secret: str, settings: Any, expires_at: datetime) -> tuple[str, str]:
    clinic = settings.clinic_name
    if kind == "code":
        minutes = max(1, settings.secure_code_ttl_s // 60)
        return (f"Your verification code from {clinic}",
                f"Your one-time code is {secret}\n\nIt works once, for {minutes} minutes. If you did not ask for "
                "it, you can ignore this email.\n")
    link = f"{settings.public_url.rstrip('/')}/secure/{secret}"
    return (f"Secure message from {clinic}",
            f"{clinic} has sent you a secure message.\n\nOpen it here: {link}\n\n"
            "To protect your privacy, the message is not in this email. When you open the link we will send a "
            "one-time code to this address. You can read and answer the message on that page until "
            f"{expires_at:%Y-%m-%d}.\nDo not reply to this email.\n")


def _begin_notice(session: Session, *, notice_id: str) -> Any:
    from lockbox.notify.providers import Outbound

    n = session.get(SecureNotice, notice_id)
    if n is None or n.status not in ("queued", "sending") or n.secret_sealed is None:
        return None
    d = session.get_one(SecureDelivery, n.delivery_id)
    rt = runtime_of(session)
    now = rt.clock.now()
    address = rt.keyring.open_secret(ADDRESS_PURPOSE, d.id, d.address_sealed).decode()
    purpose = LINK_PURPOSE if n.kind == "link" else CODE_PURPOSE
    secret = rt.keyring.open_secret(purpose, n.id, n.secret_sealed).decode()
    subject, text = _notice_text(n.kind, secret, rt.settings, d.expires_at)
    n.status, n.attempts = "sending", n.attempts + 1
    return Outbound(notification_id=n.id, channel="email", to=address, subject=subject, text=text, at=now)


def _notice_failed(session: Session, *, notice_id: str, error: str) -> None:
    n = session.get(SecureNotice, notice_id)
    if n is None or n.status != "sending":
        return
    n.reason = f"failed: {error}"[:100]
    if n.attempts >= runtime_of(session).settings.notify_max_attempts:
        n.status, n.secret_sealed = "failed", None
        record(session, action="gateway.notice.fail", subject_type="secure_notice", subject_id=n.id,
               delivery_id=n.delivery_id, kind=n.kind, attempts=n.attempts)
        if n.kind == "link":
            _tell_sender_link_failed(session, n.delivery_id)
    else:
        n.status = "queued"


def _tell_sender_link_failed(session: Session, delivery_id: str) -> None:
    """Without this the sender believes the message arrived. The event and the notification name the
    thread (for the sender's own page) but never the address, subject or content."""
    d = session.get_one(SecureDelivery, delivery_id)
    publish(session, [d.sender_id], {"type": "delivery_failed", "thread_id": d.thread_id, "delivery_id": d.id})
    sender = session.get(User, d.sender_id)
    if sender is not None and sender.active and sender.email:
        notify.queue(session, user=sender, channel="email", kind=DELIVERY_FAILED, thread_id=d.thread_id)


def _notice_sent(session: Session, *, notice_id: str, provider_id: str | None) -> None:
    n = session.get(SecureNotice, notice_id)
    if n is None or n.status == "sent" or n.sent_at is not None:
        return
    # Sent: the link or code is no longer recoverable from the database, only its hash is kept.
    # A link resent while this one was on its way stays superseded (it no longer works).
    n.status = "superseded" if n.status == "superseded" else "sent"
    n.reason, n.secret_sealed = None, None
    n.sent_at = runtime_of(session).clock.now()
    n.provider_message_id = provider_id
    record(session, action="gateway.notice.send", subject_type="secure_notice", subject_id=n.id,
           delivery_id=n.delivery_id, kind=n.kind)


def send_notice(payload: dict[str, Any], *, db: Database) -> None:
    """Job ``gateway.send_notice`` {notice_id}: the notify outbox's exactly-once pattern and providers."""
    from lockbox.notify.providers import describe_failure, provider_for

    notice_id = str(payload.get("notice_id", ""))
    out = db.write_sync(_begin_notice, notice_id=notice_id)
    if out is None:
        return
    try:
        provider_id = provider_for(db.runtime.settings, "email").send(out)
    except Exception as exc:
        db.write_sync(_notice_failed, notice_id=notice_id, error=describe_failure(exc))
        raise
    db.write_sync(_notice_sent, notice_id=notice_id, provider_id=provider_id)


# -- the external recipient's way in ----------------------------------------------------------------


@dataclass(frozen=True)
class Refused:
    """A refusal whose trace (a counted failure, an audit row) must commit: raised by the caller after."""

    error: LockboxError


def _delivery(session: Session, token: str) -> SecureDelivery:
    d = session.scalar(select(SecureDelivery).where(SecureDelivery.link_hash == _sha256(token)))
    if d is None:
        raise NotFound()
    if runtime_of(session).clock.now() >= d.expires_at:
        raise LinkExpired()
    return d


def link_state(session: Session, *, token: str) -> schemas.LinkState:
    d = _delivery(session, token)
    return schemas.LinkState(code_pending=d.code_mac is not None, expires_at=d.expires_at)


def _code_mac(session: Session, delivery_id: str, code: str, version: int | None = None) -> str:
    v, digest = runtime_of(session).keyring.mac(CODE_PURPOSE, f"{delivery_id}:{code}".encode(), version=version)
    return f"{v}.{digest.hex()}"


def request_code(session: Session, *, token: str) -> None:
    """A new one-time code to the recipient's address (the previous one stops working)."""
    d = _delivery(session, token)
    rt = runtime_of(session)
    now = rt.clock.now()
    if d.codes_sent >= MAX_CODES:
        raise Throttled(24 * 3600, "Too many codes were sent for this message. Ask the sender to send it again.")
    if d.last_code_at is not None and (now - d.last_code_at).total_seconds() < CODE_INTERVAL_S:
        wait = CODE_INTERVAL_S - int((now - d.last_code_at).total_seconds())
        raise Throttled(wait, "A code was sent a moment ago. Check your email, or ask again in a few seconds.")
    code = f"{secrets.randbelow(10 ** CODE_DIGITS):0{CODE_DIGITS}d}"
    d.code_mac = _code_mac(session, d.id, code)
    d.code_expires_at = now + timedelta(seconds=rt.settings.secure_code_ttl_s)
    d.code_failures = 0
    d.codes_sent += 1
    d.last_code_at = now
    _queue_notice(session, d.id, "code", code)
    record(session, action="gateway.code.send", subject_type="secure_delivery", subject_id=d.id)


def verify_code(session: Session, *, token: str, code: str) -> str | Refused:
    """The access token of a new short session when ``code`` is right; the code works once."""
    d = _delivery(session, token)
    rt = runtime_of(session)
    now = rt.clock.now()
    code = "".join(code.split())
    if d.code_mac is None or d.code_expires_at is None or now >= d.code_expires_at:
        record(session, action="gateway.code.verify", subject_type="secure_delivery", subject_id=d.id,
               outcome="failure", reason="no_code")
        return Refused(CodeRefused())
    version, _, _ = d.code_mac.partition(".")
    try:
        ok = code.isdigit() and len(code) == CODE_DIGITS and hmac.compare_digest(
            _code_mac(session, d.id, code, int(version)), d.code_mac)
    except CryptoError:  # sent under a key version retired since (`lockbox keys retire`): ask for a new one
        d.code_mac, d.code_expires_at = None, None
        record(session, action="gateway.code.verify", subject_type="secure_delivery", subject_id=d.id,
               outcome="failure", reason="no_code")
        return Refused(CodeRefused())
    if not ok:
        d.code_failures += 1
        if d.code_failures >= MAX_CODE_FAILURES:
            d.code_mac, d.code_expires_at = None, None  # guessing ends here: a new code is needed
        record(session, action="gateway.code.verify", subject_type="secure_delivery", subject_id=d.id,
               outcome="failure", reason="wrong_code", failures=d.code_failures)
        if d.code_mac is None:
            return Refused(Throttled(CODE_INTERVAL_S, "Too many wrong codes. Ask for a new code."))
        return Refused(CodeRefused())
    access = _new_secret()
    d.code_mac, d.code_expires_at, d.code_failures = None, None, 0
    d.access_hash = _sha256(access)
    d.access_expires_at = now + timedelta(seconds=rt.settings.secure_access_ttl_s)
    d.verified_at = now
    record(session, action="gateway.code.verify", subject_type="secure_delivery", subject_id=d.id)
    return access


def _with_access(session: Session, token: str, access: str | None) -> SecureDelivery:
    d = _delivery(session, token)
    now = runtime_of(session).clock.now()
    if (not access or d.access_hash is None or d.access_expires_at is None or now >= d.access_expires_at
            or not hmac.compare_digest(d.access_hash, _sha256(access))):
        raise NotVerified()
    return d


def csrf_for(session: Session, *, access: str) -> str:
    v, digest = runtime_of(session).keyring.mac(CSRF_PURPOSE, _sha256(access).encode())
    return f"{v}.{digest.hex()}"


def check_csrf(session: Session, access: str, token: str | None) -> None:
    from lockbox.web.security import CsrfRefused

    version, _, _ = (token or "").partition(".")
    if not version.isdigit() or len(version) > 6:
        raise CsrfRefused()
    try:
        v, digest = runtime_of(session).keyring.mac(CSRF_PURPOSE, _sha256(access).encode(), version=int(version))
    except Exception as exc:  # an unknown key version
        raise CsrfRefused() from exc
    if not hmac.compare_digest(f"{v}.{digest.hex()}", token or ""):
        raise CsrfRefused()


def read_thread(session: Session, *, token: str, access: str | None) -> schemas.ExternalThread:
    """The thread as the verified recipient sees it; audited as a view."""
    d = _with_access(session, token, access)
    thread = session.get_one(Thread, d.thread_id)
    cipher = ThreadCipher.open(runtime_of(session).keyring, thread.id, thread.key_version, thread.data_key_wrapped)
    names: dict[str, str] = {uid: name for uid, name in session.execute(select(User.id, User.display_name).join(
        Message, Message.sender_id == User.id).where(Message.thread_id == thread.id))}
    files: dict[str, list[schemas.ExternalFile]] = {}
    for a in session.scalars(select(Attachment).where(Attachment.thread_id == thread.id)):
        files.setdefault(a.message_id, []).append(schemas.ExternalFile(
            id=a.id, filename=cipher.open_file_name(a.id, a.name_sealed), content_type=a.content_type, size=a.size))
    clinic = runtime_of(session).settings.clinic_name
    messages = [
        schemas.ExternalMessage(
            seq=m.seq, created_at=m.created_at, mine=m.kind == EXTERNAL_REPLY,
            sender="You" if m.kind == EXTERNAL_REPLY else names.get(m.sender_id or "", clinic),
            body=cipher.open_body(m.id, m.body_sealed), files=files.get(m.id, []))
        for m in session.scalars(select(Message).where(Message.thread_id == thread.id).order_by(Message.seq))
    ]
    record(session, action="gateway.thread.view", subject_type="secure_delivery", subject_id=d.id,
           thread_id=thread.id)
    return schemas.ExternalThread(subject=cipher.open_subject(thread.subject_sealed), clinic=clinic,
                                  messages=messages, csrf=csrf_for(session, access=access or ""))


@dataclass(frozen=True)
class FileOut:
    filename: str
    content_type: str
    data: bytes


def download(session: Session, *, token: str, access: str | None, attachment_id: str) -> FileOut:
    d = _with_access(session, token, access)
    a = session.scalar(select(Attachment).where(Attachment.id == attachment_id, Attachment.thread_id == d.thread_id))
    if a is None:
        raise NotFound()
    thread = session.get_one(Thread, d.thread_id)
    cipher = ThreadCipher.open(runtime_of(session).keyring, thread.id, thread.key_version, thread.data_key_wrapped)
    record(session, action="gateway.attachment.download", subject_type="secure_delivery", subject_id=d.id,
           attachment_id=a.id)
    return FileOut(cipher.open_file_name(a.id, a.name_sealed), a.content_type, cipher.open_file(a.id, a.data_sealed))


_threads = cast(Table, Thread.__table__)
_BUMP = (update(_threads).where(_threads.c.id == bindparam("b_thread"))
         .values(message_count=_threads.c.message_count + 1, data_key_uses=_threads.c.data_key_uses + 1,
                 last_message_at=bindparam("b_now"), status="open")
         .returning(_threads.c.message_count))


def reply(session: Session, *, token: str, access: str | None, csrf: str | None, body: str) -> None:
    """The recipient's answer lands in the thread for the staff sender (and anyone else following it)."""
    d = _with_access(session, token, access)
    check_csrf(session, access or "", csrf)
    body = body.strip()
    if not body:
        raise InvalidInput("Write a reply first.")
    if len(body) > 20_000:
        raise InvalidInput("A reply can be at most 20,000 characters.")
    rt = runtime_of(session)
    now = rt.clock.now()
    thread = session.get_one(Thread, d.thread_id)
    seq = int(session.connection().execute(_BUMP, {"b_thread": thread.id, "b_now": now}).scalar_one())
    cipher = ThreadCipher.open(rt.keyring, thread.id, thread.key_version, thread.data_key_wrapped)
    message_id = new_id()
    session.add(Message(id=message_id, thread_id=thread.id, seq=seq, sender_id=None, created_at=now,
                        kind=EXTERNAL_REPLY, body_sealed=cipher.seal_body(message_id, body)))
    session.flush()
    record(session, action="gateway.reply.receive", subject_type="message", subject_id=message_id,
           thread_id=thread.id, delivery_id=d.id)
    members = session.scalars(select(Participant.user_id).where(Participant.thread_id == thread.id,
                                                                Participant.kind == "member"))
    publish(session, members, {"type": "message", "thread_id": thread.id, "message_id": message_id, "seq": seq})


# -- the staff's view of a thread's external deliveries ------------------------------------------------


_FAILURE_CLASS = re.compile(r"^[A-Za-z0-9 ._-]{1,60}$")


def _mask(address: str) -> str:
    """Enough to tell recipients apart on the thread page: the domain and the local part's first letters."""
    local, _, domain = address.rpartition("@")
    if not local:
        return "***"
    return f"{local[:2] if len(local) > 3 else local[:1]}***@{domain}"


def _failure_class(reason: str | None) -> str | None:
    # describe_failure already keeps server text out ("SMTP 550", "ConnectionRefusedError"); anything
    # else that ever lands here (an address, a quoted reply) is not shown.
    cls = (reason or "").removeprefix("failed:").strip()
    if not cls:
        return None
    return cls if _FAILURE_CLASS.match(cls) and "@" not in cls else "error"


def _link_status(status: str) -> str:
    return {"sending": "queued"}.get(status, status)


def _delivery_out(session: Session, d: SecureDelivery, links: list[SecureNotice]) -> schemas.DeliveryOut:
    rt = runtime_of(session)
    # Resending supersedes every earlier link notice, so the current one is the one left.
    latest = next((n for n in links if n.status != "superseded"), None)
    status = _link_status(latest.status) if latest is not None else "queued"
    resends = max(0, len(links) - 1)
    expired = rt.clock.now() >= d.expires_at
    return schemas.DeliveryOut(
        id=d.id, recipient=_mask(rt.keyring.open_secret(ADDRESS_PURPOSE, d.id, d.address_sealed).decode()),
        link_status=status, link_failure=_failure_class(latest.reason) if status == "failed" and latest else None,
        link_sent_at=latest.sent_at if latest is not None else None, created_at=d.created_at,
        expires_at=d.expires_at, expired=expired, verified_at=d.verified_at, codes_sent=d.codes_sent,
        resends=resends, can_resend=not expired and resends < MAX_RESENDS)


def _links_of(session: Session, delivery_ids: list[str]) -> dict[str, list[SecureNotice]]:
    links: dict[str, list[SecureNotice]] = {i: [] for i in delivery_ids}
    if delivery_ids:
        for n in session.scalars(select(SecureNotice).where(SecureNotice.delivery_id.in_(delivery_ids),
                                                            SecureNotice.kind == "link")
                                 .order_by(SecureNotice.created_at, SecureNotice.id)):
            links[n.delivery_id].append(n)
    return links


def external_deliveries(session: Session, *, actor: Actor, thread_id: str) -> list[schemas.DeliveryOut]:
    """How the thread's external recipients were reached, for staff who may read the thread; a masked
    address only, and the failure's class, never a mail server's words."""
    thread = policy.thread_for_read(session, actor, thread_id)
    if actor.is_patient or not actor.sees_content:
        raise NotFound()
    rows = list(session.scalars(select(SecureDelivery).where(SecureDelivery.thread_id == thread.id)
                                .order_by(SecureDelivery.created_at, SecureDelivery.id)))
    links = _links_of(session, [d.id for d in rows])
    return [_delivery_out(session, d, links[d.id]) for d in rows]


def resend_link(session: Session, *, actor: Actor, thread_id: str, delivery_id: str) -> schemas.DeliveryOut:
    """A new link for the recipient, emailed as the first was; the previous link stops working at once
    (its hash is replaced), and with it any code or access session begun through it."""
    thread = policy.thread_for_write(session, actor, thread_id)
    if actor.is_patient:
        raise NotFound()
    d = session.scalar(select(SecureDelivery).where(SecureDelivery.id == delivery_id,
                                                    SecureDelivery.thread_id == thread.id))
    if d is None:
        raise NotFound()
    now = runtime_of(session).clock.now()
    if now >= d.expires_at:
        raise DeliveryExpired()
    links = _links_of(session, [d.id])[d.id]
    if len(links) - 1 >= MAX_RESENDS:
        raise TooManyResends()
    for n in links:
        if n.status in ("queued", "sending"):
            # Its link is about to stop working: never send it (a worker mid-send may still deliver it).
            n.secret_sealed = None
        n.status = "superseded"
    for n in session.scalars(select(SecureNotice).where(SecureNotice.delivery_id == d.id, SecureNotice.kind == "code",
                                                        SecureNotice.status == "queued")):
        n.status, n.secret_sealed = "superseded", None  # a code of the old link, voided below
    link = _new_secret()
    d.link_hash = _sha256(link)
    d.code_mac, d.code_expires_at, d.code_failures = None, None, 0
    d.access_hash, d.access_expires_at = None, None
    d.codes_sent, d.last_code_at = 0, None  # the code budget is per link
    _queue_notice(session, d.id, "link", link)
    record(session, action="gateway.delivery.resend", actor=actor, subject_type="secure_delivery", subject_id=d.id,
           thread_id=thread.id, resends=len(links))
    return _delivery_out(session, d, _links_of(session, [d.id])[d.id])


def delivery_for_thread(session: Session, *, thread_id: str) -> SecureDelivery | None:
    """For tests and admin tools: the external delivery of a thread."""
    return session.scalar(select(SecureDelivery).where(SecureDelivery.thread_id == thread_id))
