"""In production without a certificate the gateway never takes a password in clear text."""

from __future__ import annotations

import smtplib

import pytest
from fastapi.testclient import TestClient
from tests.clinic import Clinic
from tests.gateway.conftest import app_password, thread_count

from lockbox.config import Settings
from lockbox.db import Database


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"env": "production", "writer_process": False})


def test_production_refuses_auth_without_tls(client: TestClient, clinic: Clinic, db: Database,
                                             gateway_port: int) -> None:
    password = app_password(client, clinic.doctor)
    with smtplib.SMTP("127.0.0.1", gateway_port, timeout=10) as smtp:
        smtp.ehlo()
        assert not smtp.has_extn("auth")
        code, _ = smtp.docmd("AUTH", "PLAIN " + "AGRyLmhvdXNlAA==")
        assert code == 538  # encryption required
        with pytest.raises(smtplib.SMTPNotSupportedError):
            smtp.login("dr.house", password)
    assert thread_count(db) == 0
