"""Notification email over STARTTLS to a mail server with a private CA's certificate (smtp_ca_file),
with AUTH only inside TLS, and no delivery to a server whose certificate nobody vouches for."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from fastapi.testclient import TestClient
from sqlalchemy import select

from lockbox.db import Database
from lockbox.jobs.worker import Worker
from lockbox.notify.models import Notification
from tests.clinic import Clinic
from tests.gateway.tls import Cert, make_cert
from tests.notify.conftest import Sink, drain, free_port, set_contact
from tests.notify.test_email import assert_phi_free, doctor_writes


class _Auth:
    def __init__(self) -> None:
        self.logins: list[tuple[str, bool]] = []

    def __call__(self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
        ok = isinstance(auth_data, LoginPassword) and auth_data.password == b"mail-pass"
        if ok:
            self.logins.append((auth_data.login.decode(), server._tls_protocol is not None))
        return AuthResult(success=ok)


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> Cert:
    return make_cert(tmp_path_factory.mktemp("notify-tls"))


@pytest.fixture
def tls_sink(cert: Cert) -> Iterator[tuple[Sink, _Auth]]:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(cert.cert), str(cert.key))
    sink, auth = Sink(port=free_port()), _Auth()
    controller = Controller(sink, hostname="127.0.0.1", port=sink.port, tls_context=ctx, require_starttls=True,
                            authenticator=auth, auth_required=True, auth_require_tls=True)
    controller.start()
    yield sink, auth
    controller.stop()


def test_starttls_with_a_private_ca_delivers(client: TestClient, clinic: Clinic, db: Database, worker: Worker,
                                             cert: Cert, tls_sink: tuple[Sink, _Auth]) -> None:
    sink, auth = tls_sink
    s = db.runtime.settings
    s.smtp_port, s.smtp_starttls, s.smtp_user, s.smtp_password = sink.port, True, "lockbox", "mail-pass"
    s.smtp_ca_file = cert.cert
    set_contact(db, clinic.patient, email="pat@mail.example")
    doctor_writes(client, clinic)
    drain(worker)
    [(rcpt, mail)] = sink.mails
    assert rcpt == ["pat@mail.example"] and auth.logins == [("lockbox", True)]  # signed in inside TLS
    assert_phi_free(mail.as_string())
    assert db.read_sync(lambda x: x.scalar(select(Notification.status))) == "sent"


def test_an_untrusted_certificate_is_not_sent_to(client: TestClient, clinic: Clinic, db: Database,
                                                 worker: Worker, tls_sink: tuple[Sink, _Auth]) -> None:
    sink, auth = tls_sink
    s = db.runtime.settings
    s.smtp_port, s.smtp_starttls, s.smtp_user, s.smtp_password = sink.port, True, "lockbox", "mail-pass"
    set_contact(db, clinic.patient, email="pat@mail.example")
    doctor_writes(client, clinic)
    drain(worker)
    assert sink.mails == [] and auth.logins == []  # the password never went to the unverified server
    [n] = db.read_sync(lambda x: list(x.scalars(select(Notification))))
    assert (n.status, n.reason) == ("queued", "failed: SSLCertVerificationError")
