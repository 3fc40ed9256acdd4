"""``lockbox serve`` itself listens for SMTP: a real server process, a real mail client, the thread read
back over HTTP."""

from __future__ import annotations

import smtplib
from pathlib import Path

import httpx
import pytest
from tests.factories import make_team, make_user
from tests.gateway.conftest import mail
from tests.serverproc import ServerProcess, free_port, seeded_database

from lockbox.access.actor import Actor
from lockbox.config import Settings
from lockbox.gateway import service
from lockbox.identity.roles import Role


@pytest.mark.slow
def test_lockbox_serve_takes_secure_mail(tmp_path: Path) -> None:
    # One backend is enough here: storage is exercised on both by the other gateway tests.
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o700)
    settings = Settings(env="test", data_dir=data_dir, smtp_gateway_port=0)
    with seeded_database(settings) as db:
        make_team(db, "team-a")
        doctor = make_user(db, "physician", username="dr.house", care_teams=["team-a"])
        actor = Actor(user_id=doctor.id, username=doctor.username, role=Role.physician, display_name="Dr House")
        password = db.write_sync(service.issue_password, actor=actor, label="laptop").password
    smtp_port = free_port()
    with ServerProcess.for_settings(settings, env={"LOCKBOX_SMTP_GATEWAY_PORT": str(smtp_port)}) as server:
        with smtplib.SMTP("127.0.0.1", smtp_port, timeout=10) as smtp:
            smtp.login("dr.house", password)
            smtp.send_message(mail("[secure] From the server", "Sent through lockbox serve."),
                              to_addrs=["friend@partner.example"])
        r = httpx.get(server.base_url + "/api/v1/threads", headers={"Authorization": f"Bearer {doctor.token}"})
        assert r.status_code == 200
        assert [t["subject"] for t in r.json()] == ["From the server"]
