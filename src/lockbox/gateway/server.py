"""The SMTP listener (aiosmtpd) inside ``lockbox serve``'s event loop: AUTH with app passwords or an
allowed relay, STARTTLS, a size limit, and the decision per mail (secure it, relay it, or refuse it).

Decisions, written down (docs/gateway.md):
- ``always`` mode: every mail a staff member sends through the gateway is secured; the keyword is
  only stripped. ``adaptive`` mode: the keyword, or content the PHI scanner rates high-risk, secures it.
- A mail that is not secured (adaptive, low risk) is relayed through the configured upstream
  ``smtp_host`` while the sender waits (250 only once upstream accepted it; 451 if it is down); without
  an upstream it is refused with 550, so nothing leaves unsecured by accident.
- Database work is awaited on the Database's writer/readers, MIME parsing and scanning run in a thread:
  the event loop that also serves HTTP is never blocked.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import smtplib
import socket
import ssl
from base64 import b64decode
from typing import Any

from aiosmtpd.smtp import MISSING, SMTP, AuthResult, Envelope
from aiosmtpd.smtp import Session as SmtpSession

from lockbox.config import Settings
from lockbox.db import Database
from lockbox.gateway import mime, service
from lockbox.gateway.exceptions import Bounce

log = logging.getLogger(__name__)

MAX_RECIPIENTS = 20
_AUTH_FAILED = "535 5.7.8 Authentication credentials invalid"


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    if settings.smtp_gateway_tls_cert is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(settings.smtp_gateway_tls_cert),
                        str(settings.smtp_gateway_tls_key) if settings.smtp_gateway_tls_key else None)
    return ctx


class Gateway:
    """The aiosmtpd handler: one per listener, shared by its connections."""

    def __init__(self, db: Database, settings: Settings) -> None:
        self.db = db
        self.settings = settings

    # -- who may send ------------------------------------------------------------------------------

    async def authenticate(self, server: SMTP, login: bytes, password: bytes) -> AuthResult:
        peer = server.session.peer[0] if server.session and server.session.peer else "unknown"
        try:
            username, secret = login.decode(), password.decode()
        except UnicodeDecodeError:
            return AuthResult(success=False, handled=False, message=_AUTH_FAILED)
        if not (0 < len(username) <= 64 and 0 < len(secret) <= 200):
            return AuthResult(success=False, handled=False, message=_AUTH_FAILED)
        sender = await self.db.write(service.authenticate, username=username, password=secret,
                                     client_addr=str(peer))
        if sender is None:
            return AuthResult(success=False, handled=False, message=_AUTH_FAILED)
        return AuthResult(success=True, auth_data=sender)

    def _is_relay(self, session: SmtpSession) -> bool:
        relays = self.settings.smtp_gateway_relays
        if not relays or not session.peer:
            return False
        try:
            addr = ipaddress.ip_address(session.peer[0])
            return any(addr in ipaddress.ip_network(r, strict=False) for r in relays)
        except ValueError:
            return False

    async def handle_MAIL(self, server: SMTP, session: SmtpSession, envelope: Envelope, address: str,
                          mail_options: list[str]) -> str:
        sender = session.auth_data if session.authenticated else None
        if sender is None and self._is_relay(session):
            sender = await self.db.read(service.relay_sender, address=address)
            if sender is None:
                return "550 5.7.1 The envelope sender is not a staff member's address on file."
        if not isinstance(sender, service.Sender):
            return "530 5.7.0 Authentication required: sign in with your Lockbox gateway app password."
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        session.lockbox_sender = sender  # type: ignore[attr-defined]
        return "250 2.1.0 OK"

    async def handle_RCPT(self, server: SMTP, session: SmtpSession, envelope: Envelope, address: str,
                          rcpt_options: list[str]) -> str:
        if len(envelope.rcpt_tos) >= MAX_RECIPIENTS:
            return f"452 4.5.3 At most {MAX_RECIPIENTS} recipients per message."
        if "@" not in address or len(address) > 254:
            return "553 5.1.3 That is not an email address."
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 OK"

    async def handle_exception(self, error: Exception) -> str:
        # The type only, in the log and the reply: an exception's text may quote the mail.
        log.error("smtp gateway error: %s", type(error).__name__)
        return "451 4.3.0 The gateway could not take the message just now; nothing was stored. Try again later."

    # -- what happens to a mail ------------------------------------------------------------------------

    async def handle_DATA(self, server: SMTP, session: SmtpSession, envelope: Envelope) -> str:
        sender: service.Sender | None = getattr(session, "lockbox_sender", None)
        if sender is None:  # MAIL refused it already; never reached in practice
            return "530 5.7.0 Authentication required."
        raw = envelope.original_content or b""
        recipients = list(envelope.rcpt_tos)
        try:
            return await self._deliver(sender, envelope.mail_from or "", raw, recipients)
        except Bounce as bounce:
            await self.db.write(service.record_bounce, sender_id=sender.user_id, reason=bounce.reason,
                                recipients=len(recipients))
            return bounce.reply

    async def _deliver(self, sender: service.Sender, mail_from: str, raw: bytes, recipients: list[str]) -> str:
        s = self.settings
        mail = await asyncio.to_thread(mime.parse, raw, max_file_bytes=s.max_attachment_bytes)
        subject, keyword = mime.strip_keyword(mail.subject, s.smtp_gateway_keyword)
        if keyword:
            trigger = "keyword"
        elif s.security_mode != "adaptive":
            trigger = "always"
        elif await self._high_risk(subject, mail.body):
            trigger = "phi"
        else:
            return await self._relay(sender, mail_from, raw, recipients)
        await self.db.write(service.take_in, sender_id=sender.user_id, recipients=recipients, subject=subject,
                            body=mail.body, files=mail.files, trigger=trigger)
        return "250 2.0.0 Taken into the secure message center."

    async def _high_risk(self, subject: str, body: str) -> bool:
        from lockbox.phi import service as phi

        names = await self.db.read(phi.names_on_file)
        assessment = await asyncio.to_thread(phi.scan, f"{subject}\n{body}", names_on_file=names)
        return phi.must_stay_secure(self.settings.security_mode, assessment)

    async def _relay(self, sender: service.Sender, mail_from: str, raw: bytes, recipients: list[str]) -> str:
        s = self.settings
        if not s.smtp_host:
            raise Bounce(f"550 5.7.1 This gateway only sends secure mail: put {s.smtp_gateway_keyword} in the "
                         "subject to send it securely. Nothing was sent.", "not_secure_no_upstream")
        if not await self.db.read(service.relay_allowed, recipients=recipients):
            raise Bounce("550 5.7.1 A recipient is a patient who opted out of email; nothing was sent.", "consent")
        try:
            await asyncio.to_thread(_relay_upstream, s, mail_from, raw, recipients)
        except (OSError, smtplib.SMTPException) as exc:
            log.warning("gateway relay failed: %s", type(exc).__name__)
            return "451 4.4.1 The clinic's mail server did not take the message; try again later."
        await self.db.write(service.record_relay, sender_id=sender.user_id, recipients=len(recipients))
        return "250 2.0.0 Relayed."


def _relay_upstream(s: Settings, mail_from: str, raw: bytes, recipients: list[str]) -> None:
    assert s.smtp_host
    with smtplib.SMTP(s.smtp_host, s.smtp_port, timeout=s.smtp_timeout_s) as smtp:
        smtp.ehlo()
        if s.smtp_starttls:
            ctx = ssl.create_default_context(cafile=str(s.smtp_ca_file) if s.smtp_ca_file else None)
            smtp.starttls(context=ctx)
            smtp.ehlo()
        if s.smtp_user and s.smtp_password:
            smtp.login(s.smtp_user, s.smtp_password)
        smtp.sendmail(mail_from, recipients, raw)


class GatewaySMTP(SMTP):
    """aiosmtpd's SMTP with AUTH PLAIN and LOGIN checked asynchronously: its ``authenticator`` hook is
    synchronous and would block the event loop on the database."""

    def __init__(self, gateway: Gateway, **kwargs: Any) -> None:
        super().__init__(gateway, **kwargs)
        self.gateway = gateway

    async def auth_PLAIN(self, _: Any, args: list[str]) -> AuthResult:
        if len(args) == 1:
            blob = await self.challenge_auth("")
            if blob is MISSING:
                return AuthResult(success=False)
        else:
            try:
                blob = b64decode(args[1].encode(), validate=True)
            except ValueError:
                await self.push("501 5.5.2 Can't decode base64")
                return AuthResult(success=False, handled=True)
        assert isinstance(blob, bytes)
        parts = blob.split(b"\x00")
        if len(parts) != 3:
            await self.push("501 5.5.2 Can't split auth value")
            return AuthResult(success=False, handled=True)
        return await self.gateway.authenticate(self, parts[1], parts[2])

    async def auth_LOGIN(self, _: Any, args: list[str]) -> AuthResult:
        if len(args) == 1:
            login = await self.challenge_auth(self.AuthLoginUsernameChallenge)
            if login is MISSING:
                return AuthResult(success=False)
        else:
            try:
                login = b64decode(args[1].encode(), validate=True)
            except ValueError:
                await self.push("501 5.5.2 Can't decode base64")
                return AuthResult(success=False, handled=True)
        password = await self.challenge_auth(self.AuthLoginPasswordChallenge)
        if password is MISSING:
            return AuthResult(success=False)
        assert isinstance(login, bytes) and isinstance(password, bytes)
        return await self.gateway.authenticate(self, login, password)


async def start(db: Database, settings: Settings) -> asyncio.Server | None:
    """Listen in the running event loop (``lockbox serve``'s), or not at all when the port is 0."""
    if not settings.smtp_gateway_port:
        return None
    # aiosmtpd logs every envelope sender and recipient at INFO (addresses of patients stay out of logs)
    # and a deprecation warning at each AUTH: only its errors are worth keeping.
    logging.getLogger("mail.log").setLevel(logging.ERROR)
    tls = tls_context(settings)
    auth_needs_tls = tls is not None or settings.env == "production"
    if settings.env == "production" and tls is None:
        log.warning("smtp gateway without a TLS certificate: AUTH is refused, only allowed relays can send")
    gateway = Gateway(db, settings)
    loop = asyncio.get_running_loop()

    def factory() -> GatewaySMTP:
        return GatewaySMTP(gateway, hostname=settings.public_url.split("://")[-1].split("/")[0].split(":")[0],
                           ident="Lockbox secure mail gateway", data_size_limit=settings.smtp_gateway_max_bytes,
                           tls_context=tls, require_starttls=tls is not None, auth_require_tls=auth_needs_tls,
                           loop=loop)

    try:
        # Several `lockbox serve` processes on one host share the port (the kernel spreads connections).
        server = await loop.create_server(factory, host=settings.smtp_gateway_host, port=settings.smtp_gateway_port,
                                          reuse_port=hasattr(socket, "SO_REUSEPORT"))
    except OSError as exc:
        log.error("smtp gateway cannot listen on %s:%d (%s); set LOCKBOX_SMTP_GATEWAY_PORT=0 to turn it off",
                  settings.smtp_gateway_host, settings.smtp_gateway_port, type(exc).__name__)
        raise
    log.info("smtp gateway listening on %s:%d", settings.smtp_gateway_host, settings.smtp_gateway_port)
    return server


async def stop(server: asyncio.Server | None) -> None:
    if server is None:
        return
    server.close()
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(server.wait_closed(), timeout=5)
