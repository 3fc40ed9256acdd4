"""The web pages over plain HTTP: sign-in, CSRF, the page policy, access by URL, compliance and analytics."""

from __future__ import annotations

import csv
import io
import re
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pyotp
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from lockbox.access.actor import Actor
from lockbox.audit.models import AuditRow
from lockbox.clock import FrozenClock
from lockbox.config import Settings
from lockbox.db import Database
from lockbox.http import SESSION_COOKIE
from lockbox.identity.roles import Role
from lockbox.messaging import schemas
from lockbox.messaging.models import Attachment, Thread
from lockbox.web.render import TEMPLATES_DIR, render_text
from lockbox.web.security import PAGE_CSP, PRESESSION_COOKIE
from lockbox.web.views import ThreadPage
from tests.clinic import Clinic
from tests.factories import PASSWORD, Api, Person, make_user
from tests.identity.helpers import STRONG_PASSWORD, awaiting_enrolment
from tests.web.helpers import csrf_of, fresh_session, inline_code, use_session, visible_text

# The smallest valid PNG: the attachment check reads the type from the bytes.
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c4890000000d4944415478da63f8cfc0f0"
    "1f0005000201a5f1b3e90000000049454e44ae426082"
)


def _sign_in_form(client: TestClient, username: str, totp: str, password: str = PASSWORD):  # type: ignore[no-untyped-def]
    page = client.get("/login")
    return client.post("/login", data={"csrf_token": csrf_of(page.text), "username": username,
                                       "password": password, "totp": totp}, follow_redirects=False)


def _error(html: str) -> str:
    match = re.search(r'id="form-error">([^<]*)<', html)
    assert match, "no error on the page"
    return match.group(1)


# -- sign-in and enrolment -------------------------------------------------------------------------


def test_sign_in_sets_the_api_session_cookie_and_lands_on_the_portal(client: TestClient, db: Database,
                                                                      clock: FrozenClock) -> None:
    person = make_user(db, "patient", sign_in=False)
    r = _sign_in_form(client, person.username, person.totp(clock.now()))
    assert r.status_code == 303 and r.headers["location"] == "/"
    cookie = next(h for h in r.headers.get_list("set-cookie") if h.startswith(SESSION_COOKIE + "="))
    assert "HttpOnly" in cookie and "Secure" in cookie and "SameSite=strict" in cookie
    home = client.get("/", follow_redirects=False)
    assert home.headers["location"] == "/portal"
    portal = client.get("/portal")
    assert portal.status_code == 200
    assert "Secure messaging is not for emergencies: call 911" in portal.text
    # The same session serves the API.
    assert client.get("/api/v1/me").json()["username"] == person.username
    assert client.get("/login", follow_redirects=False).headers["location"] == "/portal"


def test_bad_credentials_get_one_generic_answer(client: TestClient, db: Database, clock: FrozenClock) -> None:
    person = make_user(db, "patient", sign_in=False)
    wrong_password = _sign_in_form(client, person.username, person.totp(clock.now()), password="not-it-at-all")
    unknown = _sign_in_form(client, "nobody.here", "123456")
    assert wrong_password.status_code == unknown.status_code == 401
    assert _error(wrong_password.text) == _error(unknown.text)
    assert "not correct" in _error(unknown.text)
    assert SESSION_COOKIE not in client.cookies


def test_lockout_says_so_and_when_to_try_again(client: TestClient, db: Database) -> None:
    person = make_user(db, "patient", sign_in=False)
    for _ in range(5):
        assert _sign_in_form(client, person.username, "000000", password="wrong-password").status_code == 401
    locked = _sign_in_form(client, person.username, "000000")
    assert locked.status_code == 429
    assert locked.headers["retry-after"] == "30"
    assert "Too many attempts" in _error(locked.text) and "1 minute" in _error(locked.text)


