"""Readiness and Prometheus metrics: route templates only in labels, access from loopback or with a token."""

from __future__ import annotations

import threading

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text

from lockbox.config import Settings
from lockbox.db import Database
from lockbox.jobs.service import enqueue
from lockbox.routing import classify
from lockbox.system.api import _head_revision
from tests.clinic import Clinic
from tests.factories import PASSWORD


def _loopback(app, **headers: str) -> TestClient:  # type: ignore[no-untyped-def]
    return TestClient(app, base_url="https://testserver", client=("127.0.0.1", 40000), headers=headers)


def _samples(body: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body) for s in family.samples}


def test_readyz_checks_database_migrations_keys_and_triage(client: TestClient, db: Database) -> None:
    classify.warm_up()  # the app's lifespan does it in the background; the test must not race it
    r = client.get("/api/v1/readyz")
    assert r.status_code == 200, r.text
    assert r.json() == {"ok": True, "checks": {"database": True, "migrations": True, "keys": True, "triage": True}}
    # A database one migration behind the code is not ready for traffic.
    current = _head_revision()
    db.write_sync(lambda s: s.execute(text("UPDATE alembic_version SET version_num = 'older'")))
    try:
        r = client.get("/api/v1/readyz")
        assert r.status_code == 503
        assert r.json()["checks"] == {"database": True, "migrations": False, "keys": True, "triage": True}
    finally:
        db.write_sync(lambda s: s.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": current}))


def test_readyz_is_not_ready_before_the_triage_warm_up(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    # A server still building its triage engine would hold a patient's first message for seconds.
    monkeypatch.setattr(classify, "_warm", threading.Event())
    r = client.get("/api/v1/readyz")
    assert r.status_code == 503 and r.json()["checks"]["triage"] is False
    classify.warm_up()
    assert client.get("/api/v1/readyz").status_code == 200


def test_readyz_fails_when_the_key_file_is_gone(client: TestClient, settings: Settings) -> None:
    classify.warm_up()
    key_file = settings.resolved_key_file
    moved = key_file.with_name("moved.key")
    key_file.rename(moved)
    try:
        r = client.get("/api/v1/readyz")
        assert r.status_code == 503 and r.json()["checks"]["keys"] is False
    finally:
        moved.rename(key_file)
    assert client.get("/api/v1/readyz").status_code == 200


def test_metrics_refused_to_remote_callers_without_the_token(app, client: TestClient) -> None:  # type: ignore[no-untyped-def]
    assert client.get("/metrics").status_code == 404  # TestClient's peer is "testclient", not loopback
    with _loopback(app, **{"X-Forwarded-For": "203.0.113.7"}) as proxied:
        assert proxied.get("/metrics").status_code == 404
    assert "/metrics" not in client.get("/openapi.json").json()["paths"]


def test_metrics_with_a_token(settings: Settings, clock) -> None:  # type: ignore[no-untyped-def]
    from lockbox.app import create_app

    app = create_app(settings.model_copy(update={"metrics_token": "s3cret-scrape-token"}), clock=clock, migrate=False)
    with TestClient(app, base_url="https://testserver") as c:
        assert c.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 404
        r = c.get("/metrics", headers={"Authorization": "Bearer s3cret-scrape-token"})
        assert r.status_code == 200 and "lockbox_http_requests_total" in r.text


def test_metrics_count_routes_sends_queue_and_failed_logins(app, client: TestClient, clinic: Clinic,
                                                            db: Database) -> None:  # type: ignore[no-untyped-def]
    api = clinic.api(client, clinic.patient)
    with _loopback(app) as local:
        local.get("/metrics")  # the first scrape starts the audit-log counters
        created = api.post("/threads", json={"subject": "Refill", "body": "Please refill my lisinopril."})
        assert created.status_code == 201, created.text
        thread_id = created.json()["id"]
        assert api.get(f"/threads/{thread_id}").status_code == 200
        assert api.get("/threads/0123456789abcdef0123456789abcdef").status_code == 404
        r = client.post("/api/v1/auth/login", json={"username": clinic.patient.username, "password": PASSWORD + "x",
                                                    "totp": "000000"})
        assert r.status_code in (401, 429)
        db.write_sync(enqueue, kind="test.kind", payload={})
        body = local.get("/metrics").text
    samples = _samples(body)
    assert samples[("lockbox_http_requests_total", (("method", "POST"), ("route", "/api/v1/threads"),
                                                    ("status", "201")))] == 1
    assert samples[("lockbox_http_requests_total", (("method", "GET"), ("route", "/api/v1/threads/{thread_id}"),
                                                    ("status", "200")))] == 1
    assert samples[("lockbox_http_requests_total", (("method", "GET"), ("route", "/api/v1/threads/{thread_id}"),
                                                    ("status", "404")))] == 1
    assert samples[("lockbox_send_latency_seconds_count", (("route", "/api/v1/threads"),))] == 1
    assert samples[("lockbox_job_queue_depth", (("kind", "test.kind"),))] == 1
    assert samples[("lockbox_failed_logins_total", ())] == 1
    assert ("lockbox_sla_breaches_total", ()) in samples
    # Labels name templates, never a filled-in path, an id or a username.
    assert thread_id not in body and clinic.patient.username not in body and "0123456789abcdef" not in body
