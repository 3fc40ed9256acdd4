"""STARTTLS on the gateway with a certificate made in the test: nothing, AUTH least of all, before TLS."""

from __future__ import annotations

import smtplib
import ssl

import pytest
from fastapi.testclient import TestClient
from tests.clinic import Clinic
from tests.factories import Api
from tests.gateway.conftest import Cert, Mailer, app_password, mail, thread_count

from lockbox.config import Settings
from lockbox.db import Database


@pytest.fixture
def settings(settings: Settings, cert: Cert) -> Settings:
    return settings.model_copy(update={"smtp_gateway_tls_cert": cert.cert, "smtp_gateway_tls_key": cert.key})


def test_starttls_is_required_and_then_works(client: TestClient, clinic: Clinic, db: Database, cert: Cert,
                                             gateway_port: int) -> None:
    password = app_password(client, clinic.doctor)
    with smtplib.SMTP("127.0.0.1", gateway_port, timeout=10) as smtp:
        smtp.ehlo()
        assert smtp.has_extn("starttls") and not smtp.has_extn("auth")  # no AUTH offered in clear text
        with pytest.raises(smtplib.SMTPNotSupportedError):
            smtp.login("dr.house", password)
        code, text = smtp.docmd("AUTH", "PLAIN")
        assert code == 530 and b"STARTTLS" in text
        with pytest.raises(smtplib.SMTPSenderRefused):
            smtp.sendmail("house@riverside.example", ["friend@partner.example"], b"Subject: [secure] x\r\n\r\ny\r\n")
    # A client that does not trust the certificate does not go on.
    with smtplib.SMTP("127.0.0.1", gateway_port, timeout=10) as smtp, pytest.raises(ssl.SSLCertVerificationError):
        smtp.starttls(context=ssl.create_default_context())
    Mailer(gateway_port, "dr.house", password, context=cert.client_context()).send(
        mail("[secure] over TLS", "encrypted in transit"), to=["friend@partner.example"])
    assert thread_count(db) == 1
    [t] = Api(client, clinic.doctor).get("/threads").json()
    assert t["subject"] == "over TLS"