def test_enrolment_shows_the_secret_as_qr_and_text_once(client: TestClient, db: Database,
                                                         clock: FrozenClock) -> None:
    person, code = awaiting_enrolment(db)
    form = client.get("/enrol")
    r = client.post("/enrol", data={"csrf_token": csrf_of(form.text), "username": person.username,
                                    "enrolment_code": code, "password": STRONG_PASSWORD,
                                    "password_again": STRONG_PASSWORD})
    assert r.status_code == 200
    assert re.search(r"<svg[^>]*class=\"segno\"", r.text)
    secret = re.search(r'id="totp-secret"[^>]*>([A-Z2-7 ]+)<', r.text).group(1).replace(" ", "")  # type: ignore[union-attr]
    assert not inline_code(r.text)
    signed_in = _sign_in_form(client, person.username, pyotp.TOTP(secret).at(clock.now()), password=STRONG_PASSWORD)
    assert signed_in.status_code == 303
    again = client.post("/enrol", data={"csrf_token": csrf_of(client.get("/enrol").text), "username": person.username,
                                        "enrolment_code": code, "password": STRONG_PASSWORD,
                                        "password_again": STRONG_PASSWORD})
    assert again.status_code == 401 and "not correct" in _error(again.text)


def test_enrolment_explains_a_weak_or_mistyped_password(client: TestClient, db: Database) -> None:
    person, code = awaiting_enrolment(db)
    token = csrf_of(client.get("/enrol").text)
    mismatch = client.post("/enrol", data={"csrf_token": token, "username": person.username, "enrolment_code": code,
                                           "password": STRONG_PASSWORD, "password_again": STRONG_PASSWORD + "x"})
    assert mismatch.status_code == 400 and "not the same" in _error(mismatch.text)
    weak = client.post("/enrol", data={"csrf_token": token, "username": person.username, "enrolment_code": code,
                                       "password": "password1", "password_again": "password1"})
    assert weak.status_code == 400 and "stronger password" in _error(weak.text)


def test_sign_in_redirects_only_to_this_site(client: TestClient, db: Database, clock: FrozenClock) -> None:
    person = make_user(db, "physician", sign_in=False)
    page = client.get("/login?next=//evil.example/x")
    assert 'name="next" value=""' in page.text
    r = client.post("/login", data={"csrf_token": csrf_of(page.text), "username": person.username,
                                    "password": PASSWORD, "totp": person.totp(clock.now()),
                                    "next": "https://evil.example/"}, follow_redirects=False)
    assert r.headers["location"] == "/"


# -- CSRF ------------------------------------------------------------------------------------------


def test_a_form_post_without_its_token_is_refused_and_changes_nothing(client: TestClient, clinic: Clinic,
                                                                       db: Database) -> None:
    use_session(client, clinic.patient)
    form = {"subject": "Rash", "body": "It spreads"}
    missing = client.post("/portal/new", data=form)
    forged = client.post("/portal/new", data={**form, "csrf_token": "1.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"})
    assert missing.status_code == forged.status_code == 403
    assert "did not come from this site" in missing.text
    assert db.read_sync(lambda s: s.scalar(select(func.count()).select_from(Thread))) == 0
    # Another session's token is no good either.
    other = csrf_of(TestClient(client.app, base_url="https://testserver",  # type: ignore[arg-type]
                               cookies={SESSION_COOKIE: clinic.other_patient.token or ""}).get("/portal/new").text)
    assert client.post("/portal/new", data={**form, "csrf_token": other}).status_code == 403
    ok = client.post("/portal/new", data={**form, "csrf_token": csrf_of(client.get("/portal/new").text)},
                     follow_redirects=False)
    assert ok.status_code == 303 and ok.headers["location"].startswith("/t/")


def test_logout_and_keepalive_need_the_token_too(client: TestClient, clinic: Clinic) -> None:
    use_session(client, clinic.nurse)
    assert client.post("/logout").status_code == 403
    assert client.post("/session/keepalive").status_code == 403
    assert client.get("/api/v1/me").status_code == 200  # still signed in
    token = csrf_of(client.get("/inbox").text)
    assert client.post("/session/keepalive", headers={"X-CSRF-Token": token}).status_code == 200
    out = client.post("/logout", data={"csrf_token": token}, follow_redirects=False)
    assert out.status_code == 303 and out.headers["location"] == "/login?ended=logout"
    assert out.headers["clear-site-data"] == '"cache", "storage"'
    assert client.get("/inbox", follow_redirects=False).headers["location"].startswith("/login")


def test_sign_in_form_is_bound_to_the_browser_that_loaded_it(client: TestClient, db: Database,
                                                              clock: FrozenClock) -> None:
    person = make_user(db, "patient", sign_in=False)
    token = csrf_of(client.get("/login").text)
    client.cookies.delete(PRESESSION_COOKIE)
    r = client.post("/login", data={"csrf_token": token, "username": person.username, "password": PASSWORD,
                                    "totp": person.totp(clock.now())}, follow_redirects=False)
    assert r.status_code == 400 and "expired" in _error(r.text)
    assert SESSION_COOKIE not in client.cookies


# -- the page policy -------------------------------------------------------------------------------


def test_templates_hold_no_inline_script_or_style() -> None:
    for path in sorted(Path(TEMPLATES_DIR).glob("*.html")):
        assert not inline_code(path.read_text()), path.name
    js = (Path(TEMPLATES_DIR).parent / "static" / "app.js").read_text()
    assert "eval(" not in js and "new Function" not in js


def test_every_page_carries_the_strict_csp(client: TestClient, clinic: Clinic) -> None:
    tid = Api(client, clinic.patient).post("/threads", json={"subject": "Q", "body": "hello"}).json()["id"]
    pages = [(clinic.patient, ["/portal", "/portal/new", f"/t/{tid}"]),
             (clinic.nurse, ["/inbox", "/compose", f"/t/{tid}", "/analytics"]),
             (clinic.compliance, ["/compliance", "/compliance/verify", "/analytics"])]
    for person, paths in pages:
        use_session(client, person)
        for path in paths:
            r = client.get(path)
            assert r.status_code == 200, (person.username, path)
            assert r.headers["content-security-policy"] == PAGE_CSP
            assert r.headers["x-frame-options"] == "DENY" and r.headers["cache-control"] == "no-store"
            assert not inline_code(r.text), path
    client.cookies.clear()
    assert client.get("/login").headers["content-security-policy"] == PAGE_CSP


def test_staff_who_may_send_secure_mail_find_it_in_the_navigation(client: TestClient, clinic: Clinic,
                                                                   settings: Settings) -> None:
    def nav_links(who: Person) -> list[str]:
        use_session(client, who)
        page = client.get("/")
        assert page.status_code == 200, who.username
        match = re.search(r'<nav class="mainnav".*?</nav>', page.text, re.S)
        assert match, who.username
        return re.findall(r'href="([^"]+)"', match.group(0))

    settings.smtp_gateway_port = 2525  # on (only `lockbox serve` listens; the pages read the setting)
    staff = (clinic.doctor, clinic.nurse, clinic.biller, clinic.scheduler)
    for who in staff:
        assert "/mail-client" in nav_links(who), who.username
        assert client.get("/mail-client").status_code == 200
    for who in (clinic.patient, clinic.compliance, clinic.admin):  # no app passwords for them
        assert "/mail-client" not in nav_links(who), who.username
    settings.smtp_gateway_port = 0  # gateway off: an app password would open nothing
    assert "/mail-client" not in nav_links(clinic.nurse)


def test_signed_out_pages_go_to_sign_in_and_background_calls_get_401(client: TestClient) -> None:
    r = client.get("/inbox", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/login?next=/inbox"
    assert client.get("/fragments/inbox").status_code == 401
    assert client.get("/session/status").status_code == 401


# -- access by URL -------------------------------------------------------------------------------


def test_a_patient_cannot_open_another_patients_thread_by_its_url(client: TestClient, clinic: Clinic) -> None:
    tid = Api(client, clinic.patient).post("/threads", json={"subject": "Private matter",
                                                            "body": "Only for my team"}).json()["id"]
    use_session(client, clinic.other_patient)
    for path in (f"/t/{tid}", f"/fragments/t/{tid}"):
        r = client.get(path)
        assert r.status_code == 404
        assert "Private matter" not in r.text and "Only for my team" not in r.text
    token = csrf_of(client.get("/portal").text)
    assert client.post(f"/t/{tid}/reply", data={"csrf_token": token, "body": "sneaky"}).status_code == 404
    assert client.get("/t/not-a-thread!").status_code == 404


def test_the_auto_reply_is_shown_as_the_clinics() -> None:
    now = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
    me = schemas.Person(id="p1", username="pat", display_name="Pat", role="patient")
    system = schemas.Person(id="clinic", username="clinic", display_name="Riverside", role="system")
    detail = schemas.ThreadDetail(
        id="t1", kind="patient", subject="Chest pain", patient=me, pool="nurse-triage", assignee=None,
        status="open", urgent=True, emergency=True, created_at=now, last_message_at=now, message_count=2, unread=0,
        participants=[me], messages=[
            schemas.MessageOut(id="m1", seq=1, sender=me, created_at=now, kind="message", body="I cant breathe"),
            schemas.MessageOut(id="m2", seq=2, sender=system, created_at=now, kind="auto_reply",
                               body="Call 911 now."),
        ])
    actor = Actor(user_id=me.id, username=me.username, role=Role.patient, display_name=me.display_name)
    html = render_text("_thread_body.html", {"tp": ThreadPage(detail, None, {}), "actor": actor, "csrf": "x"})
    text = visible_text(html)
    assert "Automatic reply from Riverside" in text and "Call 911 now." in text
    assert 'class="msg msg-auto"' in html and "Emergency" in text


# -- messaging through forms -----------------------------------------------------------------------


def test_patient_sends_with_an_attachment_and_a_bad_file_keeps_the_draft(client: TestClient, clinic: Clinic,
                                                                         db: Database) -> None:
    use_session(client, clinic.patient)
    token = csrf_of(client.get("/portal/new").text)
    bad = client.post("/portal/new", data={"csrf_token": token, "subject": "Photo", "body": "See attached"},
                      files={"file": ("notes.txt", b"just text", "text/plain")})
    assert bad.status_code == 415 and "PNG" in _error(bad.text)
    assert "See attached" in bad.text  # the draft survives
    assert db.read_sync(lambda s: s.scalar(select(func.count()).select_from(Thread))) == 0
    ok = client.post("/portal/new", data={"csrf_token": token, "subject": "Photo", "body": "See attached"},
                     files={"file": ("rash.png", PNG, "image/png")}, follow_redirects=False)
    assert ok.status_code == 303
    page = client.get(ok.headers["location"])
    assert "See attached" in page.text and "rash.png" in page.text and "<img src=\"/api/v1/threads/" in page.text
    assert db.read_sync(lambda s: s.scalar(select(func.count()).select_from(Attachment))) == 1


def test_opening_a_thread_sends_a_read_receipt_the_sender_sees(client: TestClient, clinic: Clinic) -> None:
    tid = Api(client, clinic.patient).post("/threads", json={"subject": "Refill", "body": "Please"}).json()["id"]
    use_session(client, clinic.nurse)
    nurse_page = client.get(f"/t/{tid}")
    assert "Refill" in nurse_page.text
    client.post(f"/t/{tid}/reply", data={"csrf_token": csrf_of(nurse_page.text), "body": "Sent to pharmacy"})
    use_session(client, clinic.patient)
    text = visible_text(client.get(f"/t/{tid}").text)
    assert "Sent to pharmacy" in text
    assert f"Read by {clinic.nurse.username.title()}" in text


def test_staff_see_the_misdelivery_check_before_a_first_message(client: TestClient, clinic: Clinic,
                                                                db: Database) -> None:
    use_session(client, clinic.doctor)
    token = csrf_of(client.get("/compose").text)
    form = {"csrf_token": token, "patient": "pat.jones", "to": "", "subject": "Your results",
            "body": "All normal."}
    check = client.post("/compose", data=form)
    assert check.status_code == 409
    text = visible_text(check.text)
    assert "Pat.Jones" in text and "100234" in text and re.search(r"1980-01-\d\d", text)
    assert db.read_sync(lambda s: s.scalar(select(func.count()).select_from(Thread))) == 0
    back = client.post("/compose", data={**form, "confirm_recipients": "1", "edit": "1"})
    assert back.status_code == 200 and 'action="/compose"' in back.text and "All normal." in back.text
    assert db.read_sync(lambda s: s.scalar(select(func.count()).select_from(Thread))) == 0
    sent = client.post("/compose", data={**form, "confirm_recipients": "1"}, follow_redirects=False)
    assert sent.status_code == 303
    # The second message to the same patient goes straight through.
    again = client.post("/compose", data={**form, "subject": "Follow-up"}, follow_redirects=False)
    assert again.status_code == 303


def test_unknown_recipients_are_named_and_the_draft_kept(client: TestClient, clinic: Clinic) -> None:
    use_session(client, clinic.doctor)
    token = csrf_of(client.get("/compose").text)
    r = client.post("/compose", data={"csrf_token": token, "to": "no.such.person", "subject": "Hi",
                                      "body": "Draft text"})
    assert r.status_code == 400 and "no.such.person" in _error(r.text) and "Draft text" in r.text


# -- compliance ------------------------------------------------------------------------------------


def test_compliance_sees_the_audit_trail_and_alerts_but_no_content(client: TestClient, clinic: Clinic,
                                                                   db: Database) -> None:
    Api(client, clinic.patient).post("/threads", json={"subject": "Embarrassing subject",
                                                       "body": "Very private body"})
    for _ in range(5):  # a failed-login burst raises an alert
        client.post("/api/v1/auth/login", json={"username": clinic.other_patient.username, "password": "nope",
                                                "totp": "000000"})
    use_session(client, clinic.compliance)
    page = client.get("/compliance")
    assert page.status_code == 200
    text = visible_text(page.text)
    assert "messaging.message.send" in text and "identity.login.failure" in text
    assert "failed login burst" in text
    assert "Embarrassing" not in page.text and "Very private" not in page.text
    only_sends = visible_text(client.get("/compliance", params={"action": "messaging.message",
                                                                "user": "pat.jones"}).text)
    assert "messaging.message.send" in only_sends and "identity.login.failure" not in only_sends
    assert "No user is named" in client.get("/compliance", params={"user": "ghost"}).text

    ack = client.post(re.search(r'action="(/compliance/alerts/[^"]+/acknowledge)"', page.text).group(1),  # type: ignore[union-attr]
                      data={"csrf_token": csrf_of(page.text)}, follow_redirects=False)
    assert ack.status_code == 303
    assert "Acknowledged" in visible_text(client.get("/compliance").text)
    verify = client.get("/compliance/verify")
    assert 'id="verify-status">Intact' in verify.text


def test_compliance_pages_are_not_for_clinicians_or_patients(client: TestClient, clinic: Clinic) -> None:
    for person in (clinic.nurse, clinic.patient):
        use_session(client, person)
        assert client.get("/compliance").status_code == 404
    use_session(client, clinic.compliance)
    assert client.get("/inbox").status_code == 404  # no content roles have no inbox


# -- analytics -------------------------------------------------------------------------------------


def test_analytics_charts_and_csv_from_metadata(client: TestClient, clinic: Clinic, db: Database,
                                                clock: FrozenClock, settings: Settings) -> None:
    patient, nurse = Api(client, clinic.patient), Api(client, clinic.nurse)
    tid = patient.post("/threads", json={"subject": "Secret subject", "body": "Secret body"}).json()["id"]
    clock.advance(90 * 60)  # every session is idle by now: new ones
    nurse = Api(client, fresh_session(db, clinic.nurse))
    patient = Api(client, fresh_session(db, clinic.patient))
    assert nurse.post(f"/threads/{tid}/messages", json={"body": "Reply body"}).status_code == 201
    assert patient.post("/threads", json={"subject": "Second", "body": "Still waiting"}).status_code == 201
    use_session(client, fresh_session(db, clinic.compliance))
    page = client.get("/analytics")
    assert page.status_code == 200
    assert len(re.findall(r'<svg class="chart[ "]', page.text)) == 5
    assert re.search(r'<rect class="bar s0"[^>]*><title>Nina.Nurse, \d\d-\d\d: 1</title>', page.text)
    assert "Secret" not in page.text and "Reply body" not in page.text
    assert "1 h 30 min" in visible_text(page.text)  # the median wait in nurse triage

    r = client.get("/analytics/response.csv")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert "attachment" in r.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(r.text)))
    # Which pool each landed in is the routing engine's business; the counts and the wait are ours.
    assert sum(int(row["answered"]) for row in rows) == 1 and sum(int(row["waiting"]) for row in rows) == 1
    assert [row["median_minutes"] for row in rows if row["answered"] == "1"] == ["90.0"]
    volume = list(csv.DictReader(io.StringIO(client.get("/analytics/volume.csv?days=7").text)))
    today = date.fromisoformat(clock.now().date().isoformat())
    assert {"day": today.isoformat(), "provider": "Nina.Nurse", "messages": "1"} in volume
    assert len({row["day"] for row in volume}) == 7 and (today - timedelta(days=7)).isoformat() not in str(volume)
    exported = db.read_sync(lambda s: s.scalar(select(func.count()).select_from(AuditRow)
                                               .where(AuditRow.action == "analytics.report.export")))
    assert exported == 2

    use_session(client, fresh_session(db, clinic.patient))
    assert client.get("/analytics").status_code == 404
    assert client.get("/analytics/volume.csv").status_code == 404


def test_clinicians_see_only_their_own_volume(client: TestClient, clinic: Clinic) -> None:
    tid = Api(client, clinic.patient).post("/threads", json={"subject": "Q", "body": "q"}).json()["id"]
    Api(client, clinic.nurse).post(f"/threads/{tid}/messages", json={"body": "a"})
    Api(client, clinic.doctor).post("/threads", json={"subject": "S", "body": "b", "to": ["dr.wilson"],
                                                      "confirm_recipients": True})
    use_session(client, clinic.doctor)
    rows = list(csv.DictReader(io.StringIO(client.get("/analytics/volume.csv").text)))
    assert {row["provider"] for row in rows} == {"Dr.House"}


@pytest.mark.parametrize("name", ["=HYPERLINK(1)", "+1", "-cmd", "@x"])
def test_csv_cells_cannot_become_formulas(name: str) -> None:
    from lockbox.web.analytics import _cell

    assert str(_cell(name)).startswith("'")


# -- consent ---------------------------------------------------------------------------------------


def test_the_consent_screen_comes_first_and_an_opt_out_is_respected(client: TestClient, clinic: Clinic,
                                                                    db: Database) -> None:
    newcomer = make_user(db, "patient", username="new.comer", care_teams=["team-a"], consent=None)
    use_session(client, newcomer)
    first = client.get("/portal", follow_redirects=False)
    assert first.status_code == 303 and first.headers["location"] == "/consent"
    assert client.get("/portal/new", follow_redirects=False).headers["location"] == "/consent"
    page = client.get("/consent")
    assert "version 2026-01" in page.text and "not for emergencies" in page.text
    agreed = client.post("/consent", data={"csrf_token": csrf_of(page.text), "scope": "messaging",
                                           "choice": "grant"}, follow_redirects=False)
    assert agreed.headers["location"] == "/portal"
    assert client.get("/portal").status_code == 200
    overview = Api(client, newcomer).get("/me/consent").json()
    record = overview["history"][0]
    assert (record["status"], record["terms_version"], record["method"]) == ("granted", "2026-01", "portal")

    # Opting out of email alone, then of messaging: staff can no longer start a thread with them.
    use_session(client, newcomer)
    token = csrf_of(client.get("/consent").text)
    client.post("/consent", data={"csrf_token": token, "scope": "email", "choice": "opt_out"})
    client.post("/consent", data={"csrf_token": token, "scope": "messaging", "choice": "opt_out"})
    states = {s["scope"]: s for s in Api(client, newcomer).get("/me/consent").json()["current"]}
    assert states["email"]["status"] == "declined" and states["messaging"]["status"] == "withdrawn"
    assert not states["sms"]["effective"]
    assert "You opted out of secure messaging" in client.get("/portal").text
    assert client.post("/consent", data={"csrf_token": token, "scope": "messaging", "choice": "maybe"}
                       ).status_code == 404

    use_session(client, clinic.doctor)
    compose = csrf_of(client.get("/compose").text)
    refused = client.post("/compose", data={"csrf_token": compose, "patient": "new.comer", "subject": "Hello",
                                            "body": "Checking in", "confirm_recipients": "1"})
    assert refused.status_code == 422 and "not consented" in _error(refused.text)
    assert "Checking in" in refused.text


def test_the_consent_form_needs_its_token(client: TestClient, clinic: Clinic) -> None:
    use_session(client, clinic.patient)
    r = client.post("/consent", data={"scope": "messaging", "choice": "opt_out"})
    assert r.status_code == 403
    states = {s["scope"]: s for s in Api(client, clinic.patient).get("/me/consent").json()["current"]}
    assert states["messaging"]["status"] == "granted"
